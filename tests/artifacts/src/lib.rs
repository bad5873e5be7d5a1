//! Paths of the test guests, built by this crate's build script. Every guest
//! the build script lists (`GUESTS`) gets a constant named after it.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

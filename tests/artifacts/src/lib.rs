//! Paths of the test guests, built by this crate's build script. Every guest
//! in `tests/guests/` gets a constant named after it.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

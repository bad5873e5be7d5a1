//! sluice: a crash-safe bulk import pipeline whose format parsers are
//! sandboxed WebAssembly plugins.

pub mod record;
pub mod sandbox;

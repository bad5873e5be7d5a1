//! sluice: a crash-safe bulk import pipeline whose format parsers are
//! sandboxed WebAssembly plugins.
//!
//! See `ARCHITECTURE.md` at the repository root for the flow of a record
//! from upload to target.

pub mod apply;
pub mod archive;
pub mod cli;
pub(crate) mod codec;
pub mod compensate;
pub mod engine;
pub mod faults;
pub mod journal;
pub mod progress;
pub mod record;
pub mod registry;
pub mod retry;
pub mod sandbox;
pub mod scan;
pub mod sink;
pub mod spool;
pub(crate) mod stage;
pub mod target;

/// Lock a mutex even if a thread panicked while holding it: the data behind
/// sluice's mutexes (caches, registries) stays valid across a panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

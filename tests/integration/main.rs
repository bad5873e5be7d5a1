//! sluice's integration tests: one binary, a module per concern. They use
//! the real wasmtime, real plugin components built from `plugins/` and
//! `tests/guests/`, real files and real processes.

mod archive;
mod common;
mod crash;
mod engine;
mod http;
mod postgres;
mod powerloss;
mod sandbox;

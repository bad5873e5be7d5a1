//! Shared fixtures.

use std::sync::{Arc, OnceLock};

use sluice::sandbox::{Plugin, Sandbox, SandboxConfig};

/// One sandbox for the whole test binary, as in a real process.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("engine starts"))
}

/// The hostile test guest.
pub fn hostile() -> Arc<Plugin> {
    let bytes = std::fs::read(sluice_test_artifacts::HOSTILE).expect("hostile guest built");
    sandbox()
        .load("hostile.wasm", &bytes)
        .expect("hostile guest loads")
}

/// `key=value` pairs as owned options.
pub fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Path of a file under tests/data.
pub fn data(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(path)
}

// Build scripts talk to cargo on stdout.
#![allow(clippy::print_stdout)]

//! Builds the test guests (tests/guests/*) as wasm32-wasip2 components and
//! exposes their paths as constants, like the bundled plugins in host/.

#[path = "../../host/build/wasm_build.rs"]
mod wasm_build;

use std::fmt::Write as _;

const GUESTS: &[&str] = &["sluice-guest-hostile"];

fn main() {
    let built = wasm_build::build_components(GUESTS, &["tests/guests", "sdk", "wit"]);
    let mut src = String::new();
    for (package, path) in built {
        let name = wasm_build::env_name(package.trim_start_matches("sluice-guest-"));
        writeln!(
            src,
            "/// Component built from `{package}`.\npub const {name}: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(out, src).unwrap();
}

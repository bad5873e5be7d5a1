// Build scripts talk to cargo on stdout.
#![allow(clippy::print_stdout)]

//! Builds the bundled format plugins (csv, xml, fixed-width) as WebAssembly
//! components, so the `sluice` binary embeds them and needs no install step.

#[path = "wasm_build.rs"]
mod wasm_build;

const BUNDLED: &[&str] = &[
    "sluice-plugin-csv",
    "sluice-plugin-xml",
    "sluice-plugin-fixed-width",
];

fn main() {
    let built = wasm_build::build_components(
        BUNDLED,
        &[
            "plugins/csv",
            "plugins/xml",
            "plugins/fixed-width",
            "sdk",
            "wit",
        ],
    );
    for (package, path) in built {
        println!(
            "cargo:rustc-env=SLUICE_BUNDLED_{}={}",
            wasm_build::env_name(package.trim_start_matches("sluice-plugin-")),
            path.display()
        );
    }
}

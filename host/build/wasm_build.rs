//! Builds workspace crates as `wasm32-wasip2` components from a build script.
//!
//! Shared by the host's build script (bundled plugins) and the test
//! artifacts' build script (hostile guests), through `#[path]`.
//!
//! The nested `cargo` uses its own target directory, next to the outer one,
//! so it never waits on the outer build's lock, and keeps the jobserver it
//! inherits so the machine is not oversubscribed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";
pub const PROFILE: &str = "plugin";

/// Root of the workspace (the parent of the calling package's directory for
/// `host/` and `tests/artifacts/`, found by walking up to `Cargo.lock`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    manifest_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists() && d.join("wit").is_dir())
        .expect("the workspace root holds Cargo.lock and wit/")
        .to_path_buf()
}

/// Target directory for the nested build: beside the outer build's profile
/// directories, shared by every profile so the components build once.
fn nested_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
    let build_dir = out_dir
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "build"))
        .expect("OUT_DIR lies under a build/ directory");
    let profile_dir = build_dir.parent().expect("build/ has a parent");
    profile_dir
        .parent()
        .unwrap_or(profile_dir)
        .join("sluice-wasm")
}

/// Make sure the standard library for `wasm32-wasip2` is installed for the
/// toolchain running this build, installing it with rustup if it is not.
fn ensure_target_installed() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = &sysroot
        && sysroot.join("lib/rustlib").join(TARGET).is_dir()
    {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => panic!(
            "the Rust standard library for {TARGET} is missing and `rustup target add {TARGET}` \
             failed ({other:?}); install it with `rustup target add {TARGET}` and build again"
        ),
    }
}

/// Build `packages` (workspace package names) for wasm32-wasip2 and return,
/// for each, the path of its component (`<crate_name>.wasm`).
pub fn build_components(packages: &[&str], watch: &[&str]) -> Vec<(String, PathBuf)> {
    let root = workspace_root();
    for w in watch {
        println!("cargo:rerun-if-changed={}", root.join(w).display());
    }
    // The workspace manifest holds the plugin profile and shared
    // dependency features; the lock file, the versions.
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    ensure_target_installed();

    let target_dir = nested_target_dir();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for host
    // code; the components are always built plainly.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // WebAssembly SIMD lets `memchr` and friends scan input 16 bytes at a
    // time inside the sandbox; wasmtime supports it on every host it runs on.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the wasm components: {e}"));
    assert!(
        status.success(),
        "building the wasm components {packages:?} failed (see the cargo output above)"
    );

    let out = target_dir.join(TARGET).join(PROFILE);
    packages
        .iter()
        .map(|p| {
            let file = out.join(format!("{}.wasm", p.replace('-', "_")));
            assert!(file.exists(), "{} was not produced", file.display());
            (p.to_string(), file)
        })
        .collect()
}

/// `FOO_BAR` from `foo-bar`.
pub fn env_name(package: &str) -> String {
    package.to_uppercase().replace('-', "_")
}

//! The `sluice` binary: all the work happens in the library's `cli` module.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(sluice::cli::main(std::env::args_os()))
}

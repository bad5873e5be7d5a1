//! The `sluice` command line: one front end over the library.
//!
//! Exit codes (automation depends on them): 0 success, every record good;
//! 3 finished, but some records were rejected or failed; 1 the job or
//! command failed or could not run; 2 usage error.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::record::Item;
use crate::registry::{Registry, Scope};
use crate::sandbox::{ParseError, Sandbox, SandboxConfig};

/// Exit code: success, every record good.
pub const EXIT_OK: u8 = 0;
/// Exit code: the job or command failed or could not run.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: finished, but some records were rejected or failed.
pub const EXIT_PARTIAL: u8 = 3;

/// Crash-safe bulk import with sandboxed format plugins.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// Data directory (journal, store, spool, plugins). Default:
    /// $XDG_DATA_HOME/sluice, else ~/.local/share/sluice.
    #[arg(long, global = true, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug); SLUICE_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the plugins a tenant can use (tenant's, then global, then bundled).
    Plugins {
        /// Include this tenant's own plugins.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install or test a plugin.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate, precompile and install a plugin component.
    Add {
        /// The component (.wasm), built for wasm32-wasip2 with sluice-sdk.
        file: PathBuf,
        /// Install for this tenant only (it then overrides global and
        /// bundled plugins for the same format).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Run a plugin over a file and print each record or record error as a
    /// JSON line, then a summary: what the host sees.
    Test(PluginTest),
}

#[derive(Debug, Args)]
pub struct PluginTest {
    /// An installed plugin or format name, or a .wasm file.
    pub plugin: String,
    /// The input file.
    pub input: PathBuf,
    /// Plugin option, repeatable.
    #[arg(long = "option", short = 'o', value_name = "K=V", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Resolve the plugin name as this tenant would.
    #[arg(long)]
    pub tenant: Option<String>,
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// A command failed: what to print, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: e.to_string(),
        }
    }
}

/// The data directory: the flag or SLUICE_DATA_DIR, else the XDG default.
pub fn data_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(d) = given {
        return d;
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("sluice");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/sluice"),
        None => PathBuf::from("sluice-data"),
    }
}

/// Parse `args`, run the command, return the exit code. Errors go to stderr.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(cli.verbose);
    let mut out = io::stdout().lock();
    match run(cli, &mut out) {
        Ok(code) => code,
        Err(f) => {
            let _ = out.flush();
            let _ = writeln!(io::stderr(), "sluice: {}", f.message);
            f.code
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// Everything commands share: the data directory, the sandbox, the registry.
struct Context {
    registry: Registry,
    sandbox: Arc<Sandbox>,
}

impl Context {
    fn open(data_dir: &Path) -> Result<Self, Failure> {
        let config = SandboxConfig {
            cache_dir: Some(data_dir.join("cache")),
            ..SandboxConfig::default()
        };
        let sandbox = Arc::new(Sandbox::new(config)?);
        Ok(Context {
            registry: Registry::new(data_dir, sandbox.clone()),
            sandbox,
        })
    }
}

/// Run a parsed command, writing its output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<u8, Failure> {
    let data_dir = data_dir(cli.data_dir);
    let ctx = Context::open(&data_dir)?;
    match cli.command {
        Command::Plugins { tenant, json } => list_plugins(&ctx, tenant.as_deref(), json, out),
        Command::Plugin(PluginCommand::Add { file, tenant }) => add_plugin(&ctx, &file, tenant.as_deref(), out),
        Command::Plugin(PluginCommand::Test(t)) => test_plugin(&ctx, t, out),
    }
}

fn list_plugins(ctx: &Context, tenant: Option<&str>, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let entries = ctx.registry.list(tenant)?;
    let mut seen_formats: Vec<String> = Vec::new();
    if !json {
        writeln!(
            out,
            "{:<16} {:<10} {:<24} {:<16} {:<16} DIGEST",
            "NAME", "VERSION", "FORMATS", "EXTENSIONS", "SCOPE"
        )?;
    }
    for e in entries {
        // A format already served by an earlier (higher-priority) entry is
        // shadowed here.
        let shadowed = !e.info.formats.is_empty() && e.info.formats.iter().all(|f| seen_formats.contains(f));
        seen_formats.extend(e.info.formats.iter().cloned());
        let scope = match (e.scope, &e.tenant) {
            (Scope::Tenant, Some(t)) => format!("tenant:{t}"),
            (Scope::Tenant, None) => "tenant".to_owned(),
            (Scope::Global, _) => "global".to_owned(),
            (Scope::Bundled, _) => "bundled".to_owned(),
        };
        if json {
            let mut v = serde_json::to_value(&e)?;
            v["overridden"] = json!(shadowed);
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:<16} {:<10} {:<24} {:<16} {:<16} {}{}",
                e.info.name,
                e.info.version,
                e.info.formats.join(","),
                e.info.extensions.join(","),
                scope,
                &e.digest[..12],
                if shadowed { "  (overridden)" } else { "" }
            )?;
        }
    }
    Ok(EXIT_OK)
}

fn add_plugin(ctx: &Context, file: &Path, tenant: Option<&str>, out: &mut dyn Write) -> Result<u8, Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!("cannot read {}: {e}", file.display()),
    })?;
    let entry = ctx.registry.install(&file.display().to_string(), &bytes, tenant)?;
    writeln!(
        out,
        "installed {} {} (sha256 {}) for {}; formats: {}; extensions: {}",
        entry.info.name,
        entry.info.version,
        &entry.digest[..12],
        tenant.map_or("every tenant".to_owned(), |t| format!("tenant {t}")),
        entry.info.formats.join(", "),
        entry.info.extensions.join(", ")
    )?;
    Ok(EXIT_OK)
}

fn test_plugin(ctx: &Context, t: PluginTest, out: &mut dyn Write) -> Result<u8, Failure> {
    let as_file = Path::new(&t.plugin);
    let plugin = if t.plugin.ends_with(".wasm") || as_file.is_file() {
        let bytes = std::fs::read(as_file).map_err(|e| Failure {
            code: EXIT_FAILED,
            message: format!("cannot read {}: {e}", as_file.display()),
        })?;
        ctx.sandbox.load(&t.plugin, &bytes)?
    } else {
        ctx.registry.resolve(t.tenant.as_deref(), &t.plugin)?.1
    };
    let input = std::fs::File::open(&t.input).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!("cannot open {}: {e}", t.input.display()),
    })?;
    let started = Instant::now();
    let mut parse = ctx
        .sandbox
        .open(&plugin, Box::new(io::BufReader::new(input)), &t.options, None, None, None)?;
    let (mut records, mut errors) = (0u64, 0u64);
    let mut outcome = "end";
    let mut code = EXIT_OK;
    loop {
        match parse.next() {
            Ok(item) => {
                writeln!(out, "{}", item.to_json())?;
                match item {
                    Item::Record(_) => records += 1,
                    Item::Error(_) => errors += 1,
                    Item::Fatal(_) => {
                        errors += 1;
                        outcome = "fatal";
                        break;
                    }
                    Item::End => break,
                }
            }
            Err(ParseError::Fault(f)) => {
                let mut v = serde_json::to_value(&f)?;
                v["type"] = json!("fault");
                v["message"] = json!(f.to_string());
                writeln!(out, "{v}")?;
                outcome = "fault";
                code = EXIT_FAILED;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if code == EXIT_OK && errors > 0 {
        code = EXIT_PARTIAL;
    }
    let info = plugin.info();
    writeln!(
        out,
        "{}",
        json!({
            "type": "summary",
            "plugin": info.name,
            "version": info.version,
            "digest": plugin.digest().hex(),
            "outcome": outcome,
            "records": records,
            "errors": errors,
            "bytes_read": parse.bytes_read(),
            "log_lines_dropped": parse.log_lines_dropped(),
            "elapsed_ms": started.elapsed().as_millis() as u64,
        })
    )?;
    Ok(code)
}

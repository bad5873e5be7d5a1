//! The `sluice` command line: one front end over the library.
//!
//! Exit codes (automation depends on them): 0 completed, every record
//! applied; 3 completed, but some records were rejected or failed; 1 the
//! job failed or could not run; 2 usage error.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value as Json, json};

use crate::engine::{Engine, EngineConfig, EngineError, ImportRequest, Submitted};
use crate::journal::{JobId, JobRecord, JobState};
use crate::progress::Progress;
use crate::record::Item;
use crate::registry::Scope;
use crate::sandbox::ParseError;

/// Exit code: completed, every record applied.
pub const EXIT_OK: u8 = 0;
/// Exit code: the job failed or could not run.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: completed, but some records were rejected or failed.
pub const EXIT_PARTIAL: u8 = 3;

/// Tenant used when none is given.
pub const DEFAULT_TENANT: &str = "default";

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
    /// Import a file (or stdin) into the store: spool, validate, apply.
    Import(ImportArgs),
    /// Resume every unfinished job and remove spool debris.
    Recover,
    /// Stop a running or resumable job at a safe point; it ends cancelled.
    Cancel {
        id: JobId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reverse everything a job did on its target: created records removed,
    /// updated ones restored; records changed since the import are kept.
    Undo {
        id: JobId,
        /// Print JSON lines (one per record undone, then a summary).
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    Jobs {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: state, counts, timings, plugin, errors by code.
    Job {
        id: JobId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a job's per-record error report.
    Errors {
        id: JobId,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
    /// Read the embedded store.
    #[command(subcommand)]
    Store(StoreCommand),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import, or - for stdin.
    pub path: String,
    /// Format or plugin name (default: by the file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// Tenant the records belong to.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// Field whose value identifies each record (default: the plugin's
    /// natural key, else the record's position in the upload).
    #[arg(long)]
    pub key: Option<String>,
    /// Plugin option, repeatable.
    #[arg(long = "option", short = 'o', value_name = "K=V", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Validate only: run pass 1 and print the report.
    #[arg(long)]
    pub dry_run: bool,
    /// Start a new job even if this exact import was done before.
    #[arg(long)]
    pub new: bool,
    /// Where records go: `embedded` (default), a postgres:// URL, or an HTTP
    /// mapping file (.toml).
    #[arg(long)]
    pub target: Option<String>,
    /// Retry policy override, repeatable: CLASS=ATTEMPTS[/MAX_DELAY] with
    /// CLASS transient or conflict (defaults: transient=6/10s, conflict=3/1s).
    #[arg(long, value_name = "CLASS=ATTEMPTS[/MAX_DELAY]")]
    pub retry: Vec<String>,
    /// Print JSON lines (progress, error, summary) instead of bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print records as JSON lines, sorted by kind then key.
    Export {
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
    },
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

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_FAILED,
        message: message.into(),
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
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`sluice store export | head`), instead of reporting a write
    // error.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up,
    // before any thread is spawned, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

/// Run a parsed command, writing its output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<u8, Failure> {
    let data_dir = data_dir(cli.data_dir);
    let engine = Engine::open(&data_dir, engine_config()?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    match cli.command {
        Command::Import(args) => runtime.block_on(import(&engine, args, out)),
        Command::Recover => runtime.block_on(recover(&engine, out)),
        Command::Cancel { id, json } => runtime.block_on(cancel(&engine, id, json, out)),
        Command::Undo { id, json } => runtime.block_on(undo(&engine, id, json, out)),
        Command::Jobs { json } => list_jobs(&engine, json, out),
        Command::Job { id, json } => show_job(&engine, id, json, out),
        Command::Errors { id, format } => write_errors(&engine, id, format, out),
        Command::Store(StoreCommand::Export { tenant }) => {
            engine.store().export(tenant.as_deref(), out)?;
            Ok(EXIT_OK)
        }
        Command::Plugins { tenant, json } => list_plugins(&engine, tenant.as_deref(), json, out),
        Command::Plugin(PluginCommand::Add { file, tenant }) => {
            add_plugin(&engine, &file, tenant.as_deref(), out)
        }
        Command::Plugin(PluginCommand::Test(t)) => test_plugin(&engine, t, out),
    }
}

/// Engine settings, with the tuning knobs the environment may set:
/// `SLUICE_INTERVAL_ITEMS` (records per group commit) and
/// `SLUICE_STAGE_RECORDS` (`0` stops writing the record stage).
fn engine_config() -> Result<EngineConfig, Failure> {
    let mut config = EngineConfig::default();
    if let Ok(v) = std::env::var("SLUICE_STAGE_RECORDS") {
        config.stage_records = match v.as_str() {
            "1" => true,
            "0" => false,
            _ => {
                return Err(Failure {
                    code: EXIT_USAGE,
                    message: format!("SLUICE_STAGE_RECORDS must be 0 or 1, not {v:?}"),
                });
            }
        };
    }
    if let Ok(v) = std::env::var("SLUICE_INTERVAL_ITEMS") {
        config.interval_items = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| Failure {
            code: EXIT_USAGE,
            message: format!("SLUICE_INTERVAL_ITEMS must be a positive integer, not {v:?}"),
        })?;
    }
    Ok(config)
}

/// Exit code for a finished job.
pub fn exit_code(job: &JobRecord) -> u8 {
    match job.state {
        JobState::Completed | JobState::Validated
            if job.counts.rejected + job.counts.failed == 0 =>
        {
            EXIT_OK
        }
        JobState::Completed | JobState::Validated => EXIT_PARTIAL,
        _ => EXIT_FAILED,
    }
}

async fn recover(engine: &Engine, out: &mut dyn Write) -> Result<u8, Failure> {
    let report = engine.recover().await?;
    writeln!(
        out,
        "recovery: {} jobs resumed, {} not resumed, {} spool files removed",
        report.resumed.len(),
        report.not_resumed.len(),
        report.files_removed
    )?;
    for (id, state) in &report.resumed {
        writeln!(out, "  job {id}: {state}")?;
    }
    for (id, why) in &report.not_resumed {
        writeln!(out, "  job {id}: not resumed: {why}")?;
    }
    Ok(if report.not_resumed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

async fn cancel(
    engine: &Engine,
    id: JobId,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let job = engine.cancel(id).await?;
    if json {
        writeln!(
            out,
            "{}",
            json!({"type": "summary", "job": id, "state": job.state, "cancel_requested": job.cancel_requested})
        )?;
    } else if job.state == JobState::Cancelled {
        writeln!(out, "job {id}: cancelled")?;
    } else if job.state.is_terminal() {
        writeln!(out, "job {id} is already {}", job.state)?;
    } else {
        writeln!(
            out,
            "job {id}: cancel requested; the process running it stops at its next safe point"
        )?;
    }
    Ok(if job.state.is_terminal() || job.cancel_requested {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

async fn undo(engine: &Engine, id: JobId, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let job = engine.undo(id).await?;
    let entries = engine.journal().undo_entries(id)?;
    let kept: Vec<_> = entries
        .iter()
        .filter(|e| {
            matches!(
                e.action,
                crate::sink::UndoAction::KeptChanged | crate::sink::UndoAction::Failed
            )
        })
        .collect();
    if json {
        for e in &entries {
            writeln!(
                out,
                "{}",
                json!({"type": "undo", "job": id, "part": e.part, "ordinal": e.ordinal,
                "kind": e.kind, "key": e.key, "action": e.action, "message": e.message})
            )?;
        }
        writeln!(
            out,
            "{}",
            json!({"type": "summary", "job": id, "state": job.state,
            "undo": job.undo_counts, "kept": kept.len()})
        )?;
    } else {
        let summary = job.undo_summary();
        writeln!(
            out,
            "job {id}: {}; {}",
            job.state,
            if summary.is_empty() {
                "nothing to undo"
            } else {
                &summary
            }
        )?;
        for e in &kept {
            writeln!(
                out,
                "  {} {} (record {}): {}{}",
                e.kind,
                e.key,
                e.ordinal,
                e.action.as_str(),
                e.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(match job.state {
        JobState::Undone if kept.is_empty() => EXIT_OK,
        JobState::Undone => EXIT_PARTIAL,
        _ => EXIT_FAILED,
    })
}

async fn import(engine: &Engine, args: ImportArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    // Unfinished jobs first: a crash must not leave work behind.
    let report = engine.recover().await?;
    if !report.resumed.is_empty() {
        tracing::warn!(jobs = ?report.resumed, "resumed unfinished jobs before importing");
    }
    let req = ImportRequest {
        source: args.path.clone(),
        tenant: args.tenant.clone(),
        format: args.format.clone(),
        key: args.key.clone(),
        options: args.options.clone(),
        dry_run: args.dry_run,
        force_new: args.new,
        target: args.target.clone(),
        retry: args.retry.clone(),
    };
    let submitted = if args.path == "-" {
        engine.submit(req, tokio::io::stdin()).await?
    } else {
        let file = tokio::fs::File::open(&args.path)
            .await
            .map_err(|e| fail(format!("cannot open {}: {e}", args.path)))?;
        engine.submit(req, file).await?
    };
    let id = submitted.job();
    let existing = matches!(submitted, Submitted::Existing(_));
    let before = engine.journal().job(id)?;
    if existing && !args.json {
        writeln!(
            io::stderr(),
            "this exact import is job {id} ({}); not importing it twice (use --new to force)",
            before.state
        )?;
    }
    let job = if before.state.is_terminal() {
        before
    } else {
        run_with_progress(engine, id, args.json, out).await?
    };
    report_job(engine, &job, existing, args.json, out)?;
    Ok(exit_code(&job))
}

/// Run a job, showing progress bars on a terminal or JSON progress lines.
async fn run_with_progress(
    engine: &Engine,
    id: JobId,
    json: bool,
    out: &mut dyn Write,
) -> Result<JobRecord, Failure> {
    let runner = engine.clone();
    let mut task = tokio::spawn(async move { runner.run(id).await });
    let bar = (!json && io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    });
    let mut tick = tokio::time::interval(Duration::from_millis(if json { 1000 } else { 200 }));
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tokio::signal::ctrl_c(), if !stopping => {
                // Stop at the next safe point; the job stays resumable.
                stopping = true;
                engine.stop(id);
                let _ = writeln!(io::stderr(), "stopping job {id} at a safe point (Ctrl-C again to quit now; the job resumes with `sluice recover`)");
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    std::process::exit(i32::from(EXIT_FAILED));
                });
            }
            _ = tick.tick() => {
                let Ok(p) = engine.progress(id) else { continue };
                if let Some(bar) = &bar {
                    draw(bar, &p);
                } else if json {
                    let mut v = serde_json::to_value(&p)?;
                    v["type"] = json!("progress");
                    writeln!(out, "{v}")?;
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let job = result.map_err(|e| fail(format!("job {id} task failed: {e}")))?;
    match job {
        Ok(job) => Ok(job),
        Err(e @ EngineError::Stopped { .. }) => Err(fail(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn draw(bar: &indicatif::ProgressBar, p: &Progress) {
    let (phase, pos, len) = match p.state {
        JobState::Spooled | JobState::Scanning => ("validate", p.scanned_bytes, p.bytes),
        _ => ("apply", p.processed, p.total.unwrap_or(p.scanned)),
    };
    bar.set_prefix(phase);
    bar.set_length(len);
    bar.set_position(pos);
    let eta = p
        .eta_secs
        .map(|s| format!(", eta {}s", s.round()))
        .unwrap_or_default();
    bar.set_message(format!(
        "{:.0}/s, {} rejected, {} failed{eta}",
        p.rate, p.rejected, p.failed
    ));
}

/// Most error lines an import prints; the full report is `sluice errors`.
const MAX_ERROR_EVENTS: usize = 100;

fn report_job(
    engine: &Engine,
    job: &JobRecord,
    existing: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut shown = 0u64;
    engine
        .journal()
        .for_first_errors(job.id, MAX_ERROR_EVENTS, |part, ordinal, e| {
            shown += 1;
            if json {
                let v = json!({"type": "error", "job": job.id, "part": part, "ordinal": ordinal,
                "line": e.line, "offset": e.offset, "field": e.field, "code": e.code,
                "stage": e.stage.as_str(), "message": e.message});
                writeln!(out, "{v}")
            } else {
                let field = e
                    .field
                    .as_ref()
                    .map(|f| format!(" field {f:?}"))
                    .unwrap_or_default();
                writeln!(
                    io::stderr(),
                    "  record {ordinal} (line {}, byte {}{field}): {} [{}:{}]",
                    e.line,
                    e.offset,
                    e.message,
                    e.stage.as_str(),
                    e.code
                )
            }
        })?;
    let c = &job.counts;
    let total = job.total();
    let elapsed = job.times.finished.unwrap_or_else(crate::journal::now_ms) - job.times.created;
    if json {
        let v = json!({"type": "summary", "job": job.id, "state": job.state, "tenant": job.tenant,
            "source": job.source, "existing": existing, "dry_run": job.dry_run, "total": total,
            "applied": c.applied, "rejected": c.rejected, "failed": c.failed,
            "plugins": job.plugins, "errors_by_code": job.errors_by_code, "error": job.error,
            "elapsed_ms": elapsed});
        writeln!(out, "{v}")?;
    } else {
        // Every journaled error is tallied by code.
        let more = job
            .errors_by_code
            .values()
            .sum::<u64>()
            .saturating_sub(shown);
        if more > 0 {
            writeln!(io::stderr(), "  ... and {more} more")?;
        }
        let what = if job.dry_run { "validated" } else { "imported" };
        writeln!(
            out,
            "job {}: {}; {} records {what}: {} applied, {} rejected, {} failed ({:.1} s)",
            job.id,
            job.state,
            total.map_or("?".to_owned(), |t| t.to_string()),
            c.applied,
            c.rejected,
            c.failed,
            elapsed as f64 / 1000.0
        )?;
        if let Some(e) = &job.error {
            writeln!(out, "error: {e}")?;
        }
        if c.rejected + c.failed > 0 {
            writeln!(out, "per-record errors: sluice errors {}", job.id)?;
        }
    }
    Ok(())
}

fn list_jobs(engine: &Engine, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let jobs = engine.journal().jobs()?;
    if !json {
        writeln!(
            out,
            "{:>5} {:<10} {:<12} {:>9} {:>9} {:>9} {:>7}  SOURCE",
            "ID", "STATE", "TENANT", "TOTAL", "APPLIED", "REJECTED", "FAILED"
        )?;
    }
    for j in jobs {
        if json {
            writeln!(out, "{}", job_json(engine, &j)?)?;
        } else {
            writeln!(
                out,
                "{:>5} {:<10} {:<12} {:>9} {:>9} {:>9} {:>7}  {}",
                j.id,
                j.state.as_str(),
                j.tenant,
                j.total().map_or("?".into(), |t| t.to_string()),
                j.counts.applied,
                j.counts.rejected,
                j.counts.failed,
                j.source
            )?;
        }
    }
    Ok(EXIT_OK)
}

fn job_json(engine: &Engine, j: &JobRecord) -> Result<Json, Failure> {
    let parts = engine.journal().parts(j.id)?;
    Ok(json!({
        "job": j.id, "state": j.state, "tenant": j.tenant, "source": j.source,
        "dry_run": j.dry_run, "key": j.key_field, "options": j.options,
        "bytes": j.upload.size, "digest": j.upload.digest,
        "total": j.total(),
        "counts": j.counts, "errors_by_code": j.errors_by_code, "times": j.times,
        "plugins": parts.iter().map(|p| json!({"part": p.index, "name": p.name,
            "plugin": p.plugin.name, "version": p.plugin.version, "digest": p.plugin.digest})).collect::<Vec<_>>(),
        "progress": Progress::of(j), "error": j.error, "cancel_requested": j.cancel_requested,
        "target": j.target, "retry": j.retry, "undo": j.undo_counts, "leftovers": j.leftovers,
        "failures_by_class": failures_by_class(engine, j.id)?.into_iter()
            .map(|(class, (n, min, max))| (class, json!({"records": n, "min_attempts": min, "max_attempts": max})))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

fn show_job(engine: &Engine, id: JobId, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let j = engine.journal().job(id)?;
    if json {
        writeln!(out, "{}", job_json(engine, &j)?)?;
        return Ok(EXIT_OK);
    }
    let p = Progress::of(&j);
    let c = &j.counts;
    writeln!(out, "job {}  {}", j.id, j.state)?;
    writeln!(out, "  tenant     {}", j.tenant)?;
    writeln!(
        out,
        "  source     {} ({} bytes, sha256 {})",
        j.source,
        j.upload.size,
        &j.upload.digest[..16.min(j.upload.digest.len())]
    )?;
    for part in engine.journal().parts(id)? {
        writeln!(
            out,
            "  part {}     {} via {} {} (sha256 {})",
            part.index,
            part.name,
            part.plugin.name,
            part.plugin.version,
            &part.plugin.digest[..12]
        )?;
    }
    if let Some(k) = &j.key_field {
        writeln!(out, "  key        {k}")?;
    }
    writeln!(out, "  target     {}", j.target)?;
    writeln!(
        out,
        "  records    {} total, {} rejected, {} applied, {} failed",
        p.total.map_or("?".into(), |t| t.to_string()),
        c.rejected,
        c.applied,
        c.failed
    )?;
    if !j.state.is_terminal() {
        let eta = p
            .eta_secs
            .map(|s| format!(", eta {s:.0} s"))
            .unwrap_or_default();
        writeln!(out, "  progress   {:.0} items/s{eta}", p.rate)?;
    }
    let t = &j.times;
    let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1} s", b.saturating_sub(a) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    };
    writeln!(
        out,
        "  timings    validate {}, apply {}, total {}",
        secs(t.scan_started, t.scan_finished),
        secs(
            t.apply_started,
            t.finished.filter(|_| t.apply_started.is_some())
        ),
        secs(Some(t.created), t.finished)
    )?;
    if !j.errors_by_code.is_empty() {
        writeln!(out, "  errors by code")?;
        for (code, n) in &j.errors_by_code {
            writeln!(out, "    {n:>9}  {code}")?;
        }
    }
    let failures = failures_by_class(engine, id)?;
    if !failures.is_empty() {
        writeln!(out, "  failed records by class (records, attempts each)")?;
        for (class, (n, min, max)) in &failures {
            let attempts = if min == max {
                min.to_string()
            } else {
                format!("{min}-{max}")
            };
            writeln!(out, "    {n:>9}  {class}, {attempts} attempts")?;
        }
    }
    if !j.undo_counts.is_empty() {
        writeln!(out, "  undo       {}", j.undo_summary())?;
    }
    for l in &j.leftovers {
        writeln!(out, "  leftover   {l}")?;
    }
    if let Some(e) = &j.error {
        writeln!(out, "  error      {e}")?;
    }
    Ok(EXIT_OK)
}

/// Records the target refused, by failure class: (count, fewest and most
/// attempts).
fn failures_by_class(
    engine: &Engine,
    id: JobId,
) -> Result<std::collections::BTreeMap<String, (u64, u32, u32)>, Failure> {
    let mut by_class = std::collections::BTreeMap::new();
    engine.journal().for_each_error(id, |_, _, e| {
        if let Some(class) = e.class {
            let entry = by_class.entry(class).or_insert((0u64, u32::MAX, 0u32));
            entry.0 += 1;
            entry.1 = entry.1.min(e.attempts);
            entry.2 = entry.2.max(e.attempts);
        }
        Ok(())
    })?;
    Ok(by_class)
}

fn write_errors(
    engine: &Engine,
    id: JobId,
    format: ReportFormat,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let job = engine.journal().job(id)?;
    let parts = engine.journal().parts(id)?;
    let part_name = |p: u32| {
        parts
            .iter()
            .find(|x| x.index == p)
            .map_or(String::new(), |x| x.name.clone())
    };
    match format {
        ReportFormat::Jsonl => {
            engine.journal().for_each_error(id, |part, ordinal, e| {
                let v = json!({"job": job.id, "part": part_name(part), "ordinal": ordinal,
                    "line": e.line, "offset": e.offset, "field": e.field, "code": e.code,
                    "stage": e.stage.as_str(), "class": e.class, "attempts": e.attempts,
                    "message": e.message, "record": e.record, "record_truncated": e.truncated});
                writeln!(out, "{v}")
            })?;
        }
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                "job", "part", "ordinal", "line", "offset", "field", "code", "stage", "class",
                "attempts", "message", "record",
            ])?;
            engine.journal().for_each_error(id, |part, ordinal, e| {
                w.write_record([
                    job.id.to_string(),
                    part_name(part),
                    ordinal.to_string(),
                    e.line.to_string(),
                    e.offset.to_string(),
                    e.field.unwrap_or_default(),
                    e.code,
                    e.stage.as_str().to_owned(),
                    e.class.unwrap_or_default(),
                    e.attempts.to_string(),
                    e.message,
                    e.record,
                ])
                .map_err(io::Error::other)
            })?;
            w.flush()?;
        }
    }
    Ok(EXIT_OK)
}

fn list_plugins(
    engine: &Engine,
    tenant: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let entries = engine.registry().list(tenant)?;
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
        let shadowed =
            !e.info.formats.is_empty() && e.info.formats.iter().all(|f| seen_formats.contains(f));
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

fn add_plugin(
    engine: &Engine,
    file: &Path,
    tenant: Option<&str>,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let bytes =
        std::fs::read(file).map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    let entry = engine
        .registry()
        .install(&file.display().to_string(), &bytes, tenant)?;
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

fn test_plugin(engine: &Engine, t: PluginTest, out: &mut dyn Write) -> Result<u8, Failure> {
    let as_file = Path::new(&t.plugin);
    let plugin = if t.plugin.ends_with(".wasm") || as_file.is_file() {
        let bytes = std::fs::read(as_file)
            .map_err(|e| fail(format!("cannot read {}: {e}", as_file.display())))?;
        engine.sandbox().load(&t.plugin, &bytes)?
    } else {
        engine.registry().resolve(t.tenant.as_deref(), &t.plugin)?.1
    };
    let input = std::fs::File::open(&t.input)
        .map_err(|e| fail(format!("cannot open {}: {e}", t.input.display())))?;
    let started = Instant::now();
    let mut parse = engine.sandbox().open(
        &plugin,
        Box::new(io::BufReader::new(input)),
        &t.options,
        None,
        None,
        None,
    )?;
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

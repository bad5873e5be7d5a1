//! Shared fixtures.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

use sluice::engine::{Engine, EngineConfig, EngineError, ImportRequest, Submitted};
use sluice::journal::JobRecord;
use sluice::sandbox::{Plugin, Sandbox, SandboxConfig};

/// One sandbox for the whole test binary, as in a real process.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("engine starts"))
}

/// The hostile test guest.
pub fn hostile() -> Arc<Plugin> {
    sandbox()
        .load("hostile.wasm", &hostile_bytes())
        .expect("hostile guest loads")
}

pub fn hostile_bytes() -> Vec<u8> {
    std::fs::read(sluice_test_artifacts::HOSTILE).expect("hostile guest built")
}

/// `key=value` pairs as owned options.
pub fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Compiled components shared by every engine the tests open, so each test
/// does not recompile the bundled plugins.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sluice-component-cache")
}

/// An engine config for tests: small intervals, so a few records span
/// several group commits.
pub fn test_config(interval_items: u64) -> EngineConfig {
    let mut config = EngineConfig {
        interval_items,
        ..EngineConfig::default()
    };
    config.sandbox.cache_dir = Some(shared_cache());
    // Stage whatever the disk has free: tests must not depend on it.
    config.stage_reserve_bytes = 0;
    config.retry.base = std::time::Duration::from_millis(5);
    config
}

/// A data directory with an engine on it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new(interval_items: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), test_config(interval_items)).unwrap();
        Fixture {
            dir,
            engine,
            rt: runtime(),
        }
    }

    /// Open another engine on the same data directory, as a restarted
    /// process would.
    pub fn reopen(self, config: EngineConfig) -> Self {
        let Fixture { dir, engine, rt } = self;
        drop(engine); // let go of the database files first
        let engine = Engine::open(dir.path(), config).unwrap();
        Fixture { dir, engine, rt }
    }

    /// Submit `bytes` as `name` and run the job to its end.
    pub fn import(
        &self,
        name: &str,
        bytes: &[u8],
        tweak: impl FnOnce(&mut ImportRequest),
    ) -> JobRecord {
        let id = self.submit(name, bytes, tweak).job();
        self.run(id).expect("job runs")
    }

    pub fn submit(
        &self,
        name: &str,
        bytes: &[u8],
        tweak: impl FnOnce(&mut ImportRequest),
    ) -> Submitted {
        let mut req = ImportRequest {
            source: name.to_owned(),
            tenant: "acme".into(),
            ..ImportRequest::default()
        };
        tweak(&mut req);
        self.rt
            .block_on(self.engine.submit(req, Cursor::new(bytes.to_vec())))
            .expect("submit")
    }

    pub fn run(&self, id: u64) -> Result<JobRecord, EngineError> {
        self.rt.block_on(self.engine.run(id))
    }

    /// The store as `sluice store export` prints it.
    pub fn export(&self) -> String {
        export(&self.engine)
    }

    /// The job's rejected and failed records, with their ordinals.
    pub fn errors(&self, job: u64) -> Vec<(u64, sluice::journal::ErrorEntry)> {
        let mut out = Vec::new();
        self.engine
            .journal()
            .for_each_error(job, |_, ordinal, e| {
                out.push((ordinal, e));
                Ok(())
            })
            .unwrap();
        out
    }

    /// What undoing `job` did with `action`, in undo order.
    pub fn undo_entries(
        &self,
        job: u64,
        action: sluice::sink::UndoAction,
    ) -> Vec<sluice::sink::UndoEntry> {
        let mut entries = self.engine.journal().undo_entries(job).unwrap();
        entries.retain(|e| e.action == action);
        entries
    }

    /// Files left in the spool, temporary ones included.
    pub fn spool_files(&self) -> Vec<String> {
        spool_files(&self.engine)
    }

    /// Install the hostile guest for every tenant.
    pub fn install_hostile(&self) {
        self.engine
            .registry()
            .install("hostile.wasm", &hostile_bytes(), None)
            .unwrap();
    }
}

/// The engine's store as `sluice store export` prints it.
pub fn export(engine: &Engine) -> String {
    let mut out = Vec::new();
    engine.store().export(None, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Files left in the engine's spool, temporary ones included.
pub fn spool_files(engine: &Engine) -> Vec<String> {
    let mut f = engine.spool().files().unwrap();
    f.extend(engine.spool().temporary_files().unwrap());
    f
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An import keyed by the `id` column (for [`Fixture::import`]).
pub fn keyed(r: &mut ImportRequest) {
    r.key = Some("id".into());
}

/// `n` CSV rows `id,name,amount` with a header; every `bad_every`-th row
/// (if non-zero) is ragged.
pub fn csv_rows(n: usize, bad_every: usize) -> Vec<u8> {
    let mut s = String::from("id,name,amount\n");
    for i in 1..=n {
        if bad_every != 0 && i % bad_every == 0 {
            s.push_str(&format!("{i},ragged\n"));
        } else {
            s.push_str(&format!("{i},name-{i},{}\n", i * 7 % 1000));
        }
    }
    s.into_bytes()
}

/// A `sluice` child process on `data` with group commits of `interval`
/// items, quiet, with no crash point unless the caller sets one.
pub fn sluice_cmd(data: &Path, interval: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("--data-dir")
        .arg(data)
        .env("SLUICE_INTERVAL_ITEMS", interval)
        .env_remove("SLUICE_CRASH_AT")
        .env("SLUICE_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run a child to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("sluice runs")
}

/// A fresh data directory seeded with the shared compiled-component cache,
/// so each child does not recompile the bundled plugins.
pub fn fresh_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    if let Ok(entries) = std::fs::read_dir(shared_cache()) {
        for e in entries.flatten() {
            let _ = std::fs::hard_link(e.path(), cache.join(e.file_name()))
                .or_else(|_| std::fs::copy(e.path(), cache.join(e.file_name())).map(|_| ()));
        }
    }
    dir
}

/// `sluice jobs --json` run by `cmd` (a `sluice_cmd` on some data directory).
pub fn jobs_of(cmd: &mut Command) -> Vec<serde_json::Value> {
    let out = run(cmd.args(["jobs", "--json"]));
    assert!(
        out.status.success(),
        "jobs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `bytes` as the file `name` in the tests' scratch directory. Written to a
/// temporary name and renamed, because a child process of another test may
/// be reading the file at that moment.
pub fn test_input(name: &str, bytes: &[u8]) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if std::fs::read(&path).ok().as_deref() != Some(bytes) {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = path.with_extension(format!("partial-{}-{n}", std::process::id()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A ZIP archive of `entries` (name, content), deflated.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `id,v` rows `{i},{tag}{i}` for `i` in `range`, with a header.
pub fn id_v_rows(range: std::ops::RangeInclusive<u32>, tag: &str) -> Vec<u8> {
    let mut s = String::from("id,v\n");
    for i in range {
        s.push_str(&format!("{i},{tag}{i}\n"));
    }
    s.into_bytes()
}

/// The crash points of `family` (the part of the name before the dot), in
/// the order a job meets them.
pub fn crash_points(family: &str) -> Vec<&'static str> {
    let points: Vec<_> = sluice::faults::POINTS
        .iter()
        .copied()
        .filter(|p| p.split('.').next() == Some(family))
        .collect();
    assert!(!points.is_empty(), "no crash points named {family}.*");
    points
}

/// Run `once` with `point:1`, `point:2` ... (kill at the n-th time the point
/// is reached) until a run is not killed, because it got past the point's
/// last occurrence, as SQLite's crash tests do. `once` returns whether the
/// child was killed. Returns how many runs were.
pub fn at_every_occurrence(point: &str, mut once: impl FnMut(&str) -> bool) -> usize {
    let mut crashes = 0;
    for nth in 1.. {
        if !once(&format!("{point}:{nth}")) {
            assert!(nth > 1, "{point} is never reached");
            break;
        }
        crashes += 1;
    }
    crashes
}

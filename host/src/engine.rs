//! The import engine: drives jobs from upload to target.
//!
//! A job is spooled, recorded in the journal, expanded if it is an archive,
//! validated (pass 1, [`crate::scan`]) and applied (pass 2,
//! [`crate::apply`]); every step resumes from the journal after a crash.
//! Many jobs may run at once in one process; plugin calls and storage run
//! on blocking threads. A job is run by one process at a time, guarded by a
//! lock file that dies with its process.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;

use crate::faults;
use crate::journal::{
    Counts, JobId, JobRecord, JobState, Journal, JournalError, PartRecord, PassProgress, PluginRef,
    Times, now_ms,
};
use crate::lock;
use crate::progress::Progress;
use crate::registry::{Registry, RegistryError};
use crate::sandbox::{ParseError, Plugin, Sandbox, SandboxConfig, StartError as SandboxStartError};
use crate::scan::{PartCtx, PassError};
use crate::sink::Sink;
use crate::sink::embedded::{EmbeddedStore, StoreError};
use crate::spool::{RealFs, Spool, SpoolError, SpoolFs, Spooled};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest upload accepted, in bytes, enforced while spooling.
    /// Default 64 GiB.
    pub max_upload_bytes: u64,
    /// Items per interval: the unit of group commit, checkpoint and redo
    /// after a crash. Default 10,000: one journal commit (one fsync) per
    /// 10,000 records, and at most that many redone.
    pub interval_items: u64,
    /// Bytes of record data that also close an interval, so intervals of
    /// huge records stay small in memory. Default 32 MiB.
    pub interval_bytes: u64,
    /// Bytes of a bad record's original text kept in the error report.
    /// Default 64 KiB.
    pub max_error_record_bytes: usize,
    /// How failed target writes are retried, before a job's own
    /// `--retry` overrides.
    pub retry: crate::retry::RetryPolicy,
    /// The plugin sandbox.
    pub sandbox: SandboxConfig,
    /// Defences for ZIP uploads.
    pub archive: crate::archive::ArchiveLimits,
    /// Whether pass 1 keeps the records it validated in a scratch file
    /// beside the spooled part, so pass 2 applies them without parsing the
    /// part again. Costs roughly the upload's size again in disk while the
    /// job runs (1.3 times for the benchmark's CSV). Off, pass 2 still uses
    /// a stage an earlier run left. Default on.
    pub stage_records: bool,
    /// Free bytes the record stage leaves on the spool's file system: it
    /// stops (and pass 2 parses the rest) rather than go below. Default
    /// 1 GiB.
    pub stage_reserve_bytes: u64,
    /// Batches of parsed records pass 1 queues between its parse thread
    /// and its validating thread (a batch is up to 256 records or 1 MiB).
    /// When the queue is full the parse thread decodes batches itself
    /// instead of waiting. Default 48: more than an interval's records, so
    /// parsing goes on while an interval commits.
    pub scan_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_upload_bytes: 64 << 30,
            interval_items: 10_000,
            interval_bytes: 32 << 20,
            max_error_record_bytes: 64 << 10,
            retry: crate::retry::RetryPolicy::default(),
            sandbox: SandboxConfig::default(),
            archive: crate::archive::ArchiveLimits::default(),
            stage_records: true,
            stage_reserve_bytes: 1 << 30,
            scan_queue: 48,
        }
    }
}

/// Engine errors. Record-level problems are never errors: they are counted
/// and reported on the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Registry(#[from] Box<RegistryError>),
    #[error(transparent)]
    Sandbox(#[from] SandboxStartError),
    #[error("cannot tell the format of {name:?}: pass --format (available: {available})")]
    UnknownFormat { name: String, available: String },
    #[error("job {0} is being run by another sluice process; watch it with `sluice job {0}`")]
    Busy(JobId),
    #[error("job {job} stopped: {reason}; it resumes with `sluice recover`")]
    Stopped { job: JobId, reason: String },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Retry(#[from] crate::retry::BadRetry),
    #[error("target {target:?}: {detail}")]
    Target { target: String, detail: String },
    #[error("job {job} cannot be undone: {why}")]
    NotUndoable { job: JobId, why: String },
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        EngineError::Registry(Box::new(e))
    }
}

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    /// Where the bytes come from, for reports: a path, or `-` for stdin.
    pub source: String,
    pub tenant: String,
    /// Format or plugin name; else chosen by the source's extension.
    pub format: Option<String>,
    /// Field whose value is each record's key.
    pub key: Option<String>,
    /// Plugin options.
    pub options: Vec<(String, String)>,
    /// Validate only (pass 1).
    pub dry_run: bool,
    /// Start a new job even if an identical import exists.
    pub force_new: bool,
    /// Where records go: `embedded` (default), a PostgreSQL URL, or an
    /// HTTP mapping file.
    pub target: Option<String>,
    /// Retry overrides, `CLASS=ATTEMPTS[/MAX_DELAY]`.
    pub retry: Vec<String>,
}

/// What [`Engine::submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job was created.
    New(JobId),
    /// An identical import already had this job; the upload was discarded.
    Existing(JobId),
}

impl Submitted {
    pub fn job(self) -> JobId {
        match self {
            Submitted::New(id) | Submitted::Existing(id) => id,
        }
    }
}

/// What recovery did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Spool and temporary files removed.
    pub files_removed: usize,
    /// Jobs resumed, with the state each ended in.
    pub resumed: Vec<(JobId, JobState)>,
    /// Jobs that could not be resumed, with why.
    pub not_resumed: Vec<(JobId, String)>,
}

/// Storage of an engine; tests swap in backends that simulate power loss.
pub struct Storage {
    pub journal: Journal,
    pub store: Arc<EmbeddedStore>,
    pub spool_fs: Arc<dyn SpoolFs>,
}

struct Running {
    cancel: Arc<AtomicBool>,
}

struct Inner {
    data_dir: PathBuf,
    config: Arc<EngineConfig>,
    sandbox: Arc<Sandbox>,
    registry: Registry,
    journal: Arc<Journal>,
    store: Arc<EmbeddedStore>,
    /// The target for `embedded` (the store, or a sink given to
    /// [`Engine::with_storage`]).
    sink: Arc<dyn Sink>,
    /// Other targets, opened on first use.
    targets: Mutex<HashMap<String, Arc<dyn Sink>>>,
    spool: Arc<Spool>,
    running: Mutex<HashMap<JobId, Running>>,
    /// Submits hold it shared, recovery exclusively: recovery's sweep must
    /// not meet a spool being written by this process.
    gate: RwLock<()>,
}

/// The engine of one data directory. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

impl Engine {
    /// Open the engine of `data_dir` with the embedded store as target.
    pub fn open(data_dir: &Path, config: EngineConfig) -> Result<Self, EngineError> {
        std::fs::create_dir_all(data_dir).map_err(|source| EngineError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let storage = Storage {
            journal: Journal::open(&data_dir.join("journal.redb"))?,
            store: Arc::new(EmbeddedStore::open(&data_dir.join("store.redb"))?),
            spool_fs: Arc::new(RealFs),
        };
        Self::with_storage(data_dir, config, storage, None)
    }

    /// Open with explicit storage, and optionally another target than the
    /// embedded store.
    pub fn with_storage(
        data_dir: &Path,
        mut config: EngineConfig,
        storage: Storage,
        sink: Option<Arc<dyn Sink>>,
    ) -> Result<Self, EngineError> {
        if config.sandbox.cache_dir.is_none() {
            config.sandbox.cache_dir = Some(data_dir.join("cache"));
        }
        let sandbox = Arc::new(Sandbox::new(config.sandbox.clone())?);
        let store = storage.store;
        let sink = sink.unwrap_or_else(|| Arc::new(store.clone()));
        Ok(Engine {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                config: Arc::new(config),
                registry: Registry::new(data_dir, sandbox.clone()),
                sandbox,
                journal: Arc::new(storage.journal),
                store,
                sink,
                targets: Mutex::new(HashMap::new()),
                spool: Arc::new(Spool::new(data_dir, storage.spool_fs)),
                running: Mutex::new(HashMap::new()),
                gate: RwLock::new(()),
            }),
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    pub(crate) fn journal_arc(&self) -> Arc<Journal> {
        self.inner.journal.clone()
    }

    pub fn store(&self) -> &EmbeddedStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.inner.sandbox
    }

    /// Spool `input` and create its job (or find the job of an identical
    /// import). The job does not run until [`Engine::run`].
    pub async fn submit<R>(&self, req: ImportRequest, input: R) -> Result<Submitted, EngineError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
    {
        let _gate = self.inner.gate.read().await;
        let spool = self.inner.spool.clone();
        let spooled = spool
            .spool_async(input, self.inner.config.max_upload_bytes)
            .await?;
        faults::point("spool.before-journal");
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.create_job(req, spooled))
            .await
            .map_err(|e| EngineError::Stopped {
                job: 0,
                reason: e.to_string(),
            })?
    }

    fn create_job(&self, req: ImportRequest, spooled: Spooled) -> Result<Submitted, EngineError> {
        let inner = &self.inner;
        let discard = |e: EngineError| {
            let _ = inner.spool.remove(&spooled.file);
            e
        };
        crate::registry::check_tenant(&req.tenant).map_err(|e| discard(e.into()))?;
        // Checked as the passes will apply them, so a bad override fails now.
        inner
            .config
            .retry
            .with_overrides(&req.retry)
            .map_err(|e| discard(e.into()))?;
        let (target, sink) = crate::target::resolve(req.target.as_deref()).map_err(|detail| {
            discard(EngineError::Target {
                target: req.target.clone().unwrap_or_default(),
                detail,
            })
        })?;
        if let Some(sink) = sink {
            // This process has the full target (a password in a URL); later
            // passes find the sink under the journal's form.
            lock(&inner.targets).insert(target.clone(), sink);
        }
        let archive = is_zip(&inner.spool, &spooled.file);
        let plugin = if archive {
            None
        } else {
            Some(
                self.choose_plugin(&req.tenant, req.format.as_deref(), &req.source)
                    .map_err(discard)?,
            )
        };
        let fingerprint = fingerprint(
            &req,
            &spooled,
            plugin.as_ref().map(|p| p.digest().hex()),
            &target,
        );
        if !req.force_new
            && let Some(existing) = inner.journal.find_fingerprint(&fingerprint)?
        {
            inner.spool.remove(&spooled.file).ok();
            tracing::info!(
                job = existing,
                "identical import found; not importing twice"
            );
            return Ok(Submitted::Existing(existing));
        }
        let parts = match &plugin {
            Some(p) => vec![part_record(
                0,
                &req.source,
                spooled.clone(),
                p,
                &req.options,
            )],
            None => Vec::new(),
        };
        let record = JobRecord {
            id: 0,
            tenant: req.tenant.clone(),
            state: JobState::Spooled,
            source: req.source.clone(),
            format: req.format.clone(),
            key_field: req.key.clone(),
            options: req.options.clone(),
            dry_run: req.dry_run,
            upload: spooled,
            archive,
            parts: 0,
            totals_exact: false,
            counts: Counts::default(),
            errors_by_code: Default::default(),
            times: Times {
                created: now_ms(),
                ..Times::default()
            },
            error: None,
            fingerprint,
            plugins: plugin
                .iter()
                .map(|p| format!("{} {}", p.info().name, p.info().version))
                .collect(),
            cancel_requested: false,
            target,
            retry: req.retry.clone(),
            undo_counts: Default::default(),
            undone_from: None,
            leftovers: Vec::new(),
        };
        let id = inner.journal.create_job(record, &parts)?;
        faults::point("journal.after-create");
        tracing::info!(job = id, source = %req.source, "job created");
        Ok(Submitted::New(id))
    }

    /// The plugin for `name` (a path or an archive entry): the requested
    /// format, else by extension.
    fn choose_plugin(
        &self,
        tenant: &str,
        format: Option<&str>,
        name: &str,
    ) -> Result<Arc<Plugin>, EngineError> {
        let tenant = Some(tenant);
        if let Some(format) = format {
            return Ok(self.inner.registry.resolve(tenant, format)?.1);
        }
        let ext = Path::new(name).extension().and_then(|e| e.to_str());
        match ext {
            Some(ext) => match self.inner.registry.resolve_extension(tenant, ext) {
                Ok((_, p)) => Ok(p),
                Err(RegistryError::NotFound { .. }) => Err(self.unknown_format(name)),
                Err(e) => Err(e.into()),
            },
            None => Err(self.unknown_format(name)),
        }
    }

    fn unknown_format(&self, name: &str) -> EngineError {
        let available = self
            .inner
            .registry
            .list(None)
            .map(|l| {
                let mut f: Vec<String> = l.into_iter().flat_map(|e| e.info.formats).collect();
                f.sort();
                f.dedup();
                f.join(", ")
            })
            .unwrap_or_default();
        EngineError::UnknownFormat {
            name: name.to_owned(),
            available,
        }
    }

    /// Where job `id` stands, from the journal: true in any process, also
    /// while another one runs the job, and after a restart.
    pub fn progress(&self, id: JobId) -> Result<Progress, EngineError> {
        Ok(Progress::of(&self.inner.journal.job(id)?))
    }

    /// Ask a job to stop at its next safe point and end as cancelled. Works
    /// across processes: the request is journaled and the running process
    /// sees it at its next commit. A job nobody runs is cancelled at once.
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, EngineError> {
        let journal = self.inner.journal.clone();
        let job = blocking(move || {
            journal.write(|tx| {
                let mut job = tx.job(id)?;
                if !job.state.is_terminal() {
                    job.cancel_requested = true;
                    tx.put_job(&job)?;
                }
                Ok(job)
            })
        })
        .await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        if let Some(r) = lock(&self.inner.running).get(&id) {
            r.cancel.store(true, Ordering::Relaxed);
            return Ok(job);
        }
        // Another process may be running it: it sees the request at its next
        // commit.
        // Not running here: run it, which ends it as cancelled right away
        // (or tells us another process has it).
        match self.run(id).await {
            Ok(job) => Ok(job),
            Err(EngineError::Busy(_)) => Ok(self.inner.journal.job(id)?),
            Err(e) => Err(e),
        }
    }

    /// Stop a job running in this process at its next safe point, leaving it
    /// resumable (what Ctrl-C does): unlike [`Engine::cancel`], nothing is
    /// journaled and `sluice recover` picks it up again.
    pub fn stop(&self, id: JobId) -> bool {
        match lock(&self.inner.running).get(&id) {
            Some(r) => {
                r.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Run a job to its end, resuming from wherever the journal says it is.
    pub async fn run(&self, id: JobId) -> Result<JobRecord, EngineError> {
        let _lock = self.lock_job(id).await?;
        let job = self.inner.journal.job(id)?;
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.inner.running).insert(
            id,
            Running {
                cancel: cancel.clone(),
            },
        );
        let span = tracing::info_span!("job", job = id, tenant = %job.tenant);
        let result = tracing::Instrument::instrument(self.drive(id, cancel), span).await;
        lock(&self.inner.running).remove(&id);
        result
    }

    /// Take the job's lock file; it is released when the process ends, so
    /// a crashed run never blocks recovery.
    async fn lock_job(&self, id: JobId) -> Result<File, EngineError> {
        let dir = self.inner.data_dir.join("locks");
        let io = |source| EngineError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{id}.lock")))
            .map_err(io)?;
        // A lock just released can stay held for a moment by a process
        // that forked meanwhile (until it execs), so look a few times
        // before calling the job busy.
        for _ in 0..20 {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        Err(EngineError::Busy(id))
    }

    async fn drive(&self, id: JobId, cancel: Arc<AtomicBool>) -> Result<JobRecord, EngineError> {
        loop {
            let job = self.inner.journal.job(id)?;
            if job.state.is_terminal() {
                self.cleanup(&job).await;
                return Ok(job);
            }
            // An undo is never cancelled half-way: it can only be stopped
            // and resumed.
            if job.cancel_requested && job.state != JobState::Undoing {
                self.finish(id, JobState::Cancelled, Some("cancelled by a user".into()))
                    .await?;
                continue;
            }
            let step = match job.state {
                JobState::Spooled => self.start_scan(&job).await,
                JobState::Scanning => self.scan(&job, &cancel).await,
                JobState::Scanned => self.start_apply(&job).await,
                JobState::Applying => self.apply(&job, &cancel).await,
                JobState::Undoing => self.undo_pages(&job, &cancel).await,
                _ => unreachable!("terminal states return above"),
            };
            match step {
                Ok(()) => {}
                Err(PassError::Stopped | PassError::Parse(ParseError::Cancelled)) => {
                    if self.inner.journal.job(id)?.cancel_requested {
                        self.finish(id, JobState::Cancelled, Some("cancelled by a user".into()))
                            .await?;
                        continue;
                    }
                    return Err(EngineError::Stopped {
                        job: id,
                        reason: "interrupted".into(),
                    });
                }
                Err(PassError::Parse(ParseError::Fault(f))) => {
                    self.finish(id, JobState::Failed, Some(f.to_string()))
                        .await?;
                }
                Err(PassError::Parse(ParseError::Config(c))) => {
                    let msg = format!("{c}; fix the --option values and import again");
                    self.finish(id, JobState::Failed, Some(msg)).await?;
                }
                Err(PassError::Inconsistent(msg) | PassError::Rejected(msg)) => {
                    self.finish(id, JobState::Failed, Some(msg)).await?;
                }
                Err(PassError::Journal(e)) => return Err(e.into()),
                Err(e) => {
                    // Local I/O (spool, target storage): the outcome of the
                    // last step is unknown, so stop and let recovery decide.
                    return Err(EngineError::Stopped {
                        job: id,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    async fn write_job(
        &self,
        id: JobId,
        f: impl FnOnce(&mut JobRecord) + Send + 'static,
    ) -> Result<(), PassError> {
        let journal = self.inner.journal.clone();
        blocking(move || {
            journal.write(|tx| {
                let mut job = tx.job(id)?;
                f(&mut job);
                tx.put_job(&job)
            })
        })
        .await?;
        Ok(())
    }

    async fn start_scan(&self, job: &JobRecord) -> Result<(), PassError> {
        if job.archive {
            return self.expand(job).await;
        }
        self.write_job(job.id, |j| {
            j.state = JobState::Scanning;
            j.times.scan_started.get_or_insert(now_ms());
        })
        .await
    }

    /// Expand a ZIP upload into spooled parts, choose each part's plugin,
    /// and journal the parts with the move to scanning in one commit. A
    /// crash before that commit leaves part files no job references: the
    /// sweep removes them and the expansion runs again.
    async fn expand(&self, job: &JobRecord) -> Result<(), PassError> {
        let this = self.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || this.expand_blocking(&job))
            .await
            .map_err(|e| PassError::Inconsistent(format!("expansion task failed: {e}")))?
    }

    fn expand_blocking(&self, job: &JobRecord) -> Result<(), PassError> {
        let inner = &self.inner;
        let upload = inner
            .spool
            .open(&job.upload.file)
            .map_err(|source| PassError::Spool {
                file: job.upload.file.clone(),
                source,
            })?;
        let mut sink = SpoolParts {
            spool: &inner.spool,
            done: Vec::new(),
        };
        let expanded = crate::archive::expand(upload, &inner.config.archive, &mut sink);
        let discard = |parts: &[(crate::archive::EntryMeta, Spooled)]| {
            for (_, s) in parts {
                let _ = inner.spool.remove(&s.file);
            }
        };
        if let Err(e) = expanded {
            discard(&sink.done);
            return Err(PassError::Rejected(e.to_string()));
        }
        let mut parts = Vec::with_capacity(sink.done.len());
        let mut plugins = Vec::new();
        for (i, (entry, spooled)) in sink.done.iter().enumerate() {
            let plugin = match self.choose_plugin(&job.tenant, job.format.as_deref(), &entry.name) {
                Ok(p) => p,
                Err(e) => {
                    discard(&sink.done);
                    return Err(PassError::Rejected(format!(
                        "archive entry {:?}: {e}",
                        entry.name
                    )));
                }
            };
            let label = format!("{} {}", plugin.info().name, plugin.info().version);
            if !plugins.contains(&label) {
                plugins.push(label);
            }
            let options = options_for(&job.options, &plugin);
            parts.push(part_record(
                i as u32,
                &entry.name,
                spooled.clone(),
                &plugin,
                &options,
            ));
        }
        let id = job.id;
        inner.journal.write(|tx| {
            tx.replace_parts(id, &parts)?;
            let mut j = tx.job(id)?;
            j.parts = parts.len() as u32;
            j.plugins = plugins;
            j.state = JobState::Scanning;
            j.times.scan_started.get_or_insert(now_ms());
            tx.put_job(&j)
        })?;
        Ok(())
    }

    fn part_ctx(
        &self,
        job: &JobRecord,
        part: PartRecord,
        cancel: &Arc<AtomicBool>,
    ) -> Result<PartCtx, PassError> {
        let plugin = self.pinned_plugin(&part)?;
        Ok(PartCtx {
            job: job.id,
            tenant: job.tenant.clone(),
            key_field: job.key_field.clone(),
            upload_digest: job.upload.digest.clone(),
            part,
            plugin,
            sandbox: self.inner.sandbox.clone(),
            spool: self.inner.spool.clone(),
            journal: self.inner.journal.clone(),
            config: self.inner.config.clone(),
            cancel: cancel.clone(),
            retry: self.retry_policy(job)?,
            ledger: self.ledger(),
            stage: self.inner.config.stage_records && !job.dry_run,
        })
    }

    /// The target a job writes to.
    pub(crate) fn sink_for(&self, target: &str) -> Result<Arc<dyn Sink>, PassError> {
        if target == crate::target::EMBEDDED {
            return Ok(self.inner.sink.clone());
        }
        if let Some(s) = lock(&self.inner.targets).get(target) {
            return Ok(s.clone());
        }
        let sink = crate::target::open(target).map_err(PassError::Rejected)?;
        lock(&self.inner.targets).insert(target.to_owned(), sink.clone());
        Ok(sink)
    }

    /// The journal's ledger, for multi-step targets.
    pub(crate) fn ledger(&self) -> Arc<dyn crate::sink::Ledger> {
        Arc::new(crate::journal::JournalLedger(self.inner.journal.clone()))
    }

    /// A job's retry policy: the engine's default with the job's overrides.
    pub(crate) fn retry_policy(
        &self,
        job: &JobRecord,
    ) -> Result<crate::retry::RetryPolicy, PassError> {
        self.inner
            .config
            .retry
            .with_overrides(&job.retry)
            .map_err(|e| PassError::Rejected(e.to_string()))
    }

    /// The exact plugin bytes a part was validated with.
    fn pinned_plugin(&self, part: &PartRecord) -> Result<Arc<Plugin>, PassError> {
        match self.inner.registry.by_digest(&part.plugin.digest) {
            Ok((_, p)) => Ok(p),
            Err(RegistryError::NotFound { .. }) => Err(PassError::Inconsistent(format!(
                "part {:?} was started with plugin {} {} (sha256 {}), which is no longer \
                 installed; reinstall that exact plugin with `sluice plugin add` to resume, or \
                 import again with --new",
                part.name, part.plugin.name, part.plugin.version, part.plugin.digest
            ))),
            Err(e) => Err(PassError::Inconsistent(e.to_string())),
        }
    }

    async fn scan(&self, job: &JobRecord, cancel: &Arc<AtomicBool>) -> Result<(), PassError> {
        let mut keys = {
            let journal = self.inner.journal.clone();
            let id = job.id;
            tokio::task::spawn_blocking(move || crate::scan::KeySet::load(&journal, id))
                .await
                .map_err(|e| PassError::Inconsistent(format!("key set task failed: {e}")))??
        };
        for part in self.inner.journal.parts(job.id)? {
            if part.scan.done {
                continue;
            }
            let ctx = self.part_ctx(job, part, cancel)?;
            keys = tokio::task::spawn_blocking(move || {
                crate::scan::scan_part(&ctx, &mut keys).map(|()| keys)
            })
            .await
            .map_err(|e| PassError::Inconsistent(format!("scan task failed: {e}")))??;
        }
        let (id, dry_run) = (job.id, job.dry_run);
        let journal = self.inner.journal.clone();
        blocking(move || {
            journal.write(|tx| {
                let mut j = tx.job(id)?;
                j.totals_exact = true;
                j.counts.scanned_bytes = j.upload.size;
                j.times.scan_finished = Some(now_ms());
                j.state = JobState::Scanned;
                if dry_run {
                    // A dry run ends here; its scratch goes in the same
                    // commit, since recovery skips ended jobs.
                    j.state = JobState::Validated;
                    j.times.finished = Some(now_ms());
                    tx.drop_scratch(id)?;
                }
                tx.put_job(&j)
            })
        })
        .await?;
        Ok(())
    }

    async fn start_apply(&self, job: &JobRecord) -> Result<(), PassError> {
        self.write_job(job.id, |j| {
            j.state = JobState::Applying;
            j.times.apply_started.get_or_insert(now_ms());
        })
        .await
    }

    async fn apply(&self, job: &JobRecord, cancel: &Arc<AtomicBool>) -> Result<(), PassError> {
        let sink = self.sink_for(&job.target)?;
        let retry = self.retry_policy(job)?;
        // Finish or compensate what a crash left part-way on a multi-step
        // target; what stays stuck is listed on the job (never silent).
        let reconcile = || async {
            let reconciled = retry
                .run("reconciling", || sink.reconcile(job.id, self.ledger()))
                .await?;
            if !reconciled.leftovers.is_empty() {
                let leftovers = reconciled.leftovers;
                self.write_job(job.id, move |j| j.leftovers.extend(leftovers))
                    .await?;
            }
            Ok::<_, PassError>(())
        };
        // Before anything else is applied ...
        reconcile().await?;
        for part in self.inner.journal.parts(job.id)? {
            if part.apply.done {
                continue;
            }
            let ctx = self.part_ctx(job, part, cancel)?;
            crate::apply::apply_part(ctx, sink.clone()).await?;
        }
        // ... and once more for compensations that failed during the pass.
        reconcile().await?;
        faults::point("job.before-complete");
        self.finish(job.id, JobState::Completed, None)
            .await
            .map_err(|e| PassError::Inconsistent(e.to_string()))
    }

    /// End a job: terminal state, working state dropped, spool removed. A job
    /// failing or cancelled while applying first has its unjournaled effects
    /// compensated, so nothing orphaned remains on the target.
    async fn finish(
        &self,
        id: JobId,
        state: JobState,
        error: Option<String>,
    ) -> Result<(), EngineError> {
        let before = self.inner.journal.job(id)?;
        let mut leftovers = Vec::new();
        if before.state == JobState::Applying
            && matches!(state, JobState::Failed | JobState::Cancelled)
        {
            leftovers = crate::compensate::compensate_unjournaled(self, &before).await?;
        }
        let journal = self.inner.journal.clone();
        let job = blocking(move || {
            journal.write(|tx| {
                let mut job = tx.job(id)?;
                job.state = state;
                job.error = error;
                job.leftovers.extend(leftovers);
                job.times.finished = Some(now_ms());
                tx.put_job(&job)?;
                tx.drop_scratch(id)?;
                Ok(job)
            })
        })
        .await?;
        tracing::info!(job = id, state = %state, "job finished");
        self.cleanup(&job).await;
        Ok(())
    }

    /// Remove an ended job's spool files (recovery's sweep catches any a
    /// crash left behind).
    async fn cleanup(&self, job: &JobRecord) {
        faults::point("job.before-spool-cleanup");
        let mut files = vec![job.upload.file.clone()];
        if let Ok(parts) = self.inner.journal.parts(job.id) {
            files.extend(parts.into_iter().map(|p| p.spool.file));
        }
        let spool = self.inner.spool.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for f in files {
                if let Err(e) = spool.remove(&f) {
                    tracing::warn!(file = %f, "cannot remove spool file (recovery will retry): {e}");
                }
            }
        })
        .await;
    }

    /// Resume every unfinished job and remove spool debris: what a process
    /// does before anything else after a crash.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let _gate = self.inner.gate.write().await;
        faults::point("recover.start");
        let mut report = RecoveryReport::default();
        let jobs = self.inner.journal.jobs()?;
        let mut keep: HashSet<String> = HashSet::new();
        for job in jobs.iter().filter(|j| !j.state.is_terminal()) {
            keep.insert(job.upload.file.clone());
            for part in self.inner.journal.parts(job.id)? {
                keep.insert(part.spool.file);
            }
        }
        let me = std::process::id();
        let spool = self.inner.spool.clone();
        report.files_removed = tokio::task::spawn_blocking(move || {
            spool.sweep(|name| {
                keep.contains(name)
                    || crate::spool::creator_pid(name)
                        .is_some_and(|pid| pid != me && process_alive(pid))
            })
        })
        .await
        .map_err(|e| EngineError::Stopped {
            job: 0,
            reason: e.to_string(),
        })?
        .map_err(|source| EngineError::DataDir {
            path: "spool".into(),
            source,
        })?;
        faults::point("recover.after-sweep");
        drop(_gate);
        for job in jobs.into_iter().filter(|j| !j.state.is_terminal()) {
            match self.run(job.id).await {
                Ok(done) => report.resumed.push((job.id, done.state)),
                Err(e @ (EngineError::Busy(_) | EngineError::Stopped { .. })) => {
                    report.not_resumed.push((job.id, e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}

/// Whether a process with this id exists.
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Run blocking journal work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, JournalError> + Send + 'static,
) -> Result<R, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(JournalError::Storage(format!("journal task failed: {e}"))))
}

/// Whether a spooled file is a ZIP archive, by its first bytes.
fn is_zip(spool: &Spool, file: &str) -> bool {
    spool
        .read_at(file, 0, 4)
        .is_ok_and(|b| crate::archive::is_zip(&b))
}

/// Identity of an import: same tenant, bytes, plugin, key and options mean
/// the same job.
fn fingerprint(
    req: &ImportRequest,
    spooled: &Spooled,
    plugin: Option<String>,
    target: &str,
) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put(&req.tenant);
    put(&spooled.digest);
    put(req.format.as_deref().unwrap_or(""));
    put(plugin.as_deref().unwrap_or("archive"));
    put(req.key.as_deref().unwrap_or(""));
    for (k, v) in &req.options {
        put(k);
        put(v);
    }
    put(if req.dry_run { "dry-run" } else { "import" });
    put(target);
    hex::encode(h.finalize())
}

/// The options for one plugin: unprefixed options go to every plugin, and
/// `FORMAT.NAME=VALUE` only to the plugin named (or handling) FORMAT, so one
/// import of a mixed archive can configure each format.
fn options_for(options: &[(String, String)], plugin: &Plugin) -> Vec<(String, String)> {
    let info = plugin.info();
    options
        .iter()
        .filter_map(|(k, v)| match k.split_once('.') {
            Some((scope, name))
                if info.name == scope || info.formats.iter().any(|f| f == scope) =>
            {
                Some((name.to_owned(), v.clone()))
            }
            Some(_) => None,
            None => Some((k.clone(), v.clone())),
        })
        .collect()
}

/// Writes each archive entry to its own spool file.
struct SpoolParts<'a> {
    spool: &'a Spool,
    done: Vec<(crate::archive::EntryMeta, Spooled)>,
}

/// A spool writer as `io::Write`, for the archive module.
struct PartFile(crate::spool::SpoolWriter);

impl std::io::Write for PartFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(std::io::Error::other)?;
        if self.0.size() == buf.len() as u64 {
            faults::point("zip.mid-entry");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::archive::PartSink for SpoolParts<'_> {
    type Part = PartFile;

    fn begin(&mut self, _entry: &crate::archive::EntryMeta) -> std::io::Result<PartFile> {
        self.spool
            .writer("part")
            .map(PartFile)
            .map_err(std::io::Error::other)
    }

    fn commit(
        &mut self,
        entry: &crate::archive::EntryMeta,
        part: PartFile,
        _bytes: u64,
    ) -> std::io::Result<()> {
        let spooled = part.0.finish().map_err(std::io::Error::other)?;
        self.done.push((entry.clone(), spooled));
        faults::point("zip.after-entry");
        Ok(())
    }

    fn abort(&mut self, _entry: &crate::archive::EntryMeta, part: PartFile) {
        part.0.abandon();
    }
}

/// The kind records get when their plugin names none: the file's stem.
fn default_kind(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && *s != "-")
        .unwrap_or("records")
        .to_owned()
}

fn part_record(
    index: u32,
    name: &str,
    spool: Spooled,
    plugin: &Plugin,
    options: &[(String, String)],
) -> PartRecord {
    let info = plugin.info();
    PartRecord {
        index,
        name: name.to_owned(),
        spool,
        plugin: PluginRef {
            name: info.name.clone(),
            version: info.version.clone(),
            digest: plugin.digest().hex(),
            resumable: info.resumable,
        },
        options: options.to_vec(),
        default_kind: default_kind(name),
        scan: PassProgress::default(),
        apply: PassProgress::default(),
        counts: Counts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kinds_come_from_file_stems() {
        assert_eq!(default_kind("data/customers.csv"), "customers");
        assert_eq!(default_kind("-"), "records");
        assert_eq!(default_kind("archive.zip/orders.xml"), "orders");
    }
}

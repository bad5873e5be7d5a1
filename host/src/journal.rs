//! The journal: the durable truth about every job, in redb.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64`: `schema` (1), `next_job` |
//! | `jobs` | job id | JSON [`JobRecord`]: state, counters, timings |
//! | `fingerprints` | `&str` fingerprint | job id: finds the job of an identical import |
//! | `parts` | (job, part) | JSON [`PartRecord`]: spooled file, pinned plugin, pass progress |
//! | `intervals` | (job, part, seq) | JSON [`Interval`]: ordinals, digest and resume checkpoint of one group of items |
//! | `errors` | (job, part, ordinal) | JSON [`ErrorEntry`]: one rejected or failed record |
//! | `key_runs` | (job, part, interval) | the interval's record keys: sorted (hash, ordinal, line) entries |
//! | `effects` | (job, part, ordinal, step) | JSON [`StepRecord`]: the ledger of multi-step targets |
//! | `undo` | (job, seq) | JSON [`UndoEntry`]: what undo did to each record |
//!
//! # Commit protocol
//!
//! Every change is one write transaction with two-phase commit (redb's
//! recommendation when an attacker controls part of the content, as uploads
//! do here) and immediate durability. A job is created only after its spool
//! is durable. Pass 1 commits once per interval: the interval (with its
//! digest and checkpoint), its errors, its key run and the counters,
//! together. Duplicate keys are found in memory against the runs committed
//! so far (see `scan::KeySet`), which are reread after a crash.
//! Pass 2 commits once per interval after the target confirmed the writes:
//! the applied watermark, apply-stage errors and counters. So a crash redoes
//! at most one interval, and the target's idempotent apply makes the redo
//! harmless.
//!
//! A failed commit (including its fsync) leaves the outcome unknown: the
//! journal refuses further writes in this process, and recovery in a new
//! process decides from what is durable. A failed fsync is never retried.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    ConcurrencyMode, Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sandbox::Checkpoint;
use crate::sink::{Ledger, SinkError, StepRecord, UndoEntry};
use crate::spool::Spooled;

/// A job's identifier.
pub type JobId = u64;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const FINGERPRINTS: TableDefinition<&str, u64> = TableDefinition::new("fingerprints");
const PARTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("parts");
const INTERVALS: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("intervals");
const ERRORS: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("errors");
const KEY_RUNS: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("key_runs");
const EFFECTS: TableDefinition<(u64, u32, u64, u32), &[u8]> = TableDefinition::new("effects");
const UNDO: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("undo");

const SCHEMA: u64 = 1;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// The upload is durable locally; nothing parsed yet.
    Spooled,
    /// Pass 1 is validating.
    Scanning,
    /// Pass 1 is done: totals and errors are exact.
    Scanned,
    /// Pass 2 is writing to the target.
    Applying,
    /// Every valid record was applied (some may have been rejected or failed).
    Completed,
    /// A dry run finished: pass 1 only, nothing applied.
    Validated,
    /// The job could not go on (see its error).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// `sluice undo` is reversing what the job did.
    Undoing,
    /// Everything the job did was reversed (or kept, where changed since).
    Undone,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Validated
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Undone
        )
    }

    /// Stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Spooled => "spooled",
            JobState::Scanning => "scanning",
            JobState::Scanned => "scanned",
            JobState::Applying => "applying",
            JobState::Completed => "completed",
            JobState::Validated => "validated",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Undoing => "undoing",
            JobState::Undone => "undone",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Record counters of a job or a part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Items (records and record errors) pass 1 has seen.
    pub scanned: u64,
    /// Items rejected in pass 1 (parse or validate stage).
    pub rejected: u64,
    /// Items pass 2 has gone past (applied, failed or skipped as rejected).
    pub processed: u64,
    /// Records written to the target.
    pub applied: u64,
    /// Records the target refused.
    pub failed: u64,
    /// Input bytes pass 1 has gone through.
    pub scanned_bytes: u64,
}

impl Counts {
    /// Add `d` to these counters.
    pub fn add(&mut self, d: &Counts) {
        self.scanned += d.scanned;
        self.rejected += d.rejected;
        self.processed += d.processed;
        self.applied += d.applied;
        self.failed += d.failed;
        self.scanned_bytes += d.scanned_bytes;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When a job reached each phase (ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Times {
    pub created: u64,
    pub scan_started: Option<u64>,
    pub scan_finished: Option<u64>,
    pub apply_started: Option<u64>,
    pub finished: Option<u64>,
}

/// A plugin pinned to a part: resuming runs exactly these bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub resumable: bool,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: String,
    pub state: JobState,
    /// What the user imported (a path, or `-` for stdin).
    pub source: String,
    /// The requested format, if one was named.
    pub format: Option<String>,
    /// The field naming each record's key, if one was named.
    pub key_field: Option<String>,
    pub options: Vec<(String, String)>,
    pub dry_run: bool,
    /// The spooled upload (removed once the job is over).
    pub upload: Spooled,
    pub archive: bool,
    pub parts: u32,
    /// Whether totals are exact (pass 1 finished).
    pub totals_exact: bool,
    pub counts: Counts,
    /// Rejected and failed records by `stage:code`.
    pub errors_by_code: BTreeMap<String, u64>,
    pub times: Times,
    /// Why the job failed or was cancelled.
    pub error: Option<String>,
    /// Identifies identical imports.
    pub fingerprint: String,
    /// Plugins used, `name version` per distinct plugin.
    pub plugins: Vec<String>,
    /// A user asked to cancel; the process running the job stops at its
    /// next safe point.
    pub cancel_requested: bool,
    /// Where records go: `embedded`, a PostgreSQL URL (without password),
    /// or an HTTP mapping file.
    #[serde(default = "embedded")]
    pub target: String,
    /// Retry overrides given at import (`CLASS=ATTEMPTS[/MAX_DELAY]`).
    #[serde(default)]
    pub retry: Vec<String>,
    /// What `sluice undo` did, by action.
    #[serde(default)]
    pub undo_counts: BTreeMap<String, u64>,
    /// The state the job was in when undo started.
    #[serde(default)]
    pub undone_from: Option<JobState>,
    /// Resources a failure, cancel or crash could not clean up, and why.
    #[serde(default)]
    pub leftovers: Vec<String>,
}

impl JobRecord {
    /// Items in the upload, once pass 1 has counted them all.
    pub fn total(&self) -> Option<u64> {
        self.totals_exact.then_some(self.counts.scanned)
    }

    /// What `sluice undo` did, as `2 removed, 1 restored`.
    pub fn undo_summary(&self) -> String {
        let counts: Vec<String> = self
            .undo_counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        counts.join(", ")
    }
}

fn embedded() -> String {
    "embedded".into()
}

/// How far a pass got through a part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassProgress {
    /// Intervals committed.
    pub intervals: u64,
    /// Ordinal of the last item committed.
    pub ordinal: u64,
    /// End offset of that item.
    pub offset: u64,
    pub done: bool,
}

/// One part of a job: the whole upload, or one entry of a ZIP upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub index: u32,
    /// The upload's name, or the archive entry's name.
    pub name: String,
    pub spool: Spooled,
    pub plugin: PluginRef,
    pub options: Vec<(String, String)>,
    /// Kind given to records whose plugin names none.
    pub default_kind: String,
    pub scan: PassProgress,
    pub apply: PassProgress,
    pub counts: Counts,
}

/// A group of consecutive items, committed together in both passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// Ordinals `first..=last`.
    pub first: u64,
    pub last: u64,
    pub end_offset: u64,
    /// XXH3-128 over the items as pass 1 saw them, hex: a check against a
    /// nondeterministic plugin, not against an attacker (the plugin's
    /// output is the input either way). Pass 2 must see the same.
    pub digest: String,
    /// Where a parse can resume right after `last`.
    pub resume: Option<Checkpoint>,
}

/// At which stage a record was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The plugin could not parse it.
    Parse,
    /// The host refused it (key missing, duplicate key ...).
    Validate,
    /// The target refused it.
    Apply,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Validate => "validate",
            Stage::Apply => "apply",
        }
    }
}

/// One rejected or failed record, with enough to fix and re-import it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub stage: Stage,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub line: u64,
    pub offset: u64,
    pub length: u64,
    /// Failure class (transient, conflict, permanent ...), for apply errors.
    pub class: Option<String>,
    /// Attempts made, for apply errors.
    pub attempts: u32,
    /// The record's original bytes as text (invalid UTF-8 replaced).
    pub record: String,
    /// Whether `record` was cut short.
    pub truncated: bool,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("cannot open the journal {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("journal read or write failed: {0}; run `sluice recover`")]
    Storage(String),
    /// A commit failed: whether it landed is unknown until recovery reads
    /// what is durable.
    #[error("journal commit failed ({0}); its outcome is unknown: stop and run `sluice recover`")]
    OutcomeUnknown(String),
    #[error("the journal refuses writes after a failed commit; restart sluice so recovery can run")]
    Poisoned,
    #[error("job {0} does not exist; list jobs with `sluice jobs`")]
    NoSuchJob(JobId),
    #[error("journal entry {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("journal values serialize")
}

fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        what: what(),
        detail: e.to_string(),
    })
}

/// Open a redb file shared by several processes, creating it atomically:
/// a new database is built under a temporary name and renamed into place
/// once durable, so a crash during creation never leaves a file that is not
/// a database (which no later open could repair).
pub(crate) fn open_database(path: &Path) -> Result<Database, String> {
    let builder = || {
        let mut b = redb::Builder::new();
        b.set_cache_size(CACHE_BYTES)
            .set_concurrency_mode(ConcurrencyMode::MultiWriter);
        b
    };
    if !path.exists() {
        // Several processes may start on a new data directory at once: one
        // creates, the others wait for it.
        let dir = path.parent().unwrap_or(Path::new("."));
        let locks = dir.join("locks");
        std::fs::create_dir_all(&locks).map_err(|e| e.to_string())?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("db");
        let lock = std::fs::File::create(locks.join(format!("{name}.create.lock")))
            .map_err(|e| e.to_string())?;
        lock.lock().map_err(|e| e.to_string())?;
        if !path.exists() {
            let tmp = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&tmp);
            drop(builder().create(&tmp).map_err(|e| e.to_string())?);
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&tmp, path))
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| e.to_string())?;
        }
    }
    builder().create(path).map_err(|e| e.to_string())
}

/// The journal of one data directory.
pub struct Journal {
    db: Database,
    poisoned: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

/// Bytes of redb page cache per database. Small: the journal's working set
/// is a few pages per commit, and RSS must stay flat for huge imports.
pub(crate) const CACHE_BYTES: usize = 16 << 20;

impl Journal {
    /// Open (or create) the journal file. Several sluice processes may have
    /// it open at once.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let db = open_database(path).map_err(|detail| JournalError::Open {
            path: path.display().to_string(),
            detail,
        })?;
        Self::init(db)
    }

    /// Open a journal on another storage backend (power-loss tests).
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Self, JournalError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| JournalError::Open {
                path: "(backend)".into(),
                detail: e.to_string(),
            })?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, JournalError> {
        let journal = Journal {
            db,
            poisoned: AtomicBool::new(false),
        };
        // Opening an initialised journal writes nothing.
        let current = journal.read_txn().and_then(|r| match r.open_table(META) {
            Ok(t) => Ok(t.get("schema").map_err(storage)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage(e)),
        })?;
        if current == Some(SCHEMA) {
            return Ok(journal);
        }
        journal.write(|tx| {
            let mut meta = tx.txn.open_table(META).map_err(storage)?;
            let schema = meta.get("schema").map_err(storage)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA).map_err(storage)?;
                }
                Some(SCHEMA) => {}
                Some(other) => {
                    return Err(JournalError::Corrupt {
                        what: "schema".into(),
                        detail: format!("version {other}, this sluice reads version {SCHEMA}; use a matching sluice"),
                    });
                }
            }
            drop(meta);
            // Create every table so readers never meet a missing one.
            tx.txn.open_table(JOBS).map_err(storage)?;
            tx.txn.open_table(FINGERPRINTS).map_err(storage)?;
            tx.txn.open_table(PARTS).map_err(storage)?;
            tx.txn.open_table(INTERVALS).map_err(storage)?;
            tx.txn.open_table(ERRORS).map_err(storage)?;
            tx.txn.open_table(KEY_RUNS).map_err(storage)?;
            tx.txn.open_table(EFFECTS).map_err(storage)?;
            tx.txn.open_table(UNDO).map_err(storage)?;
            Ok(())
        })?;
        Ok(journal)
    }

    /// Run `f` in one write transaction and commit it durably.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(JournalError::Poisoned);
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_two_phase_commit(true);
        let r = f(&mut Tx { txn: &txn })?;
        if let Err(e) = txn.commit() {
            self.poisoned.store(true, Ordering::SeqCst);
            return Err(JournalError::OutcomeUnknown(e.to_string()));
        }
        Ok(r)
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, JournalError> {
        self.db.begin_read().map_err(storage)
    }

    /// Create a job and its parts; returns its id.
    pub fn create_job(
        &self,
        mut job: JobRecord,
        parts: &[PartRecord],
    ) -> Result<JobId, JournalError> {
        self.write(|tx| {
            let mut meta = tx.txn.open_table(META).map_err(storage)?;
            let id = meta
                .get("next_job")
                .map_err(storage)?
                .map_or(1, |v| v.value());
            meta.insert("next_job", id + 1).map_err(storage)?;
            drop(meta);
            job.id = id;
            job.parts = parts.len() as u32;
            tx.put_job(&job)?;
            tx.txn
                .open_table(FINGERPRINTS)
                .map_err(storage)?
                .insert(job.fingerprint.as_str(), id)
                .map_err(storage)?;
            for p in parts {
                tx.put_part(id, p)?;
            }
            Ok(id)
        })
    }

    /// The job of an identical import, if there is one.
    pub fn find_fingerprint(&self, fingerprint: &str) -> Result<Option<JobId>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(FINGERPRINTS).map_err(storage)?;
        Ok(t.get(fingerprint).map_err(storage)?.map(|v| v.value()))
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Result<JobRecord, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(JOBS).map_err(storage)?;
        let v = t
            .get(id)
            .map_err(storage)?
            .ok_or(JournalError::NoSuchJob(id))?;
        decode(|| format!("job {id}"), v.value())
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(JOBS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let id = k.value();
            out.push(decode(|| format!("job {id}"), v.value())?);
        }
        Ok(out)
    }

    /// A job's parts, in order.
    pub fn parts(&self, id: JobId) -> Result<Vec<PartRecord>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(PARTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.range((id, 0)..=(id, u32::MAX)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (_, p) = k.value();
            out.push(decode(|| format!("job {id} part {p}"), v.value())?);
        }
        Ok(out)
    }

    /// A part's intervals, in order.
    pub fn intervals(&self, id: JobId, part: u32) -> Result<Vec<Interval>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(INTERVALS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t
            .range((id, part, 0)..=(id, part, u64::MAX))
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let (_, _, seq) = k.value();
            out.push(decode(
                || format!("job {id} part {part} interval {seq}"),
                v.value(),
            )?);
        }
        Ok(out)
    }

    /// Ordinals of a part's errors within `first..=last`, of every stage.
    pub fn error_ordinals(
        &self,
        id: JobId,
        part: u32,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(ERRORS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t
            .range((id, part, first)..=(id, part, last))
            .map_err(storage)?
        {
            let (k, _) = entry.map_err(storage)?;
            out.push(k.value().2);
        }
        Ok(out)
    }

    /// Call `f` for each error of a job, in (part, ordinal) order, without
    /// loading them all.
    pub fn for_each_error(
        &self,
        id: JobId,
        f: impl FnMut(u32, u64, ErrorEntry) -> std::io::Result<()>,
    ) -> Result<(), JournalError> {
        self.for_first_errors(id, usize::MAX, f)
    }

    /// [`Journal::for_each_error`] for the first `limit` errors only.
    pub fn for_first_errors(
        &self,
        id: JobId,
        limit: usize,
        mut f: impl FnMut(u32, u64, ErrorEntry) -> std::io::Result<()>,
    ) -> Result<(), JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(ERRORS).map_err(storage)?;
        for entry in t
            .range((id, 0, 0)..=(id, u32::MAX, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (k, v) = entry.map_err(storage)?;
            let (_, part, ordinal) = k.value();
            let e = decode(|| format!("job {id} error {part}/{ordinal}"), v.value())?;
            f(part, ordinal, e).map_err(storage)?;
        }
        Ok(())
    }
}

impl Journal {
    /// The steps of one record, in order.
    pub fn steps(
        &self,
        job: JobId,
        part: u32,
        ordinal: u64,
    ) -> Result<Vec<StepRecord>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(EFFECTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t
            .range((job, part, ordinal, 0)..=(job, part, ordinal, u32::MAX))
            .map_err(storage)?
        {
            let (_, v) = entry.map_err(storage)?;
            out.push(decode(
                || format!("job {job} effect {part}/{ordinal}"),
                v.value(),
            )?);
        }
        Ok(out)
    }

    /// Records of `job` with ledger steps, newest first, below `before`.
    pub fn effect_records(
        &self,
        job: JobId,
        before: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<(u32, u64, Vec<StepRecord>)>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(EFFECTS).map_err(storage)?;
        let upper = match before {
            Some((part, ordinal)) => (job, part, ordinal, 0),
            None => (job, u32::MAX, u64::MAX, u32::MAX),
        };
        let mut out: Vec<(u32, u64, Vec<StepRecord>)> = Vec::new();
        for entry in t.range((job, 0, 0, 0)..upper).map_err(storage)?.rev() {
            let (k, v) = entry.map_err(storage)?;
            let (_, part, ordinal, _) = k.value();
            let step: StepRecord =
                decode(|| format!("job {job} effect {part}/{ordinal}"), v.value())?;
            match out.last_mut() {
                Some((p, o, steps)) if *p == part && *o == ordinal => steps.insert(0, step),
                _ => {
                    if out.len() == limit {
                        break;
                    }
                    out.push((part, ordinal, vec![step]));
                }
            }
        }
        Ok(out)
    }

    /// What undo did, in order.
    pub fn undo_entries(&self, job: JobId) -> Result<Vec<UndoEntry>, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(UNDO).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.range((job, 0)..=(job, u64::MAX)).map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(decode(|| format!("job {job} undo entry"), v.value())?);
        }
        Ok(out)
    }
}

/// The keys of one interval: `(hash, ordinal, line)` entries of 32 bytes,
/// sorted by hash, so one can be found by binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRun(pub Vec<u8>);

const KEY_ENTRY: usize = 32;

impl KeyRun {
    /// A run of these entries (any order).
    pub fn new(mut entries: Vec<([u8; 16], u64, u64)>) -> Self {
        entries.sort_unstable_by_key(|e| e.0);
        let mut bytes = Vec::with_capacity(entries.len() * KEY_ENTRY);
        for (hash, ordinal, line) in entries {
            bytes.extend_from_slice(&hash);
            bytes.extend_from_slice(&ordinal.to_le_bytes());
            bytes.extend_from_slice(&line.to_le_bytes());
        }
        KeyRun(bytes)
    }

    fn entry(&self, i: usize) -> ([u8; 16], u64, u64) {
        let e = &self.0[i * KEY_ENTRY..(i + 1) * KEY_ENTRY];
        let u = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        (
            e[..16].try_into().expect("16 bytes"),
            u(&e[16..24]),
            u(&e[24..32]),
        )
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len() / KEY_ENTRY
    }

    /// Whether the run has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, sorted by hash.
    pub fn entries(&self) -> impl Iterator<Item = ([u8; 16], u64, u64)> + '_ {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// `(ordinal, line)` of the entry with `hash`, if any.
    pub fn find(&self, hash: &[u8; 16]) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = self.entry(mid);
            match e.0.cmp(hash) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some((e.1, e.2)),
            }
        }
        None
    }
}

impl Journal {
    /// Every key run of a job, in (part, interval) order, to `f`.
    pub fn for_each_key_run(
        &self,
        job: JobId,
        mut f: impl FnMut(u32, u64, KeyRun),
    ) -> Result<(), JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(KEY_RUNS).map_err(storage)?;
        for entry in t
            .range((job, 0, 0)..=(job, u32::MAX, u64::MAX))
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let (_, part, seq) = k.value();
            f(part, seq, KeyRun(v.value().to_vec()));
        }
        Ok(())
    }

    /// One key run.
    pub fn key_run(&self, job: JobId, part: u32, seq: u64) -> Result<KeyRun, JournalError> {
        let r = self.read_txn()?;
        let t = r.open_table(KEY_RUNS).map_err(storage)?;
        Ok(KeyRun(
            t.get((job, part, seq))
                .map_err(storage)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default(),
        ))
    }
}

/// The ledger of multi-step targets, kept in the journal: every step is a
/// durable commit.
pub struct JournalLedger(pub std::sync::Arc<Journal>);

impl Ledger for JournalLedger {
    fn record(
        &self,
        job: u64,
        part: u32,
        ordinal: u64,
        step: &StepRecord,
    ) -> Result<(), SinkError> {
        self.0
            .write(|tx| {
                let mut t = tx.txn.open_table(EFFECTS).map_err(storage)?;
                t.insert((job, part, ordinal, step.step), encode(step).as_slice())
                    .map_err(storage)?;
                Ok(())
            })
            .map_err(|e| SinkError::Io(e.to_string()))
    }

    fn steps(&self, job: u64, part: u32, ordinal: u64) -> Result<Vec<StepRecord>, SinkError> {
        self.0
            .steps(job, part, ordinal)
            .map_err(|e| SinkError::Io(e.to_string()))
    }

    fn records(
        &self,
        job: u64,
        before: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<(u32, u64, Vec<StepRecord>)>, SinkError> {
        self.0
            .effect_records(job, before, limit)
            .map_err(|e| SinkError::Io(e.to_string()))
    }
}

/// One write transaction of the journal.
pub struct Tx<'a> {
    txn: &'a WriteTransaction,
}

impl Tx<'_> {
    pub fn job(&self, id: JobId) -> Result<JobRecord, JournalError> {
        let t = self.txn.open_table(JOBS).map_err(storage)?;
        let v = t
            .get(id)
            .map_err(storage)?
            .ok_or(JournalError::NoSuchJob(id))?;
        decode(|| format!("job {id}"), v.value())
    }

    pub fn put_job(&mut self, job: &JobRecord) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(JOBS).map_err(storage)?;
        t.insert(job.id, encode(job).as_slice()).map_err(storage)?;
        Ok(())
    }

    pub fn part(&self, id: JobId, part: u32) -> Result<PartRecord, JournalError> {
        let t = self.txn.open_table(PARTS).map_err(storage)?;
        let v = t
            .get((id, part))
            .map_err(storage)?
            .ok_or_else(|| JournalError::Corrupt {
                what: format!("job {id} part {part}"),
                detail: "missing".into(),
            })?;
        decode(|| format!("job {id} part {part}"), v.value())
    }

    pub fn put_part(&mut self, id: JobId, part: &PartRecord) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(PARTS).map_err(storage)?;
        t.insert((id, part.index), encode(part).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Replace a job's parts (after expanding an archive).
    pub fn replace_parts(&mut self, id: JobId, parts: &[PartRecord]) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(PARTS).map_err(storage)?;
        t.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
            .map_err(storage)?;
        for p in parts {
            t.insert((id, p.index), encode(p).as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    pub fn put_interval(
        &mut self,
        id: JobId,
        part: u32,
        seq: u64,
        interval: &Interval,
    ) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(INTERVALS).map_err(storage)?;
        t.insert((id, part, seq), encode(interval).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub fn put_errors(
        &mut self,
        id: JobId,
        part: u32,
        errors: &[(u64, ErrorEntry)],
    ) -> Result<(), JournalError> {
        if errors.is_empty() {
            return Ok(());
        }
        let mut t = self.txn.open_table(ERRORS).map_err(storage)?;
        for (ordinal, e) in errors {
            t.insert((id, part, *ordinal), encode(e).as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Store an interval's key run: entries sorted by hash.
    pub fn put_key_run(
        &mut self,
        id: JobId,
        part: u32,
        seq: u64,
        run: &KeyRun,
    ) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(KEY_RUNS).map_err(storage)?;
        t.insert((id, part, seq), run.0.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Append undo entries for a job, numbered after those it has.
    pub fn put_undo(&mut self, id: JobId, entries: &[UndoEntry]) -> Result<(), JournalError> {
        let mut t = self.txn.open_table(UNDO).map_err(storage)?;
        let next = t
            .range((id, 0)..=(id, u64::MAX))
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?
            .map_or(0, |(k, _)| k.value().1 + 1);
        for (seq, e) in (next..).zip(entries) {
            t.insert((id, seq), encode(e).as_slice()).map_err(storage)?;
        }
        Ok(())
    }

    /// Drop a finished job's working state (key runs and intervals); its record,
    /// parts and errors stay for reports.
    pub fn drop_scratch(&mut self, id: JobId) -> Result<(), JournalError> {
        let mut runs = self.txn.open_table(KEY_RUNS).map_err(storage)?;
        runs.retain_in((id, 0, 0)..=(id, u32::MAX, u64::MAX), |_, _| false)
            .map_err(storage)?;
        let mut intervals = self.txn.open_table(INTERVALS).map_err(storage)?;
        intervals
            .retain_in((id, 0, 0)..=(id, u32::MAX, u64::MAX), |_, _| false)
            .map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn job(fingerprint: &str) -> JobRecord {
        JobRecord {
            id: 0,
            tenant: "t".into(),
            state: JobState::Spooled,
            source: "x.csv".into(),
            format: None,
            key_field: None,
            options: vec![],
            dry_run: false,
            upload: Spooled {
                file: "f".into(),
                size: 1,
                digest: "d".into(),
            },
            archive: false,
            parts: 0,
            totals_exact: false,
            counts: Counts::default(),
            errors_by_code: BTreeMap::new(),
            times: Times::default(),
            error: None,
            fingerprint: fingerprint.into(),
            plugins: vec![],
            cancel_requested: false,
            target: "embedded".into(),
            retry: vec![],
            undo_counts: BTreeMap::new(),
            undone_from: None,
            leftovers: vec![],
        }
    }

    #[test]
    fn jobs_get_increasing_ids_and_are_found_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        let a = j.create_job(job("fa"), &[]).unwrap();
        let b = j.create_job(job("fb"), &[]).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(j.find_fingerprint("fb").unwrap(), Some(2));
        assert_eq!(j.find_fingerprint("fc").unwrap(), None);
        assert_eq!(j.jobs().unwrap().len(), 2);
        drop(j);
        // Reopening keeps everything.
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        assert_eq!(j.job(2).unwrap().fingerprint, "fb");
        assert!(matches!(j.job(3), Err(JournalError::NoSuchJob(3))));
    }

    #[test]
    fn key_runs_are_found_by_binary_search() {
        let run = KeyRun::new(vec![([9; 16], 1, 2), ([3; 16], 5, 6), ([7; 16], 8, 9)]);
        assert_eq!(run.len(), 3);
        assert_eq!(run.find(&[7; 16]), Some((8, 9)));
        assert_eq!(run.find(&[3; 16]), Some((5, 6)));
        assert_eq!(run.find(&[4; 16]), None);
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        let id = j.create_job(job("f"), &[]).unwrap();
        j.write(|tx| tx.put_key_run(id, 0, 0, &run)).unwrap();
        assert_eq!(j.key_run(id, 0, 0).unwrap(), run);
        j.write(|tx| tx.drop_scratch(id)).unwrap();
        assert!(j.key_run(id, 0, 0).unwrap().is_empty());
    }
}

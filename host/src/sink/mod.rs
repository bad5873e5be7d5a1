//! Targets: where applied records go, and how they are taken back.
//!
//! # The contract
//!
//! A [`Sink`] receives batches of validated records and must:
//!
//! 1. **Apply idempotently by identity** `(tenant, kind, key)`: applying the
//!    same record twice leaves the target as if it was applied once. The
//!    engine relies on this to close the window between a target write and
//!    the journal commit that records it: after a crash the last batch is
//!    applied again.
//! 2. **Keep what undo needs, no later than the change itself**: for each
//!    record it changes, the record's *before-image* (its state before this
//!    job touched it, or "did not exist"), and enough to tell later whether
//!    someone else changed it since. A transactional target keeps this in the
//!    same transaction as the change (and keeps the *first* before-image when
//!    a batch is applied again); a target without transactions journals each
//!    step in the [`Ledger`] before making it.
//! 3. **Report each record's outcome** ([`Outcome`]) and classify failures
//!    ([`FailureClass`]): the engine retries transient and conflict failures
//!    with backoff per class, never retries permanent ones, and stops the job
//!    for recovery on local I/O failures.
//! 4. **Leave nothing half-done**: a record that needs several steps (a
//!    parent resource and its children) is applied completely or its
//!    completed steps are compensated in reverse order before it is reported
//!    failed; [`Sink::reconcile`] finishes or compensates records a crash
//!    left part-way, using the ledger.
//! 5. **Undo** ([`Sink::undo`]): remove what a job created and restore what
//!    it updated from the before-images, keeping (and reporting) anything
//!    changed by someone else since; idempotent and resumable, a page at a
//!    time.
//!
//! The embedded store ([`embedded::EmbeddedStore`]) is the default target;
//! [`postgres`] and [`http`] are the others sluice ships.
//!
//! # Your own target
//!
//! A complete sink for a platform of your own. This one keeps records in
//! memory; a real one would call your API or database in `apply` and keep
//! the before-images in the same transaction as the change (or in the
//! [`Ledger`] before each step, if the platform has no transactions).
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! use sluice::sink::{
//!     Batch, Ledger, Outcome, Sink, SinkError, UndoAction, UndoEntry, UndoPage, UndoScope,
//! };
//!
//! type Identity = (String, String, String); // tenant, kind, key
//!
//! #[derive(Default)]
//! struct MemorySink {
//!     rows: Mutex<HashMap<Identity, (String, (u64, u32, u64))>>,
//!     /// (job, part, ordinal) -> identity and before-image: what undo needs.
//!     history: Mutex<Vec<((u64, u32, u64), Identity, Option<(String, (u64, u32, u64))>)>>,
//! }
//!
//! #[sluice::sink::async_trait]
//! impl Sink for MemorySink {
//!     fn name(&self) -> &str {
//!         "memory"
//!     }
//!
//!     async fn apply(&self, batch: Arc<Batch>, _ledger: Arc<dyn Ledger>) -> Result<Vec<Outcome>, SinkError> {
//!         let mut rows = self.rows.lock().unwrap();
//!         let mut history = self.history.lock().unwrap();
//!         Ok(batch
//!             .items
//!             .iter()
//!             .map(|item| {
//!                 let fields = item.record.fields_json();
//!                 if fields.get("amount").and_then(|v| v.as_str()) == Some("-1") {
//!                     // A rule of the platform: refused, never retried.
//!                     return Outcome::refused("negative-amount", "amount must not be negative");
//!                 }
//!                 let id = (batch.tenant.clone(), item.kind.clone(), item.key.clone());
//!                 let at = (batch.job, batch.part, item.ordinal);
//!                 let json = serde_json::Value::Object(fields).to_string();
//!                 // Idempotent by identity: the same record again replaces
//!                 // itself. The first before-image is kept on a replay.
//!                 let before = rows.insert(id.clone(), (json, at));
//!                 if !history.iter().any(|(a, ..)| *a == at) {
//!                     history.push((at, id, before));
//!                 }
//!                 Outcome::Applied
//!             })
//!             .collect())
//!     }
//!
//!     async fn undo(
//!         &self,
//!         job: u64,
//!         scope: &UndoScope,
//!         limit: usize,
//!         _ledger: Arc<dyn Ledger>,
//!     ) -> Result<UndoPage, SinkError> {
//!         let mut rows = self.rows.lock().unwrap();
//!         let mut history = self.history.lock().unwrap();
//!         let mut page = UndoPage::default();
//!         // Newest first; each entry is consumed as it is undone, so an
//!         // interrupted undo resumes where it stopped.
//!         while page.entries.len() < limit {
//!             let Some(i) = history
//!                 .iter()
//!                 .rposition(|((j, p, o), ..)| *j == job && scope.covers(*p, *o))
//!             else {
//!                 page.done = true;
//!                 break;
//!             };
//!             let (at, id, before) = history.remove(i);
//!             let ours = rows.get(&id).is_some_and(|(_, by)| *by == at);
//!             let action = match (ours, before) {
//!                 (false, _) => UndoAction::KeptChanged,
//!                 (true, Some(b)) => {
//!                     rows.insert(id.clone(), b);
//!                     UndoAction::Restored
//!                 }
//!                 (true, None) => {
//!                     rows.remove(&id);
//!                     UndoAction::Removed
//!                 }
//!             };
//!             page.entries.push(UndoEntry {
//!                 part: at.1,
//!                 ordinal: at.2,
//!                 kind: id.1,
//!                 key: id.2,
//!                 action,
//!                 message: None,
//!             });
//!         }
//!         Ok(page)
//!     }
//! }
//!
//! // Use it: every job of this engine writes to it.
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let data_dir = dir.path();
//! let storage = sluice::engine::Storage {
//!     journal: sluice::journal::Journal::open(&data_dir.join("journal.redb"))?,
//!     store: Arc::new(sluice::sink::embedded::EmbeddedStore::open(&data_dir.join("store.redb"))?),
//!     spool_fs: Arc::new(sluice::spool::RealFs),
//! };
//! let sink = Arc::new(MemorySink::default());
//! let engine = sluice::engine::Engine::with_storage(data_dir, Default::default(), storage, Some(sink))?;
//! # let _ = engine;
//! # Ok(())
//! # }
//! ```

pub mod embedded;

/// Re-exported so sinks can write `#[sluice::sink::async_trait]`.
pub use async_trait::async_trait;
pub mod http;
pub mod postgres;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Why an operation on a target failed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The target is briefly unavailable (timeout, connection refused, 503,
    /// deadlock, serialization failure): retried with backoff.
    Transient,
    /// Someone else changed the same resource concurrently (409, a lost
    /// race): retried a few times.
    Conflict,
    /// The target refuses this record (validation, constraint): never
    /// retried; reported.
    Permanent,
    /// The plugin broke: the job fails.
    PluginFault,
    /// Local storage failed: the job stops for recovery.
    LocalIo,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Conflict => "conflict",
            FailureClass::Permanent => "permanent",
            FailureClass::PluginFault => "plugin-fault",
            FailureClass::LocalIo => "local-io",
        }
    }

    /// Parse a kebab-case class name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            FailureClass::Transient,
            FailureClass::Conflict,
            FailureClass::Permanent,
            FailureClass::PluginFault,
            FailureClass::LocalIo,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record to apply.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// Position in its part, for provenance.
    pub ordinal: u64,
    /// Entity type.
    pub kind: String,
    /// Identity within `(tenant, kind)`.
    pub key: String,
    pub record: Record,
}

/// Records of one job part, applied together.
#[derive(Debug, Clone)]
pub struct Batch {
    pub job: u64,
    pub part: u32,
    pub tenant: String,
    pub items: Vec<BatchItem>,
}

impl Batch {
    /// The same job, part and tenant, without items.
    pub fn clone_empty(&self) -> Batch {
        Batch {
            job: self.job,
            part: self.part,
            tenant: self.tenant.clone(),
            items: Vec::new(),
        }
    }
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target holds the record.
    Applied,
    /// The target did not take the record; nothing of it remains there.
    Failed {
        class: FailureClass,
        code: String,
        message: String,
    },
}

impl Outcome {
    /// A permanent refusal.
    pub fn refused(code: &str, message: impl Into<String>) -> Self {
        Outcome::Failed {
            class: FailureClass::Permanent,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A failure of a whole batch (or of an undo page).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Worth retrying later (timeout, connection refused, overload).
    #[error("the target is temporarily unavailable: {0}")]
    Transient(String),
    /// Retrying will not help; the batch's records fail.
    #[error("the target refused the batch: {0}")]
    Permanent(String),
    /// Local storage failed mid-write: the outcome is unknown, the job stops
    /// and recovery decides.
    #[error("storage failed, outcome unknown: {0}")]
    Io(String),
}

impl SinkError {
    pub fn class(&self) -> FailureClass {
        match self {
            SinkError::Transient(_) => FailureClass::Transient,
            SinkError::Permanent(_) => FailureClass::Permanent,
            SinkError::Io(_) => FailureClass::LocalIo,
        }
    }
}

/// An error with its causes, `a: b: c`, each cause once (drivers often
/// repeat the cause in their own message).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// What undo did to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UndoAction {
    /// The job created it; it was removed.
    Removed,
    /// The job updated it; its before-image was restored.
    Restored,
    /// Someone changed it since the import; it was kept as it is.
    KeptChanged,
    /// It was already gone or already as before: nothing to do.
    Unchanged,
    /// Undo failed for it (see the message); it remains.
    Failed,
}

impl UndoAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UndoAction::Removed => "removed",
            UndoAction::Restored => "restored",
            UndoAction::KeptChanged => "kept: changed since import",
            UndoAction::Unchanged => "unchanged",
            UndoAction::Failed => "failed",
        }
    }
}

/// One record undo dealt with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoEntry {
    pub part: u32,
    pub ordinal: u64,
    pub kind: String,
    pub key: String,
    pub action: UndoAction,
    pub message: Option<String>,
}

/// One page of undo work, done atomically (or step by step through the
/// ledger). `done` once nothing of the job is left to undo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UndoPage {
    pub entries: Vec<UndoEntry>,
    pub done: bool,
}

/// Which of a job's effects to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoScope {
    /// Everything the job did (`sluice undo`).
    Job,
    /// Only records beyond each part's journaled watermark `(part,
    /// ordinal)`: applied by a batch the journal never recorded, before the
    /// job failed or was cancelled. This is how a failed job leaves no
    /// orphan behind.
    Unjournaled(Vec<(u32, u64)>),
}

impl UndoScope {
    /// Whether record `(part, ordinal)` is in scope.
    pub fn covers(&self, part: u32, ordinal: u64) -> bool {
        match self {
            UndoScope::Job => true,
            UndoScope::Unjournaled(marks) => marks
                .iter()
                .find(|(p, _)| *p == part)
                .is_none_or(|(_, w)| ordinal > *w),
        }
    }
}

/// What reconciliation found and did after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Records whose interrupted steps were completed.
    pub finished: u64,
    /// Records whose completed steps were compensated.
    pub compensated: u64,
    /// Resources that could not be cleaned up, and why: never silent.
    pub leftovers: Vec<String>,
}

/// A step of a multi-step apply, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step number within the record (0, 1, ...).
    pub step: u32,
    /// What the step does, for reports (`create customer C-1`).
    pub description: String,
    /// Sink-specific data to redo, check or compensate the step (the
    /// request, the before-image, the idempotency key ...). Opaque to the
    /// engine.
    pub data: serde_json::Value,
    pub state: StepState,
    /// Sink-specific result of the step once done (a created resource's id).
    pub result: Option<serde_json::Value>,
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Journaled, about to run (or ran, and the process died before
    /// confirming: the outcome is unknown).
    Intended,
    /// Ran and confirmed.
    Done,
    /// Its compensating action ran and was confirmed.
    Compensated,
    /// Undone by `sluice undo`.
    Undone,
    /// Compensation or undo could not succeed; the resource remains.
    Stuck,
}

/// Durable record of the steps a sink takes, for targets without
/// transactions. Every call is a durable journal commit, so a sink calls
/// [`Ledger::record`] *before* making a change and again after it.
pub trait Ledger: Send + Sync {
    /// Write (or overwrite) step `step.step` of record `(part, ordinal)` of
    /// `job`.
    fn record(&self, job: u64, part: u32, ordinal: u64, step: &StepRecord)
    -> Result<(), SinkError>;

    /// The steps of one record, in order: how a retried record finds its own
    /// earlier effects and adopts or removes them.
    fn steps(&self, job: u64, part: u32, ordinal: u64) -> Result<Vec<StepRecord>, SinkError>;

    /// Records of `job` with steps, newest first, starting below
    /// `(part, ordinal)` when given: for reconciliation and undo.
    fn records(
        &self,
        job: u64,
        before: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<(u32, u64, Vec<StepRecord>)>, SinkError>;
}

/// A target for applied records. See the [module docs](self).
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and reports.
    fn name(&self) -> &str;

    /// Apply a batch; one outcome per item, in order.
    async fn apply(
        &self,
        batch: Arc<Batch>,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError>;

    /// Finish or compensate records of `job` that a crash left part-way.
    /// Called by recovery before the job's apply pass resumes. Targets that
    /// apply each batch in one transaction have nothing to do.
    async fn reconcile(&self, job: u64, ledger: Arc<dyn Ledger>) -> Result<Reconciled, SinkError> {
        let _ = (job, ledger);
        Ok(Reconciled::default())
    }

    /// Undo up to `limit` records of `job` in `scope`, newest first,
    /// atomically or step by step through the ledger, so an interrupted undo
    /// resumes where it stopped. A record undone once is not visited again.
    /// A page (like `reconcile`) that fails transiently is called again by
    /// the engine under the job's retry policy.
    async fn undo(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError>;
}

//! Targets: where applied records go.
//!
//! A [`Sink`] receives batches of validated records and must apply them
//! **idempotently by record identity** `(tenant, kind, key)`: applying the
//! same record twice leaves the target as if it was applied once. The engine
//! relies on that to close the window between a target write and the
//! journal commit that records it: after a crash the last batch is simply
//! applied again.
//!
//! Each record of a batch succeeds or fails on its own ([`Outcome`]); a
//! failure of the whole batch is a [`SinkError`] whose class tells the
//! engine whether to retry (transient), give up on the batch's records
//! (permanent), or stop the job for recovery (I/O, outcome unknown).
//!
//! The embedded store ([`embedded::EmbeddedStore`]) is the default target.

pub mod embedded;

use std::sync::Arc;

use crate::record::Record;

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

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target holds the record.
    Applied,
    /// The target refused this record (a constraint, a validation rule);
    /// retrying will not help.
    Rejected { code: String, message: String },
}

/// A failure of a whole batch.
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
    #[error("the target's storage failed, outcome unknown: {0}")]
    Io(String),
}

/// A target for applied records. See the [module docs](self) for the
/// contract.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and reports.
    fn name(&self) -> &str;

    /// Apply a batch; one outcome per item, in order.
    async fn apply(&self, batch: Arc<Batch>) -> Result<Vec<Outcome>, SinkError>;
}

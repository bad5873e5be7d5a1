//! PostgreSQL target (being written).

use std::sync::Arc;

use super::{Batch, Ledger, Outcome, Sink, SinkError, UndoPage, UndoScope};

/// A PostgreSQL database as a target.
#[derive(Debug)]
pub struct PgSink {
    url: String,
}

/// The URL without its password, for the journal.
pub fn redact(url: &str) -> Result<String, String> {
    Ok(url.to_owned())
}

impl PgSink {
    /// Parse the URL; the connection is made on first use.
    pub fn connect(url: &str) -> Result<Self, String> {
        Err(format!(
            "PostgreSQL targets are not available in this build ({url})"
        ))
    }
}

#[async_trait::async_trait]
impl Sink for PgSink {
    fn name(&self) -> &str {
        &self.url
    }

    async fn apply(
        &self,
        _batch: Arc<Batch>,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError> {
        Err(SinkError::Permanent("not available".into()))
    }

    async fn undo(
        &self,
        _job: u64,
        _scope: &UndoScope,
        _limit: usize,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError> {
        Err(SinkError::Permanent("not available".into()))
    }
}

//! HTTP API target (being written).

use std::sync::Arc;

use super::{Batch, Ledger, Outcome, Sink, SinkError, UndoPage, UndoScope};

/// An HTTP API as a target.
#[derive(Debug)]
pub struct HttpSink {
    url: String,
}

impl HttpSink {
    /// Read a mapping file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        Err(format!(
            "HTTP targets are not available in this build ({})",
            path.display()
        ))
    }
}

#[async_trait::async_trait]
impl Sink for HttpSink {
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

//! Progress of a job, derived from the journal, so it is true after a
//! restart and the same for every process that looks.

use serde::Serialize;

use crate::journal::{JobRecord, JobState, now_ms};

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub job: u64,
    pub state: JobState,
    /// Bytes of the upload.
    pub bytes: u64,
    /// Bytes pass 1 has gone through.
    pub scanned_bytes: u64,
    pub parts: u32,
    /// Items in the upload, once pass 1 is done.
    pub total: Option<u64>,
    pub scanned: u64,
    pub rejected: u64,
    /// Items pass 2 has gone past.
    pub processed: u64,
    pub applied: u64,
    pub failed: u64,
    /// Items per second in the current pass.
    pub rate: f64,
    /// Seconds left in the current pass, when it can be told.
    pub eta_secs: Option<f64>,
    pub elapsed_ms: u64,
}

impl Progress {
    /// Progress of `job` as of now.
    pub fn of(job: &JobRecord) -> Self {
        Self::at(job, now_ms())
    }

    /// Progress of `job` as of `now` (ms since the epoch).
    pub fn at(job: &JobRecord, now: u64) -> Self {
        let c = &job.counts;
        let t = &job.times;
        let end = t.finished.unwrap_or(now);
        let since =
            |start: Option<u64>| start.map(|s| end.saturating_sub(s).max(1) as f64 / 1000.0);
        let (rate, eta) = match job.state {
            JobState::Spooled | JobState::Scanning => {
                let secs = since(t.scan_started);
                let rate = secs.map_or(0.0, |s| c.scanned as f64 / s);
                // Items still to scan are unknown; bytes are not.
                let eta = secs.filter(|_| c.scanned_bytes > 0).map(|s| {
                    let left = job.upload.size.saturating_sub(c.scanned_bytes) as f64;
                    left * s / c.scanned_bytes as f64
                });
                (rate, eta)
            }
            JobState::Scanned | JobState::Applying => {
                let secs = since(t.apply_started);
                let rate = secs.map_or(0.0, |s| c.processed as f64 / s);
                let left = c.scanned.saturating_sub(c.processed) as f64;
                let eta = (rate > 0.0).then(|| left / rate);
                (rate, eta)
            }
            _ => {
                let secs = since(t.scan_started).unwrap_or(0.0);
                let items = c.scanned.max(c.processed) as f64;
                (if secs > 0.0 { items / secs } else { 0.0 }, Some(0.0))
            }
        };
        Progress {
            job: job.id,
            state: job.state,
            bytes: job.upload.size,
            scanned_bytes: c.scanned_bytes,
            parts: job.parts,
            total: job.total(),
            scanned: c.scanned,
            rejected: c.rejected,
            processed: c.processed,
            applied: c.applied,
            failed: c.failed,
            rate,
            eta_secs: eta,
            elapsed_ms: end.saturating_sub(t.created),
        }
    }
}

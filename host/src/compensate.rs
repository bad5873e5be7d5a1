//! Compensation and undo: nothing a job did to a target survives a failure
//! or a cancel unaccounted for, and `sluice undo` reverses a whole job.
//!
//! - When a job fails or is cancelled while applying, the records of the
//!   interval in flight may already be on the target although the journal
//!   never recorded them. They are undone from the target's before-images
//!   ([`UndoScope::Unjournaled`]) before the job ends; what cannot be undone
//!   is listed on the job as a leftover, with the reason.
//! - `sluice undo` ([`Engine::undo`]) reverses everything a job did, newest
//!   record first, a page at a time: created records are removed, updated
//!   ones restored, and records someone changed since the import are kept
//!   and reported. Each page is atomic on the target (or journaled step by
//!   step through the ledger), and the job stays `undoing` until the last
//!   page, so an interrupted undo resumes where it stopped.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::engine::{Engine, EngineError, blocking};
use crate::journal::{JobId, JobRecord, JobState, now_ms};
use crate::scan::PassError;
use crate::sink::{UndoAction, UndoScope};

/// Records undone per page.
const PAGE: usize = 500;

/// Undo the target effects of `job` beyond what the journal recorded as
/// applied. Returns the resources that could not be cleaned up.
pub(crate) async fn compensate_unjournaled(
    engine: &Engine,
    job: &JobRecord,
) -> Result<Vec<String>, EngineError> {
    let parts = engine.journal().parts(job.id)?;
    let scope = UndoScope::Unjournaled(parts.iter().map(|p| (p.index, p.apply.ordinal)).collect());
    let sink = match engine.sink_for(&job.target) {
        Ok(s) => s,
        // The target cannot be opened at all (mapping gone or broken):
        // nothing can be checked; say so instead of stopping for ever.
        Err(PassError::Rejected(e)) => {
            return Ok(vec![format!(
                "target {} could not be opened to take back records applied but not \
                 journaled: {e}",
                job.target
            )]);
        }
        Err(e) => {
            return Err(EngineError::Stopped {
                job: job.id,
                reason: e.to_string(),
            });
        }
    };
    let retry = engine.retry_policy(job).map_err(|e| EngineError::Stopped {
        job: job.id,
        reason: e.to_string(),
    })?;
    let mut leftovers = Vec::new();
    let mut compensated = 0u64;
    loop {
        let page = retry
            .run("compensating an undo page", || {
                sink.undo(job.id, &scope, PAGE, engine.ledger())
            })
            .await
            .map_err(|e| EngineError::Stopped {
                job: job.id,
                reason: format!("compensating records applied but not journaled: {e}"),
            })?;
        for e in &page.entries {
            match e.action {
                UndoAction::Failed => leftovers.push(format!(
                    "{} {} (record {} of part {}): {}",
                    e.kind,
                    e.key,
                    e.ordinal,
                    e.part,
                    e.message.as_deref().unwrap_or("could not be undone")
                )),
                UndoAction::KeptChanged => leftovers.push(format!(
                    "{} {} (record {} of part {}): kept, changed by someone else meanwhile",
                    e.kind, e.key, e.ordinal, e.part
                )),
                _ => compensated += 1,
            }
        }
        if page.done {
            break;
        }
    }
    if compensated > 0 || !leftovers.is_empty() {
        tracing::info!(
            job = job.id,
            compensated,
            leftovers = leftovers.len(),
            "compensated unjournaled records"
        );
    }
    Ok(leftovers)
}

impl Engine {
    /// Reverse everything `id` did on its target. The job must be over and
    /// have applied something; an interrupted undo resumes.
    pub async fn undo(&self, id: JobId) -> Result<JobRecord, EngineError> {
        let job = self.journal().job(id)?;
        let refuse = |why: &str| EngineError::NotUndoable {
            job: id,
            why: why.to_owned(),
        };
        match job.state {
            JobState::Undoing => {}
            JobState::Completed | JobState::Failed | JobState::Cancelled => {
                let journal = self.journal_arc();
                blocking(move || {
                    journal.write(|tx| {
                        let mut j = tx.job(id)?;
                        if !matches!(
                            j.state,
                            JobState::Completed | JobState::Failed | JobState::Cancelled
                        ) {
                            return Ok(());
                        }
                        j.undone_from = Some(j.state);
                        j.state = JobState::Undoing;
                        j.times.finished = None;
                        tx.put_job(&j)
                    })
                })
                .await?;
            }
            JobState::Validated => return Err(refuse("it was a dry run: nothing was applied")),
            JobState::Undone => return Err(refuse("it was undone already")),
            other => {
                return Err(refuse(&format!(
                    "it is still {other}; cancel it first (`sluice cancel {id}`) or let it finish"
                )));
            }
        }
        self.run(id).await
    }

    /// Undo pages until nothing is left, journaling what each page did.
    pub(crate) async fn undo_pages(
        &self,
        job: &JobRecord,
        stop: &Arc<AtomicBool>,
    ) -> Result<(), PassError> {
        let sink = self.sink_for(&job.target)?;
        let retry = self.retry_policy(job)?;
        loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(PassError::Stopped);
            }
            crate::faults::point("undo.before-page");
            let page = retry
                .run("an undo page", || {
                    sink.undo(job.id, &UndoScope::Job, PAGE, self.ledger())
                })
                .await?;
            crate::faults::point("undo.after-target");
            let journal = self.journal_arc();
            let id = job.id;
            blocking(move || {
                journal.write(|tx| {
                    tx.put_undo(id, &page.entries)?;
                    let mut j = tx.job(id)?;
                    for e in &page.entries {
                        *j.undo_counts
                            .entry(e.action.as_str().to_owned())
                            .or_default() += 1;
                    }
                    if page.done {
                        j.state = JobState::Undone;
                        j.times.finished = Some(now_ms());
                    }
                    tx.put_job(&j)
                })
            })
            .await?;
            if page.done {
                return Ok(());
            }
        }
    }
}

//! Pass 2: apply one part's valid records to the target.
//!
//! Interval by interval, on a blocking thread, the records come from the
//! record stage pass 1 wrote (see `stage`): exactly the records pass 1
//! validated, without running the plugin again. An interval the stage does
//! not hold intact is parsed again from its checkpoint instead, and its
//! items must hash to the digest pass 1 recorded, so a plugin that gives
//! different records the second time is caught before any of that interval
//! reaches the target. The records pass 1 accepted go to the sink as one
//! batch; the journal then commits the interval as applied, with the records
//! the target refused. Reading the next interval overlaps with applying the
//! current one.
//!
//! A crash between the target write and the journal commit re-applies that
//! interval on resume: the sink's idempotent apply by identity makes that
//! harmless, so every record is applied exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::faults;
use crate::journal::{Counts, Interval, Stage};
use crate::record::{Item, Record};
use crate::sandbox::Parse;
use crate::scan::{BATCH_BYTES, BATCH_RECORDS, PartCtx, PassError, digest_hex, digest_item};
use crate::sink::{Batch, BatchItem, FailureClass, Outcome, Sink, SinkError};
use crate::stage::StageReader;
use xxhash_rust::xxh3::Xxh3;

/// An interval ready to apply.
struct Prepared {
    seq: u64,
    interval: Interval,
    batch: Arc<Batch>,
    /// Items in the interval, valid or not.
    items: u64,
}

/// Run pass 2 over one part from where the journal says it stopped.
pub(crate) async fn apply_part(ctx: PartCtx, sink: Arc<dyn Sink>) -> Result<(), PassError> {
    let intervals = ctx.journal.intervals(ctx.job, ctx.part.index)?;
    let start = ctx.part.apply.intervals as usize;
    if start >= intervals.len() {
        if !ctx.part.apply.done {
            mark_done(&ctx)?;
        }
        return Ok(());
    }
    let count = intervals.len();
    // Two intervals in flight: one being applied, one being parsed.
    let (tx, mut rx) = mpsc::channel::<Result<Prepared, PassError>>(1);
    // Applied batches go back to the producer to be freed: the thread that
    // allocated their records frees them from its own cache, while freeing
    // them here would cost the applier ~1 µs a record.
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Arc<Batch>>();
    let producer_ctx = ctx.clone();
    let producer = tokio::task::spawn_blocking(move || {
        if let Err(e) = produce(&producer_ctx, intervals, start, &tx, &spent_rx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let result = async {
        while let Some(prepared) = rx.recv().await {
            let p = prepared?;
            if ctx.stopped() {
                return Err(PassError::Stopped);
            }
            faults::point("apply.before-batch");
            let outcomes = apply_with_retry(&ctx, sink.as_ref(), p.batch.clone()).await?;
            faults::point("apply.after-target-write");
            let ctx2 = ctx.clone();
            let last = p.seq as usize + 1 == count;
            let (committed, batch) = tokio::task::spawn_blocking(move || {
                let committed = commit(&ctx2, &p, &outcomes, last);
                (committed, p.batch)
            })
            .await
            .map_err(|e| PassError::Inconsistent(format!("apply commit task failed: {e}")))?;
            committed?;
            // If the producer has ended, the batch is freed here instead.
            let _ = spent_tx.send(batch);
            faults::point("apply.after-commit");
        }
        Ok(())
    }
    .await;
    // Dropping the receiver ends the producer at its next send.
    drop(rx);
    let _ = producer.await;
    result
}

/// Read (or parse) intervals `start..` and send each, checked against
/// pass 1.
fn produce(
    ctx: &PartCtx,
    intervals: Vec<Interval>,
    start: usize,
    tx: &mpsc::Sender<Result<Prepared, PassError>>,
    spent: &std::sync::mpsc::Receiver<Arc<Batch>>,
) -> Result<(), PassError> {
    let _span = tracing::info_span!("apply", job = ctx.job, part = ctx.part.index).entered();
    let mut stage = StageReader::open(&ctx.spool, &ctx.part.spool.file);
    // The parse of the interval before, if it was parsed (and not read from
    // the stage), with the ordinal up to which it skips items: it is
    // positioned at this interval.
    let mut parsing: Option<(Parse, u64)> = None;
    for (seq, interval) in intervals.iter().enumerate().skip(start) {
        if ctx.stopped() {
            return Err(PassError::Stopped);
        }
        spent.try_iter().for_each(drop);
        let rejected: HashSet<u64> = ctx
            .journal
            .error_ordinals(ctx.job, ctx.part.index, interval.first, interval.last)?
            .into_iter()
            .collect();
        let (items, seen) = match stage.block(seq as u64, interval) {
            Some(block) => {
                // The open parse is behind now: let its instance and file go.
                // (A later miss reopens at a checkpoint; a plugin without
                // checkpoints replays from the start, which only a damaged
                // stage asks for.)
                parsing = None;
                let mut items = Vec::with_capacity(block.records.len());
                for record in block.records {
                    let ordinal = record.location().ordinal;
                    if !rejected.contains(&ordinal) {
                        items.push(batch_item(ctx, interval, record)?);
                    }
                }
                (items, block.items)
            }
            None => {
                let (parse, skip_to) = match &mut parsing {
                    Some(p) => p,
                    None => {
                        tracing::debug!(job = ctx.job, seq, "interval not staged, parsing it");
                        parsing.insert(ctx.open(seq.checked_sub(1).map(|i| &intervals[i]))?)
                    }
                };
                parse_interval(ctx, parse, *skip_to, interval, &rejected)?
            }
        };
        let prepared = Prepared {
            seq: seq as u64,
            interval: interval.clone(),
            batch: Arc::new(Batch {
                job: ctx.job,
                part: ctx.part.index,
                tenant: ctx.tenant.clone(),
                items,
            }),
            items: seen,
        };
        if tx.blocking_send(Ok(prepared)).is_err() {
            return Ok(()); // the applier stopped
        }
    }
    Ok(())
}

/// A record pass 1 accepted, with its identity.
fn batch_item(ctx: &PartCtx, interval: &Interval, record: Record) -> Result<BatchItem, PassError> {
    match ctx.identity(&record) {
        Ok((kind, key)) => Ok(BatchItem {
            ordinal: record.location().ordinal,
            kind,
            key,
            record,
        }),
        Err(_) => Err(nondeterministic(
            ctx,
            interval,
            "a record accepted before is now invalid",
        )),
    }
}

/// Parse one interval, checking its items against pass 1's digest. Returns
/// the records to apply and the number of items seen.
fn parse_interval(
    ctx: &PartCtx,
    parse: &mut Parse,
    skip_to: u64,
    interval: &Interval,
    rejected: &HashSet<u64>,
) -> Result<(Vec<BatchItem>, u64), PassError> {
    let mut digest = Xxh3::new();
    let mut items = Vec::new();
    let mut seen = 0u64;
    let mut parsed = Vec::new();
    loop {
        // In batches, as pass 1 parsed: a batch holds at most the records
        // asked for, or fewer and one other item, so it never reaches past
        // the interval. Items replayed up to `skip_to` come one by one.
        let done = parse.items_done();
        if done < skip_to {
            parsed.push(parse.next()?);
        } else {
            let room = interval.last.saturating_sub(done).clamp(1, BATCH_RECORDS);
            parse
                .next_batch(room as u32, BATCH_BYTES as u32)?
                .decode(&mut parsed)?;
        }
        let mut finished = false;
        for item in parsed.drain(..) {
            let ordinal = match &item {
                Item::Record(r) => r.location().ordinal,
                Item::Error(e) | Item::Fatal(e) => e.location.ordinal,
                Item::End => {
                    return Err(nondeterministic(ctx, interval, "the input ended early"));
                }
            };
            if ordinal <= skip_to {
                continue;
            }
            if ordinal > interval.last {
                return Err(nondeterministic(
                    ctx,
                    interval,
                    "the interval has different items",
                ));
            }
            digest_item(&mut digest, &item);
            seen += 1;
            if let Item::Record(record) = item
                && !rejected.contains(&ordinal)
            {
                items.push(batch_item(ctx, interval, record)?);
            }
            finished = ordinal == interval.last;
        }
        if finished {
            break;
        }
    }
    if digest_hex(&digest) != interval.digest {
        return Err(nondeterministic(ctx, interval, "the records differ"));
    }
    Ok((items, seen))
}

fn nondeterministic(ctx: &PartCtx, interval: &Interval, what: &str) -> PassError {
    PassError::Inconsistent(format!(
        "plugin {} {} gave different output in the apply pass than in validation for records \
         {}..={} of {:?} ({what}); nothing from those records was applied. The plugin is not \
         deterministic: report it to its author",
        ctx.plugin.info().name,
        ctx.plugin.info().version,
        interval.first,
        interval.last,
        ctx.part.name
    ))
}

/// Apply a batch, retrying by failure class: a transient or conflict
/// failure of the whole batch, or of single records, is retried (only the
/// records concerned) with backoff and jitter while the job's policy allows;
/// other failures are final. Returns each record's outcome and attempts.
async fn apply_with_retry(
    ctx: &PartCtx,
    sink: &dyn Sink,
    batch: Arc<Batch>,
) -> Result<Vec<(Outcome, u32)>, PassError> {
    let n = batch.items.len();
    let mut results: Vec<Option<(Outcome, u32)>> = vec![None; n];
    let mut pending: Vec<usize> = (0..n).collect();
    let started = Instant::now();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        attempt += 1;
        let sub = if pending.len() == n {
            batch.clone()
        } else {
            let mut sub = batch.clone_empty();
            sub.items = pending.iter().map(|&i| batch.items[i].clone()).collect();
            Arc::new(sub)
        };
        let (retry, class) = match sink.apply(sub, ctx.ledger.clone()).await {
            Ok(outcomes) if outcomes.len() == pending.len() => {
                let mut retry = Vec::new();
                let mut class = FailureClass::Conflict;
                for (&i, outcome) in pending.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Failed { class: c, .. }
                            if ctx.retry.should_retry(c, attempt, started.elapsed()) =>
                        {
                            if c == FailureClass::Transient {
                                class = c;
                            }
                            retry.push(i);
                        }
                        done => results[i] = Some((done, attempt)),
                    }
                }
                (retry, class)
            }
            Ok(outcomes) => {
                return Err(PassError::Inconsistent(format!(
                    "target {} returned {} outcomes for {} records",
                    sink.name(),
                    outcomes.len(),
                    pending.len()
                )));
            }
            Err(SinkError::Io(msg)) => return Err(SinkError::Io(msg).into()),
            Err(e)
                if ctx
                    .retry
                    .should_retry(e.class(), attempt, started.elapsed()) =>
            {
                tracing::warn!(job = ctx.job, attempt, "target failed ({e}), retrying");
                (std::mem::take(&mut pending), e.class())
            }
            Err(e) => {
                let code = match e.class() {
                    FailureClass::Transient => "target-unavailable",
                    _ => "target-refused",
                };
                for &i in &pending {
                    let outcome = Outcome::Failed {
                        class: e.class(),
                        code: code.into(),
                        message: format!("{e} (target {})", sink.name()),
                    };
                    results[i] = Some((outcome, attempt));
                }
                (Vec::new(), e.class())
            }
        };
        pending = retry;
        if !pending.is_empty() {
            if ctx.stopped() {
                // Stopping: the records waiting for a retry are not applied;
                // say so, so the interval is journaled as it stands.
                for &i in &pending {
                    let outcome = Outcome::Failed {
                        class,
                        code: "stopped-before-retry".into(),
                        message: "the job was stopped or cancelled while this record waited \
                                  to be retried"
                            .into(),
                    };
                    results[i] = Some((outcome, attempt));
                }
                break;
            }
            tokio::time::sleep(ctx.retry.delay(class, attempt)).await;
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every record has an outcome"))
        .collect())
}

fn commit(
    ctx: &PartCtx,
    p: &Prepared,
    outcomes: &[(Outcome, u32)],
    last: bool,
) -> Result<(), PassError> {
    let mut counts = Counts {
        processed: p.items,
        ..Counts::default()
    };
    let mut errors = Vec::new();
    for (item, (outcome, attempts)) in p.batch.items.iter().zip(outcomes) {
        match outcome {
            Outcome::Applied => counts.applied += 1,
            Outcome::Failed {
                class,
                code,
                message,
            } => {
                counts.failed += 1;
                let mut e =
                    ctx.error_entry(Stage::Apply, code, message, None, item.record.location())?;
                e.attempts = *attempts;
                e.class = Some(class.as_str().to_owned());
                errors.push((item.ordinal, e));
            }
        }
    }
    ctx.journal.write(|tx| {
        ctx.commit_interval(tx, &counts, &errors, |part| {
            part.apply.intervals = p.seq + 1;
            part.apply.ordinal = p.interval.last;
            part.apply.offset = p.interval.end_offset;
            part.apply.done = last;
        })
    })?;
    Ok(())
}

fn mark_done(ctx: &PartCtx) -> Result<(), PassError> {
    ctx.journal.write(|tx| {
        let mut part = tx.part(ctx.job, ctx.part.index)?;
        part.apply.done = true;
        tx.put_part(ctx.job, &part)
    })?;
    Ok(())
}

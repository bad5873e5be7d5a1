//! Pass 1: scope and validate one part.
//!
//! The plugin runs over the spooled part; every item is counted, every
//! rejected record is recorded with its location and original text, keys
//! are checked for duplicates, and every interval of items is committed
//! with its digest and a resume checkpoint. The interval's records are
//! written to the part's record stage just before, for pass 2. Nothing
//! touches the target.

use std::io::Seek as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TrySendError;

use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::Xxh3;

use crate::engine::EngineConfig;
use crate::faults;
use crate::journal::{
    Counts, ErrorEntry, Interval, JobId, Journal, JournalError, PartRecord, Stage, Tx,
};
use crate::record::{Item, Location, Record, RecordError, Value};
use crate::sandbox::{Batch, Checkpoint, Parse, ParseError, Plugin, Sandbox};
use crate::spool::Spool;
use crate::stage::{Encoder, StageWriter};

/// What a pass needs to know about one part of one job.
#[derive(Clone)]
pub(crate) struct PartCtx {
    pub job: JobId,
    pub tenant: String,
    pub key_field: Option<String>,
    pub upload_digest: String,
    pub part: PartRecord,
    pub plugin: Arc<Plugin>,
    pub sandbox: Arc<Sandbox>,
    pub spool: Arc<Spool>,
    pub journal: Arc<Journal>,
    pub config: Arc<EngineConfig>,
    pub cancel: Arc<AtomicBool>,
    /// How failed target writes are retried.
    pub retry: crate::retry::RetryPolicy,
    /// Where multi-step targets journal their steps.
    pub ledger: Arc<dyn crate::sink::Ledger>,
    /// Whether pass 1 stages its records for pass 2 (see `stage`).
    pub stage: bool,
}

/// Why a pass stopped before the end of its part.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot read spooled part {file}: {source}; run `sluice recover`")]
    Spool {
        file: String,
        source: std::io::Error,
    },
    #[error("stopped")]
    Stopped,
    #[error("{0}")]
    Inconsistent(String),
    /// The upload itself is unacceptable (a hostile archive ...).
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

/// Why a record has no identity in the target: a validation error.
pub(crate) struct NoIdentity {
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl PartCtx {
    /// The identity of `record` in the target, `(kind, key)`: kind from the
    /// plugin or the part, key from the `--key` field, else the plugin's
    /// natural key, else derived from the upload's digest, the part and the
    /// ordinal.
    pub fn identity(&self, record: &Record) -> Result<(String, String), NoIdentity> {
        let (kind, key) = self.key_of(record)?;
        let key = match key {
            Some(key) => key.into_owned(),
            None => format!(
                // Zero-padded so keys sort in input order: the store then
                // appends instead of inserting at random places.
                "{}-{}-{:012}",
                &self.upload_digest[..16.min(self.upload_digest.len())],
                self.part.index,
                record.location().ordinal
            ),
        };
        Ok((kind.to_owned(), key))
    }

    /// `record`'s kind and key, borrowed where they can be (`None`: the key
    /// is derived from the position), or why it has no identity. Pass 1
    /// only hashes them, so it needs no copies.
    fn key_of<'r>(
        &'r self,
        record: &'r Record,
    ) -> Result<(&'r str, Option<std::borrow::Cow<'r, str>>), NoIdentity> {
        let kind = record.kind().unwrap_or(&self.part.default_kind);
        let Some(field) = &self.key_field else {
            let natural = record.key().filter(|k| !k.is_empty());
            return Ok((kind, natural.map(Into::into)));
        };
        let value = record.get_by_name(field).ok_or_else(|| NoIdentity {
            code: "missing-key-field",
            message: format!(
                "the record has no field {field:?} to use as its key (its fields: {}); \
                 fix the record or choose another --key",
                record.layout().fields.join(", ")
            ),
            field: Some(field.clone()),
        })?;
        let key = match value {
            Value::Null => None,
            v => v.as_text().filter(|t| !t.is_empty()),
        };
        match key {
            Some(key) => Ok((kind, Some(key))),
            None => Err(NoIdentity {
                code: "empty-key",
                message: format!("the key field {field:?} is empty; give every record a key"),
                field: Some(field.clone()),
            }),
        }
    }

    /// An error entry for the record at `loc`, with its original text.
    pub fn error_entry(
        &self,
        stage: Stage,
        code: &str,
        message: &str,
        field: Option<String>,
        loc: Location,
    ) -> Result<ErrorEntry, PassError> {
        let max = self.config.max_error_record_bytes;
        let want = loc.length.min(max as u64) as usize;
        let bytes = self
            .spool
            .read_at(&self.part.spool.file, loc.offset, want)
            .map_err(|source| PassError::Spool {
                file: self.part.spool.file.clone(),
                source,
            })?;
        Ok(ErrorEntry {
            stage,
            code: code.to_owned(),
            message: message.to_owned(),
            field,
            line: loc.line,
            offset: loc.offset,
            length: loc.length,
            class: None,
            attempts: 0,
            record: String::from_utf8_lossy(&bytes).into_owned(),
            truncated: loc.length > max as u64,
        })
    }

    /// Open the plugin on the part, positioned right after `done` (the last
    /// interval already handled), resuming from its checkpoint when the
    /// plugin can, else from the start. Returns the parse and the ordinal
    /// up to which items must be skipped.
    pub fn open(&self, after: Option<&Interval>) -> Result<(Parse, u64), PassError> {
        let spool_err = |source| PassError::Spool {
            file: self.part.spool.file.clone(),
            source,
        };
        let resume: Option<&Checkpoint> = after.and_then(|i| i.resume.as_ref());
        let mut input = self.spool.open(&self.part.spool.file).map_err(spool_err)?;
        let skip_to = match (after, resume) {
            (Some(_), Some(cp)) => {
                input
                    .seek(std::io::SeekFrom::Start(cp.offset))
                    .map_err(spool_err)?;
                0
            }
            (Some(i), None) => i.last,
            (None, _) => 0,
        };
        let parse = self.sandbox.open(
            &self.plugin,
            Box::new(std::io::BufReader::with_capacity(64 << 10, input)),
            &self.part.options,
            resume,
            None,
            Some(self.cancel.clone()),
        )?;
        Ok((parse, skip_to))
    }

    pub fn stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// What every interval commit of either pass writes: the interval's
    /// errors, the part's progress (`advance`) and counts, the job's counts
    /// and error tally. A cancel another process journaled is noticed here.
    pub fn commit_interval(
        &self,
        tx: &mut Tx<'_>,
        counts: &Counts,
        errors: &[(u64, ErrorEntry)],
        advance: impl FnOnce(&mut PartRecord),
    ) -> Result<(), JournalError> {
        tx.put_errors(self.job, self.part.index, errors)?;
        let mut part = tx.part(self.job, self.part.index)?;
        advance(&mut part);
        part.counts.add(counts);
        tx.put_part(self.job, &part)?;
        let mut job = tx.job(self.job)?;
        job.counts.add(counts);
        for (_, e) in errors {
            *job.errors_by_code
                .entry(format!("{}:{}", e.stage.as_str(), e.code))
                .or_default() += 1;
        }
        if job.cancel_requested {
            self.cancel.store(true, Ordering::Relaxed);
        }
        tx.put_job(&job)
    }
}

/// Hash of a record identity, for duplicate detection.
fn key_hash(kind: &str, key: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize()[..16].try_into().expect("16 bytes")
}

/// The keys a job's records claimed so far, for finding duplicates in pass
/// 1 without a disk lookup per record.
///
/// Committed keys live in the journal as one sorted run per interval. In
/// memory each key costs about 14 bytes: its hash's first 8 bytes and the
/// index of its run, kept in sorted segments merged like a binary counter
/// (so adding a run is amortised O(log n) per key and a lookup is a search
/// per segment), and 2 bytes of a Bloom filter in front of them, which
/// answers most lookups alone. A hit is confirmed against the run itself,
/// so the check is exact. After a crash the set is rebuilt from the
/// committed runs.
pub(crate) struct KeySet {
    /// Sorted segments of (fingerprint, run index), largest first.
    segments: Vec<Segment>,
    /// Every fingerprint in `segments`: a key never claimed (almost every
    /// key of an import) costs one cache line instead of a search per
    /// segment.
    bloom: Bloom,
    /// `(part, interval)` of each run, by index.
    runs: Vec<(u32, u64)>,
    /// Keys of the interval being built.
    pending: std::collections::HashMap<[u8; 16], (u64, u64)>,
    /// The last run read to confirm a hit.
    cached: Option<(u32, crate::journal::KeyRun)>,
}

/// Fingerprints sorted ascending, with their run indices alongside.
#[derive(Default)]
struct Segment {
    fingerprints: Vec<u64>,
    runs: Vec<u32>,
}

impl Segment {
    /// Run indices of the entries with fingerprint `fp`.
    fn lookup(&self, fp: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.first_at_least(fp);
        self.fingerprints[start..]
            .iter()
            .take_while(move |&&f| f == fp)
            .zip(&self.runs[start..])
            .map(|(_, &r)| r)
    }

    fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Index of the first fingerprint `>= fp` (the length if none is).
    ///
    /// Fingerprints are hash bits, spread evenly over the `u64` range, so
    /// `fp`'s value says where it should sit: look there first and widen
    /// the window from there. A few probes near one place instead of a
    /// binary search's ~20 cache misses per million keys, once per record.
    fn first_at_least(&self, fp: u64) -> usize {
        let f = &self.fingerprints;
        let n = f.len();
        if n == 0 {
            return 0;
        }
        // < n, as fp < 2^64.
        let guess = ((u128::from(fp) * n as u128) >> 64) as usize;
        // Bracket the answer in [lo, hi], doubling the step away from guess.
        let (mut lo, mut hi);
        let mut step = 1;
        if f[guess] < fp {
            lo = guess + 1;
            loop {
                hi = (guess + step).min(n);
                if hi == n || f[hi] >= fp {
                    break;
                }
                lo = hi + 1;
                step *= 2;
            }
        } else {
            hi = guess;
            loop {
                if step > guess {
                    lo = 0;
                    break;
                }
                let probe = guess - step;
                if f[probe] < fp {
                    lo = probe + 1;
                    break;
                }
                hi = probe;
                step *= 2;
            }
        }
        lo + f[lo..hi].partition_point(|&x| x < fp)
    }

    /// Merge two sorted segments.
    fn merge(a: Segment, b: Segment) -> Segment {
        let n = a.len() + b.len();
        let mut out = Segment {
            fingerprints: Vec::with_capacity(n),
            runs: Vec::with_capacity(n),
        };
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j == b.len() || (i < a.len() && a.fingerprints[i] <= b.fingerprints[j]);
            let (src, k) = if take_a { (&a, &mut i) } else { (&b, &mut j) };
            out.fingerprints.push(src.fingerprints[*k]);
            out.runs.push(src.runs[*k]);
            *k += 1;
        }
        out
    }
}

/// A blocked Bloom filter of fingerprints: each lives in one 512-bit block,
/// as 4 bits. Sized at 16 bits per key (under 1% false positives), it
/// doubles and is refilled from the segments when the keys outgrow it.
struct Bloom {
    blocks: Vec<[u64; 8]>,
    keys: usize,
}

/// Keys a new [`KeySet`]'s Bloom filter is sized for (32 KiB).
const BLOOM_START: usize = 16 << 10;

impl Bloom {
    const BITS_PER_KEY: usize = 16;

    fn with_capacity(keys: usize) -> Self {
        let blocks = (keys * Self::BITS_PER_KEY / 512).next_power_of_two();
        Bloom {
            blocks: vec![[0; 8]; blocks],
            keys: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.blocks.len() * 512 / Self::BITS_PER_KEY
    }

    /// The block from the top bits, the 4 bits from the low 36: fingerprints
    /// are hash bits, so these are independent.
    fn place(&self, fp: u64) -> (usize, [usize; 4]) {
        let block = (fp >> 36) as usize & (self.blocks.len() - 1);
        (
            block,
            std::array::from_fn(|i| (fp >> (9 * i)) as usize & 511),
        )
    }

    fn insert(&mut self, fp: u64) {
        let (b, bits) = self.place(fp);
        let block = &mut self.blocks[b];
        for bit in bits {
            block[bit / 64] |= 1 << (bit % 64);
        }
        self.keys += 1;
    }

    fn may_contain(&self, fp: u64) -> bool {
        let (b, bits) = self.place(fp);
        let block = &self.blocks[b];
        bits.iter()
            .all(|&bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

fn fingerprint(hash: &[u8; 16]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

impl KeySet {
    /// The keys `job` claimed in the intervals committed so far.
    pub fn load(journal: &Journal, job: JobId) -> Result<Self, PassError> {
        let mut set = KeySet::empty();
        journal.for_each_key_run(job, |part, seq, run| {
            let hashes: Vec<[u8; 16]> = run.entries().map(|(h, _, _)| h).collect();
            set.add_run(part, seq, &hashes);
        })?;
        Ok(set)
    }

    fn empty() -> Self {
        KeySet {
            segments: Vec::new(),
            bloom: Bloom::with_capacity(BLOOM_START),
            runs: Vec::new(),
            pending: std::collections::HashMap::new(),
            cached: None,
        }
    }

    /// Index a committed run's hashes.
    fn add_run(&mut self, part: u32, seq: u64, hashes: &[[u8; 16]]) {
        if hashes.is_empty() {
            return;
        }
        let index = self.runs.len() as u32;
        self.runs.push((part, seq));
        let mut fingerprints: Vec<u64> = hashes.iter().map(fingerprint).collect();
        if self.bloom.keys + fingerprints.len() > self.bloom.capacity() {
            let keys = self.bloom.keys + fingerprints.len();
            // Let the old filter go first: peak memory is one filter.
            self.bloom = Bloom::with_capacity(0);
            self.bloom = Bloom::with_capacity(2 * keys);
            for s in &self.segments {
                s.fingerprints.iter().for_each(|&fp| self.bloom.insert(fp));
            }
        }
        fingerprints.iter().for_each(|&fp| self.bloom.insert(fp));
        fingerprints.sort_unstable();
        let mut segment = Segment {
            runs: vec![index; fingerprints.len()],
            fingerprints,
        };
        // Merge while the last segment is no larger than the new one: the
        // segments stay sorted by decreasing size, about log2(n) of them.
        while self
            .segments
            .last()
            .is_some_and(|s| s.len() <= segment.len())
        {
            let last = self.segments.pop().expect("checked");
            segment = Segment::merge(last, segment);
        }
        self.segments.push(segment);
    }

    /// Claim `hash` for record `(ordinal, line)`: `None` if it was free,
    /// else the `(ordinal, line)` of the record that claimed it first.
    pub fn claim(
        &mut self,
        journal: &Journal,
        job: JobId,
        hash: [u8; 16],
        at: (u64, u64),
    ) -> Result<Option<(u64, u64)>, PassError> {
        if let Some(first) = self.pending.get(&hash) {
            return Ok(Some(*first));
        }
        let fp = fingerprint(&hash);
        // Segments are searched only for what the filter may hold.
        let candidates: Vec<u32> = if self.bloom.may_contain(fp) {
            self.segments.iter().flat_map(|s| s.lookup(fp)).collect()
        } else {
            Vec::new()
        };
        for run in candidates {
            if self.cached.as_ref().is_none_or(|(i, _)| *i != run) {
                let (part, seq) = self.runs[run as usize];
                self.cached = Some((run, journal.key_run(job, part, seq)?));
            }
            let (_, keys) = self.cached.as_ref().expect("just cached");
            if let Some(first) = keys.find(&hash) {
                return Ok(Some(first));
            }
        }
        self.pending.insert(hash, at);
        Ok(None)
    }

    /// The pending keys, as the run to commit with the interval.
    pub fn pending_run(&self) -> crate::journal::KeyRun {
        crate::journal::KeyRun::new(
            self.pending
                .iter()
                .map(|(h, (o, l))| (*h, *o, *l))
                .collect(),
        )
    }

    /// The interval was committed as run `(part, seq)`.
    pub fn committed(&mut self, part: u32, seq: u64) {
        // Drained, not replaced: the map keeps its room for the next interval.
        let hashes: Vec<[u8; 16]> = self.pending.drain().map(|(h, _)| h).collect();
        self.add_run(part, seq, &hashes);
    }
}

/// An interval digest as stored in the journal: XXH3-128, hex. Not a
/// security measure (a plugin controls both passes); it catches a plugin
/// that gives different items the second time.
pub(crate) fn digest_hex(h: &Xxh3) -> String {
    format!("xxh3:{:032x}", h.digest128())
}

/// Feed an item's content to an interval digest.
pub(crate) fn digest_item(h: &mut Xxh3, item: &Item) {
    match item {
        Item::Record(r) => r.digest_into(h),
        Item::Error(e) | Item::Fatal(e) => {
            h.update(if matches!(item, Item::Error(_)) {
                b"E"
            } else {
                b"F"
            });
            digest_error(h, e);
        }
        Item::End => h.update(b"Z"),
    }
}

fn digest_error(h: &mut Xxh3, e: &RecordError) {
    let l = e.location;
    for n in [l.ordinal, l.offset, l.length, l.line] {
        h.update(&n.to_le_bytes());
    }
    for s in [
        e.code.as_str(),
        e.message.as_str(),
        e.field.as_deref().unwrap_or(""),
    ] {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
}

/// One interval being accumulated.
struct Group {
    seq: u64,
    first: u64,
    last: u64,
    end_offset: u64,
    errors: Vec<(u64, ErrorEntry)>,
    counts: Counts,
}

impl Group {
    fn new(seq: u64, first: u64) -> Self {
        Group {
            seq,
            first,
            last: first.saturating_sub(1),
            end_offset: 0,
            errors: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// Run pass 1 over one part, from where the journal says it stopped, to the
/// end. Commits every interval.
pub(crate) fn scan_part(ctx: &PartCtx, keys: &mut KeySet) -> Result<(), PassError> {
    let intervals = ctx.journal.intervals(ctx.job, ctx.part.index)?;
    let last = intervals.last().cloned();
    let _span = tracing::info_span!("scan", job = ctx.job, part = ctx.part.index).entered();
    // Parsing runs on its own thread and hands batches over as the plugin
    // returns them (checked for order, not yet decoded); this thread decodes
    // them, digests the items, finds their identities, claims keys, records
    // errors, stages records and commits. When this thread falls behind,
    // the parse thread decodes batches too.
    let queue = ctx.config.scan_queue.max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, PassError>>(queue);
    let mut stage = Staging {
        writer: ctx.stage.then(|| {
            StageWriter::create(
                &ctx.spool,
                &ctx.part.spool.file,
                ctx.config.stage_reserve_bytes,
            )
        }),
        encoder: Encoder::default(),
    };
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name("sluice-scan-parse".into())
            .spawn_scoped(scope, move || {
                if let Err(e) = parse_chunks(ctx, last.as_ref(), &tx) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| PassError::Inconsistent(format!("cannot start the parse thread: {e}")))?;
        let result = validate_chunks(ctx, keys, &intervals, &rx, &mut stage);
        // Dropping the receiver stops the producer at its next send.
        drop(rx);
        let _ = producer.join();
        result
    })
}

/// Most records asked of the plugin per call.
pub(crate) const BATCH_RECORDS: u64 = 256;
/// Most record bytes asked of the plugin per call: a batch costs the plugin
/// about this much memory on top of its own.
pub(crate) const BATCH_BYTES: u64 = 1 << 20;

/// What the parse thread sends.
enum Chunk {
    Items(Batch),
    /// A batch the parse thread decoded itself, finding the queue full.
    Decoded(Vec<Item>),
    /// The interval ends after the items sent so far; `resume` is where a
    /// parse can continue from. `end`: the part ended.
    Cut {
        resume: Option<Checkpoint>,
        end: bool,
    },
}

/// The record stage, as the validating thread writes it.
struct Staging {
    writer: Option<StageWriter>,
    /// The current interval's records.
    encoder: Encoder,
}

/// Parse the part from where the journal says pass 1 stopped, cutting it
/// into intervals (by item count and record bytes) with a checkpoint at
/// each cut.
fn parse_chunks(
    ctx: &PartCtx,
    last: Option<&Interval>,
    tx: &std::sync::mpsc::SyncSender<Result<Chunk, PassError>>,
) -> Result<(), PassError> {
    let (mut parse, skip_to) = ctx.open(last)?;
    let send = |c: Chunk| tx.send(Ok(c)).map_err(|_| PassError::Stopped);
    let cut = |resume, end| send(Chunk::Cut { resume, end });
    // A plugin that cannot resume is replayed up to where pass 1 stopped.
    while parse.items_done() < skip_to {
        if ctx.stopped() {
            return Err(PassError::Stopped);
        }
        if matches!(parse.next()?, Item::End) {
            return cut(None, true);
        }
    }
    let (max_items, max_bytes) = (ctx.config.interval_items, ctx.config.interval_bytes);
    let (mut items, mut bytes) = (0u64, 0u64);
    loop {
        if ctx.stopped() {
            return Err(PassError::Stopped);
        }
        // Asking for no more than the interval has room for ends each
        // batch where the interval may end, so its checkpoint is right.
        let batch = parse.next_batch(
            (max_items - items).min(BATCH_RECORDS) as u32,
            (max_bytes - bytes).min(BATCH_BYTES) as u32,
        )?;
        items += batch.len() as u64;
        bytes += batch.size_bytes();
        let end = batch.ends();
        // With the queue full the validating thread is the slower one:
        // decoding here, instead of waiting, shares its work.
        match tx.try_send(Ok(Chunk::Items(batch))) {
            Ok(()) => {}
            Err(TrySendError::Full(Ok(Chunk::Items(batch)))) => {
                let mut decoded = Vec::with_capacity(batch.len());
                batch.decode(&mut decoded)?;
                send(Chunk::Decoded(decoded))?;
            }
            Err(_) => return Err(PassError::Stopped),
        }
        if items >= max_items || bytes >= max_bytes || end {
            cut(if end { None } else { parse.checkpoint()? }, end)?;
            (items, bytes) = (0, 0);
            if end {
                return Ok(());
            }
        }
    }
}

/// Validate the items the parse thread sends and commit each interval.
fn validate_chunks(
    ctx: &PartCtx,
    keys: &mut KeySet,
    intervals: &[Interval],
    rx: &std::sync::mpsc::Receiver<Result<Chunk, PassError>>,
    stage: &mut Staging,
) -> Result<(), PassError> {
    let mut items = Vec::with_capacity(BATCH_RECORDS as usize + 1);
    let last = intervals.last();
    let mut digest = Xxh3::new();
    let mut group = Group::new(intervals.len() as u64, last.map_or(1, |i| i.last + 1));
    let mut offset_before = last.map_or(0, |i| i.end_offset);
    loop {
        let Ok(chunk) = rx.recv() else {
            return Err(PassError::Stopped);
        };
        match chunk? {
            Chunk::Items(batch) => {
                batch.decode(&mut items)?;
                validate_items(ctx, &mut group, keys, &mut digest, stage, &mut items)?;
            }
            Chunk::Decoded(mut decoded) => {
                validate_items(ctx, &mut group, keys, &mut digest, stage, &mut decoded)?;
            }
            Chunk::Cut { resume, end } => {
                let digest = digest_hex(&std::mem::replace(&mut digest, Xxh3::new()));
                let scanned_to = group.end_offset.max(offset_before);
                commit(
                    ctx,
                    &mut group,
                    keys,
                    Cut {
                        digest,
                        resume,
                        done: end,
                        scanned_bytes: scanned_to - offset_before,
                    },
                    stage,
                )?;
                offset_before = scanned_to;
                if end {
                    return Ok(());
                }
            }
        }
    }
}

/// Digest, stage and account decoded items, leaving `items` empty.
fn validate_items(
    ctx: &PartCtx,
    group: &mut Group,
    keys: &mut KeySet,
    digest: &mut Xxh3,
    stage: &mut Staging,
    items: &mut Vec<Item>,
) -> Result<(), PassError> {
    // The end is not an item of any interval (pass 2 never sees it in
    // one), so it is not digested.
    for item in items.iter().filter(|i| !matches!(i, Item::End)) {
        digest_item(digest, item);
        if let (Item::Record(r), Some(w)) = (item, &stage.writer)
            && w.is_active()
        {
            stage.encoder.push(r);
        }
        accept(ctx, group, keys, item)?;
        if group.counts.scanned == ctx.config.interval_items / 2 {
            faults::point("scan.mid-interval");
        }
    }
    items.clear();
    Ok(())
}

/// Account one item to the group.
fn accept(ctx: &PartCtx, g: &mut Group, keys: &mut KeySet, item: &Item) -> Result<(), PassError> {
    let record = match item {
        Item::Record(r) => r,
        Item::Error(e) | Item::Fatal(e) => {
            g.counts.scanned += 1;
            g.last = e.location.ordinal;
            g.end_offset = e.location.end();
            let entry = ctx.error_entry(
                Stage::Parse,
                &e.code,
                &e.message,
                e.field.clone(),
                e.location,
            )?;
            reject(g, e.location.ordinal, entry);
            return Ok(());
        }
        Item::End => return Ok(()),
    };
    let loc = record.location();
    g.counts.scanned += 1;
    g.last = loc.ordinal;
    g.end_offset = loc.end();
    match ctx.key_of(record) {
        // A key derived from the position is unique by construction: pass 1
        // need not build it.
        Ok((_, None)) => {}
        Ok((kind, Some(key))) => {
            let hash = key_hash(kind, &key);
            if let Some((first, line)) =
                keys.claim(&ctx.journal, ctx.job, hash, (loc.ordinal, loc.line))?
            {
                let message = format!(
                    "this record's key is already used by record {first} (line {line}); \
                     keys must be unique within an import"
                );
                let e = ctx.error_entry(
                    Stage::Validate,
                    "duplicate-key",
                    &message,
                    ctx.key_field.clone(),
                    loc,
                )?;
                reject(g, loc.ordinal, e);
            }
        }
        Err(NoIdentity {
            code,
            message,
            field,
        }) => {
            let e = ctx.error_entry(Stage::Validate, code, &message, field, loc)?;
            reject(g, loc.ordinal, e);
        }
    }
    Ok(())
}

fn reject(g: &mut Group, ordinal: u64, e: ErrorEntry) {
    g.counts.rejected += 1;
    g.errors.push((ordinal, e));
}

/// Where the parse thread cut an interval.
struct Cut {
    /// Digest of the interval's items.
    digest: String,
    /// Where a parse can continue from.
    resume: Option<Checkpoint>,
    /// The part ended.
    done: bool,
    /// Input bytes the interval covers.
    scanned_bytes: u64,
}

/// Commit the group: interval, errors, keys, counters. Starts the next group.
fn commit(
    ctx: &PartCtx,
    g: &mut Group,
    keys: &mut KeySet,
    cut: Cut,
    stage: &mut Staging,
) -> Result<(), PassError> {
    let Cut {
        digest,
        resume,
        done,
        scanned_bytes,
    } = cut;
    let mut finished = std::mem::replace(g, Group::new(g.seq + 1, g.last + 1));
    finished.counts.scanned_bytes = scanned_bytes;
    let interval = (!finished.is_empty()).then_some(Interval {
        first: finished.first,
        last: finished.last,
        end_offset: finished.end_offset,
        digest,
        resume,
    });
    // Staged before the commit, so a committed interval's block is in the
    // stage unless the machine lost it; pass 2 checks it either way.
    if let Some(writer) = &mut stage.writer {
        if let Some(interval) = &interval {
            let payload = stage.encoder.payload();
            writer.write_block(finished.seq, interval, finished.counts.scanned, payload);
        }
        stage.encoder.clear();
    }
    faults::point("scan.before-commit");
    let run = keys.pending_run();
    let job = ctx.job;
    let part_index = ctx.part.index;
    ctx.journal.write(|tx| {
        let counts = finished.counts.clone();
        let mut errors = std::mem::take(&mut finished.errors);
        errors.sort_by_key(|(o, _)| *o);
        if let Some(interval) = &interval {
            tx.put_interval(job, part_index, finished.seq, interval)?;
        }
        if !run.is_empty() {
            tx.put_key_run(job, part_index, finished.seq, &run)?;
        }
        ctx.commit_interval(tx, &counts, &errors, |part| {
            if let Some(interval) = &interval {
                part.scan.intervals = finished.seq + 1;
                part.scan.ordinal = interval.last;
                part.scan.offset = interval.end_offset;
            }
            part.scan.done = done;
        })
    })?;
    keys.committed(part_index, finished.seq);
    faults::point("scan.after-commit");
    Ok(())
}

#[cfg(test)]
mod key_set_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn first_at_least_agrees_with_a_binary_search(
            mut fps in proptest::collection::vec(any::<u64>(), 0..300),
            skewed in any::<bool>(),
            probes in proptest::collection::vec(any::<u64>(), 1..20),
        ) {
            if skewed {
                // Bunched values defeat the guess: the search must still be right.
                for f in &mut fps {
                    *f >>= 50;
                }
            }
            fps.sort_unstable();
            let seg = Segment { runs: vec![0; fps.len()], fingerprints: fps.clone() };
            let mut all = probes;
            all.extend(fps.iter().copied());
            all.extend(fps.iter().map(|f| f.wrapping_add(1)));
            all.extend([0, u64::MAX]);
            for fp in all {
                prop_assert_eq!(seg.first_at_least(fp), fps.partition_point(|&x| x < fp), "fp {}", fp);
            }
        }
    }

    #[test]
    fn segments_merge_and_find_every_key() {
        let mut set = KeySet::empty();
        let hash = |i: u64| -> [u8; 16] {
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
            h
        };
        for run in 0..37u64 {
            let hashes: Vec<_> = (run * 100..run * 100 + 100).map(hash).collect();
            set.add_run(0, run, &hashes);
        }
        assert!(set.segments.len() <= 7, "{} segments", set.segments.len());
        for i in 0..3700u64 {
            let runs: Vec<u32> = set
                .segments
                .iter()
                .flat_map(|s| s.lookup(fingerprint(&hash(i))))
                .collect();
            assert_eq!(runs, [(i / 100) as u32], "key {i}");
        }
        assert!(set.segments.iter().all(|s| s.fingerprints.is_sorted()));
        assert!((0..3700).all(|i| set.bloom.may_contain(fingerprint(&hash(i)))));
    }

    #[test]
    fn the_bloom_filter_grows_keeps_every_key_and_rarely_errs() {
        let mut set = KeySet::empty();
        let hash =
            |i: u64| -> [u8; 16] { Sha256::digest(i.to_le_bytes())[..16].try_into().unwrap() };
        for run in 0..100u64 {
            let hashes: Vec<[u8; 16]> = (run * 1000..run * 1000 + 1000).map(hash).collect();
            set.add_run(0, run, &hashes);
        }
        assert_eq!(set.bloom.keys, 100_000);
        assert!(set.bloom.capacity() >= 100_000);
        assert!((0..100_000).all(|i| set.bloom.may_contain(fingerprint(&hash(i)))));
        let false_positives = (100_000..200_000)
            .filter(|&i| set.bloom.may_contain(fingerprint(&hash(i))))
            .count();
        assert!(false_positives < 1000, "{false_positives} in 100,000");
    }
}

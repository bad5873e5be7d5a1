//! The embedded store: a redb database in the data directory holding
//! records by `(tenant, kind, key)`. The target a user gets with no setup.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `records` | (tenant, kind, key) | encoded record (below) |
//! | `layouts` | layout id | JSON `{kind, fields}` |
//! | `history` | (job, part, first ordinal) | one batch's undo log: per record, identity and before-image |
//!
//! A batch's history is one value written in the same transaction as its
//! records (one B-tree insert per batch rather than per record: half the
//! tree work of an apply). When a batch is applied again after a crash, the
//! entries already logged win: they hold the true before-image (the state
//! before this job), not the job's own earlier write. Every record value
//! carries its provenance (job, part, ordinal), so undo tells a record still
//! as the job left it from one another job changed since. Undo consumes
//! entries newest first in the transaction that restores their records,
//! writing back what is left of a batch's log, so an interrupted undo resumes
//! where it stopped.
//!
//! A history value is: the tenant (u32 length and bytes), then per record in
//! ascending ordinal order: ordinal (u64), kind and key (each a u32 length
//! and bytes), a before flag byte and, if 1, the before-image (u32 length
//! and bytes).
//!
//! A record value is: version byte (2), job (u64), part (u32), ordinal
//! (u64), layout id (u64), value count (u32), each value as a tag byte and
//! its payload (bool 1 byte, integer and float 8, text and bytes their
//! length as a LEB128 varint), then the bytes of the text and bytes values
//! in field order. Fixed-size integers are little-endian. Field names live
//! once per layout, not per record; short values cost two bytes besides
//! their text.
//!
//! Upserting by identity makes apply idempotent; every batch commits with
//! two-phase commit, like the journal. A batch's records are written in key
//! order through one cursor (see `upsert`), so a run of new keys is packed
//! into full leaves at once.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest as _, Sha256};

use super::{Batch, Ledger, Outcome, Sink, SinkError, UndoAction, UndoEntry, UndoPage, UndoScope};
use crate::codec::{Decoder, put_varint};
use crate::record::{Layout, Record, Slot, Value, tag};

const RECORDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("records");
const LAYOUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("layouts");
// Named for its format: a store written with per-record history entries
// (an earlier development format) is not read as batch logs.
const HISTORY: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("history-batches");

/// Version of the record value encoding (below). 2: text and bytes as
/// lengths, their bytes in field order after the values.
const VERSION: u8 = 2;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the store {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("store read or write failed: {0}")]
    Storage(String),
    #[error("stored record {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// The embedded store.
pub struct EmbeddedStore {
    db: Database,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// One stored record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub tenant: String,
    pub kind: String,
    pub key: String,
    pub fields: Map<String, Json>,
    pub job: u64,
    pub part: u32,
    pub ordinal: u64,
}

impl StoredRecord {
    /// The export line: `{"tenant":…,"kind":…,"key":…,"fields":{…}}`.
    pub fn to_json(&self) -> Json {
        json!({"tenant": self.tenant, "kind": self.kind, "key": self.key, "fields": self.fields})
    }
}

/// Stable id of a layout: the first 8 bytes of the SHA-256 of its JSON.
fn layout_json(layout: &Layout) -> Vec<u8> {
    serde_json::to_vec(&json!({"kind": layout.kind, "fields": layout.fields})).expect("serializes")
}

fn layout_id(json: &[u8]) -> u64 {
    let d = Sha256::digest(json);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn encode(out: &mut Vec<u8>, job: u64, part: u32, ordinal: u64, layout: u64, r: &Record) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(&job.to_le_bytes());
    out.extend_from_slice(&part.to_le_bytes());
    out.extend_from_slice(&ordinal.to_le_bytes());
    out.extend_from_slice(&layout.to_le_bytes());
    out.extend_from_slice(&(r.slots.len() as u32).to_le_bytes());
    for slot in &r.slots {
        match *slot {
            Slot::Null => out.push(tag::NULL),
            Slot::Boolean(b) => out.extend_from_slice(&[tag::BOOLEAN, u8::from(b)]),
            Slot::Integer(i) => {
                out.push(tag::INTEGER);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Slot::Float(x) => {
                out.push(tag::FLOAT);
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            Slot::Text(s) | Slot::Bytes(s) => {
                out.push(slot.tag());
                put_varint(out, u64::from(s.len));
            }
        }
    }
    // The text and bytes values follow in field order: their starts are
    // implied, so each costs a one- or two-byte length instead of a span.
    for slot in &r.slots {
        if let Slot::Text(s) | Slot::Bytes(s) = *slot {
            out.extend_from_slice(&r.data[s.range()]);
        }
    }
}

struct Decoded {
    job: u64,
    part: u32,
    ordinal: u64,
    layout: u64,
    values: Vec<Json>,
}

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut d = Decoder { buf: bytes };
    if d.u8()? != VERSION {
        return None;
    }
    let (job, part, ordinal, layout) = (d.u64()?, d.u32()?, d.u64()?, d.u64()?);
    let n = d.u32()? as usize;
    // Scalars inline, text and bytes as lengths of the runs that follow.
    enum Raw {
        Value(Value<'static>),
        Text(usize),
        Bytes(usize),
    }
    let mut raw = Vec::with_capacity(n.min(65_536));
    for _ in 0..n {
        raw.push(match d.u8()? {
            tag::NULL => Raw::Value(Value::Null),
            tag::BOOLEAN => Raw::Value(Value::Bool(d.u8()? != 0)),
            tag::INTEGER => Raw::Value(Value::Int(d.u64()? as i64)),
            tag::FLOAT => Raw::Value(Value::Float(f64::from_bits(d.u64()?))),
            tag::TEXT => Raw::Text(usize::try_from(d.varint()?).ok()?),
            tag::BYTES => Raw::Bytes(usize::try_from(d.varint()?).ok()?),
            _ => return None,
        });
    }
    let mut values = Vec::with_capacity(raw.len());
    for r in raw {
        let v = match r {
            Raw::Value(v) => v.to_json(),
            Raw::Text(len) => Value::Text(std::str::from_utf8(d.take(len)?).ok()?).to_json(),
            Raw::Bytes(len) => Value::Bytes(d.take(len)?).to_json(),
        };
        values.push(v);
    }
    if !d.buf.is_empty() {
        return None;
    }
    Some(Decoded {
        job,
        part,
        ordinal,
        layout,
        values,
    })
}

impl EmbeddedStore {
    /// Open (or create) the store file; several processes may share it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = crate::journal::open_database(path).map_err(|detail| StoreError::Open {
            path: path.display().to_string(),
            detail,
        })?;
        Self::init(db)
    }

    /// Open a store on another storage backend (power-loss tests).
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(crate::journal::CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| StoreError::Open {
                path: "(backend)".into(),
                detail: e.to_string(),
            })?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        // Opening an initialised store writes nothing.
        let ready = db
            .begin_read()
            .map_err(storage)?
            .open_table(HISTORY)
            .is_ok();
        if ready {
            return Ok(EmbeddedStore { db });
        }
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_two_phase_commit(true);
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(LAYOUTS).map_err(storage)?;
        txn.open_table(HISTORY).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(EmbeddedStore { db })
    }

    /// Upsert a batch and its history in one transaction.
    pub fn apply_sync(&self, batch: &Batch) -> Result<(), SinkError> {
        let io = |e: &dyn std::fmt::Display| SinkError::Io(e.to_string());
        let Some(first) = batch.items.first().map(|i| i.ordinal) else {
            return Ok(());
        };
        let mut txn = self.db.begin_write().map_err(|e| io(&e))?;
        txn.set_two_phase_commit(true);
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| io(&e))?;
            let mut layouts = txn.open_table(LAYOUTS).map_err(|e| io(&e))?;
            let mut history = txn.open_table(HISTORY).map_err(|e| io(&e))?;
            // Records of a batch share a few layouts: look each up once.
            let mut ids: HashMap<*const Layout, u64> = HashMap::new();
            let mut layout_ids = Vec::with_capacity(batch.items.len());
            for item in &batch.items {
                let ptr = Arc::as_ptr(item.record.layout());
                let id = match ids.get(&ptr) {
                    Some(id) => *id,
                    None => {
                        let json = layout_json(item.record.layout());
                        let id = layout_id(&json);
                        if layouts.get(id).map_err(|e| io(&e))?.is_none() {
                            layouts.insert(id, json.as_slice()).map_err(|e| io(&e))?;
                        }
                        ids.insert(ptr, id);
                        id
                    }
                };
                layout_ids.push(id);
            }
            let befores = upsert(&mut records, batch, &layout_ids)?;
            let mut log = BatchLog::new(&batch.tenant);
            for (item, before) in batch.items.iter().zip(&befores) {
                log.push(item.ordinal, &item.kind, &item.key, before.as_deref());
            }
            let at = (batch.job, batch.part, first);
            let earlier = history
                .get(at)
                .map_err(|e| io(&e))?
                .map(|v| v.value().to_vec());
            let value = match earlier {
                // Applied again after a crash: keep what was logged first.
                Some(earlier) => {
                    let earlier = BatchLog::decode(&earlier).ok_or_else(|| {
                        SinkError::Io(format!(
                            "history of job {} part {} from record {first} is corrupt",
                            batch.job, batch.part
                        ))
                    })?;
                    let fresh = BatchLog::decode(&log.out).expect("just encoded");
                    merge_logs(&batch.tenant, earlier, fresh)
                }
                None => log.out,
            };
            history.insert(at, value.as_slice()).map_err(|e| io(&e))?;
        }
        crate::faults::point("apply.mid-target-commit");
        txn.commit().map_err(|e| io(&e))
    }

    /// Undo up to `limit` history entries of `job` in `scope`, newest first,
    /// in one transaction.
    pub fn undo_sync(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
    ) -> Result<UndoPage, SinkError> {
        let io = |e: &dyn std::fmt::Display| SinkError::Io(e.to_string());
        let mut txn = self.db.begin_write().map_err(|e| io(&e))?;
        txn.set_two_phase_commit(true);
        let mut page = UndoPage::default();
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| io(&e))?;
            let mut history = txn.open_table(HISTORY).map_err(|e| io(&e))?;
            // The newest batch logs holding `limit` entries in scope (or all
            // of them): what this page works through.
            let mut due: Vec<((u64, u32, u64), OwnedLog)> = Vec::new();
            let mut found = 0;
            for entry in history
                .range((job, 0, 0)..=(job, u32::MAX, u64::MAX))
                .map_err(|e| io(&e))?
                .rev()
            {
                if found >= limit {
                    break;
                }
                let (k, v) = entry.map_err(|e| io(&e))?;
                let (_, part, first) = k.value();
                let log = BatchLog::decode(v.value()).ok_or_else(|| {
                    SinkError::Io(format!(
                        "history of job {job} part {part} from record {first} is corrupt"
                    ))
                })?;
                let in_scope = log
                    .entries
                    .iter()
                    .filter(|e| scope.covers(part, e.ordinal))
                    .count();
                if in_scope > 0 {
                    found += in_scope;
                    due.push((k.value(), log));
                }
            }
            page.done = found < limit;
            let mut budget = limit;
            for ((_, part, first), mut log) in due {
                // Newest first; what is left is a prefix of the log: entries
                // out of scope (at or below a watermark) and those past the
                // budget.
                let mut keep = log.entries.len();
                while keep > 0 && budget > 0 {
                    let e = &log.entries[keep - 1];
                    if !scope.covers(part, e.ordinal) {
                        break;
                    }
                    let identity = (log.tenant.as_str(), e.kind.as_str(), e.key.as_str());
                    let current = records
                        .get(identity)
                        .map_err(|e| io(&e))?
                        .map(|v| v.value().to_vec());
                    let ours = current
                        .as_deref()
                        .and_then(provenance)
                        .is_some_and(|p| p == (job, part, e.ordinal));
                    let action = if ours {
                        match &e.before {
                            Some(b) => {
                                records.insert(identity, b.as_slice()).map_err(|e| io(&e))?;
                                UndoAction::Restored
                            }
                            None => {
                                records.remove(identity).map_err(|e| io(&e))?;
                                UndoAction::Removed
                            }
                        }
                    } else if current.as_deref() == e.before.as_deref() {
                        UndoAction::Unchanged
                    } else {
                        UndoAction::KeptChanged
                    };
                    page.entries.push(UndoEntry {
                        part,
                        ordinal: e.ordinal,
                        kind: e.kind.clone(),
                        key: e.key.clone(),
                        action,
                        message: None,
                    });
                    keep -= 1;
                    budget -= 1;
                }
                if keep == 0 {
                    history.remove((job, part, first)).map_err(|e| io(&e))?;
                } else if keep < log.entries.len() {
                    log.entries.truncate(keep);
                    let rest = log.encode();
                    history
                        .insert((job, part, first), rest.as_slice())
                        .map_err(|e| io(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| io(&e))?;
        Ok(page)
    }

    /// Every record of `tenant` (or of all tenants), sorted by tenant, kind,
    /// key, to `f`.
    pub fn for_each(
        &self,
        tenant: Option<&str>,
        mut f: impl FnMut(StoredRecord) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let r = self.db.begin_read().map_err(storage)?;
        let records = r.open_table(RECORDS).map_err(storage)?;
        let layouts = r.open_table(LAYOUTS).map_err(storage)?;
        let mut names: HashMap<u64, Vec<String>> = HashMap::new();
        let iter = match tenant {
            Some(t) => records.range((t, "", "")..).map_err(storage)?,
            None => records.iter().map_err(storage)?,
        };
        for entry in iter {
            let (k, v) = entry.map_err(storage)?;
            let (t, kind, key) = k.value();
            if tenant.is_some_and(|want| want != t) {
                break;
            }
            let what = || format!("{t}/{kind}/{key}");
            let d = decode(v.value()).ok_or_else(|| StoreError::Corrupt {
                what: what(),
                detail: "undecodable value".into(),
            })?;
            if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(d.layout) {
                let l =
                    layouts
                        .get(d.layout)
                        .map_err(storage)?
                        .ok_or_else(|| StoreError::Corrupt {
                            what: what(),
                            detail: format!("layout {:x} missing", d.layout),
                        })?;
                let parsed: Json =
                    serde_json::from_slice(l.value()).map_err(|e| StoreError::Corrupt {
                        what: what(),
                        detail: e.to_string(),
                    })?;
                let fields = parsed["fields"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                slot.insert(fields);
            }
            let fields = names[&d.layout].iter().cloned().zip(d.values).collect();
            f(StoredRecord {
                tenant: t.to_owned(),
                kind: kind.to_owned(),
                key: key.to_owned(),
                fields,
                job: d.job,
                part: d.part,
                ordinal: d.ordinal,
            })
            .map_err(storage)?;
        }
        Ok(())
    }

    /// Write the store's records as JSON lines, sorted by tenant, kind and
    /// key.
    pub fn export(&self, tenant: Option<&str>, out: &mut dyn Write) -> Result<u64, StoreError> {
        let mut n = 0;
        self.for_each(tenant, |r| {
            n += 1;
            writeln!(out, "{}", r.to_json())
        })?;
        Ok(n)
    }
}

/// A cursor that took fewer keys than this before the next stored key
/// got in its way ...
const SHORT_RUN: usize = 4;
/// ... means the next this many keys are written one by one before a
/// cursor is tried again.
const PLAIN_STRETCH: usize = 64;

type RecordsTable<'t> = redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>;

/// Write a batch's records, returning each one's before-image, in batch
/// order.
///
/// The records go in key order through a cursor: a run of ascending inserts
/// into one gap is buffered and packed into full leaves at once, instead of
/// descending the tree and splitting a leaf record by record. That is most
/// of the store's time on a fresh import, whose keys often arrive in order.
/// A key already stored is replaced in place (its old value is the
/// before-image); when the next stored key is below the one to write, the
/// cursor seeks again, unless cursors have been taking only a key or two,
/// when plain inserts (still in key order) are cheaper.
fn upsert(
    records: &mut RecordsTable<'_>,
    batch: &Batch,
    layouts: &[u64],
) -> Result<Vec<Option<Vec<u8>>>, SinkError> {
    let io = |e: &dyn std::fmt::Display| SinkError::Io(e.to_string());
    let items = &batch.items;
    let tenant = batch.tenant.as_str();
    let identity = |i: usize| (tenant, items[i].kind.as_str(), items[i].key.as_str());
    let mut befores: Vec<Option<Vec<u8>>> = vec![None; items.len()];
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| identity(a).cmp(&identity(b)));
    let mut buf = Vec::new();
    let encode_item = |buf: &mut Vec<u8>, i: usize| {
        let item = &items[i];
        encode(
            buf,
            batch.job,
            batch.part,
            item.ordinal,
            layouts[i],
            &item.record,
        );
    };
    // Items before this index are written one by one: a cursor costs more
    // than a plain insert when it takes only a key or two, as with random
    // keys spread over a large table.
    let mut plain_until = 0;
    if order.windows(2).any(|w| identity(w[0]) == identity(w[1])) {
        // One identity twice in a batch: the later record wins, so every
        // record is written one by one in batch order, each seeing the one
        // before as its before-image.
        order.sort_unstable();
        plain_until = order.len();
    }
    let mut next = 0;
    while next < order.len() {
        if next < plain_until {
            let i = order[next];
            encode_item(&mut buf, i);
            befores[i] = records
                .insert(identity(i), buf.as_slice())
                .map_err(|e| io(&e))?
                .map(|v| v.value().to_vec());
            next += 1;
            continue;
        }
        let run_start = next;
        let mut cursor = records
            .lower_bound_mut(std::ops::Bound::Included(identity(order[next])))
            .map_err(|e| io(&e))?;
        while next < order.len() {
            let i = order[next];
            let id = identity(i);
            let stored = match cursor.peek_next().map_err(|e| io(&e))? {
                None => std::cmp::Ordering::Greater,
                Some((k, v)) => {
                    let ord = k.value().cmp(&id);
                    if ord.is_eq() {
                        befores[i] = Some(v.value().to_vec());
                    }
                    ord
                }
            };
            if stored.is_lt() {
                break; // seek again
            }
            if stored.is_eq() {
                cursor.remove_next().map_err(|e| io(&e))?;
            }
            encode_item(&mut buf, i);
            cursor
                .insert_before(id, buf.as_slice())
                .map_err(|e| io(&e))?;
            next += 1;
        }
        cursor.close().map_err(|e| io(&e))?;
        if next - run_start < SHORT_RUN {
            plain_until = next + PLAIN_STRETCH;
        }
    }
    Ok(befores)
}

/// The (job, part, ordinal) that wrote a stored value.
fn provenance(value: &[u8]) -> Option<(u64, u32, u64)> {
    let mut d = Decoder { buf: value };
    if d.u8()? != VERSION {
        return None;
    }
    Some((d.u64()?, d.u32()?, d.u64()?))
}

/// One batch's history, being written.
struct BatchLog {
    out: Vec<u8>,
}

impl BatchLog {
    fn new(tenant: &str) -> Self {
        let mut log = BatchLog { out: Vec::new() };
        log.text(tenant);
        log
    }

    fn text(&mut self, s: &str) {
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Log one record; entries must come in ascending ordinal order.
    fn push(&mut self, ordinal: u64, kind: &str, key: &str, before: Option<&[u8]>) {
        self.out.extend_from_slice(&ordinal.to_le_bytes());
        self.text(kind);
        self.text(key);
        match before {
            Some(b) => {
                self.out.push(1);
                self.out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                self.out.extend_from_slice(b);
            }
            None => self.out.push(0),
        }
    }

    fn decode(bytes: &[u8]) -> Option<OwnedLog> {
        let mut d = Decoder { buf: bytes };
        fn text(d: &mut Decoder<'_>) -> Option<String> {
            let n = d.u32()? as usize;
            String::from_utf8(d.take(n)?.to_vec()).ok()
        }
        let tenant = text(&mut d)?;
        let mut entries = Vec::new();
        while !d.buf.is_empty() {
            let ordinal = d.u64()?;
            let (kind, key) = (text(&mut d)?, text(&mut d)?);
            let before = match d.u8()? {
                0 => None,
                _ => {
                    let n = d.u32()? as usize;
                    Some(d.take(n)?.to_vec())
                }
            };
            entries.push(OwnedEntry {
                ordinal,
                kind,
                key,
                before,
            });
        }
        Some(OwnedLog { tenant, entries })
    }
}

/// One batch's history, read back.
#[derive(Debug, PartialEq)]
struct OwnedLog {
    tenant: String,
    /// In ascending ordinal order.
    entries: Vec<OwnedEntry>,
}

#[derive(Debug, Clone, PartialEq)]
struct OwnedEntry {
    ordinal: u64,
    kind: String,
    key: String,
    before: Option<Vec<u8>>,
}

impl OwnedLog {
    fn encode(&self) -> Vec<u8> {
        let mut log = BatchLog::new(&self.tenant);
        for e in &self.entries {
            log.push(e.ordinal, &e.kind, &e.key, e.before.as_deref());
        }
        log.out
    }
}

/// The log of a batch applied again: entries logged the first time win
/// (their before-images predate the job); records only the new apply
/// wrote are added.
fn merge_logs(tenant: &str, earlier: OwnedLog, fresh: OwnedLog) -> Vec<u8> {
    let mut entries = earlier.entries;
    let known: std::collections::HashSet<u64> = entries.iter().map(|e| e.ordinal).collect();
    entries.extend(
        fresh
            .entries
            .into_iter()
            .filter(|e| !known.contains(&e.ordinal)),
    );
    entries.sort_by_key(|e| e.ordinal);
    OwnedLog {
        tenant: tenant.to_owned(),
        entries,
    }
    .encode()
}

#[async_trait::async_trait]
impl Sink for Arc<EmbeddedStore> {
    fn name(&self) -> &str {
        "embedded"
    }

    async fn apply(
        &self,
        batch: Arc<Batch>,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError> {
        let store = self.clone();
        let n = batch.items.len();
        tokio::task::spawn_blocking(move || store.apply_sync(&batch))
            .await
            .map_err(|e| SinkError::Io(e.to_string()))??;
        Ok(vec![Outcome::Applied; n])
    }

    async fn undo(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError> {
        let store = self.clone();
        let scope = scope.clone();
        tokio::task::spawn_blocking(move || store.undo_sync(job, &scope, limit))
            .await
            .map_err(|e| SinkError::Io(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Location, Span};
    use crate::sink::BatchItem;

    fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        (dir, s)
    }

    /// A batch of job `job` writing `value` under each key, ordinals from
    /// `first`.
    fn batch(job: u64, first: u64, keys: &[&str], value: &str) -> Batch {
        let layout = Arc::new(Layout::new(None, vec!["v".into()]));
        let items = keys
            .iter()
            .enumerate()
            .map(|(i, key)| BatchItem {
                ordinal: first + i as u64,
                kind: "item".into(),
                key: (*key).into(),
                record: Record {
                    layout: layout.clone(),
                    slots: vec![Slot::Text(Span {
                        start: 0,
                        len: value.len() as u32,
                    })],
                    key: None,
                    data: value.as_bytes().to_vec(),
                    location: Location {
                        offset: 0,
                        length: 1,
                        line: 1,
                        ordinal: first + i as u64,
                    },
                },
            })
            .collect();
        Batch {
            job,
            part: 0,
            tenant: "t".into(),
            items,
        }
    }

    /// `key=value` of every stored record, sorted.
    fn contents(s: &EmbeddedStore) -> Vec<String> {
        let mut out = Vec::new();
        s.for_each(None, |r| {
            out.push(format!("{}={}", r.key, r.fields["v"]));
            Ok(())
        })
        .unwrap();
        out
    }

    /// Undo `job` in `scope` page by page; the actions taken, in order.
    fn undo_all(
        s: &EmbeddedStore,
        job: u64,
        scope: &UndoScope,
        limit: usize,
    ) -> Vec<(u64, UndoAction)> {
        let mut done = Vec::new();
        loop {
            let page = s.undo_sync(job, scope, limit).unwrap();
            assert!(page.entries.len() <= limit);
            done.extend(page.entries.iter().map(|e| (e.ordinal, e.action)));
            if page.done {
                return done;
            }
        }
    }

    #[test]
    fn undo_pages_through_batch_logs_newest_first() {
        let (_d, s) = store();
        s.apply_sync(&batch(1, 1, &["a", "b", "c"], "one")).unwrap();
        s.apply_sync(&batch(2, 1, &["b", "c", "d"], "two")).unwrap();
        s.apply_sync(&batch(2, 4, &["e"], "two")).unwrap();
        assert_eq!(
            contents(&s),
            [
                "a=\"one\"",
                "b=\"two\"",
                "c=\"two\"",
                "d=\"two\"",
                "e=\"two\""
            ]
        );
        // Pages of 2 split the first batch's log of job 2.
        let undone = undo_all(&s, 2, &UndoScope::Job, 2);
        assert_eq!(
            undone,
            [
                (4, UndoAction::Removed),
                (3, UndoAction::Removed),
                (2, UndoAction::Restored),
                (1, UndoAction::Restored),
            ]
        );
        assert_eq!(contents(&s), ["a=\"one\"", "b=\"one\"", "c=\"one\""]);
        // Nothing of job 2 is left to undo; job 1's log is intact.
        assert!(
            s.undo_sync(2, &UndoScope::Job, 10)
                .unwrap()
                .entries
                .is_empty()
        );
        assert_eq!(undo_all(&s, 1, &UndoScope::Job, 10).len(), 3);
        assert!(contents(&s).is_empty());
    }

    #[test]
    fn a_batch_applied_again_keeps_its_first_before_images() {
        let (_d, s) = store();
        s.apply_sync(&batch(1, 1, &["a"], "one")).unwrap();
        let b = batch(2, 1, &["a", "b"], "two");
        s.apply_sync(&b).unwrap();
        // A crash before the journal recorded the batch: it is applied again.
        s.apply_sync(&b).unwrap();
        assert_eq!(
            undo_all(&s, 2, &UndoScope::Job, 100),
            [(2, UndoAction::Removed), (1, UndoAction::Restored)]
        );
        assert_eq!(contents(&s), ["a=\"one\""]);
    }

    #[test]
    fn unjournaled_scope_leaves_the_journaled_prefix_for_a_later_undo() {
        let (_d, s) = store();
        s.apply_sync(&batch(1, 1, &["a", "b", "c", "d"], "one"))
            .unwrap();
        let scope = UndoScope::Unjournaled(vec![(0, 2)]);
        assert_eq!(
            undo_all(&s, 1, &scope, 1),
            [(4, UndoAction::Removed), (3, UndoAction::Removed)]
        );
        assert_eq!(contents(&s), ["a=\"one\"", "b=\"one\""]);
        assert_eq!(
            undo_all(&s, 1, &UndoScope::Job, 100),
            [(2, UndoAction::Removed), (1, UndoAction::Removed)]
        );
        assert!(contents(&s).is_empty());
    }

    #[test]
    fn every_value_type_round_trips_through_the_encoding() {
        let long = "x".repeat(300); // a two-byte length
        let mut data = long.clone().into_bytes();
        data.extend_from_slice(b"\x00\xffab");
        let layout = Arc::new(Layout::new(
            None,
            ["n", "b", "i", "f", "t", "y", "s"]
                .map(String::from)
                .to_vec(),
        ));
        let record = Record {
            layout,
            slots: vec![
                Slot::Null,
                Slot::Boolean(true),
                Slot::Integer(-42),
                Slot::Float(1.5),
                Slot::Text(Span { start: 0, len: 300 }),
                Slot::Bytes(Span { start: 300, len: 2 }),
                Slot::Text(Span { start: 302, len: 2 }),
            ],
            key: None,
            data,
            location: Location::default(),
        };
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1, 9, 3, &record);
        let d = decode(&buf).expect("decodes");
        assert_eq!((d.job, d.part, d.ordinal, d.layout), (7, 1, 9, 3));
        let want: Vec<Json> = (0..7).map(|i| record.get(i).unwrap().to_json()).collect();
        assert_eq!(d.values, want);
        assert_eq!(provenance(&buf), Some((7, 1, 9)));
        // A cut value is refused, not misread.
        assert!(decode(&buf[..buf.len() - 1]).is_none());
    }

    #[test]
    fn a_record_changed_since_the_import_is_kept() {
        let (_d, s) = store();
        s.apply_sync(&batch(1, 1, &["a", "b"], "one")).unwrap();
        s.apply_sync(&batch(2, 1, &["b"], "two")).unwrap();
        assert_eq!(
            undo_all(&s, 1, &UndoScope::Job, 100),
            [(2, UndoAction::KeptChanged), (1, UndoAction::Removed)]
        );
        assert_eq!(contents(&s), ["b=\"two\""]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Batches in any key order, overlapping the stored keys and each
        /// other (and repeating a key within a batch), leave the store as
        /// applying their records one by one would; undoing the jobs newest
        /// first walks back through every earlier state.
        #[test]
        fn sorted_upserts_equal_record_by_record_and_undo_walks_back(
            batches in proptest::collection::vec(
                proptest::collection::vec(0u8..40, 1..30), 1..6),
        ) {
            let (_d, s) = store();
            let mut model = std::collections::BTreeMap::new();
            let mut states = vec![contents(&s)];
            for (j, keys) in batches.iter().enumerate() {
                let job = j as u64 + 1;
                let keys: Vec<String> = keys.iter().map(|k| format!("k{k:02}")).collect();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                s.apply_sync(&batch(job, 1, &refs, &format!("job{job}"))).unwrap();
                for k in &keys {
                    model.insert(k.clone(), format!("{k}=\"job{job}\""));
                }
                let now = contents(&s);
                proptest::prop_assert_eq!(&now, &model.values().cloned().collect::<Vec<_>>());
                states.push(now);
            }
            for job in (1..=batches.len() as u64).rev() {
                undo_all(&s, job, &UndoScope::Job, 7);
                states.pop();
                proptest::prop_assert_eq!(&contents(&s), states.last().unwrap());
            }
        }
    }
}

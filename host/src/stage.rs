//! The record stage: pass 1 keeps the records it validated in a local file
//! beside the part's spool file, so pass 2 applies exactly those records
//! without running the plugin a second time.
//!
//! The stage is a cache, never synced and never trusted blindly. It holds one
//! block per interval, in order:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `SLSTAGE1` |
//! | 8 × 7 | interval seq, first and last ordinal, item count, payload length, payload hash, hash of the interval digest |
//! | 8 | hash of the 64 bytes before |
//! | payload length | the interval's records |
//!
//! Hashes are XXH3-64; integers are little-endian. Pass 2 uses a block only
//! if its header hash, sequence, ordinals, interval digest (as the journal
//! holds it) and payload hash all match; otherwise, or if the block is
//! missing (a crash, a power loss, a full disk), it parses that interval
//! again from its checkpoint and checks the records against pass 1's digest,
//! as it would with no stage at all. A stage never fails a job.
//!
//! The payload is a sequence of entries, each starting with a tag byte:
//! `1` a layout (kind flag, kind, field count, field names), numbered in
//! order of appearance within the block; `2` a record (layout number;
//! ordinal, offset, length, line; key span or none; values, each a tag byte
//! and its payload: bool 1 byte, integer and float 8 bytes, a text or bytes
//! span as start and length; the data buffer). Numbers are LEB128 varints
//! unless said otherwise, strings a varint length and their bytes.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write as _};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::{Decoder, put_varint};
use crate::journal::Interval;
use crate::record::{Layout, Location, Record, Slot, Span, tag};
use crate::spool::{ReadSeek, Spool, SpoolWrite};

const MAGIC: &[u8; 8] = b"SLSTAGE1";
const HEADER: usize = 8 + 8 * 7 + 8;
/// Largest payload a header may announce: far above any interval (they
/// close at `interval_bytes` of record data), so a larger one is damage.
const MAX_PAYLOAD: u64 = 1 << 32;

const LAYOUT: u8 = 1;
const RECORD: u8 = 2;

/// Name of the stage of spool file `file`.
pub(crate) fn stage_name(file: &str) -> String {
    format!("{file}.stage")
}

/// The spool file a stage belongs to, if `name` is a stage's name.
pub(crate) fn staged_file(name: &str) -> Option<&str> {
    name.strip_suffix(".stage")
}

/// Encodes one interval's records for its block (pass 1's validating
/// thread).
#[derive(Default)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
    /// Layouts already written to this block, by address, with their
    /// numbers; the `Arc`s keep the addresses from being reused.
    layouts: HashMap<usize, (usize, Arc<Layout>)>,
}

impl Encoder {
    pub fn push(&mut self, r: &Record) {
        let address = Arc::as_ptr(&r.layout) as usize;
        let index = match self.layouts.get(&address) {
            Some((i, _)) => *i,
            None => {
                self.put_layout(&r.layout);
                let i = self.layouts.len();
                self.layouts.insert(address, (i, r.layout.clone()));
                i
            }
        };
        let out = &mut self.buf;
        out.push(RECORD);
        put_varint(out, index as u64);
        let l = r.location;
        for n in [l.ordinal, l.offset, l.length, l.line] {
            put_varint(out, n);
        }
        match r.key {
            None => out.push(0),
            Some(k) => {
                out.push(1);
                put_span(out, k);
            }
        }
        put_varint(out, r.slots.len() as u64);
        for slot in &r.slots {
            out.push(slot.tag());
            match *slot {
                Slot::Null => {}
                Slot::Boolean(b) => out.push(u8::from(b)),
                Slot::Integer(i) => out.extend_from_slice(&i.to_le_bytes()),
                Slot::Float(x) => out.extend_from_slice(&x.to_bits().to_le_bytes()),
                Slot::Text(s) | Slot::Bytes(s) => put_span(out, s),
            }
        }
        put_bytes(out, &r.data);
    }

    fn put_layout(&mut self, layout: &Layout) {
        let out = &mut self.buf;
        out.push(LAYOUT);
        out.push(u8::from(layout.kind.is_some()));
        put_bytes(out, layout.kind.as_deref().unwrap_or_default().as_bytes());
        put_varint(out, layout.fields.len() as u64);
        for f in &layout.fields {
            put_bytes(out, f.as_bytes());
        }
    }

    /// The block's payload so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf
    }

    /// Start the next block, keeping the buffer's memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.layouts.clear();
    }
}

fn put_span(out: &mut Vec<u8>, s: Span) {
    put_varint(out, u64::from(s.start));
    put_varint(out, u64::from(s.len));
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// What a block's header says.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    seq: u64,
    first: u64,
    last: u64,
    items: u64,
    payload_len: u64,
    payload_hash: u64,
    digest_hash: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        let words = [
            self.seq,
            self.first,
            self.last,
            self.items,
            self.payload_len,
            self.payload_hash,
            self.digest_hash,
        ];
        for (i, w) in words.into_iter().enumerate() {
            h[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        let check = xxh3_64(&h[..HEADER - 8]);
        h[HEADER - 8..].copy_from_slice(&check.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER]) -> Option<Header> {
        let word = |i: usize| u64::from_le_bytes(h[8 + i * 8..16 + i * 8].try_into().unwrap());
        if &h[..8] != MAGIC || xxh3_64(&h[..HEADER - 8]) != word(7) {
            return None;
        }
        let header = Header {
            seq: word(0),
            first: word(1),
            last: word(2),
            items: word(3),
            payload_len: word(4),
            payload_hash: word(5),
            digest_hash: word(6),
        };
        (header.payload_len <= MAX_PAYLOAD).then_some(header)
    }
}

/// Writes a part's stage during pass 1. Write failures only end staging
/// (pass 2 parses instead), so they are logged, not returned.
pub(crate) struct StageWriter {
    out: Option<Box<dyn SpoolWrite>>,
    name: String,
    spool: Spool,
    /// Free bytes the stage leaves on the spool's file system.
    reserve: u64,
}

impl StageWriter {
    /// Start the stage of spool file `file` afresh (a resumed pass 1 starts
    /// a new one: the blocks of its earlier run are dropped, and pass 2
    /// parses their intervals instead). Staging stops, keeping the blocks
    /// written, before it would leave less than `reserve` bytes free: the
    /// journal, the store and other uploads need the disk more.
    pub fn create(spool: &Spool, file: &str, reserve: u64) -> Self {
        let name = stage_name(file);
        let out = match spool.create_scratch(&name) {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::warn!(stage = %name, "cannot create the record stage, pass 2 will parse again: {e}");
                None
            }
        };
        StageWriter {
            out,
            name,
            spool: spool.clone(),
            reserve,
        }
    }

    /// Whether blocks are still being written (no write failed, the disk
    /// kept its reserve).
    pub fn is_active(&self) -> bool {
        self.out.is_some()
    }

    /// Append interval `seq`'s block.
    pub fn write_block(&mut self, seq: u64, interval: &Interval, items: u64, payload: &[u8]) {
        if self.out.is_none() {
            return;
        }
        if payload.len() as u64 > MAX_PAYLOAD {
            // Readers would take it for damage; the interval is parsed again.
            tracing::warn!(stage = %self.name, "interval {seq} is too large to stage");
            return;
        }
        let need = (HEADER + payload.len()) as u64;
        match self.spool.available() {
            Ok(free) if free >= need.saturating_add(self.reserve) => {}
            free => {
                tracing::warn!(
                    stage = %self.name,
                    "record stage stopped at interval {seq} to keep {} bytes free ({free:?} free): \
                     pass 2 will parse the rest again",
                    self.reserve
                );
                self.out = None;
                return;
            }
        }
        let Some(out) = &mut self.out else { return };
        let header = Header {
            seq,
            first: interval.first,
            last: interval.last,
            items,
            payload_len: payload.len() as u64,
            payload_hash: xxh3_64(payload),
            digest_hash: xxh3_64(interval.digest.as_bytes()),
        };
        let written = out
            .write_all(&header.encode())
            .and_then(|()| out.write_all(payload))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::warn!(stage = %self.name, "cannot write the record stage, pass 2 will parse again from interval {seq}: {e}");
            self.out = None;
        }
    }
}

/// One interval's records, read back from the stage.
pub(crate) struct Block {
    pub records: Vec<Record>,
    /// Items (records and record errors) pass 1 saw in the interval.
    pub items: u64,
}

/// Reads a part's stage during pass 2, interval by interval, in order.
pub(crate) struct StageReader {
    input: Option<BufReader<Box<dyn ReadSeek>>>,
    /// A header read ahead: its block is for a later interval.
    ahead: Option<Header>,
    payload: Vec<u8>,
}

impl StageReader {
    /// The stage of spool file `file`; empty if there is none.
    pub fn open(spool: &Spool, file: &str) -> Self {
        let input = spool
            .open(&stage_name(file))
            .ok()
            .map(|f| BufReader::with_capacity(256 << 10, f));
        StageReader {
            input,
            ahead: None,
            payload: Vec::new(),
        }
    }

    /// Interval `seq`'s records, if the stage holds them intact. Calls must
    /// come in ascending `seq`.
    pub fn block(&mut self, seq: u64, interval: &Interval) -> Option<Block> {
        let header = self.header_for(seq)?;
        let input = self.input.as_mut()?;
        // The header hash vouched for the length: reading the payload keeps
        // the reader in step even when the block turns out unusable.
        self.payload.resize(header.payload_len as usize, 0);
        if input.read_exact(&mut self.payload).is_err() {
            self.input = None;
            return None;
        }
        let matches = header.first == interval.first
            && header.last == interval.last
            && header.digest_hash == xxh3_64(interval.digest.as_bytes())
            && header.payload_hash == xxh3_64(&self.payload);
        if !matches {
            return None;
        }
        let records = decode(&self.payload, interval)?;
        Some(Block {
            records,
            items: header.items,
        })
    }

    /// The header of block `seq`, skipping earlier blocks; `None` if the
    /// stage has no such block.
    fn header_for(&mut self, seq: u64) -> Option<Header> {
        loop {
            let header = match self.ahead.take() {
                Some(h) => h,
                None => self.read_header()?,
            };
            if header.seq == seq {
                return Some(header);
            }
            if header.seq > seq {
                self.ahead = Some(header);
                return None;
            }
            let input = self.input.as_mut()?;
            if input.seek_relative(header.payload_len as i64).is_err() {
                self.input = None;
                return None;
            }
        }
    }

    fn read_header(&mut self) -> Option<Header> {
        let input = self.input.as_mut()?;
        let mut h = [0u8; HEADER];
        let header = input
            .read_exact(&mut h)
            .ok()
            .and_then(|()| Header::decode(&h));
        if header.is_none() {
            // The end of the stage, or damage: nothing after it is found.
            self.input = None;
        }
        header
    }
}

/// The records of a payload, checked like records from a plugin (spans in
/// their data, text UTF-8, ordinals within the interval), or `None`.
fn decode(payload: &[u8], interval: &Interval) -> Option<Vec<Record>> {
    let mut r = Decoder { buf: payload };
    let mut layouts: Vec<Arc<Layout>> = Vec::new();
    let mut records = Vec::new();
    let mut previous = 0;
    while !r.buf.is_empty() {
        match r.u8()? {
            LAYOUT => {
                let has_kind = r.u8()? == 1;
                let kind = string(&mut r)?;
                let n = r.varint()?;
                let mut fields = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    fields.push(string(&mut r)?);
                }
                layouts.push(Arc::new(Layout::new(has_kind.then_some(kind), fields)));
            }
            RECORD => {
                let layout = layouts.get(usize::try_from(r.varint()?).ok()?)?.clone();
                let location = Location {
                    ordinal: r.varint()?,
                    offset: r.varint()?,
                    length: r.varint()?,
                    line: r.varint()?,
                };
                if location.ordinal <= previous
                    || location.ordinal < interval.first
                    || location.ordinal > interval.last
                {
                    return None;
                }
                previous = location.ordinal;
                let key = match r.u8()? {
                    0 => None,
                    1 => Some(span(&mut r)?),
                    _ => return None,
                };
                let n = r.varint()?;
                let mut slots = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    slots.push(match r.u8()? {
                        tag::NULL => Slot::Null,
                        tag::BOOLEAN => match r.u8()? {
                            0 => Slot::Boolean(false),
                            1 => Slot::Boolean(true),
                            _ => return None,
                        },
                        tag::INTEGER => Slot::Integer(r.u64()? as i64),
                        tag::FLOAT => Slot::Float(f64::from_bits(r.u64()?)),
                        tag::TEXT => Slot::Text(span(&mut r)?),
                        tag::BYTES => Slot::Bytes(span(&mut r)?),
                        _ => return None,
                    });
                }
                let data = bytes(&mut r)?.to_vec();
                if crate::sandbox::check_spans(&data, &slots, key).is_some() {
                    return None;
                }
                records.push(Record {
                    layout,
                    slots,
                    key,
                    data,
                    location,
                });
            }
            _ => return None,
        }
    }
    Some(records)
}

fn bytes<'a>(d: &mut Decoder<'a>) -> Option<&'a [u8]> {
    let len = usize::try_from(d.varint()?).ok()?;
    d.take(len)
}

fn string(d: &mut Decoder<'_>) -> Option<String> {
    String::from_utf8(bytes(d)?.to_vec()).ok()
}

fn span(d: &mut Decoder<'_>) -> Option<Span> {
    Some(Span {
        start: u32::try_from(d.varint()?).ok()?,
        len: u32::try_from(d.varint()?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RealFs;
    use proptest::prelude::*;

    fn record(layout: &Arc<Layout>, ordinal: u64, text: &str, n: i64, key: bool) -> Record {
        let mut data = text.as_bytes().to_vec();
        data.extend_from_slice(&[0xff, 0x00]);
        let t = Span {
            start: 0,
            len: text.len() as u32,
        };
        Record {
            layout: layout.clone(),
            slots: vec![
                Slot::Text(t),
                Slot::Integer(n),
                Slot::Float(n as f64 / 3.0),
                Slot::Boolean(n % 2 == 0),
                Slot::Null,
                Slot::Bytes(Span {
                    start: text.len() as u32,
                    len: 2,
                }),
            ],
            key: key.then_some(t),
            data,
            location: Location {
                offset: ordinal * 100,
                length: 99,
                line: ordinal + 1,
                ordinal,
            },
        }
    }

    fn layouts() -> [Arc<Layout>; 2] {
        let fields = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        [
            Arc::new(Layout::new(None, fields(&["a", "b", "c", "d", "e", "f"]))),
            Arc::new(Layout::new(
                Some("order".into()),
                fields(&["x", "y", "z", "w", "v", "u"]),
            )),
        ]
    }

    fn interval(first: u64, last: u64, digest: &str) -> Interval {
        Interval {
            first,
            last,
            end_offset: last * 100 + 99,
            digest: digest.into(),
            resume: None,
        }
    }

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), Arc::new(RealFs));
        (dir, spool)
    }

    /// Stage `blocks` (each: interval and its records) for spool file "f".
    fn write(spool: &Spool, blocks: &[(Interval, Vec<Record>)]) {
        let mut w = StageWriter::create(spool, "f", 0);
        for (seq, (interval, records)) in blocks.iter().enumerate() {
            let mut e = Encoder::default();
            records.iter().for_each(|r| e.push(r));
            w.write_block(seq as u64, interval, records.len() as u64 + 1, e.payload());
        }
    }

    fn two_blocks() -> Vec<(Interval, Vec<Record>)> {
        let [plain, kinded] = layouts();
        vec![
            (
                interval(1, 3, "d1"),
                vec![
                    record(&plain, 1, "é1", 1, false),
                    record(&kinded, 3, "k3", 3, true),
                ],
            ),
            (interval(4, 5, "d2"), vec![record(&plain, 5, "", -5, true)]),
        ]
    }

    #[test]
    fn blocks_read_back_as_staged_and_unasked_ones_are_skipped() {
        let (_d, spool) = spool();
        let blocks = two_blocks();
        write(&spool, &blocks);
        let mut r = StageReader::open(&spool, "f");
        let b = r.block(0, &blocks[0].0).expect("first block");
        assert!(b.records == blocks[0].1);
        assert_eq!(b.items, 3);
        assert_eq!(b.records[1].kind(), Some("order"));
        assert!(r.block(1, &blocks[1].0).unwrap().records == blocks[1].1);
        assert!(r.block(2, &interval(6, 6, "d3")).is_none());

        let mut r = StageReader::open(&spool, "f");
        assert!(r.block(1, &blocks[1].0).unwrap().records == blocks[1].1);
    }

    #[test]
    fn a_block_that_does_not_match_the_journal_is_not_used() {
        let (_d, spool) = spool();
        let blocks = two_blocks();
        write(&spool, &blocks);
        // Another digest (pass 1 ran again), other ordinals: not this
        // interval's records. The next block is still found.
        let mut r = StageReader::open(&spool, "f");
        assert!(r.block(0, &interval(1, 3, "other")).is_none());
        assert!(r.block(1, &blocks[1].0).is_some());
        let mut r = StageReader::open(&spool, "f");
        assert!(r.block(0, &interval(1, 4, "d1")).is_none());
        // No stage at all.
        assert!(
            StageReader::open(&spool, "g")
                .block(0, &blocks[0].0)
                .is_none()
        );
    }

    #[test]
    fn damage_anywhere_loses_blocks_never_misreads_them() {
        let (_d, spool) = spool();
        let blocks = two_blocks();
        write(&spool, &blocks);
        let path = spool.path(&stage_name("f"));
        let clean = std::fs::read(&path).unwrap();
        for at in 0..clean.len() {
            let mut bad = clean.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            let mut r = StageReader::open(&spool, "f");
            for (seq, (interval, records)) in blocks.iter().enumerate() {
                if let Some(b) = r.block(seq as u64, interval) {
                    assert!(b.records == *records, "byte {at} changed block {seq}");
                    assert_eq!(b.items, records.len() as u64 + 1, "byte {at}");
                }
            }
        }
        for len in 0..clean.len() {
            std::fs::write(&path, &clean[..len]).unwrap();
            let mut r = StageReader::open(&spool, "f");
            let got = blocks
                .iter()
                .enumerate()
                .filter(|(seq, (i, _))| r.block(*seq as u64, i).is_some())
                .count();
            assert!(got < blocks.len(), "a cut stage at {len} bytes read whole");
        }
    }

    #[test]
    fn a_new_stage_replaces_the_old_one() {
        let (_d, spool) = spool();
        write(&spool, &two_blocks());
        StageWriter::create(&spool, "f", 0);
        assert!(
            StageReader::open(&spool, "f")
                .block(0, &two_blocks()[0].0)
                .is_none()
        );
        // And it goes with its spool file.
        spool.remove("f").unwrap();
        assert!(spool.files().unwrap().is_empty());
    }

    #[test]
    fn staging_stops_before_the_disk_would_fill() {
        let (_d, spool) = spool();
        let blocks = two_blocks();
        let mut w = StageWriter::create(&spool, "f", u64::MAX);
        assert!(spool.available().unwrap() > 0);
        let mut e = Encoder::default();
        blocks[0].1.iter().for_each(|r| e.push(r));
        w.write_block(0, &blocks[0].0, 3, e.payload());
        let stage = spool.path(&stage_name("f"));
        assert_eq!(std::fs::metadata(&stage).unwrap().len(), 0);
        assert!(
            StageReader::open(&spool, "f")
                .block(0, &blocks[0].0)
                .is_none()
        );
    }

    proptest! {
        #[test]
        fn any_records_round_trip(
            rows in proptest::collection::vec(
                (any::<String>(), any::<i64>(), any::<bool>(), any::<bool>()), 0..40),
        ) {
            let ls = layouts();
            let records: Vec<Record> = rows
                .iter()
                .enumerate()
                .map(|(i, (text, n, kinded, key))| {
                    record(&ls[usize::from(*kinded)], i as u64 + 1, text, *n, *key)
                })
                .collect();
            let mut e = Encoder::default();
            records.iter().for_each(|r| e.push(r));
            let payload = e.payload();
            let back = decode(payload, &interval(1, 40, "d")).expect("decodes");
            prop_assert!(back == records);
        }

        /// Whatever the payload (past its hashes), decoding returns records
        /// that hold together or nothing; it never panics.
        #[test]
        fn any_payload_decodes_or_is_refused(
            noise in proptest::collection::vec(any::<u8>(), 0..300),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let _ = decode(&noise, &interval(0, 1 << 40, "d"));
            let mut e = Encoder::default();
            two_blocks().iter().flat_map(|(_, rs)| rs).for_each(|r| e.push(r));
            let mut payload = e.payload().to_vec();
            for (at, x) in flips {
                let i = at.index(payload.len());
                payload[i] ^= x;
            }
            if let Some(records) = decode(&payload, &interval(0, 1 << 40, "d")) {
                for r in &records {
                    // Every value reads back from its record's data.
                    let _ = r.fields_json();
                    let _ = r.key();
                }
            }
        }
    }
}

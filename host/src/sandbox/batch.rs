//! Many items per plugin call (`next-batch`, interface 0.2.1).
//!
//! A batch crosses the boundary as three lists whatever its length, where
//! `next` lifts two per record and pays a call per record. The parse thread
//! checks what orders the records (layout indices, ordinals, offsets, sizes)
//! as it receives a batch; turning the columns into records, with their
//! value and UTF-8 checks, can then happen on any thread ([`Batch::decode`]),
//! which lets pass 1 keep its parse thread on plugin calls alone.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lift};

use super::Plugin;
use super::bindings::exports::sluice::adapter::parse as wit;
use super::bindings::sluice::adapter::types as wt;
use super::fault::{FaultKind, ParseError};
use super::parse::{Who, check_spans, decode_values, within_limit};
use crate::record::{Item, Layout, Location, Record, Slot};

/// `batch-record` of the WIT.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct WitBatchRecord {
    pub layout: u32,
    pub key: Option<wt::Span>,
    pub location: wt::Location,
    #[component(name = "data-end")]
    pub data_end: u32,
}

/// `batch` of the WIT.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct WitBatch {
    pub records: Vec<WitBatchRecord>,
    pub values: Vec<u64>,
    pub data: Vec<u8>,
    pub then: Option<wit::Item>,
}

/// Bytes a record holds once parsed, as [`Record::size_bytes`] counts them.
pub(super) fn record_size(data: usize, fields: usize) -> u64 {
    data as u64 + (fields * std::mem::size_of::<Slot>()) as u64
}

/// Check that a batch's records fit its columns and the limits asked for:
/// each record's layout exists (`fields` gives its field count), value
/// words and bytes add up exactly, and no record follows one that reached
/// `max_records` or `max_bytes`. The item after the records, if any
/// (`then`: whether it is a record), must not be a record and may only
/// come while both limits have room. Returns the records' total size.
pub(super) fn check_shape(
    records: &[WitBatchRecord],
    values: usize,
    data: usize,
    fields: impl Fn(u32) -> Option<usize>,
    (max_records, max_bytes): (u32, u32),
    then: Option<bool>,
) -> Result<u64, String> {
    if records.len() > max_records as usize {
        return Err(format!(
            "it returned {} records where at most {max_records} were asked for",
            records.len()
        ));
    }
    let (mut words, mut data_end, mut bytes) = (0usize, 0u32, 0u64);
    for (i, r) in records.iter().enumerate() {
        if bytes >= u64::from(max_bytes) {
            return Err(format!(
                "it returned records past the {max_bytes} bytes asked for (record {} of the batch)",
                i + 1
            ));
        }
        let Some(n) = fields(r.layout) else {
            return Err(format!(
                "record {} of the batch uses layout {}, which was not declared",
                i + 1,
                r.layout
            ));
        };
        words += 2 * n;
        if words > values || r.data_end < data_end || r.data_end as usize > data {
            return Err(format!(
                "record {} of the batch does not fit its columns ({values} value words, {data} \
                 bytes; its data ends at {} after {data_end})",
                i + 1,
                r.data_end
            ));
        }
        bytes += record_size((r.data_end - data_end) as usize, n);
        data_end = r.data_end;
    }
    if words != values || data_end as usize != data {
        return Err(format!(
            "its records use {words} of its {values} value words and {data_end} of its {data} bytes"
        ));
    }
    match then {
        Some(true) => Err("the item after its records is a record".into()),
        Some(false) if records.len() >= max_records as usize || bytes >= u64::from(max_bytes) => {
            Err("it returned an item past the records or bytes asked for".into())
        }
        _ => Ok(bytes),
    }
}

/// Consecutive items of one parse: records in columns, then decoded items.
pub struct Batch {
    /// Records checked for order and shape, not yet for content.
    records: Vec<WitBatchRecord>,
    values: Vec<u64>,
    data: Vec<u8>,
    /// Each record's layout.
    layouts: Vec<Arc<Layout>>,
    /// Items after the records.
    items: Vec<Item>,
    /// Sum of the records' sizes.
    bytes: u64,
    plugin: Arc<Plugin>,
    max_record_bytes: usize,
}

impl Batch {
    pub(super) fn new(plugin: Arc<Plugin>, max_record_bytes: usize) -> Self {
        Batch {
            records: Vec::new(),
            values: Vec::new(),
            data: Vec::new(),
            layouts: Vec::new(),
            items: Vec::new(),
            bytes: 0,
            plugin,
            max_record_bytes,
        }
    }

    /// Records a parse checked with [`super::Parse`]'s state: their layouts
    /// exist, their value words and bytes add up, their locations follow.
    pub(super) fn set_records(
        &mut self,
        raw: (Vec<WitBatchRecord>, Vec<u64>, Vec<u8>),
        layouts: Vec<Arc<Layout>>,
        bytes: u64,
    ) {
        (self.records, self.values, self.data) = raw;
        self.layouts = layouts;
        self.bytes = bytes;
    }

    /// Add a decoded item after everything in the batch.
    pub(super) fn push(&mut self, item: Item) {
        if let Item::Record(r) = &item {
            self.bytes += r.size_bytes() as u64;
        }
        self.items.push(item);
    }

    /// Number of items (records and others).
    pub fn len(&self) -> usize {
        self.records.len() + self.items.len()
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes its records hold once parsed.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the parse is over after this batch (it ends with
    /// [`Item::End`] or [`Item::Fatal`]).
    pub fn ends(&self) -> bool {
        matches!(self.items.last(), Some(Item::End | Item::Fatal(_)))
    }

    /// Append the batch's items to `out`, in order. A record whose values
    /// or spans break the contract fails the parse, as it would from
    /// `next`; a record too large for the host becomes a record error.
    pub fn decode(self, out: &mut Vec<Item>) -> Result<(), ParseError> {
        out.reserve(self.len());
        let (mut word, mut start) = (0usize, 0usize);
        for (r, layout) in self.records.iter().zip(&self.layouts) {
            // Word counts and data ends were checked on receipt.
            let words = &self.values[word..word + 2 * layout.fields.len()];
            word += words.len();
            let data = &self.data[start..r.data_end as usize];
            start = r.data_end as usize;
            let location = Location::from(r.location);
            let slots = decode_values(words).map_err(|p| self.invalid(location, p))?;
            if let Some(problem) = check_spans(data, &slots, r.key) {
                return Err(self.invalid(location, problem));
            }
            let record = Record {
                layout: layout.clone(),
                slots,
                key: r.key,
                data: data.to_vec(),
                location,
            };
            out.push(within_limit(record, self.max_record_bytes));
        }
        out.extend(self.items);
        Ok(())
    }

    fn invalid(&self, at: Location, detail: String) -> ParseError {
        ParseError::from(Who::of(&self.plugin).fault(
            FaultKind::InvalidOutput,
            "next-batch",
            (at.ordinal, at.offset),
            detail,
            None,
        ))
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("records", &self.records.len())
            .field("items", &self.items.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(layout: u32, data_end: u32) -> WitBatchRecord {
        WitBatchRecord {
            layout,
            key: None,
            location: wt::Location {
                offset: 0,
                length: 1,
                line: 1,
                ordinal: 1,
            },
            data_end,
        }
    }

    /// Layout 0 has two fields, layout 1 none; nothing else is declared.
    fn fields(i: u32) -> Option<usize> {
        [2, 0].get(i as usize).copied()
    }

    #[test]
    fn a_batch_that_fits_its_columns_is_sized() {
        let records = [rec(0, 3), rec(1, 3), rec(0, 10)];
        // Two records of two values (16 bytes each once parsed) and 10 bytes.
        assert_eq!(
            check_shape(&records, 8, 10, fields, (3, 1000), None),
            Ok(74)
        );
        assert_eq!(check_shape(&[], 0, 0, fields, (1, 1), None), Ok(0));
        // An error or a layout after the records, while there is room.
        assert_eq!(
            check_shape(&records, 8, 10, fields, (4, 1000), Some(false)),
            Ok(74)
        );
        assert_eq!(check_shape(&[], 0, 0, fields, (1, 1), Some(false)), Ok(0));
    }

    #[test]
    fn a_batch_that_does_not_fit_is_refused() {
        let ok = [rec(0, 3), rec(0, 10)];
        // Records, value words, bytes, max-records, max-bytes, the reason.
        type Case<'a> = (&'a [WitBatchRecord], usize, usize, u32, u32, &'a str);
        let cases: [Case; 8] = [
            (&ok, 8, 10, 1, 1000, "at most 1 were asked"),
            (&ok, 8, 10, 2, 35, "past the 35 bytes"),
            (
                &[rec(2, 0)],
                0,
                0,
                9,
                1000,
                "layout 2, which was not declared",
            ),
            (&ok, 6, 10, 2, 1000, "record 2 of the batch does not fit"),
            (&ok, 8, 9, 2, 1000, "record 2 of the batch does not fit"),
            (
                &[rec(0, 5), rec(0, 3)],
                8,
                5,
                2,
                1000,
                "its data ends at 3 after 5",
            ),
            (&ok, 9, 10, 2, 1000, "use 8 of its 9 value words"),
            (&ok, 8, 11, 2, 1000, "10 of its 11 bytes"),
        ];
        for (records, values, data, max_records, max_bytes, needle) in cases {
            let err = check_shape(
                records,
                values,
                data,
                fields,
                (max_records, max_bytes),
                None,
            )
            .expect_err(needle);
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn the_record_that_reaches_max_bytes_is_the_last_one_allowed() {
        // 3 + 32 = 35 bytes for the first record: exactly max-bytes.
        let records = [rec(0, 3), rec(0, 4)];
        assert!(check_shape(&records, 8, 4, fields, (2, 35), None).is_err());
        assert_eq!(check_shape(&records, 8, 4, fields, (2, 36), None), Ok(68));
        assert_eq!(
            check_shape(&records[..1], 4, 3, fields, (2, 35), None),
            Ok(35)
        );
    }

    #[test]
    fn the_item_after_the_records_keeps_to_the_limits_and_is_no_record() {
        let records = [rec(0, 3), rec(0, 4)];
        let shape = |limits, then| check_shape(&records, 8, 4, fields, limits, then);
        assert_eq!(shape((3, 1000), Some(false)), Ok(68));
        for (limits, then, needle) in [
            ((2, 1000), Some(false), "past the records or bytes"),
            ((3, 68), Some(false), "past the records or bytes"),
            ((3, 1000), Some(true), "is a record"),
        ] {
            let err = shape(limits, then).expect_err(needle);
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}

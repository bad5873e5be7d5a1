//! Records as the host holds them once a plugin has produced them and the
//! sandbox has checked them.
//!
//! A record keeps the shape it crossed the boundary in: one data buffer,
//! values that point into it, and a shared [`Layout`] naming the fields. Text
//! is checked to be UTF-8 when the record is built, so reading it is free.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

/// Where an item sits in the input.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Location {
    /// Offset of the item's first byte from the start of the input.
    pub offset: u64,
    /// Number of input bytes the item spans.
    pub length: u64,
    /// 1-based line of the item's first byte; 0 for formats without lines.
    pub line: u64,
    /// 1-based position among all records and record errors of the input.
    pub ordinal: u64,
}

impl Location {
    /// Offset of the first byte after the item.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// Field names shared by records, and the kind of entity they describe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    pub kind: Option<String>,
    pub fields: Vec<String>,
    /// Hash of the kind and names, so a record's digest covers its layout
    /// without hashing the names again for every record.
    pub(crate) fingerprint: u64,
}

impl Layout {
    /// A layout with its fingerprint.
    pub fn new(kind: Option<String>, fields: Vec<String>) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for name in kind.iter().chain(&fields) {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
        }
        h.update(&[u8::from(kind.is_some())]);
        Layout {
            kind,
            fields,
            fingerprint: h.digest(),
        }
    }
}

/// A range of a record's data buffer: the boundary's own type.
pub(crate) use crate::sandbox::wit_types::Span;

/// How a value is stored in a record: scalars inline, text and bytes as a
/// span of the record's data. Decoded (and checked) from the two words per
/// value that cross the plugin boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Slot {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(Span),
    Bytes(Span),
}

/// Value type tags: the boundary's (`values` in the WIT), which the
/// interval digest and the embedded store's encoding use too.
pub(crate) mod tag {
    pub const NULL: u8 = 0;
    pub const BOOLEAN: u8 = 1;
    pub const INTEGER: u8 = 2;
    pub const FLOAT: u8 = 3;
    pub const TEXT: u8 = 4;
    pub const BYTES: u8 = 5;
}

impl Slot {
    /// The type tag.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Slot::Null => tag::NULL,
            Slot::Boolean(_) => tag::BOOLEAN,
            Slot::Integer(_) => tag::INTEGER,
            Slot::Float(_) => tag::FLOAT,
            Slot::Text(_) => tag::TEXT,
            Slot::Bytes(_) => tag::BYTES,
        }
    }

    /// The value as the boundary's (type, payload) words: scalars in the
    /// payload, spans as start in the low 32 bits and length in the high.
    pub(crate) fn to_words(self) -> [u64; 2] {
        let payload = match self {
            Slot::Null => 0,
            Slot::Boolean(b) => u64::from(b),
            Slot::Integer(i) => i as u64,
            Slot::Float(x) => x.to_bits(),
            Slot::Text(s) | Slot::Bytes(s) => u64::from(s.start) | (u64::from(s.len) << 32),
        };
        [u64::from(self.tag()), payload]
    }

    /// The value a plugin's (type, payload) words stand for, or what is
    /// wrong with them. Spans are checked against the data elsewhere.
    pub(crate) fn from_words(tag: u64, payload: u64) -> Result<Slot, String> {
        let span = Span {
            start: payload as u32,
            len: (payload >> 32) as u32,
        };
        Ok(match u8::try_from(tag).unwrap_or(u8::MAX) {
            tag::TEXT => Slot::Text(span),
            tag::NULL if payload == 0 => Slot::Null,
            tag::INTEGER => Slot::Integer(payload as i64),
            tag::FLOAT => Slot::Float(f64::from_bits(payload)),
            tag::BOOLEAN if payload <= 1 => Slot::Boolean(payload == 1),
            tag::BYTES => Slot::Bytes(span),
            tag::NULL | tag::BOOLEAN => {
                return Err(format!("has type {tag} with the invalid payload {payload}"));
            }
            _ => return Err(format!("has the unknown type {tag}")),
        })
    }
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// A field value, borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value as JSON: bytes become an array of numbers, non-finite floats
    /// a string.
    pub fn to_json(self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Int(i) => Json::from(i),
            Value::Float(x) => serde_json::Number::from_f64(x)
                .map(Json::Number)
                .unwrap_or_else(|| Json::String(x.to_string())),
            Value::Text(t) => Json::String(t.to_owned()),
            Value::Bytes(b) => Json::Array(b.iter().map(|&x| Json::from(x)).collect()),
        }
    }

    /// The value as text, for keys and reports: `None` for null.
    pub fn to_text(self) -> Option<String> {
        self.as_text().map(std::borrow::Cow::into_owned)
    }

    /// Like [`Value::to_text`], borrowing text instead of copying it.
    pub fn as_text(self) -> Option<std::borrow::Cow<'a, str>> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => b.to_string().into(),
            Value::Int(i) => i.to_string().into(),
            Value::Float(x) => x.to_string().into(),
            Value::Text(t) => t.into(),
            Value::Bytes(b) => hex::encode(b).into(),
        })
    }
}

/// One record produced by a plugin, checked by the sandbox.
#[derive(Clone, PartialEq)]
pub struct Record {
    pub(crate) layout: Arc<Layout>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) key: Option<Span>,
    pub(crate) data: Vec<u8>,
    pub(crate) location: Location,
}

impl Record {
    /// The layout naming this record's fields.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The record's kind, from its layout.
    pub fn kind(&self) -> Option<&str> {
        self.layout.kind.as_deref()
    }

    /// Where the record came from.
    pub fn location(&self) -> Location {
        self.location
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the record has no field.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The value at `index`.
    pub fn get(&self, index: usize) -> Option<Value<'_>> {
        self.slots.get(index).map(|s| self.value(*s))
    }

    /// The value of the field named `name`.
    pub fn get_by_name(&self, name: &str) -> Option<Value<'_>> {
        let index = self.layout.fields.iter().position(|f| f == name)?;
        self.get(index)
    }

    /// `(name, value)` pairs in field order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, Value<'_>)> {
        self.layout
            .fields
            .iter()
            .map(String::as_str)
            .zip(self.slots.iter().map(|s| self.value(*s)))
    }

    /// The plugin's natural key, if it gave one.
    pub fn key(&self) -> Option<&str> {
        self.key.map(|s| self.text(s))
    }

    fn text(&self, span: Span) -> &str {
        // Checked to be UTF-8 when the record was built (sandbox::validate).
        std::str::from_utf8(&self.data[span.range()]).unwrap_or_default()
    }

    fn value(&self, slot: Slot) -> Value<'_> {
        match slot {
            Slot::Null => Value::Null,
            Slot::Boolean(b) => Value::Bool(b),
            Slot::Integer(i) => Value::Int(i),
            Slot::Float(x) => Value::Float(x),
            Slot::Text(s) => Value::Text(self.text(s)),
            Slot::Bytes(s) => Value::Bytes(&self.data[s.range()]),
        }
    }

    /// The fields as a JSON object, in field order.
    pub fn fields_json(&self) -> Map<String, Json> {
        self.fields()
            .map(|(name, v)| (name.to_owned(), v.to_json()))
            .collect()
    }

    /// Approximate bytes this record holds (for memory accounting).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Feed the record's content (layout, values, key, location) to `h` in
    /// an unambiguous encoding: equal records hash equal, different records
    /// differently. Used to check that a plugin gives the same records in
    /// both passes, so it is cheap: the layout goes in as its fingerprint and
    /// the data buffer in one piece.
    pub(crate) fn digest_into(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        let l = self.location;
        let mut head = [0u8; 8 * 6 + 4];
        for (i, n) in [
            self.layout.fingerprint,
            l.ordinal,
            l.offset,
            l.length,
            l.line,
        ]
        .into_iter()
        .enumerate()
        {
            head[i * 8..i * 8 + 8].copy_from_slice(&n.to_le_bytes());
        }
        let key = self
            .key
            .map_or(u64::MAX, |k| u64::from(k.start) << 32 | u64::from(k.len));
        head[40..48].copy_from_slice(&key.to_le_bytes());
        head[48..52].copy_from_slice(&(self.slots.len() as u32).to_le_bytes());
        h.update(&head);
        for slot in &self.slots {
            let [tag, payload] = slot.to_words();
            let mut b = [0u8; 9];
            b[0] = tag as u8;
            b[1..].copy_from_slice(&payload.to_le_bytes());
            h.update(&b);
        }
        h.update(&(self.data.len() as u64).to_le_bytes());
        h.update(&self.data);
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("kind", &self.kind())
            .field("key", &self.key())
            .field("fields", &self.fields().collect::<Vec<_>>())
            .field("location", &self.location)
            .finish()
    }
}

/// Why one record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordError {
    /// Stable kebab-case code from the plugin.
    pub code: String,
    /// What is wrong, from the plugin.
    pub message: String,
    /// The field at fault, if one is.
    pub field: Option<String>,
    /// The bad record's bytes.
    pub location: Location,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}, record {}, line {}, byte offset {}",
            self.message,
            self.code,
            self.location.ordinal,
            self.location.line,
            self.location.offset
        )?;
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        f.write_str(")")
    }
}

/// What a parse yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The next record.
    Record(Record),
    /// The next record could not be parsed; the parse goes on.
    Error(RecordError),
    /// The rest of the input cannot be parsed; the parse is over.
    Fatal(RecordError),
    /// The input has ended.
    End,
}

impl Item {
    /// The item as one JSON object (the shape `sluice plugin test` prints).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        let (kind, loc) = match self {
            Item::Record(r) => {
                m.insert("type".into(), "record".into());
                if let Some(k) = r.kind() {
                    m.insert("kind".into(), k.into());
                }
                if let Some(k) = r.key() {
                    m.insert("key".into(), k.into());
                }
                m.insert("fields".into(), Json::Object(r.fields_json()));
                (None, Some(r.location))
            }
            Item::Error(e) => (Some(("error", e)), Some(e.location)),
            Item::Fatal(e) => (Some(("fatal", e)), Some(e.location)),
            Item::End => {
                m.insert("type".into(), "end".into());
                (None, None)
            }
        };
        if let Some((t, e)) = kind {
            m.insert("type".into(), t.into());
            m.insert("code".into(), e.code.clone().into());
            m.insert("message".into(), e.message.clone().into());
            if let Some(f) = &e.field {
                m.insert("field".into(), f.clone().into());
            }
        }
        if let Some(l) = loc {
            m.insert("ordinal".into(), l.ordinal.into());
            m.insert("line".into(), l.line.into());
            m.insert("offset".into(), l.offset.into());
            m.insert("length".into(), l.length.into());
        }
        Json::Object(m)
    }
}

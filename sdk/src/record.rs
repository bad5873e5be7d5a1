//! Records, record errors and the items a parser yields.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a record, or a record error, sits in the input.
///
/// Items never overlap, come in input order and span at least one byte; the
/// host rejects a parse whose items break these rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
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
        self.offset + self.length
    }
}

/// A typed field value, borrowed from a [`Record`] or passed to one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A range of a record's data buffer (the boundary's `span`).
#[cfg(target_arch = "wasm32")]
pub(crate) use crate::__private::bindings::sluice::adapter::types::Span;

/// A range of a record's data buffer.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

/// How a value is stored inside a record: two words, its type and its
/// payload, with text and bytes as a span of the record's data buffer. This
/// is the encoding that crosses the plugin boundary (`values` in the WIT), so
/// a record is handed over as it is built: one buffer and one flat list of
/// integers, not one string or variant per field.
mod tag {
    pub const NULL: u64 = 0;
    pub const BOOLEAN: u64 = 1;
    pub const INTEGER: u64 = 2;
    pub const FLOAT: u64 = 3;
    pub const TEXT: u64 = 4;
    pub const BYTES: u64 = 5;
}

/// A span as a payload word: start in the low 32 bits, length in the high.
fn span_word(start: u32, len: u32) -> u64 {
    u64::from(start) | (u64::from(len) << 32)
}

static NEXT_LAYOUT_ID: AtomicU64 = AtomicU64::new(1);

/// The names of a record's fields and, optionally, the kind of entity it is.
///
/// Create a layout once (for example from a CSV header) and build every record
/// with it: the field names then cross the plugin boundary once per parse
/// instead of once per record. Cloning a layout is cheap.
#[derive(Clone)]
pub struct Layout(Arc<LayoutInner>);

struct LayoutInner {
    id: u64,
    kind: Option<String>,
    fields: Vec<String>,
}

impl Layout {
    /// A layout with these field names, in order.
    ///
    /// # Panics
    /// If two fields share a name: records with ambiguous names cannot be
    /// stored, so this is a bug in the adapter. Adapters reading names from
    /// their input (a CSV header) check for duplicates first and report them.
    pub fn new<S: Into<String>>(kind: Option<&str>, fields: impl IntoIterator<Item = S>) -> Self {
        let fields: Vec<String> = fields.into_iter().map(Into::into).collect();
        if let Some(dup) = first_duplicate(&fields) {
            panic!("layout has the field name {dup:?} twice");
        }
        Layout(Arc::new(LayoutInner {
            id: NEXT_LAYOUT_ID.fetch_add(1, Ordering::Relaxed),
            kind: kind.map(str::to_owned),
            fields,
        }))
    }

    /// Kind (entity type) of the records using this layout.
    pub fn kind(&self) -> Option<&str> {
        self.0.kind.as_deref()
    }

    /// Field names, in order.
    pub fn fields(&self) -> &[String] {
        &self.0.fields
    }

    /// Position of a field by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.0.fields.iter().position(|f| f == name)
    }

    /// Process-unique identity, used to declare each layout to the host once.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("kind", &self.0.kind)
            .field("fields", &self.0.fields)
            .finish()
    }
}

impl PartialEq for Layout {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind == other.0.kind && self.0.fields == other.0.fields
    }
}

/// First name that occurs twice in `names`, if any.
pub fn first_duplicate<S: AsRef<str>>(names: &[S]) -> Option<&str> {
    // Layouts are short; a quadratic scan beats hashing for a handful of names
    // and stays correct for long ones.
    if names.len() <= 32 {
        for (i, a) in names.iter().enumerate() {
            if names[..i].iter().any(|b| b.as_ref() == a.as_ref()) {
                return Some(a.as_ref());
            }
        }
        None
    } else {
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        names.iter().map(AsRef::as_ref).find(|n| !seen.insert(*n))
    }
}

/// One record: a layout, one value per field, an optional natural key and the
/// record's location in the input.
#[derive(Clone, PartialEq)]
pub struct Record {
    layout: Layout,
    /// Two words per value pushed (see [`tag`]).
    words: Vec<u64>,
    key: Option<Span>,
    data: Vec<u8>,
    location: Location,
}

impl Record {
    /// An empty record for `layout`; push one value per field.
    pub fn new(layout: &Layout) -> Self {
        Record {
            layout: layout.clone(),
            words: Vec::with_capacity(2 * layout.fields().len()),
            key: None,
            data: Vec::new(),
            location: Location::default(),
        }
    }

    /// Like [`Record::new`], reserving `data_bytes` for text and bytes values.
    pub fn with_capacity(layout: &Layout, data_bytes: usize) -> Self {
        let mut r = Self::new(layout);
        r.data.reserve(data_bytes);
        r
    }

    /// Append the value of the next field.
    ///
    /// # Panics
    /// If the record already has a value for every field of its layout, or
    /// its text and bytes exceed 4 GiB: both are adapter bugs (an adapter
    /// reports a ragged row as a [`RecordError`]).
    pub fn push(&mut self, value: Value<'_>) -> &mut Self {
        assert!(
            self.len() < self.layout.fields().len(),
            "record has more values than its layout has fields ({})",
            self.layout.fields().len()
        );
        let pair = match value {
            Value::Null => [tag::NULL, 0],
            Value::Bool(b) => [tag::BOOLEAN, u64::from(b)],
            Value::Int(i) => [tag::INTEGER, i as u64],
            Value::Float(x) => [tag::FLOAT, x.to_bits()],
            Value::Text(s) => {
                let (start, len) = self.store(s.as_bytes());
                [tag::TEXT, span_word(start, len)]
            }
            Value::Bytes(b) => {
                let (start, len) = self.store(b);
                [tag::BYTES, span_word(start, len)]
            }
        };
        self.words.extend_from_slice(&pair);
        self
    }

    /// Append a text value (shorthand for `push(Value::Text(..))`).
    pub fn push_text(&mut self, text: &str) -> &mut Self {
        self.push(Value::Text(text))
    }

    /// Set the record's natural key.
    pub fn set_key(&mut self, key: &str) -> &mut Self {
        let (start, len) = self.store(key.as_bytes());
        self.key = Some(Span { start, len });
        self
    }

    /// Set where the record came from.
    pub fn set_location(&mut self, location: Location) -> &mut Self {
        self.location = location;
        self
    }

    fn store(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = u32::try_from(self.data.len()).expect("record data exceeds 4 GiB");
        let len = u32::try_from(bytes.len()).expect("record value exceeds 4 GiB");
        self.data.extend_from_slice(bytes);
        (start, len)
    }

    fn slice(&self, start: u32, len: u32) -> &[u8] {
        &self.data[start as usize..start as usize + len as usize]
    }

    /// The record's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Kind of the record, from its layout.
    pub fn kind(&self) -> Option<&str> {
        self.layout.kind()
    }

    /// Number of values pushed so far.
    pub fn len(&self) -> usize {
        self.words.len() / 2
    }

    /// Whether no value has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Value of the field at `index`.
    pub fn get(&self, index: usize) -> Option<Value<'_>> {
        let pair = self.words.get(2 * index..2 * index + 2)?;
        Some(self.value(pair[0], pair[1]))
    }

    /// Value of the field named `name`.
    pub fn get_by_name(&self, name: &str) -> Option<Value<'_>> {
        self.layout.index_of(name).and_then(|i| self.get(i))
    }

    /// `(name, value)` pairs in field order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, Value<'_>)> {
        self.layout
            .fields()
            .iter()
            .map(String::as_str)
            .zip(self.words.chunks_exact(2).map(|p| self.value(p[0], p[1])))
    }

    /// The natural key, if the adapter set one.
    pub fn key(&self) -> Option<&str> {
        self.key.map(|Span { start, len }| {
            std::str::from_utf8(self.slice(start, len)).expect("keys are stored from &str")
        })
    }

    /// Where the record came from.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The value a (type, payload) pair of this record's words stands for.
    fn value(&self, tag: u64, payload: u64) -> Value<'_> {
        let (start, len) = (payload as u32, (payload >> 32) as u32);
        match tag {
            tag::NULL => Value::Null,
            tag::BOOLEAN => Value::Bool(payload == 1),
            tag::INTEGER => Value::Int(payload as i64),
            tag::FLOAT => Value::Float(f64::from_bits(payload)),
            tag::TEXT => Value::Text(
                std::str::from_utf8(self.slice(start, len)).expect("text is stored from &str"),
            ),
            tag::BYTES => Value::Bytes(self.slice(start, len)),
            _ => unreachable!("push writes only known types"),
        }
    }

    /// Split into the parts that cross the boundary.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> RecordParts {
        RecordParts {
            layout: self.layout,
            values: self.words,
            key: self.key,
            data: self.data,
            location: self.location,
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) struct RecordParts {
    pub layout: Layout,
    pub values: Vec<u64>,
    pub key: Option<Span>,
    pub data: Vec<u8>,
    pub location: Location,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_struct("Record");
        if let Some(kind) = self.kind() {
            m.field("kind", &kind);
        }
        if let Some(key) = self.key() {
            m.field("key", &key);
        }
        m.field("fields", &self.fields().collect::<Vec<_>>())
            .field("location", &self.location)
            .finish()
    }
}

/// Why one record could not be parsed. Parsing goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Stable kebab-case code (see [`codes`](crate::codes) for shared ones).
    pub code: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The field at fault, if one is.
    pub field: Option<String>,
    /// The bytes of the bad record; the next item starts after them.
    pub location: Location,
}

impl RecordError {
    /// A record error with a code, a message and the record's location.
    pub fn new(code: impl Into<String>, message: impl Into<String>, location: Location) -> Self {
        RecordError {
            code: code.into(),
            message: message.into(),
            field: None,
            location,
        }
    }

    /// Name the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} (record {}, line {}, byte offset {}",
            self.code,
            self.message,
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

/// What [`Adapter::next`](crate::Adapter::next) yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The next record.
    Record(Record),
    /// The next record could not be parsed; parsing goes on after it.
    Error(RecordError),
    /// The rest of the input cannot be parsed; `next` is not called again.
    Fatal(RecordError),
    /// The input has ended; `next` is not called again.
    End,
}

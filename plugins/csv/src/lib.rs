//! The sluice `csv` format adapter: RFC 4180 CSV and the usual dialects
//! (TSV, semicolon- or pipe-separated, backslash escapes, comment lines).
//!
//! It streams: [`csv_core`] is fed chunk by chunk from [`Input`], and the
//! adapter never holds more than one record (bounded by the limits below).
//! One [`Layout`] is built per parse, from the header row, the `columns`
//! option, or (with `header=false`) the width of the first record.
//!
//! # Options and defaults
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `delimiter` | `,` | field separator (`tab`, `;`, `pipe`, `0xNN` ...) |
//! | `quote` | `"` | quote byte; `none` makes quotes plain data |
//! | `escape` | none | escape byte inside quotes (e.g. `\`); none = RFC 4180 doubled quotes only |
//! | `double-quote` | `true` | `""` inside quotes is one `"` (RFC 4180) |
//! | `header` | `true` | the first row names the fields (most CSV exports have one) |
//! | `columns` | none | comma-separated field names; replace the header row, or name the fields when `header=false` |
//! | `trim` | `none` | strip ASCII whitespace around `headers`, `fields` or `all`; off by default because spaces can be data |
//! | `comment` | none | lines starting with this byte are skipped |
//! | `null` | none | an *unquoted* field equal to this text is null (`null=` makes empty unquoted fields null) |
//! | `types` | none | `name:type,...` with `text`, `integer`, `float` or `boolean` |
//! | `kind` | none | entity type put on the layout |
//! | `allow-nul` | `false` | keep NUL bytes in values instead of rejecting the record (NUL is almost always a sign of a binary or UTF-16 file) |
//! | `max-field-bytes` | 1 MiB | longest value, after unquoting |
//! | `max-record-bytes` | 8 MiB | longest record, in input bytes without its line terminator |
//! | `max-columns` | 4096 | most fields in a record (and in the header) |
//!
//! The limits are generous for real tables yet keep one parse inside a few
//! MiB of plugin memory: a hostile 64 MiB field costs at most about twice
//! `max-field-bytes` before it is dropped.
//!
//! Without a header and without `columns`, fields are named `_col.1`,
//! `_col.2` ..., as the W3C CSV on the Web recommendation does.
//!
//! # Errors
//!
//! Per-record errors (parsing goes on after them), located at the record's
//! bytes (terminator included), its first line and its ordinal:
//! `ragged-row`, `invalid-utf8`, `nul-byte`, `field-too-long`,
//! `record-too-long`, `too-many-fields`, `unterminated-quote` (the input ended
//! inside quotes) and `bad-value` (a typed column that does not convert).
//! When one record has several problems, one error is reported, the first
//! of: unterminated quote; the first limit crossed in the input; ragged row;
//! NUL byte or invalid UTF-8 (in the first field that has either, NUL first);
//! bad value (first typed field that does not convert).
//!
//! Fatal errors end the parse: `unsupported-encoding` (a UTF-16/32 byte order
//! mark), and problems with the header row: `bad-header` (a duplicate or empty
//! name, or a `types` entry naming no column), `invalid-utf8`, `nul-byte`,
//! `unterminated-quote` or a limit code.
//!
//! Empty input, or a header without rows, gives no records and no error.
//!
//! # Checkpoints
//!
//! A checkpoint's offset is the first byte after the last item. Its state is
//! written with [`StateWriter`]: version (1), line, ordinal, whether the
//! encoding check has run, whether the header row is still to come, then the
//! layout: `0` (not known yet), `1` + count + names (from the header row), `2`
//! (from `columns`, rebuilt from the options) or `3` + width (`_col.N`
//! names).

use std::collections::HashSet;

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};
use sluice_sdk::{
    Adapter, AdapterInfo, Checkpoint, ConfigError, Input, Item, Layout, Location, OptionInfo,
    Options, Record, RecordError, StateReader, StateWriter, Value, byte_order_mark, codes,
    count_line_breaks, export_adapter,
};

/// Default `max-field-bytes`: 1 MiB, far above real cells (long text,
/// embedded JSON) and small enough to keep a plugin's memory flat.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 1 << 20;
/// Default `max-record-bytes`: 8 MiB, room for hundreds of wide columns.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8 << 20;
/// Default `max-columns`: 4096, above spreadsheet-export widths.
pub const DEFAULT_MAX_COLUMNS: usize = 4096;
/// Largest accepted byte limit: keeps record data well inside the 4 GiB a
/// record and a wasm32 address space can hold.
pub const LIMIT_BYTES_CEILING: usize = 1 << 30;
/// Largest accepted `max-columns`: field-end bookkeeping is a word a column.
pub const LIMIT_COLUMNS_CEILING: usize = 1 << 20;

const STATE_VERSION: u64 = 1;
/// Where an over-limit record's bytes go while it is scanned to its end.
const SCRATCH_BYTES: usize = 16 * 1024;
const SCRATCH_ENDS: usize = 256;
const MIN_OUT_BYTES: usize = 1024;
const MIN_ENDS: usize = 16;
/// Values quoted in messages are cut to this many characters.
const MESSAGE_VALUE_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trim {
    None,
    Headers,
    Fields,
    All,
}

impl Trim {
    fn headers(self) -> bool {
        matches!(self, Trim::Headers | Trim::All)
    }

    fn fields(self) -> bool {
        matches!(self, Trim::Fields | Trim::All)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColType {
    Text,
    Integer,
    Float,
    Boolean,
}

/// The options of one parse, checked.
#[derive(Debug, Clone)]
struct Config {
    delimiter: u8,
    quote: Option<u8>,
    escape: Option<u8>,
    double_quote: bool,
    header: bool,
    columns: Option<Vec<String>>,
    trim: Trim,
    comment: Option<u8>,
    null: Option<Vec<u8>>,
    types: Vec<(String, ColType)>,
    kind: Option<String>,
    allow_nul: bool,
    max_field: usize,
    max_record: usize,
    max_columns: usize,
}

fn parse_columns(spec: &str) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = spec.split(',').map(|s| s.trim().to_owned()).collect();
    if names.iter().any(String::is_empty) {
        return Err(ConfigError::option(
            "columns",
            "every column needs a name: give comma-separated names like id,name,price",
        ));
    }
    if let Some(dup) = sluice_sdk::first_duplicate(&names) {
        return Err(ConfigError::option(
            "columns",
            format!("names {dup:?} twice; field names must be unique"),
        ));
    }
    Ok(names)
}

fn parse_types(spec: &str) -> Result<Vec<(String, ColType)>, ConfigError> {
    let mut types: Vec<(String, ColType)> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, ty)) = entry.rsplit_once(':') else {
            return Err(ConfigError::option(
                "types",
                format!("entry {entry:?} is not name:type (for example price:float)"),
            ));
        };
        let name = name.trim();
        let ty = match ty.trim().to_ascii_lowercase().as_str() {
            "text" | "string" => ColType::Text,
            "integer" | "int" => ColType::Integer,
            "float" | "number" => ColType::Float,
            "boolean" | "bool" => ColType::Boolean,
            other => {
                return Err(ConfigError::option(
                    "types",
                    format!(
                        "unknown type {other:?} for {name:?}: use text, integer, float or boolean"
                    ),
                ));
            }
        };
        if name.is_empty() {
            return Err(ConfigError::option(
                "types",
                format!("entry {entry:?} names no column"),
            ));
        }
        if types.iter().any(|(n, _)| n == name) {
            return Err(ConfigError::option(
                "types",
                format!("column {name:?} is typed twice"),
            ));
        }
        types.push((name.to_owned(), ty));
    }
    Ok(types)
}

impl Config {
    fn from_options(o: &Options) -> Result<Self, ConfigError> {
        let Some(delimiter) = o.byte("delimiter")? else {
            return Err(ConfigError::option(
                "delimiter",
                "a delimiter is required (for example , or tab)",
            ));
        };
        let quote = o.byte("quote")?;
        let escape = o.byte("escape")?;
        let comment = o.byte("comment")?;
        if escape.is_some() && quote.is_none() {
            return Err(ConfigError::option(
                "escape",
                "an escape only works inside quotes; drop it or set quote",
            ));
        }
        let special = [
            ("delimiter", Some(delimiter)),
            ("quote", quote),
            ("escape", escape),
            ("comment", comment),
        ];
        for (i, &(name, byte)) in special.iter().enumerate() {
            let Some(b) = byte else { continue };
            if b == b'\r' || b == b'\n' {
                return Err(ConfigError::option(name, "cannot be a line break"));
            }
            if !b.is_ascii() {
                // A byte >= 0x80 would cut UTF-8 characters apart.
                return Err(ConfigError::option(name, "must be an ASCII character"));
            }
            if let Some((other, _)) = special[..i].iter().find(|(_, o)| *o == Some(b)) {
                // Blame the option the user gave, not a default it clashes with.
                let (blamed, with) = if o.is_given(name) {
                    (name, *other)
                } else {
                    (*other, name)
                };
                return Err(ConfigError::option(
                    blamed,
                    format!(
                        "is the same character as {with} ({:?}); they must differ",
                        b as char
                    ),
                ));
            }
        }
        let trim = match o.get("trim").unwrap_or("none") {
            "none" => Trim::None,
            "headers" => Trim::Headers,
            "fields" => Trim::Fields,
            "all" => Trim::All,
            other => {
                return Err(ConfigError::option(
                    "trim",
                    format!("invalid value {other:?}: use none, headers, fields or all"),
                ));
            }
        };
        let max_columns = o.bounded(
            "max-columns",
            DEFAULT_MAX_COLUMNS,
            1..=LIMIT_COLUMNS_CEILING,
        )?;
        let columns = o.get("columns").map(parse_columns).transpose()?;
        if let Some(c) = &columns
            && c.len() > max_columns
        {
            return Err(ConfigError::option(
                "columns",
                format!(
                    "names {} columns, more than max-columns ({max_columns})",
                    c.len()
                ),
            ));
        }
        Ok(Config {
            delimiter,
            quote,
            escape,
            double_quote: o.flag("double-quote")?.unwrap_or(true),
            header: o.flag("header")?.unwrap_or(true),
            columns,
            trim,
            comment,
            null: o.get("null").map(|s| s.as_bytes().to_vec()),
            types: o
                .get("types")
                .map(parse_types)
                .transpose()?
                .unwrap_or_default(),
            kind: o.get("kind").filter(|k| !k.is_empty()).map(str::to_owned),
            allow_nul: o.flag("allow-nul")?.unwrap_or(false),
            max_field: o.bounded(
                "max-field-bytes",
                DEFAULT_MAX_FIELD_BYTES,
                1..=LIMIT_BYTES_CEILING,
            )?,
            max_record: o.bounded(
                "max-record-bytes",
                DEFAULT_MAX_RECORD_BYTES,
                1..=LIMIT_BYTES_CEILING,
            )?,
            max_columns,
        })
    }

    fn reader(&self) -> Reader {
        let mut b = ReaderBuilder::new();
        b.delimiter(self.delimiter)
            .escape(self.escape)
            .double_quote(self.double_quote);
        match self.quote {
            Some(q) => b.quote(q),
            None => b.quoting(false),
        };
        // Blank and comment lines are skipped by the adapter, so csv-core
        // only ever sees real records and needs no comment byte.
        let mut r = b.build();
        // csv-core strips a UTF-8 BOM from its first read, but only when all
        // three bytes arrive in one chunk. One bare line break marks it as
        // having read (and changes nothing else), so the adapter's own,
        // chunk-independent BOM handling is the only one.
        let _ = r.read_record(b"\n", &mut [0u8; 1], &mut [0usize; 1]);
        r
    }
}

/// The input, plus the few bytes read ahead to look for a byte order mark,
/// with the absolute offset and line of the next unread byte.
struct Source {
    input: Input,
    head: [u8; 4],
    head_start: usize,
    head_end: usize,
    pos: u64,
    line: u64,
    prev_cr: bool,
}

impl Source {
    /// Unread bytes at hand; empty only at the end of input.
    fn chunk(&mut self) -> &[u8] {
        if self.head_start < self.head_end {
            &self.head[self.head_start..self.head_end]
        } else {
            self.input.fill()
        }
    }

    /// Mark `n` bytes of [`Source::chunk`] as read, counting their lines.
    fn consume(&mut self, n: usize) {
        let from_head = self.head_start < self.head_end;
        let prev_cr = self.prev_cr;
        let (taken, lines, last_cr) = {
            let bytes: &[u8] = if from_head {
                let n = n.min(self.head_end - self.head_start);
                &self.head[self.head_start..self.head_start + n]
            } else {
                let avail = self.input.fill();
                &avail[..n.min(avail.len())]
            };
            let Some(&last) = bytes.last() else { return };
            (
                bytes.len(),
                count_line_breaks(bytes, prev_cr),
                last == b'\r',
            )
        };
        if from_head {
            self.head_start += taken;
        } else {
            self.input.advance(taken);
        }
        self.prev_cr = last_cr;
        self.line += lines;
        self.pos += taken as u64;
    }
}

/// Why a record could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// The input ended inside quotes in this (0-based) field.
    Unterminated {
        field: usize,
    },
    FieldTooLong {
        field: usize,
    },
    RecordTooLong,
    TooManyFields,
}

/// The bytes of one record, as read.
struct Scan {
    offset: u64,
    line: u64,
    length: u64,
    problem: Option<Problem>,
}

/// Buffers reused for every record.
#[derive(Default)]
struct Buffers {
    /// Unquoted field data, fields back to back; `out[..len]` is in use.
    out: Vec<u8>,
    len: usize,
    /// `ends[i]` is where field `i` ends in `out`; `ends[..nends]` in use.
    ends: Vec<usize>,
    nends: usize,
    /// Whether each field started with a quote (tracked only for `null`).
    quoted: Vec<bool>,
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
}

impl Buffers {
    fn range(&self, i: usize, trim: bool) -> (usize, usize) {
        let mut start = if i == 0 { 0 } else { self.ends[i - 1] };
        let mut end = self.ends[i];
        if trim {
            while start < end && self.out[start].is_ascii_whitespace() {
                start += 1;
            }
            while end > start && self.out[end - 1].is_ascii_whitespace() {
                end -= 1;
            }
        }
        (start, end)
    }

    fn field(&self, i: usize, trim: bool) -> &[u8] {
        let (a, b) = self.range(i, trim);
        &self.out[a..b]
    }

    fn last_end(&self) -> usize {
        if self.nends == 0 {
            0
        } else {
            self.ends[self.nends - 1]
        }
    }
}

/// Where the layout came from, which decides how a checkpoint stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutFrom {
    Header,
    Columns,
    Width,
}

/// The CSV adapter. Public so native code (benchmarks, tools) can drive it.
pub struct CsvAdapter {
    cfg: Config,
    src: Source,
    rdr: Reader,
    ordinal: u64,
    /// Whether the byte order mark check has run.
    begun: bool,
    header_pending: bool,
    layout: Option<(Layout, LayoutFrom)>,
    /// Type of each layout field.
    col_types: Vec<ColType>,
    finished: bool,
    buf: Buffers,
}

#[cfg(not(test))]
fn plain_path_enabled() -> bool {
    true
}

#[cfg(test)]
thread_local! {
    /// Tests turn the plain-record path off to compare it with csv-core.
    static PLAIN_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

#[cfg(test)]
fn plain_path_enabled() -> bool {
    PLAIN_PATH.with(std::cell::Cell::get)
}

fn default_names(width: usize) -> Vec<String> {
    (1..=width).map(|i| format!("_col.{i}")).collect()
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(MESSAGE_VALUE_CHARS) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn convert(ty: ColType, text: &str) -> Result<Value<'_>, &'static str> {
    // There is no empty number or boolean: an empty cell is a missing value.
    if ty != ColType::Text && text.is_empty() {
        return Ok(Value::Null);
    }
    match ty {
        ColType::Text => Ok(Value::Text(text)),
        ColType::Integer => text
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| "an integer"),
        ColType::Float => match text.parse::<f64>() {
            // NaN and infinities have no place in a table of measurements and
            // do not survive a JSON export: refuse them.
            Ok(x) if x.is_finite() => Ok(Value::Float(x)),
            _ => Err("a finite decimal number"),
        },
        ColType::Boolean => {
            let is = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(text));
            if is(&["true", "t", "yes", "y", "1"]) {
                Ok(Value::Bool(true))
            } else if is(&["false", "f", "no", "n", "0"]) {
                Ok(Value::Bool(false))
            } else {
                Err("a boolean (true/false, yes/no, 1/0)")
            }
        }
    }
}

impl CsvAdapter {
    /// Read up to four bytes and refuse UTF-16/32; drop a UTF-8 BOM.
    fn check_encoding(&mut self) -> Option<Item> {
        let src = &mut self.src;
        let mut n = 0;
        while n < src.head.len() {
            let c = src.input.fill();
            if c.is_empty() {
                break;
            }
            let k = (src.head.len() - n).min(c.len());
            src.head[n..n + k].copy_from_slice(&c[..k]);
            src.input.advance(k);
            n += k;
        }
        src.head_start = 0;
        src.head_end = n;
        let bom = byte_order_mark(&src.head[..n])?;
        if bom.is_utf8() {
            src.consume(bom.len);
            return None;
        }
        Some(Item::Fatal(bom.unsupported(self.ordinal + 1)))
    }

    /// Skip blank and comment lines. False at the end of input.
    fn skip_to_record(&mut self) -> bool {
        let comment = self.cfg.comment;
        let mut in_comment = false;
        loop {
            let chunk = self.src.chunk();
            if chunk.is_empty() {
                return false;
            }
            let mut i = 0;
            let mut found = false;
            while i < chunk.len() {
                let b = chunk[i];
                if b == b'\r' || b == b'\n' {
                    in_comment = false;
                } else if in_comment {
                    // still inside a comment line
                } else if Some(b) == comment {
                    in_comment = true;
                } else {
                    found = true;
                    break;
                }
                i += 1;
            }
            self.src.consume(i);
            if found {
                return true;
            }
        }
    }

    /// Read one record, which starts at the next byte, into `self.buf`.
    fn scan_record(&mut self) -> Scan {
        if let Some(scan) = self.scan_plain() {
            return scan;
        }
        self.scan_general()
    }

    /// The record at hand, if it is plain: its line feed is in the current
    /// chunk, no quote byte or carriage return comes before it, and it stays
    /// clear of every limit. csv-core would make exactly its bytes split at
    /// the delimiter of it (unquoted fields are taken as they are); finding
    /// those bytes with SIMD searches is several times faster than
    /// csv-core's byte-by-byte state machine. Anything else, including every
    /// record at or over a limit, goes through [`CsvAdapter::scan_general`].
    fn scan_plain(&mut self) -> Option<Scan> {
        if !plain_path_enabled() || self.src.head_start < self.src.head_end {
            return None;
        }
        let (offset, line) = (self.src.pos, self.src.line);
        let chunk = self.src.input.fill();
        let end = memchr::memchr(b'\n', chunk)?;
        let bytes = &chunk[..end];
        let cfg = &self.cfg;
        if end + 1 >= cfg.max_record {
            return None;
        }
        let special = match cfg.quote {
            Some(q) => memchr::memchr2(q, b'\r', bytes),
            None => memchr::memchr(b'\r', bytes),
        };
        if special.is_some() {
            return None;
        }
        let buf = &mut self.buf;
        buf.quoted.clear();
        // Buffers grow as scan_general grows them: it finds limits by their
        // size, so they never pass max_record + 1 bytes or max_columns ends.
        if buf.out.len() < end {
            buf.out
                .resize(end.max(MIN_OUT_BYTES).min(cfg.max_record + 1), 0);
        }
        let (mut start, mut len, mut nends) = (0, 0, 0);
        for stop in memchr::memchr_iter(cfg.delimiter, bytes).chain([end]) {
            let field = &bytes[start..stop];
            if field.len() >= cfg.max_field || nends + 1 >= cfg.max_columns {
                return None;
            }
            buf.out[len..len + field.len()].copy_from_slice(field);
            len += field.len();
            if nends == buf.ends.len() {
                buf.ends
                    .resize((nends * 2).max(MIN_ENDS).min(cfg.max_columns), 0);
            }
            buf.ends[nends] = len;
            nends += 1;
            start = stop + 1;
        }
        buf.len = len;
        buf.nends = nends;
        self.src.consume(end + 1);
        Some(Scan {
            offset,
            line,
            length: end as u64 + 1,
            problem: None,
        })
    }

    /// Read one record with csv-core, which handles every case.
    ///
    /// Limits are checked exactly where the input crosses them, whatever the
    /// chunk boundaries: a call to csv-core that could cross one is bounded
    /// (input, output, one field) so it stops at the crossing byte.
    fn scan_general(&mut self) -> Scan {
        let offset = self.src.pos;
        let line = self.src.line;
        let max_field = self.cfg.max_field;
        let max_record = self.cfg.max_record as u64;
        let max_columns = self.cfg.max_columns;
        let track_quotes = self.cfg.null.is_some();
        let quote = self.cfg.quote;
        let buf = &mut self.buf;
        buf.len = 0;
        buf.nends = 0;
        buf.quoted.clear();
        let mut problem: Option<Problem> = None;
        let mut raw: u64 = 0;
        // Fields ended so far, counted also once the record is over a limit.
        let mut fields: usize = 0;
        let mut at_field_start = true;
        loop {
            if problem.is_none() {
                if buf.len == buf.out.len() {
                    // Unquoting never grows data, so a record within
                    // max-record-bytes fits in max_record + 1 bytes.
                    let cap = self.cfg.max_record + 1;
                    if buf.out.len() >= cap {
                        problem = Some(Problem::RecordTooLong);
                    } else {
                        let new = (buf.out.len() * 2).max(MIN_OUT_BYTES).min(cap);
                        buf.out.resize(new, 0);
                    }
                }
                if buf.nends == buf.ends.len() {
                    if buf.ends.len() >= max_columns {
                        problem = Some(Problem::TooManyFields);
                    } else {
                        let new = (buf.ends.len() * 2).max(MIN_ENDS).min(max_columns);
                        buf.ends.resize(new, 0);
                    }
                }
            }
            if problem.is_some() && buf.scratch.is_empty() {
                buf.scratch = vec![0; SCRATCH_BYTES];
                buf.scratch_ends = vec![0; SCRATCH_ENDS];
            }
            let chunk = self.src.chunk();
            if chunk.is_empty() {
                // The input ended inside the record. A synthetic line break
                // tells whether csv-core is inside quotes: outside, it ends
                // the record; inside, it is just more quoted data.
                let ends: &mut [usize] = if problem.is_none() {
                    &mut buf.ends[buf.nends..buf.nends + 1]
                } else {
                    &mut buf.scratch_ends
                };
                let (res, _, _, nend) = self.rdr.read_record(b"\n", &mut [0u8; 1], ends);
                if res == ReadRecordResult::Record {
                    if problem.is_none() {
                        buf.nends += nend;
                    }
                } else {
                    // The root cause of any limit crossed on the way.
                    problem = Some(Problem::Unterminated { field: fields });
                }
                break;
            }
            let cur_field = buf.len - buf.last_end();
            // Bytes that cannot cross a field or record limit.
            let room =
                (max_field.saturating_sub(cur_field) as u64).min(max_record.saturating_sub(raw));
            let careful = problem.is_none() && room == 0;
            let input = if problem.is_some() {
                chunk
            } else if careful {
                let n = usize::try_from(max_record + 1 - raw).unwrap_or(usize::MAX);
                &chunk[..chunk.len().min(n)]
            } else {
                &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))]
            };
            if track_quotes && at_field_start && problem.is_none() {
                buf.quoted
                    .push(quote.is_some() && input.first().copied() == quote);
                at_field_start = false;
            }
            let (res, nin, nout, nend) = if problem.is_some() {
                self.rdr
                    .read_record(input, &mut buf.scratch, &mut buf.scratch_ends)
            } else {
                // One field per call where each field start must be seen
                // (quote tracking) or where a limit may be crossed.
                let window = if track_quotes || careful {
                    1
                } else {
                    buf.ends.len() - buf.nends
                };
                let mut out_room = buf.out.len() - buf.len;
                if careful {
                    out_room = out_room.min(max_field + 1 - cur_field);
                }
                self.rdr.read_record(
                    input,
                    &mut buf.out[buf.len..buf.len + out_room],
                    &mut buf.ends[buf.nends..buf.nends + window],
                )
            };
            let last = if nin > 0 { input[nin - 1] } else { 0 };
            self.src.consume(nin);
            raw += nin as u64;
            fields += nend;
            let is_record = res == ReadRecordResult::Record;
            if problem.is_none() {
                buf.len += nout;
                buf.nends += nend;
                if !is_record {
                    if buf.len - buf.last_end() > max_field {
                        problem = Some(Problem::FieldTooLong { field: buf.nends });
                    } else if raw > max_record {
                        problem = Some(Problem::RecordTooLong);
                    } else if buf.nends >= max_columns {
                        problem = Some(Problem::TooManyFields);
                    }
                    if nend > 0 {
                        at_field_start = true;
                    }
                }
            }
            if is_record {
                if last == b'\r' {
                    // A CRLF terminator belongs to this record.
                    if self.src.chunk().first() == Some(&b'\n') {
                        self.src.consume(1);
                        raw += 1;
                    }
                }
                break;
            }
            if nin == 0 && nout == 0 && nend == 0 {
                // csv-core always makes progress on non-empty buffers; this
                // guard only turns a broken invariant into an error, not a hang.
                if problem.is_none() {
                    problem = Some(Problem::RecordTooLong);
                } else {
                    break;
                }
            }
        }
        Scan {
            offset,
            line,
            length: raw,
            problem,
        }
    }

    fn location(&self, scan: &Scan) -> Location {
        Location {
            offset: scan.offset,
            length: scan.length,
            line: scan.line,
            ordinal: self.ordinal + 1,
        }
    }

    /// Name of field `i` for messages, if it has one.
    fn field_name(&self, i: usize) -> Option<String> {
        match &self.layout {
            Some((layout, _)) => layout.fields().get(i).cloned(),
            None if !self.header_pending && !self.cfg.header && self.cfg.columns.is_none() => {
                Some(format!("_col.{}", i + 1))
            }
            None => None,
        }
    }

    /// `field "name" (column 2)`, or `column 2` for an unnamed field.
    fn label(&self, i: usize) -> String {
        match self.field_name(i) {
            Some(name) => format!("field {:?} (column {})", shorten(&name), i + 1),
            None => format!("column {}", i + 1),
        }
    }

    fn error(
        &self,
        code: &str,
        message: String,
        field: Option<usize>,
        location: Location,
    ) -> RecordError {
        let e = RecordError::new(code, message, location);
        match field.and_then(|i| self.field_name(i)) {
            Some(name) => e.with_field(name),
            None => e,
        }
    }

    fn problem_error(&self, problem: Problem, scan: &Scan, header: bool) -> RecordError {
        let what = if header {
            "the header row"
        } else {
            "this record"
        };
        let loc = self.location(scan);
        let cfg = &self.cfg;
        // Header cells are not fields: name them by position only.
        let label = |i: usize| {
            if header {
                format!("column {}", i + 1)
            } else {
                self.label(i)
            }
        };
        let field = |i: usize| (!header).then_some(i);
        match problem {
            Problem::Unterminated { field: i } => self.error(
                codes::UNTERMINATED_QUOTE,
                format!(
                    "the quoted {} in {what}, which starts on line {}, is never closed: the input \
                     ends inside the quotes; close the quote, write quotes inside quoted fields \
                     twice (\"\"), or pass quote=none if quotes are plain data",
                    label(i),
                    scan.line
                ),
                field(i),
                loc,
            ),
            Problem::FieldTooLong { field: i } => self.error(
                codes::FIELD_TOO_LONG,
                format!(
                    "{} of {what} is longer than max-field-bytes ({} bytes); raise max-field-bytes \
                     if such values are expected",
                    label(i),
                    cfg.max_field
                ),
                field(i),
                loc,
            ),
            Problem::RecordTooLong => self.error(
                codes::RECORD_TOO_LONG,
                format!(
                    "{what} is longer than max-record-bytes ({} bytes); raise max-record-bytes if \
                     such records are expected",
                    cfg.max_record
                ),
                None,
                loc,
            ),
            Problem::TooManyFields => self.error(
                codes::TOO_MANY_FIELDS,
                format!(
                    "{what} has more than max-columns ({}) fields; check the delimiter option, or \
                     raise max-columns",
                    cfg.max_columns
                ),
                None,
                loc,
            ),
        }
    }

    /// Make the layout; `Err` names a `types` entry that matches no field.
    fn set_layout(&mut self, names: Vec<String>, from: LayoutFrom) -> Result<(), String> {
        let mut col_types = vec![ColType::Text; names.len()];
        for (name, ty) in &self.cfg.types {
            match names.iter().position(|n| n == name) {
                Some(i) => col_types[i] = *ty,
                None => {
                    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
                    return Err(format!(
                        "option types names the column {name:?}, which does not exist (columns: {}{}); \
                         fix the name in types",
                        shown.join(", "),
                        if names.len() > shown.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        self.col_types = col_types;
        self.layout = Some((Layout::new(self.cfg.kind.as_deref(), names), from));
        Ok(())
    }

    /// Take the header row; `Some` is the fatal error that ends the parse.
    fn take_header(&mut self, scan: &Scan) -> Option<RecordError> {
        if let Some(p) = scan.problem {
            return Some(self.problem_error(p, scan, true));
        }
        if self.cfg.columns.is_some() {
            // `columns` replaces the names; the row is only skipped.
            return None;
        }
        let loc = self.location(scan);
        let trim = self.cfg.trim.headers();
        let n = self.buf.nends;
        let mut names: Vec<String> = Vec::with_capacity(n);
        {
            let mut seen: HashSet<&str> = HashSet::with_capacity(n);
            for i in 0..n {
                let bytes = self.buf.field(i, trim);
                if !self.cfg.allow_nul && bytes.contains(&0) {
                    return Some(RecordError::new(
                        codes::NUL_BYTE,
                        format!(
                            "column {} of the header contains a NUL byte; a file full of NUL bytes is \
                             often UTF-16 without a byte order mark: convert it to UTF-8",
                            i + 1
                        ),
                        loc,
                    ));
                }
                let Ok(name) = std::str::from_utf8(bytes) else {
                    return Some(RecordError::new(
                        codes::INVALID_UTF8,
                        format!(
                            "column {} of the header is not valid UTF-8; convert the file to UTF-8",
                            i + 1
                        ),
                        loc,
                    ));
                };
                if name.is_empty() {
                    return Some(RecordError::new(
                        codes::BAD_HEADER,
                        format!(
                            "column {} of the header has no name; name it in the file, or pass \
                             columns=... to name all fields (or header=false if the first row is data)",
                            i + 1
                        ),
                        loc,
                    ));
                }
                if !seen.insert(name) {
                    let first = names.iter().position(|n| n == name).map_or(0, |j| j + 1);
                    return Some(
                        RecordError::new(
                            codes::BAD_HEADER,
                            format!(
                                "columns {first} and {} of the header are both named {:?}; rename one \
                                 of them, or pass columns=... to name all fields",
                                i + 1,
                                shorten(name)
                            ),
                            loc,
                        )
                        .with_field(name),
                    );
                }
                names.push(name.to_owned());
            }
        }
        match self.set_layout(names, LayoutFrom::Header) {
            Ok(()) => None,
            Err(message) => Some(RecordError::new(codes::BAD_HEADER, message, loc)),
        }
    }

    /// Turn the record in `self.buf` into an item.
    fn record_item(&mut self, scan: &Scan) -> Item {
        let loc = self.location(scan);
        if let Some(p) = scan.problem {
            return Item::Error(self.problem_error(p, scan, false));
        }
        let n = self.buf.nends;
        if self.layout.is_none() {
            // header=false and no columns: the first record sets the width.
            if let Err(message) = self.set_layout(default_names(n), LayoutFrom::Width) {
                return Item::Fatal(RecordError::new(codes::BAD_HEADER, message, loc));
            }
        }
        let (layout, from) = self.layout.as_ref().expect("the layout is set above");
        let width = layout.fields().len();
        if n != width {
            let expected = match from {
                LayoutFrom::Header => format!("the header has {width}"),
                LayoutFrom::Columns => format!("the columns option names {width}"),
                LayoutFrom::Width => format!("the first record has {width} (header=false)"),
            };
            let message = format!("this record has {} but {expected}", plural(n, "field"));
            let missing = (n < width).then_some(n);
            return Item::Error(self.error(codes::RAGGED_ROW, message, missing, loc));
        }
        let trim = self.cfg.trim.fields();
        let buf = &self.buf;
        let data = &buf.out[..buf.len];
        let has_nul = !self.cfg.allow_nul && data.contains(&0);
        // Valid UTF-8 as a whole still hides a character cut in two by a
        // delimiter; that shows at a field end (trimming only drops ASCII).
        let s = match std::str::from_utf8(data) {
            Ok(s)
                if !has_nul
                    && buf.ends[..n.saturating_sub(1)]
                        .iter()
                        .all(|&e| s.is_char_boundary(e)) =>
            {
                s
            }
            _ => return Item::Error(self.encoding_error(has_nul, trim, loc)),
        };
        let mut record = Record::with_capacity(layout, buf.len);
        for i in 0..n {
            let (a, b) = buf.range(i, trim);
            // Every field boundary is a char boundary (checked above).
            let text = &s[a..b];
            if let Some(null) = &self.cfg.null
                && null.as_slice() == text.as_bytes()
                && !buf.quoted.get(i).copied().unwrap_or(false)
            {
                record.push(Value::Null);
                continue;
            }
            let ty = self.col_types.get(i).copied().unwrap_or(ColType::Text);
            match convert(ty, text) {
                Ok(v) => {
                    record.push(v);
                }
                Err(expected) => {
                    let message = format!(
                        "{} must be {expected}, not {:?}; fix the value, or change types",
                        self.label(i),
                        shorten(text)
                    );
                    return Item::Error(self.error(codes::BAD_VALUE, message, Some(i), loc));
                }
            }
        }
        record.set_location(loc);
        Item::Record(record)
    }

    /// The NUL byte or invalid UTF-8 of the record in `self.buf`: the first
    /// field at fault, a NUL first when one field has both.
    fn encoding_error(&self, has_nul: bool, trim: bool, loc: Location) -> RecordError {
        let buf = &self.buf;
        let n = buf.nends;
        let nul_field = if has_nul {
            (0..n).find(|&i| buf.field(i, trim).contains(&0))
        } else {
            None
        };
        let utf8_field = (0..n).find(|&i| std::str::from_utf8(buf.field(i, trim)).is_err());
        match (nul_field, utf8_field) {
            (Some(i), u) if u.is_none_or(|u| i <= u) => {
                let message = format!(
                    "{} contains a NUL byte; pass allow-nul=true to keep NUL bytes",
                    self.label(i)
                );
                self.error(codes::NUL_BYTE, message, Some(i), loc)
            }
            (_, Some(i)) => {
                let bytes = buf.field(i, trim);
                let detail = match std::str::from_utf8(bytes) {
                    Err(e) => match bytes.get(e.valid_up_to()) {
                        Some(b) => format!(
                            " (byte 0x{b:02X} at byte {} of the value)",
                            e.valid_up_to() + 1
                        ),
                        None => " (it ends inside a character)".to_owned(),
                    },
                    Ok(_) => String::new(),
                };
                let message = format!(
                    "{} is not valid UTF-8{detail}; convert the file to UTF-8 (it may be Latin-1 \
                     or Windows-1252)",
                    self.label(i)
                );
                self.error(codes::INVALID_UTF8, message, Some(i), loc)
            }
            // Fields of valid UTF-8 concatenate to valid UTF-8: not reached.
            _ => self.error(
                codes::INVALID_UTF8,
                "the record is not valid UTF-8".into(),
                None,
                loc,
            ),
        }
    }

    fn restore(&mut self, cp: &Checkpoint) -> Result<(), String> {
        let bad = |e: sluice_sdk::BadState| e.to_string();
        let mut r = StateReader::new(&cp.state);
        if r.u64().map_err(bad)? != STATE_VERSION {
            return Err("the checkpoint was written by another version of the csv adapter".into());
        }
        self.src.line = r.u64().map_err(bad)?;
        self.ordinal = r.u64().map_err(bad)?;
        self.begun = r.bool().map_err(bad)?;
        self.header_pending = r.bool().map_err(bad)?;
        match r.u64().map_err(bad)? {
            0 => {}
            1 => {
                let n = usize::try_from(r.u64().map_err(bad)?).map_err(|e| e.to_string())?;
                if n > self.cfg.max_columns {
                    return Err("the checkpoint has more columns than max-columns".into());
                }
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.str().map_err(bad)?.to_owned());
                }
                if sluice_sdk::first_duplicate(&names).is_some() {
                    return Err("the checkpoint's header names a column twice".into());
                }
                self.set_layout(names, LayoutFrom::Header)?;
            }
            2 => {
                let Some(columns) = self.cfg.columns.clone() else {
                    return Err("the checkpoint was taken with the columns option".into());
                };
                self.set_layout(columns, LayoutFrom::Columns)?;
            }
            3 => {
                let n = usize::try_from(r.u64().map_err(bad)?).map_err(|e| e.to_string())?;
                if n > self.cfg.max_columns {
                    return Err("the checkpoint has more columns than max-columns".into());
                }
                self.set_layout(default_names(n), LayoutFrom::Width)?;
            }
            _ => return Err(bad(sluice_sdk::BadState)),
        }
        if !r.is_empty() {
            return Err(bad(sluice_sdk::BadState));
        }
        self.src.pos = cp.offset;
        Ok(())
    }
}

fn option(name: &str, default: Option<&str>, description: &str) -> OptionInfo {
    OptionInfo::new(name, default, description)
}

impl Adapter for CsvAdapter {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "csv".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "CSV and other delimited text (RFC 4180 plus common dialects), UTF-8"
                .into(),
            formats: vec!["csv".into()],
            extensions: vec!["csv".into()],
            media_types: vec!["text/csv".into()],
            options: vec![
                option(
                    "delimiter",
                    Some(","),
                    "Field separator: one ASCII character, tab, comma, semicolon, pipe, space or \
                     0xNN. Default , as in RFC 4180; use delimiter=tab for TSV.",
                ),
                option(
                    "quote",
                    Some("\""),
                    "Quote character that wraps fields holding delimiters, quotes or line breaks; \
                     none makes quotes plain data. Default \" as in RFC 4180.",
                ),
                option(
                    "escape",
                    None,
                    "Escape character inside quoted fields (for example \\ for \\\"). Unset by \
                     default: RFC 4180 escapes a quote by doubling it.",
                ),
                option(
                    "double-quote",
                    Some("true"),
                    "Whether \"\" inside a quoted field stands for one quote (RFC 4180). Default \
                     true; set false for files that use only an escape character.",
                ),
                option(
                    "header",
                    Some("true"),
                    "Whether the first row names the fields (it is then not a record). Default \
                     true, as almost every CSV export has one. With false, fields are named by \
                     columns, or _col.1, _col.2 ... and the first record sets the width.",
                ),
                option(
                    "columns",
                    None,
                    "Comma-separated field names. With header=true they replace the header row's \
                     names (the row is skipped); with header=false they name the fields. Unset by \
                     default.",
                ),
                option(
                    "trim",
                    Some("none"),
                    "Strip ASCII whitespace around values: none, headers, fields or all. Default \
                     none, because leading and trailing spaces can be data.",
                ),
                option(
                    "comment",
                    None,
                    "Lines starting with this character are skipped (for example #). Unset by \
                     default: no character is special at the start of a line.",
                ),
                option(
                    "null",
                    None,
                    "Text that stands for a missing value: an unquoted field equal to it (after \
                     trim) becomes null, a quoted one stays text. Give it empty (null=) to make \
                     empty unquoted fields null. Unset by default: every value is text.",
                ),
                option(
                    "types",
                    None,
                    "Typed columns as name:type,... with type text, integer, float (finite) or \
                     boolean (true/false, yes/no, 1/0). An empty value becomes null; a value that \
                     does not convert makes the record a bad-value error. Unset by default: all \
                     text.",
                ),
                option(
                    "kind",
                    None,
                    "Entity type given to the records (for example customer). Unset by default.",
                ),
                option(
                    "allow-nul",
                    Some("false"),
                    "Keep NUL bytes in values. Default false: a NUL makes the record a nul-byte \
                     error, since it usually means a binary or UTF-16 file.",
                ),
                option(
                    "max-field-bytes",
                    Some("1048576"),
                    "Longest value in bytes, after unquoting; longer ones make the record a \
                     field-too-long error. Default 1 MiB: above real cells, and it bounds memory.",
                ),
                option(
                    "max-record-bytes",
                    Some("8388608"),
                    "Longest record in input bytes, without its line break; longer ones are \
                     record-too-long errors. Default 8 MiB: room for very wide rows, bounded memory.",
                ),
                option(
                    "max-columns",
                    Some("4096"),
                    "Most fields in a record or the header; more is a too-many-fields error \
                     (fatal in the header). Default 4096, above spreadsheet widths.",
                ),
            ],
            resumable: true,
        }
    }

    fn open(
        input: Input,
        options: &Options,
        resume: Option<Checkpoint>,
    ) -> Result<Self, ConfigError> {
        let cfg = Config::from_options(options)?;
        let rdr = cfg.reader();
        let start = resume.as_ref().map_or(0, |c| c.offset);
        let mut adapter = CsvAdapter {
            header_pending: cfg.header,
            rdr,
            src: Source {
                input,
                head: [0; 4],
                head_start: 0,
                head_end: 0,
                pos: start,
                line: 1,
                prev_cr: false,
            },
            ordinal: 0,
            begun: false,
            layout: None,
            col_types: Vec::new(),
            finished: false,
            buf: Buffers::default(),
            cfg,
        };
        match resume {
            Some(cp) => adapter
                .restore(&cp)
                .map_err(|e| ConfigError::other(format!("cannot resume: {e}")))?,
            None => {
                if let Some(columns) = adapter.cfg.columns.clone() {
                    adapter
                        .set_layout(columns, LayoutFrom::Columns)
                        .map_err(|e| ConfigError::option("types", e))?;
                }
            }
        }
        Ok(adapter)
    }

    fn next(&mut self) -> Item {
        if self.finished {
            return Item::End;
        }
        if !self.begun {
            self.begun = true;
            if let Some(fatal) = self.check_encoding() {
                self.finished = true;
                return fatal;
            }
        }
        loop {
            if !self.skip_to_record() {
                self.finished = true;
                return Item::End;
            }
            let scan = self.scan_record();
            if self.header_pending {
                self.header_pending = false;
                if let Some(e) = self.take_header(&scan) {
                    self.finished = true;
                    return Item::Fatal(e);
                }
                continue;
            }
            let item = self.record_item(&scan);
            self.ordinal += 1;
            if matches!(item, Item::Fatal(_)) {
                self.finished = true;
            }
            return item;
        }
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        let mut w = StateWriter::new();
        w.u64(STATE_VERSION)
            .u64(self.src.line)
            .u64(self.ordinal)
            .bool(self.begun)
            .bool(self.header_pending);
        match &self.layout {
            None => {
                w.u64(0);
            }
            Some((layout, LayoutFrom::Header)) => {
                w.u64(1).u64(layout.fields().len() as u64);
                for name in layout.fields() {
                    w.str(name);
                }
            }
            Some((_, LayoutFrom::Columns)) => {
                w.u64(2);
            }
            Some((layout, LayoutFrom::Width)) => {
                w.u64(3).u64(layout.fields().len() as u64);
            }
        }
        Some(Checkpoint {
            offset: self.src.pos,
            state: w.finish(),
        })
    }
}

export_adapter!(CsvAdapter);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_sdk::testing::{Harness, Output, check_rules};

    fn h() -> Harness<CsvAdapter> {
        Harness::new()
    }

    fn rows(v: &[&[&str]]) -> Vec<Vec<Option<String>>> {
        v.iter()
            .map(|r| r.iter().map(|s| Some((*s).to_owned())).collect())
            .collect()
    }

    fn names(out: &Output) -> Vec<String> {
        out.records()
            .next()
            .expect("a record")
            .layout()
            .fields()
            .to_vec()
    }

    /// `(code, field, offset, length, line, ordinal)` of each error, fatal last.
    fn errors(out: &Output) -> Vec<(String, Option<String>, u64, u64, u64, u64)> {
        out.items
            .iter()
            .filter_map(|i| match i {
                Item::Error(e) | Item::Fatal(e) => Some(e),
                _ => None,
            })
            .map(|e| {
                let l = e.location;
                (
                    e.code.clone(),
                    e.field.clone(),
                    l.offset,
                    l.length,
                    l.line,
                    l.ordinal,
                )
            })
            .collect()
    }

    fn err(
        code: &str,
        field: Option<&str>,
        offset: u64,
        length: u64,
        line: u64,
        ordinal: u64,
    ) -> (String, Option<String>, u64, u64, u64, u64) {
        (
            code.to_owned(),
            field.map(str::to_owned),
            offset,
            length,
            line,
            ordinal,
        )
    }

    /// `(offset, length, line, ordinal)` of each record.
    fn record_locations(out: &Output) -> Vec<(u64, u64, u64, u64)> {
        out.records()
            .map(|r| {
                let l = r.location();
                (l.offset, l.length, l.line, l.ordinal)
            })
            .collect()
    }

    fn config_error(h: Harness<CsvAdapter>) -> ConfigError {
        match h.run(b"a\n1\n") {
            Err(e) => e,
            Ok(_) => panic!("options were accepted"),
        }
    }

    #[test]
    fn header_records_and_exact_locations() {
        let out = h().check(b"a,b\n1,2\n\"x,y\",\"q\"\"q\"\n");
        assert_eq!(names(&out), ["a", "b"]);
        assert_eq!(out.rows(), rows(&[&["1", "2"], &["x,y", "q\"q"]]));
        assert_eq!(record_locations(&out), [(4, 4, 2, 1), (8, 13, 3, 2)]);
        assert!(matches!(out.items.last(), Some(Item::End)));
    }

    #[test]
    fn mixed_line_endings_and_blank_lines() {
        let input = b"a\r\n1\n2\r3\r\n\n\r\n4";
        let out = h().check(input);
        assert_eq!(out.rows(), rows(&[&["1"], &["2"], &["3"], &["4"]]));
        // Blank lines (5 and 6) are no item; a lone CR ends a line.
        assert_eq!(
            record_locations(&out),
            [(3, 2, 2, 1), (5, 2, 3, 2), (7, 3, 4, 3), (13, 1, 7, 4)]
        );
    }

    #[test]
    fn line_breaks_inside_quotes_are_kept_exactly() {
        let out = h().check(b"a,b\n\"x\ry\",\"p\r\nq\"\r\nz,w\n");
        assert_eq!(out.rows(), rows(&[&["x\ry", "p\r\nq"], &["z", "w"]]));
        // The record spans lines 2-4 (CR and CRLF each end a line).
        assert_eq!(record_locations(&out), [(4, 14, 2, 1), (18, 4, 5, 2)]);
    }

    #[test]
    fn whitespace_only_line_is_a_record() {
        let out = h().option("header", "false").check(b" \n\n");
        assert_eq!(out.rows(), rows(&[&[" "]]));
    }

    #[test]
    fn utf8_bom_is_stripped() {
        let out = h().check(b"\xEF\xBB\xBFid,name\n1,x\n");
        assert_eq!(names(&out), ["id", "name"]);
        assert_eq!(record_locations(&out), [(11, 4, 2, 1)]);
        let out = h().option("header", "false").check(b"\xEF\xBB\xBFa\n");
        assert_eq!(record_locations(&out), [(3, 2, 1, 1)]);
        assert_eq!(out.rows(), rows(&[&["a"]]));
        // Only at the start, and only once.
        let out = h()
            .option("header", "false")
            .check(b"\xEF\xBB\xBF\xEF\xBB\xBFa\n");
        assert_eq!(out.rows(), rows(&[&["\u{FEFF}a"]]));
        assert!(h().check(b"\xEF\xBB\xBF").items == [Item::End]);
    }

    #[test]
    fn bytes_that_only_look_like_a_bom_are_data() {
        // U+FEC0 starts with the BOM's first two bytes.
        let out = h()
            .option("header", "false")
            .check("\u{FEC0},b\n".as_bytes());
        assert_eq!(out.rows(), rows(&[&["\u{FEC0}", "b"]]));
        let out = h().option("header", "false").check(b"\xEF\xBB,b\n");
        assert_eq!(
            errors(&out),
            [err("invalid-utf8", Some("_col.1"), 0, 5, 1, 1)]
        );
    }

    #[test]
    fn utf16_and_utf32_are_refused() {
        for (input, name, len) in [
            (&b"\xFF\xFEa\x00\n\x00"[..], "UTF-16LE", 2),
            (&b"\xFE\xFF\x00a"[..], "UTF-16BE", 2),
            (&b"\xFF\xFE\x00\x00a\x00\x00\x00"[..], "UTF-32LE", 4),
            (&b"\x00\x00\xFE\xFF\x00\x00\x00a"[..], "UTF-32BE", 4),
        ] {
            let out = h().check(input);
            assert_eq!(
                errors(&out),
                [err(codes::UNSUPPORTED_ENCODING, None, 0, len, 1, 1)]
            );
            let msg = &out.fatal().unwrap().message;
            assert!(msg.contains(name) && msg.contains("convert"), "{msg}");
        }
    }

    #[test]
    fn utf16_without_bom_is_a_nul_byte_header() {
        let out = h().check(b"a\x00,\x00b\x00\n\x00");
        let fatal = out.fatal().unwrap();
        assert_eq!(fatal.code, "nul-byte");
        assert!(fatal.message.contains("UTF-16"));
    }

    #[test]
    fn comment_lines_are_skipped() {
        let input =
            b"#top\na,b\n# note, with comma\n1,2\n#cr only\r3,4\nx#y,\"\n#not a comment\"\n";
        let out = h().option("comment", "#").check(input);
        assert_eq!(
            out.rows(),
            rows(&[&["1", "2"], &["3", "4"], &["x#y", "\n#not a comment"]])
        );
        assert_eq!(
            record_locations(&out)
                .iter()
                .map(|l| l.2)
                .collect::<Vec<_>>(),
            [4, 6, 7]
        );
        // Without the option a comment is data.
        let out = h().option("header", "false").check(b"#a\n");
        assert_eq!(out.rows(), rows(&[&["#a"]]));
    }

    #[test]
    fn delimiter_option() {
        let out = h().option("delimiter", "tab").check(b"a\tb\n1,5\t2\n");
        assert_eq!(out.rows(), rows(&[&["1,5", "2"]]));
        let out = h().option("delimiter", ";").check(b"a;b\n1;2\n");
        assert_eq!(out.rows(), rows(&[&["1", "2"]]));
        let out = h().option("delimiter", "pipe").check(b"a|b\n1|2\n");
        assert_eq!(out.rows(), rows(&[&["1", "2"]]));
    }

    #[test]
    fn quote_option() {
        let out = h().option("quote", "none").check(b"a,b\n\"x,y\"\n");
        assert_eq!(out.rows(), rows(&[&["\"x", "y\""]]));
        let out = h().option("quote", "'").check(b"a,b\n'x,y',\"z\"\n");
        assert_eq!(out.rows(), rows(&[&["x,y", "\"z\""]]));
    }

    #[test]
    fn escape_and_double_quote_options() {
        let out = h()
            .option("escape", "\\")
            .option("double-quote", "false")
            .check(b"a\n\"x\\\"y\"\n");
        assert_eq!(out.rows(), rows(&[&["x\"y"]]));
        // An escape with doubled quotes still on: both work.
        let out = h().option("escape", "\\").check(b"a\n\"x\\\"y\"\"z\"\n");
        assert_eq!(out.rows(), rows(&[&["x\"y\"z"]]));
        // double-quote=false: a second quote closes, and the rest is data.
        let out = h()
            .option("double-quote", "false")
            .check(b"a\n\"x\"\"y\"\n");
        assert_eq!(out.rows(), rows(&[&["x\"y\""]]));
    }

    #[test]
    fn header_false_names_fields_by_position() {
        let out = h().option("header", "false").check(b"1,2\n3,4\n");
        assert_eq!(names(&out), ["_col.1", "_col.2"]);
        assert_eq!(out.rows(), rows(&[&["1", "2"], &["3", "4"]]));
        assert_eq!(record_locations(&out), [(0, 4, 1, 1), (4, 4, 2, 2)]);
    }

    #[test]
    fn columns_option() {
        let out = h()
            .option("header", "false")
            .option("columns", "id, name")
            .check(b"1,x\n2,y\n");
        assert_eq!(names(&out), ["id", "name"]);
        assert_eq!(out.rows(), rows(&[&["1", "x"], &["2", "y"]]));
        // With a header, columns replace its names and the row is skipped.
        let out = h().option("columns", "id,name").check(b"ID,id\n1,x\n");
        assert_eq!(names(&out), ["id", "name"]);
        assert_eq!(record_locations(&out), [(6, 4, 2, 1)]);
        // Width is the columns' count.
        let out = h().option("columns", "id,name").check(b"h\n1\n");
        assert_eq!(errors(&out), [err("ragged-row", Some("name"), 2, 2, 2, 1)]);
        assert!(
            out.errors()
                .next()
                .unwrap()
                .message
                .contains("columns option names 2")
        );
    }

    #[test]
    fn trim_option() {
        let input = b" a , b \n 1 ,\" 2 \"\n";
        let cases: [(&str, [&str; 2], [&str; 2]); 4] = [
            ("none", [" a ", " b "], [" 1 ", " 2 "]),
            ("headers", ["a", "b"], [" 1 ", " 2 "]),
            ("fields", [" a ", " b "], ["1", "2"]),
            ("all", ["a", "b"], ["1", "2"]),
        ];
        for (mode, header, values) in cases {
            let out = h().option("trim", mode).check(input);
            assert_eq!(names(&out), header, "trim={mode}");
            assert_eq!(out.rows(), rows(&[&values]), "trim={mode}");
        }
    }

    #[test]
    fn null_option_applies_to_unquoted_fields_only() {
        let out = h()
            .option("null", "NULL")
            .check(b"a,b,c\nNULL,\"NULL\",NULLx\n");
        assert_eq!(
            out.rows(),
            [vec![
                None,
                Some("NULL".to_owned()),
                Some("NULLx".to_owned())
            ]]
        );
        let out = h().option("null", "").check(b"a,b,c\n,\"\",x\n");
        assert_eq!(
            out.rows(),
            [vec![None, Some(String::new()), Some("x".to_owned())]]
        );
        // After trimming.
        let out = h()
            .option("null", "N")
            .option("trim", "fields")
            .check(b"a\n N \n");
        assert_eq!(out.rows(), [vec![None]]);
    }

    #[test]
    fn typed_columns() {
        let out = h()
            .option("types", "i:integer, f:float,b:boolean,t:text")
            .check(b"i,f,b,t\n1,2.5,yes,x\n,,,\n-3,1e3,FALSE,7\n");
        let r: Vec<Vec<Value<'_>>> = out
            .records()
            .map(|r| r.fields().map(|(_, v)| v).collect())
            .collect();
        assert_eq!(
            r,
            [
                vec![
                    Value::Int(1),
                    Value::Float(2.5),
                    Value::Bool(true),
                    Value::Text("x")
                ],
                vec![Value::Null, Value::Null, Value::Null, Value::Text("")],
                vec![
                    Value::Int(-3),
                    Value::Float(1000.0),
                    Value::Bool(false),
                    Value::Text("7")
                ],
            ]
        );
    }

    #[test]
    fn bad_values_are_record_errors() {
        let out = h()
            .option("types", "n:integer,x:float,b:boolean")
            .check(b"n,x,b\n1,1,1\n1.5,1,1\n1,NaN,1\n1,1,maybe\n2,2,0\n");
        assert_eq!(
            errors(&out),
            [
                err("bad-value", Some("n"), 12, 8, 3, 2),
                err("bad-value", Some("x"), 20, 8, 4, 3),
                err("bad-value", Some("b"), 28, 10, 5, 4),
            ]
        );
        let msg = &out.errors().next().unwrap().message;
        assert!(
            msg.contains("\"n\"") && msg.contains("integer") && msg.contains("1.5"),
            "{msg}"
        );
        assert_eq!(out.records().count(), 2);
        // With null, the null text is not converted.
        let out = h()
            .option("types", "n:integer")
            .option("null", "NULL")
            .check(b"n\nNULL\n4\n");
        assert_eq!(out.rows(), [vec![None], vec![Some("4".to_owned())]]);
    }

    #[test]
    fn kind_option_sets_the_layout_kind() {
        let out = h().option("kind", "customer").check(b"a\n1\n");
        assert_eq!(out.records().next().unwrap().kind(), Some("customer"));
        assert_eq!(h().check(b"a\n1\n").records().next().unwrap().kind(), None);
    }

    #[test]
    fn nul_bytes() {
        let input = b"a,b\n1,x\x00y\n2,z\n";
        let out = h().check(input);
        assert_eq!(errors(&out), [err("nul-byte", Some("b"), 4, 6, 2, 1)]);
        assert_eq!(out.rows(), rows(&[&["2", "z"]]));
        let out = h().option("allow-nul", "true").check(input);
        assert_eq!(out.rows(), rows(&[&["1", "x\0y"], &["2", "z"]]));
    }

    #[test]
    fn ragged_rows() {
        let out = h().check(b"a,b,c\n1,2\n1,2,3,4\n5,6,7\n");
        assert_eq!(
            errors(&out),
            [
                err("ragged-row", Some("c"), 6, 4, 2, 1),
                err("ragged-row", None, 10, 8, 3, 2),
            ]
        );
        let msgs: Vec<&str> = out.errors().map(|e| e.message.as_str()).collect();
        assert!(
            msgs[0].contains("2 fields") && msgs[0].contains("header has 3"),
            "{}",
            msgs[0]
        );
        assert!(msgs[1].contains("4 fields"), "{}", msgs[1]);
        assert_eq!(record_locations(&out), [(18, 6, 4, 3)]);
        // header=false: the first record sets the width.
        let out = h().option("header", "false").check(b"1,2\n3\n");
        assert_eq!(
            errors(&out),
            [err("ragged-row", Some("_col.2"), 4, 2, 2, 2)]
        );
    }

    #[test]
    fn invalid_utf8() {
        let out = h().check(b"id,name\n1,ok\n2,\xFF\n3,\xC3(\n4,\xED\xA0\x80\n");
        assert_eq!(
            errors(&out),
            [
                err("invalid-utf8", Some("name"), 13, 4, 3, 2),
                err("invalid-utf8", Some("name"), 17, 5, 4, 3),
                err("invalid-utf8", Some("name"), 22, 6, 5, 4),
            ]
        );
        let msg = &out.errors().next().unwrap().message;
        assert!(msg.contains("0xFF") && msg.contains("\"name\""), "{msg}");
        // A character cut in two by a delimiter is invalid in both halves.
        let out = h().check(b"a,b\n\xC3,\xA9\n");
        assert_eq!(errors(&out), [err("invalid-utf8", Some("a"), 4, 4, 2, 1)]);
        // NUL and UTF-8 problems: the first field at fault wins.
        let out = h().check(b"a,b\n\xFF,\x00\n\x00,\xFF\n");
        let codes: Vec<&str> = out.errors().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["invalid-utf8", "nul-byte"]);
    }

    #[test]
    fn field_too_long_at_the_exact_limit() {
        let out = h()
            .option("max-field-bytes", "3")
            .check(b"a,b\nabc,\"ab\"\"\"\nabcd,x\nx,\"abcd\"\n1,2\n");
        assert_eq!(
            errors(&out),
            [
                err("field-too-long", Some("a"), 15, 7, 3, 2),
                err("field-too-long", Some("b"), 22, 9, 4, 3),
            ]
        );
        assert_eq!(out.rows(), rows(&[&["abc", "ab\""], &["1", "2"]]));
    }

    #[test]
    fn record_too_long_at_the_exact_limit() {
        let out = h()
            .option("header", "false")
            .option("max-record-bytes", "5")
            .check(b"ab,cd\r\nab,cde\nabc,e\r\n1,2");
        // The limit leaves out the line break (CRLF or LF).
        assert_eq!(errors(&out), [err("record-too-long", None, 7, 7, 2, 2)]);
        assert_eq!(
            out.rows(),
            rows(&[&["ab", "cd"], &["abc", "e"], &["1", "2"]])
        );
    }

    #[test]
    fn too_many_fields_at_the_exact_limit() {
        let out = h()
            .option("header", "false")
            .option("max-columns", "3")
            .check(b"1,2,3\n1,2,3,4\n1,2,\n1,2,3,");
        assert_eq!(
            errors(&out),
            [
                err("too-many-fields", None, 6, 8, 2, 2),
                err("too-many-fields", None, 19, 6, 4, 4),
            ]
        );
        assert_eq!(out.rows(), rows(&[&["1", "2", "3"], &["1", "2", ""]]));
    }

    #[test]
    fn first_limit_crossed_in_the_input_wins() {
        // Field 1 crosses max-field-bytes before the record crosses
        // max-columns, whatever the chunking.
        let out = h()
            .option("header", "false")
            .option("max-field-bytes", "2")
            .option("max-columns", "2")
            .check(b"abc,d,e\na,b,c\n");
        let codes: Vec<&str> = out.errors().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["field-too-long", "too-many-fields"]);
    }

    #[test]
    fn unterminated_quote_points_at_the_record_start() {
        let out = h().check(b"a,b\n1,2\n3,\"x\ny\nz\n");
        assert_eq!(
            errors(&out),
            [err("unterminated-quote", Some("b"), 8, 9, 3, 2)]
        );
        assert!(out.errors().next().unwrap().message.contains("line 3"));
        // Also when the open field is over a limit on the way.
        let out = h().option("max-field-bytes", "2").check(b"a\n\"xxxxxx\n");
        assert_eq!(
            errors(&out),
            [err("unterminated-quote", Some("a"), 2, 8, 2, 1)]
        );
        // A closing quote right at the end is fine.
        let out = h().check(b"a\n\"x\"");
        assert_eq!(out.rows(), rows(&[&["x"]]));
    }

    #[test]
    fn header_problems_are_fatal() {
        let cases: [(&[u8], &str, Option<&str>, u64); 7] = [
            (b"id,id\n1,2\n", "bad-header", Some("id"), 6),
            (b"a,\n1,2\n", "bad-header", None, 3),
            (b"\xFF\n1\n", "invalid-utf8", None, 2),
            (b"a\x00\n1\n", "nul-byte", None, 3),
            (b"\"a\n1\n", "unterminated-quote", None, 5),
            (b"a,b,c\n1,2,3\n", "too-many-fields", None, 6),
            (b"abcdefgh\n1\n", "field-too-long", None, 9),
        ];
        for (input, code, field, len) in cases {
            let out = h()
                .option("max-columns", "2")
                .option("max-field-bytes", "4")
                .check(input);
            assert_eq!(out.items.len(), 1, "{}", out.to_json_lines());
            assert_eq!(errors(&out), [err(code, field, 0, len, 1, 1)]);
        }
        let out = h().check(b"id,id\n");
        let fatal = out.fatal().unwrap();
        assert_eq!(fatal.field.as_deref(), Some("id"));
        assert!(fatal.message.contains("rename"), "{}", fatal.message);
        let out = h().check(b"a,,b\n");
        assert!(out.fatal().unwrap().message.contains("column 2"));
        // Header cells are named by position, even when columns names fields.
        let out = h()
            .option("columns", "x")
            .option("max-field-bytes", "2")
            .check(b"abc\n1\n");
        let fatal = out.fatal().unwrap();
        assert_eq!(
            (fatal.code.as_str(), fatal.field.as_deref()),
            ("field-too-long", None)
        );
        assert!(
            fatal.message.starts_with("column 1 of the header row"),
            "{}",
            fatal.message
        );
        let out = h().option("max-record-bytes", "3").check(b"abcd\n");
        assert_eq!(out.fatal().unwrap().code, "record-too-long");
        assert!(out.fatal().unwrap().message.contains("header row"));
    }

    #[test]
    fn types_naming_a_missing_column() {
        let out = h().option("types", "x:integer").check(b"a\n1\n");
        assert_eq!(errors(&out), [err("bad-header", None, 0, 2, 1, 1)]);
        assert!(out.fatal().unwrap().message.contains("\"x\""));
        let e = config_error(h().option("columns", "a").option("types", "x:integer"));
        assert_eq!(e.option.as_deref(), Some("types"));
        // header=false: checked against the _col.N names at the first record.
        let out = h()
            .option("header", "false")
            .option("types", "_col.2:integer")
            .check(b"a,7\n");
        assert_eq!(
            out.rows(),
            [vec![Some("a".to_owned()), Some("7".to_owned())]]
        );
        assert!(matches!(
            out.records().next().unwrap().get(1),
            Some(Value::Int(7))
        ));
    }

    #[test]
    fn empty_inputs_give_no_records() {
        for input in [&b""[..], b"\n\n\r\n", b"a,b\n", b"a,b", b"\xEF\xBB\xBF\n"] {
            assert_eq!(h().check(input).items, [Item::End]);
        }
    }

    #[test]
    fn bad_options_are_refused() {
        for (name, value) in [
            ("trim", "maybe"),
            ("delimiter", "none"),
            ("delimiter", "\""),
            ("comment", ","),
            ("quote", "\\n"),
            ("delimiter", "0xFF"),
            ("types", "a:date"),
            ("types", "a"),
            ("columns", "a,,b"),
            ("columns", "a,a"),
            ("max-field-bytes", "0"),
            ("max-record-bytes", "x"),
            ("max-columns", "99999999"),
            ("header", "perhaps"),
        ] {
            let e = config_error(h().option(name, value));
            assert_eq!(e.option.as_deref(), Some(name), "{name}={value}: {e}");
        }
        let e = config_error(h().option("quote", "none").option("escape", "\\"));
        assert_eq!(e.option.as_deref(), Some("escape"));
        let e = config_error(h().option("columns", "a,b,c").option("max-columns", "2"));
        assert_eq!(e.option.as_deref(), Some("columns"));
    }

    #[test]
    fn describe_documents_every_option() {
        let info = CsvAdapter::describe();
        assert!(info.resumable);
        let get = |n: &str| info.options.iter().find(|o| o.name == n).unwrap();
        for o in &info.options {
            assert!(o.description.len() > 40, "{} is undocumented", o.name);
        }
        assert_eq!(
            get("max-field-bytes").default,
            Some(DEFAULT_MAX_FIELD_BYTES.to_string())
        );
        assert_eq!(
            get("max-record-bytes").default,
            Some(DEFAULT_MAX_RECORD_BYTES.to_string())
        );
        assert_eq!(
            get("max-columns").default,
            Some(DEFAULT_MAX_COLUMNS.to_string())
        );
        assert_eq!(get("delimiter").default.as_deref(), Some(","));
        assert_eq!(get("escape").default, None);
        assert_eq!(info.options.len(), 15);
    }

    /// Pull items from a parser until the end.
    #[test]
    fn resume_mid_file() {
        let input: &[u8] =
            b"\xEF\xBB\xBFid,name\r\n1,a\r\n\"2\",\"b\r\nc\"\r\n\r\n3,\xFF\r\n4,d\r\n";
        // `check` resumes from every checkpoint of this short input.
        let out = h().check(input);
        assert_eq!(out.items.len(), 5);
        // Each checkpoint sits right after its item.
        for (done, cp) in out.checkpoints.iter().enumerate().take(4) {
            let end = match &out.items[done] {
                Item::Record(r) => r.location().end(),
                Item::Error(e) => e.location.end(),
                other => panic!("item {done} is {other:?}"),
            };
            assert_eq!(cp.as_ref().unwrap().offset, end);
        }
        // A corrupt state is refused, not misread.
        let bad = Checkpoint {
            offset: 3,
            state: vec![9, 9],
        };
        assert!(
            h().open(Input::from_bytes_at(b"", 1, 3), Some(bad))
                .is_err()
        );
    }

    #[test]
    fn resume_keeps_header_names_and_default_width() {
        let input = b"x,y\n1,2\n3,4\n5\n";
        h().check(input);
        h().option("header", "false").check(input);
        h().option("columns", "p,q").check(input);
        h().option("header", "false")
            .option("columns", "p,q")
            .check(input);
    }

    #[test]
    fn checkpoint_state_is_small() {
        let out = h().run(b"a,b\n1,2\n").unwrap();
        let cp = out.checkpoints[0].clone().unwrap();
        // version, line, ordinal, begun, header_pending, tag, count, "a", "b"
        assert_eq!(cp.state, [1, 3, 1, 1, 0, 1, 2, 1, b'a', 1, b'b']);
        let out = h()
            .option("columns", "a,b")
            .option("header", "false")
            .run(b"1,2\n")
            .unwrap();
        assert_eq!(
            out.checkpoints[0].clone().unwrap().state,
            [1, 2, 1, 1, 0, 2]
        );
    }

    /// Bytes that matter to the parser, and a few that do not.
    fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
        let alphabet: &[u8] = b"ab,,\"\"\r\n\n# \\\x00\xC3\xA9\xFF;";
        proptest::collection::vec(proptest::sample::select(alphabet), 0..120)
    }

    /// Lines of short fields, mostly plain, some quoted or ending in CRLF:
    /// the plain-record path and its way back to csv-core, often.
    fn csv_lines() -> impl Strategy<Value = Vec<u8>> {
        let bytes = |v: &[&'static [u8]]| proptest::sample::select(v.to_vec());
        let field = bytes(&[
            b"",
            b"a",
            b"ab",
            b" b",
            b"\"a,b\"",
            b"a\x00",
            b"\xC3\xA9",
            b"#",
        ]);
        let line = (
            proptest::collection::vec(field, 1..6),
            bytes(&[b",", b";"]),
            bytes(&[b"\n", b"\n", b"\r\n", b""]),
        )
            .prop_map(|(fields, delimiter, end)| {
                let mut l = fields.join(delimiter);
                l.extend_from_slice(end);
                l
            });
        proptest::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
    }

    fn option_set() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        prop_oneof![
            Just(vec![]),
            Just(vec![("header", "false")]),
            Just(vec![("comment", "#"), ("null", ""), ("trim", "all")]),
            Just(vec![
                ("escape", "\\"),
                ("double-quote", "false"),
                ("delimiter", ";")
            ]),
            Just(vec![
                ("max-field-bytes", "3"),
                ("max-record-bytes", "7"),
                ("max-columns", "3")
            ]),
            Just(vec![
                ("header", "false"),
                ("max-field-bytes", "2"),
                ("null", "a"),
                ("max-columns", "2")
            ]),
            Just(vec![
                ("quote", "none"),
                ("allow-nul", "true"),
                ("types", "a:integer")
            ]),
            // One limit at a time, where records cross it often.
            Just(vec![("max-columns", "3")]),
            Just(vec![("header", "false"), ("max-field-bytes", "2")]),
            Just(vec![("max-record-bytes", "9")]),
        ]
    }

    fn with(options: &[(&str, &str)]) -> Harness<CsvAdapter> {
        options.iter().fold(h(), |h, (k, v)| h.option(k, v))
    }

    // 256 cases each by default; PROPTEST_CASES=20000 for a longer hunt.
    proptest! {
        #[test]
        fn any_chunk_plan_gives_the_same_items(
            input in csv_bytes(),
            options in option_set(),
            plan in proptest::collection::vec(1usize..12, 1..6),
        ) {
            let harness = with(&options);
            let whole = harness.run_with_chunks(&input, &[usize::MAX]).unwrap();
            let chunked = harness.run_with_chunks(&input, &plan).unwrap();
            prop_assert_eq!(&whole.items, &chunked.items);
            if let Err(e) = check_rules(&whole.items, 1, 0, input.len() as u64) {
                prop_assert!(false, "{}\n{}", e, whole.to_json_lines());
            }
        }

        #[test]
        fn plain_records_read_as_csv_core_reads_them(
            input in prop_oneof![csv_bytes(), csv_lines()],
            options in option_set(),
            plan in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let harness = with(&options);
            let fast = harness.run_with_chunks(&input, &plan).unwrap();
            PLAIN_PATH.with(|p| p.set(false));
            let general = harness.run_with_chunks(&input, &plan);
            PLAIN_PATH.with(|p| p.set(true));
            prop_assert_eq!(&fast.items, &general.unwrap().items);
        }

        #[test]
        fn harness_check_holds_on_random_input(
            input in prop_oneof![csv_bytes(), csv_lines()],
            options in option_set(),
        ) {
            with(&options).check(&input);
        }
    }
}

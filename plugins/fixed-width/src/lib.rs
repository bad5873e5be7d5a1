// The crate documentation is the README, so users and rustdoc read the same
// text and it cannot drift from what the adapter does.
#![doc = include_str!("../README.md")]

use sluice_sdk::{
    Adapter, AdapterInfo, Checkpoint, ConfigError, Input, Item, Layout, Location, OptionInfo,
    Options, Record, RecordError, StateReader, StateWriter, Value, byte_order_mark, codes,
    export_adapter,
};

/// Default `max-line-bytes`: 1 MiB, far above real record lengths (a few
/// hundred characters) and small enough to keep plugin memory flat.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
/// Largest accepted `max-line-bytes`: keeps one line well inside a wasm32
/// address space and the host's per-record limit.
pub const MAX_LINE_BYTES_CEILING: usize = 1 << 30;

/// Column name that marks a filler: positions that are skipped.
pub const FILLER: &str = "_";

/// Version of the checkpoint state layout; bump it when the state changes.
const STATE_VERSION: u64 = 1;
/// Values quoted in error messages are cut to this many characters.
const MESSAGE_VALUE_CHARS: usize = 40;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const TYPE_NAMES: &str = "text, integer, decimal, float, boolean or date";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    Text,
    Integer,
    Decimal,
    Float,
    Boolean,
    Date,
}

impl ColumnType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "text" => ColumnType::Text,
            "integer" => ColumnType::Integer,
            "decimal" => ColumnType::Decimal,
            "float" => ColumnType::Float,
            "boolean" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trim {
    None,
    Right,
    Both,
}

impl Trim {
    fn apply(self, s: &str) -> &str {
        match self {
            Trim::None => s,
            Trim::Right => s.trim_end_matches(' '),
            Trim::Both => s.trim_matches(' '),
        }
    }
}

/// One field of the layout. Positions are 0-based character indexes, `end`
/// exclusive; messages show them 1-based and inclusive, as the user wrote
/// them.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    start: usize,
    end: usize,
    ty: ColumnType,
}

impl Column {
    fn positions(&self) -> String {
        format!("{}-{}", self.start + 1, self.end)
    }
}

/// Everything `open` derives from the options; fixed for the whole parse.
#[derive(Debug)]
struct Config {
    columns: Vec<Column>,
    /// Characters a complete line covers: the largest column end, fillers
    /// included.
    width: usize,
    layout: Layout,
    /// Index into `columns` of the key field.
    key: Option<usize>,
    skip_lines: u64,
    trim: Trim,
    allow_short: bool,
    strict: bool,
    max_line: usize,
}

/// The `fixed-width` adapter: one record per line, fields cut at fixed
/// character positions given by the `columns` option.
pub struct FixedWidth {
    input: Input,
    cfg: Config,
    /// Bytes of the current line without its terminator, at most
    /// `max_line + 1` of them (enough to tell an over-long line apart).
    buf: Vec<u8>,
    /// Byte offset of each character of the current line; reused per line.
    bounds: Vec<usize>,
    /// Physical lines read so far (skipped and blank ones included).
    line: u64,
    /// Items returned so far.
    ordinal: u64,
}

/// A physical line as read from the input.
struct RawLine {
    offset: u64,
    /// Bytes including the terminator.
    length: u64,
    /// Bytes without the terminator (`\n` or `\r\n`).
    content_len: u64,
    /// Nothing but spaces, tabs and carriage returns.
    blank: bool,
}

impl Adapter for FixedWidth {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "fixed-width".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fixed-width text records (one per line, UTF-8), fields at character \
                          positions given by the columns option"
                .into(),
            formats: vec!["fixed-width".into()],
            // Not `txt` or `dat`: files with those names are rarely fixed-width,
            // and this adapter cannot parse without its `columns` option.
            extensions: vec!["fw".into(), "fwf".into()],
            // No registered media type exists, and text/plain would claim
            // every text upload.
            media_types: Vec::new(),
            options: vec![
                OptionInfo::new(
                    "columns",
                    None,
                    "Required. The record layout: comma-separated entries name:start-end[:type] \
                     (1-based inclusive character positions) or name:width[:type] (starts right \
                     after the previous entry). Types: text (default), integer, decimal, float, \
                     boolean, date. The name _ marks a filler that is skipped. Example: \
                     id:1-6:integer,name:7-30,amount:31-40:decimal",
                ),
                OptionInfo::new(
                    "kind",
                    None,
                    "Entity type given to the records (for example transaction). Unset by \
                     default.",
                ),
                OptionInfo::new(
                    "key",
                    None,
                    "Name of the column whose value, without surrounding spaces, becomes the \
                     record's natural key (no key when it is empty). Unset by default.",
                ),
                OptionInfo::new(
                    "skip-lines",
                    Some("0"),
                    "Number of lines at the start of the input to skip without parsing (headers, \
                     banners), whatever they hold.",
                ),
                OptionInfo::new(
                    "trim",
                    Some("right"),
                    "Spaces removed from text values: none, right (padding after the value) or \
                     both. Other types always ignore surrounding spaces.",
                ),
                OptionInfo::new(
                    "allow-short",
                    Some("false"),
                    "Accept lines that end before the last column: columns past the end are \
                     null, a column cut short keeps the characters present. Default false: such \
                     lines are ragged-row errors.",
                ),
                OptionInfo::new(
                    "strict",
                    Some("false"),
                    "Make lines with characters other than spaces after the last column \
                     ragged-row errors. Default false: the extra characters are ignored.",
                ),
                OptionInfo::new(
                    "max-line-bytes",
                    Some("1048576"),
                    "Longest line accepted, in bytes without its terminator; longer lines are \
                     record-too-long errors and are skipped without being held in memory.",
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
        // The input restarts at the checkpoint's offset by itself; the state
        // only has to restore the counters, since skip-lines and the byte
        // order mark check follow from the line number.
        let (line, ordinal) = match resume {
            Some(cp) => read_state(&cp.state).map_err(|e| {
                ConfigError::other(format!(
                    "cannot resume: {e}; restart the import from the beginning"
                ))
            })?,
            None => (0, 0),
        };
        Ok(FixedWidth {
            input,
            cfg,
            buf: Vec::new(),
            bounds: Vec::new(),
            line,
            ordinal,
        })
    }

    fn next(&mut self) -> Item {
        loop {
            let Some(raw) = self.read_line() else {
                return Item::End;
            };
            self.line += 1;
            let first = self.line == 1;
            let mut blank = raw.blank;
            if first {
                if let Some(bom) = byte_order_mark(&self.buf).filter(|b| !b.is_utf8()) {
                    self.ordinal += 1;
                    return Item::Fatal(bom.unsupported(self.ordinal));
                }
                if raw.content_len <= self.cfg.max_line as u64 && self.buf.starts_with(UTF8_BOM) {
                    blank = is_blank(&self.buf[UTF8_BOM.len()..]);
                }
            }
            if self.line <= self.cfg.skip_lines || blank {
                continue;
            }
            self.ordinal += 1;
            let location = Location {
                offset: raw.offset,
                length: raw.length,
                line: self.line,
                ordinal: self.ordinal,
            };
            return match self.parse_line(&raw, first, location) {
                Ok(record) => Item::Record(record),
                Err(e) => Item::Error(e),
            };
        }
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            offset: self.input.offset(),
            state: StateWriter::new()
                .u64(STATE_VERSION)
                .u64(self.line)
                .u64(self.ordinal)
                .finish(),
        })
    }
}

export_adapter!(FixedWidth);

fn read_state(state: &[u8]) -> Result<(u64, u64), sluice_sdk::BadState> {
    let mut r = StateReader::new(state);
    if r.u64()? != STATE_VERSION {
        return Err(sluice_sdk::BadState);
    }
    let line = r.u64()?;
    let ordinal = r.u64()?;
    if !r.is_empty() || ordinal > line {
        return Err(sluice_sdk::BadState);
    }
    Ok((line, ordinal))
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| matches!(b, b' ' | b'\t' | b'\r'))
}

impl FixedWidth {
    /// Read the next physical line into `buf`, keeping at most
    /// `max_line + 1` bytes of it so an over-long line costs no memory.
    /// `None` at the end of input.
    fn read_line(&mut self) -> Option<RawLine> {
        self.buf.clear();
        let offset = self.input.offset();
        let keep = self.cfg.max_line + 1;
        let mut length = 0u64;
        let mut blank = true;
        let mut ends_in_cr = false;
        let mut has_newline = false;
        loop {
            let chunk = self.input.fill();
            if chunk.is_empty() {
                break;
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let body = &chunk[..take - usize::from(done)];
            if let Some(&last) = body.last() {
                ends_in_cr = last == b'\r';
            }
            blank = blank && is_blank(body);
            let room = keep.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&body[..body.len().min(room)]);
            self.input.advance(take);
            length += take as u64;
            if done {
                has_newline = true;
                break;
            }
        }
        if length == 0 {
            return None;
        }
        let mut content_len = length - u64::from(has_newline);
        if ends_in_cr {
            // CRLF, or a CR before the end of input: not part of the data.
            content_len -= 1;
            if content_len <= self.cfg.max_line as u64 {
                self.buf.pop();
            }
        }
        Some(RawLine {
            offset,
            length,
            content_len,
            blank,
        })
    }

    /// Turn the line in `buf` into a record, or say why it is not one.
    /// Problems are reported in this order: length limit, encoding, line
    /// width, then column by column in layout order.
    fn parse_line(
        &mut self,
        raw: &RawLine,
        first: bool,
        location: Location,
    ) -> Result<Record, RecordError> {
        let cfg = &self.cfg;
        if raw.content_len > cfg.max_line as u64 {
            return Err(RecordError::new(
                codes::RECORD_TOO_LONG,
                format!(
                    "line is {} bytes long (without its terminator), over max-line-bytes ({}); \
                     raise max-line-bytes if such lines are legitimate",
                    raw.content_len, cfg.max_line
                ),
                location,
            ));
        }
        let bom = if first && self.buf.starts_with(UTF8_BOM) {
            UTF8_BOM.len()
        } else {
            0
        };
        let bytes = &self.buf[bom..];
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => return Err(invalid_utf8(cfg, bytes, e, bom, location)),
        };

        // Byte offset of each character up to the layout's width, so columns
        // are cut at character positions. ASCII lines, the common case, need
        // no table: characters and bytes coincide.
        let ascii = text.is_ascii();
        let bounds = &mut self.bounds;
        bounds.clear();
        let available = if ascii {
            text.len().min(cfg.width)
        } else {
            let mut chars = text.char_indices();
            while bounds.len() < cfg.width {
                match chars.next() {
                    Some((b, _)) => bounds.push(b),
                    None => break,
                }
            }
            let n = bounds.len();
            bounds.push(chars.next().map_or(text.len(), |(b, _)| b));
            n
        };
        let byte_at = |i: usize| if ascii { i } else { bounds[i] };

        if available < cfg.width && !cfg.allow_short {
            let cut = cfg
                .columns
                .iter()
                .filter(|c| c.end > available)
                .min_by_key(|c| c.start);
            let which = match cut {
                Some(c) => format!(" (column {:?} is at {})", c.name, c.positions()),
                None => String::new(),
            };
            return Err(RecordError::new(
                codes::RAGGED_ROW,
                format!(
                    "line is {available} characters long but the layout needs {}{which}; pass \
                     allow-short=true to read missing columns as null",
                    cfg.width
                ),
                location,
            ));
        }
        if cfg.strict && available == cfg.width {
            let tail = &text[byte_at(available)..];
            if tail.bytes().any(|b| b != b' ') {
                return Err(RecordError::new(
                    codes::RAGGED_ROW,
                    format!(
                        "line is {} characters long but the layout ends at {}, and strict=true \
                         refuses the extra text {}",
                        available + tail.chars().count(),
                        cfg.width,
                        quote(tail.trim_end_matches(' '))
                    ),
                    location,
                ));
            }
        }

        let mut record = Record::with_capacity(&cfg.layout, text.len().min(byte_at(available)));
        let mut key = None;
        for (i, col) in cfg.columns.iter().enumerate() {
            if col.start >= available {
                // Only reachable with allow-short: the line ends before it.
                record.push(Value::Null);
                continue;
            }
            let cell = &text[byte_at(col.start)..byte_at(col.end.min(available))];
            if cfg.key == Some(i) {
                key = Some(cell.trim_matches(' '));
            }
            push_value(&mut record, col.ty, cfg.trim, cell).map_err(|why| {
                RecordError::new(
                    codes::BAD_VALUE,
                    format!(
                        "column {:?} (positions {}): {} {why}",
                        col.name,
                        col.positions(),
                        quote(cell.trim_matches(' '))
                    ),
                    location,
                )
                .with_field(&col.name)
            })?;
        }
        if let Some(k) = key.filter(|k| !k.is_empty()) {
            record.set_key(k);
        }
        record.set_location(location);
        Ok(record)
    }
}

fn invalid_utf8(
    cfg: &Config,
    bytes: &[u8],
    e: std::str::Utf8Error,
    bom: usize,
    location: Location,
) -> RecordError {
    let good = e.valid_up_to();
    // The valid prefix is UTF-8 by definition, so this cannot fail.
    let position = std::str::from_utf8(&bytes[..good]).map_or(0, |s| s.chars().count());
    let mut err = RecordError::new(
        codes::INVALID_UTF8,
        format!(
            "line is not valid UTF-8: byte 0x{:02X} at character position {} (byte {} of the \
             line); convert the file to UTF-8 (it may be Latin-1 or Windows-1252)",
            bytes[good],
            position + 1,
            bom + good + 1
        ),
        location,
    );
    if let Some(col) = cfg
        .columns
        .iter()
        .find(|c| (c.start..c.end).contains(&position))
    {
        err = err.with_field(&col.name);
    }
    err
}

/// `s` in quotes for a message, cut to a readable length.
fn quote(s: &str) -> String {
    match s.char_indices().nth(MESSAGE_VALUE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// Convert one cell and append it to `record`; the error completes the
/// sentence "<value> ...".
fn push_value(record: &mut Record, ty: ColumnType, trim: Trim, cell: &str) -> Result<(), String> {
    if ty == ColumnType::Text {
        record.push_text(trim.apply(cell));
        return Ok(());
    }
    let s = cell.trim_matches(' ');
    if s.is_empty() {
        record.push(Value::Null);
        return Ok(());
    }
    match ty {
        ColumnType::Text => unreachable!("handled above"),
        ColumnType::Integer => {
            use std::num::IntErrorKind::{NegOverflow, PosOverflow};
            let v = s.parse::<i64>().map_err(|e| match e.kind() {
                PosOverflow | NegOverflow => "is out of range for a 64-bit integer",
                _ => "is not an integer (digits with an optional sign)",
            })?;
            record.push(Value::Int(v));
        }
        ColumnType::Decimal => {
            if !is_plain_decimal(s) {
                return Err(
                    "is not a decimal number (digits with an optional sign and one \
                            decimal point)"
                        .into(),
                );
            }
            let v = parse_finite(s).ok_or("is out of range for a decimal number")?;
            record.push(Value::Float(v));
        }
        ColumnType::Float => {
            let v = parse_finite(s).ok_or("is not a finite number")?;
            record.push(Value::Float(v));
        }
        ColumnType::Boolean => {
            let v = match s.to_ascii_lowercase().as_str() {
                "y" | "yes" | "t" | "true" | "1" => true,
                "n" | "no" | "f" | "false" | "0" => false,
                _ => {
                    return Err("is not a boolean (use Y/N, yes/no, T/F, true/false or 1/0)".into());
                }
            };
            record.push(Value::Bool(v));
        }
        ColumnType::Date => {
            let iso = iso_date(s).ok_or("is not a valid date (YYYYMMDD or YYYY-MM-DD)")?;
            // iso_date only writes ASCII digits and dashes.
            record.push_text(std::str::from_utf8(&iso).unwrap_or_default());
        }
    }
    Ok(())
}

/// `[+-]digits[.digits]`, with digits on at least one side of the point.
fn is_plain_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac)
}

/// Rust's float syntax (which includes exponents), refusing infinities and
/// NaN: they are not amounts, and the host's sinks may not store them.
fn parse_finite(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Validate `YYYYMMDD` or `YYYY-MM-DD` and return it as `YYYY-MM-DD`.
fn iso_date(s: &str) -> Option<[u8; 10]> {
    let b = s.as_bytes();
    let (y, m, d) = match b.len() {
        8 => (&b[0..4], &b[4..6], &b[6..8]),
        10 if b[4] == b'-' && b[7] == b'-' => (&b[0..4], &b[5..7], &b[8..10]),
        _ => return None,
    };
    let num = |p: &[u8]| -> Option<u32> {
        p.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(y)?, num(m)?, num(d)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days {
        return None;
    }
    let mut out = *b"0000-00-00";
    out[0..4].copy_from_slice(y);
    out[5..7].copy_from_slice(m);
    out[8..10].copy_from_slice(d);
    Some(out)
}

impl Config {
    fn from_options(options: &Options) -> Result<Self, ConfigError> {
        let Some(spec) = options.get("columns") else {
            return Err(ConfigError::option(
                "columns",
                "required: describe the record layout as comma-separated name:start-end[:type] \
                 or name:width[:type] entries, e.g. columns=id:1-6:integer,name:7-30",
            ));
        };
        let max_line = options.bounded(
            "max-line-bytes",
            DEFAULT_MAX_LINE_BYTES,
            1..=MAX_LINE_BYTES_CEILING,
        )?;
        let (columns, width) = parse_columns(spec, max_line)?;

        let kind = options.get("kind");
        if kind.is_some_and(|k| k.trim().is_empty()) {
            return Err(ConfigError::option(
                "kind",
                "is empty; give an entity name or leave the option out",
            ));
        }
        let key = match options.get("key") {
            None => None,
            Some(name) => {
                let name = name.trim();
                Some(columns.iter().position(|c| c.name == name).ok_or_else(|| {
                    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                    ConfigError::option(
                        "key",
                        format!(
                            "{name:?} is not a column; the columns are: {}",
                            names.join(", ")
                        ),
                    )
                })?)
            }
        };
        let trim = match options.get("trim").unwrap_or("right") {
            "none" => Trim::None,
            "right" => Trim::Right,
            "both" => Trim::Both,
            other => {
                return Err(ConfigError::option(
                    "trim",
                    format!("invalid value {other:?}: use none, right or both"),
                ));
            }
        };
        let layout = Layout::new(kind.map(str::trim), columns.iter().map(|c| c.name.clone()));
        Ok(Config {
            columns,
            width,
            layout,
            key,
            skip_lines: options.parse::<u64>("skip-lines")?.unwrap_or(0),
            trim,
            allow_short: options.flag("allow-short")?.unwrap_or(false),
            strict: options.flag("strict")?.unwrap_or(false),
            max_line,
        })
    }
}

/// Parse the `columns` option into the fields (fillers dropped) and the
/// layout's width in characters.
fn parse_columns(spec: &str, max_line: usize) -> Result<(Vec<Column>, usize), ConfigError> {
    let err = |msg: String| ConfigError::option("columns", msg);
    // Every entry, fillers included, for the overlap check.
    let mut all: Vec<Column> = Vec::new();
    // Where a width entry starts: right after the previous entry.
    let mut next_start = 0usize;
    for (i, entry) in spec.split(',').enumerate() {
        let n = i + 1;
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(err(format!(
                "entry {n} is empty; separate entries with single commas, with no trailing comma"
            )));
        }
        let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
        let (name, pos, ty) = match parts[..] {
            [name, pos] => (name, pos, None),
            [name, pos, ty] => (name, pos, Some(ty)),
            _ => {
                return Err(err(format!(
                    "entry {n} ({entry:?}) is not name:start-end[:type] or name:width[:type]"
                )));
            }
        };
        if name.is_empty() {
            return Err(err(format!("entry {n} ({entry:?}) has no name")));
        }
        let number = |s: &str, what: &str| -> Result<usize, ConfigError> {
            s.parse::<usize>().map_err(|_| {
                err(format!(
                    "column {name:?}: {what} {s:?} is not a whole number"
                ))
            })
        };
        let (start, end) = match pos.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a.trim(), "start")?, number(b.trim(), "end")?);
                if a == 0 {
                    return Err(err(format!("column {name:?}: positions start at 1, not 0")));
                }
                if b < a {
                    return Err(err(format!(
                        "column {name:?}: end {b} is before start {a}; write start-end with \
                         start <= end"
                    )));
                }
                (a - 1, b)
            }
            None => {
                let w = number(pos, "width")?;
                if w == 0 {
                    return Err(err(format!(
                        "column {name:?} has width 0; every column covers at least one \
                         character"
                    )));
                }
                (next_start, next_start.saturating_add(w))
            }
        };
        if end > max_line {
            return Err(err(format!(
                "column {name:?} ends at position {end}, but max-line-bytes is {max_line}, so \
                 no accepted line could reach it"
            )));
        }
        let ty = match ty {
            None => ColumnType::Text,
            Some(t) => ColumnType::parse(t).ok_or_else(|| {
                err(format!(
                    "column {name:?}: unknown type {t:?}; use {TYPE_NAMES}"
                ))
            })?,
        };
        if name == FILLER && ty != ColumnType::Text {
            return Err(err(format!(
                "entry {n} ({entry:?}) is a filler (_), which is skipped and takes no type"
            )));
        }
        if name != FILLER
            && let Some(prev) = all.iter().find(|c| c.name == name)
        {
            return Err(err(format!(
                "column name {name:?} is used twice (at {} and at {}-{end}); names must be \
                 unique",
                prev.positions(),
                start + 1
            )));
        }
        next_start = end;
        all.push(Column {
            name: name.to_owned(),
            start,
            end,
            ty,
        });
    }

    let mut by_start: Vec<&Column> = all.iter().collect();
    by_start.sort_by_key(|c| (c.start, c.end));
    for pair in by_start.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.start < a.end {
            return Err(err(format!(
                "columns {:?} ({}) and {:?} ({}) overlap at positions {}-{}",
                a.name,
                a.positions(),
                b.name,
                b.positions(),
                b.start + 1,
                a.end.min(b.end)
            )));
        }
    }
    let width = all.iter().map(|c| c.end).max().unwrap_or(0);
    let columns: Vec<Column> = all.into_iter().filter(|c| c.name != FILLER).collect();
    if columns.is_empty() {
        return Err(err(
            "declares no column other than fillers (_); name at least one".into(),
        ));
    }
    Ok((columns, width))
}

#[cfg(test)]
mod tests;

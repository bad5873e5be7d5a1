//! # sluice `xml` format adapter
//!
//! Streams an XML 1.0 document with quick-xml's `NsReader` and turns selected
//! elements into records. It never holds the whole document: memory is bounded
//! by the limits below whatever the input size, and nesting is tracked on the
//! heap (no recursion per level), so deep documents cannot exhaust the small
//! WebAssembly stack.
//!
//! ## Which elements are records
//!
//! The `record` option selects them:
//!
//! * not given: every child element of the document (root) element;
//! * `book`: every element whose local name is `book`, at any depth (the
//!   outermost one wins: records do not nest);
//! * `{urn:x}book`: the same, restricted to namespace `urn:x` (`{}book`: no
//!   namespace);
//! * `/catalog/book`: a slash path of names from the root (each step may use
//!   the `{uri}local` form).
//!
//! Inside a record element everything is fields. Content outside records
//! (the root's own attributes and text, unrelated elements) is checked for
//! well-formedness and otherwise ignored.
//!
//! ## Field naming rule
//!
//! Every field value is text. For a record element `R`:
//!
//! | source | field name |
//! |---|---|
//! | attribute `a` of `R` | `@a` |
//! | non-whitespace text directly inside `R` | `#text` |
//! | text of child element `c` | `c` |
//! | element `d` nested in `c` | `c/d` (any depth: `c/d/e`) |
//! | attribute `a` of a nested element | `c/@a`, `c/d/@a` |
//! | 2nd, 3rd ... sibling with the same name | `c[2]`, `c[3]` ... (the first stays `c`); also inside paths: `c[2]/d` |
//!
//! * An element's text is all its direct text and CDATA sections,
//!   concatenated in document order, with the five predefined entities and
//!   character references decoded and line ends normalised to LF (XML 1.0
//!   §2.11). Text inside nested elements belongs to those elements.
//! * A nested element without child elements always yields its field (the
//!   empty string for `<c/>`, whitespace kept as is). An element with child
//!   elements yields its own text field only when that text has a
//!   non-whitespace character (mixed content); indentation is dropped.
//! * Attribute values are normalised as XML requires for undeclared
//!   attributes: each literal tab, CR, LF or CR LF becomes one space;
//!   character references are kept as written (`&#10;` stays a line feed).
//! * Namespaces: prefixes are resolved. An element name in no namespace or in
//!   the record element's namespace is written by its local name; a name in
//!   the `xml` namespace as `xml:local` (that prefix is fixed by the spec);
//!   any other namespace as `{uri}local`. Unprefixed attributes are in no
//!   namespace and use their local name; a prefixed attribute in the record
//!   element's namespace uses its local name unless an unprefixed attribute
//!   of the same element has that local name (then `{uri}local`).
//! * `xmlns` / `xmlns:p` declarations are not fields.
//! * Repeats are counted per parent by the written name, so two siblings that
//!   write the same name (`x` and `x` in the record's namespace) become `x`
//!   and `x[2]`.
//! * Field order in a layout is canonical: names sorted with digit runs
//!   compared as numbers (`#text`, `@id`, `c`, `c/@a`, `c[2]`, `c[10]`). So
//!   every record with the same kind and field-name set shares one layout,
//!   whatever the order of its elements.
//!
//! Layout kind = the record element's local name. `key` names a field (e.g.
//! `@id`) whose value becomes the record's natural key.
//!
//! ## Safety policy
//!
//! * Any `<!DOCTYPE` ends the parse with a `fatal` item, code `forbidden`:
//!   no DTD is read, no entity is declared or expanded, nothing is fetched.
//! * Only the predefined entities (`&lt;` `&gt;` `&amp;` `&apos;` `&quot;`)
//!   and character references exist; any other `&name;` is an
//!   `undefined-entity` error.
//! * UTF-8 (and so US-ASCII) only: a UTF-16/UTF-32 byte order mark or layout,
//!   or an encoding declaration other than UTF-8/US-ASCII, is a fatal
//!   `unsupported-encoding`. Invalid UTF-8 is an `invalid-utf8` error at the
//!   offending byte. XML versions other than 1.0 are a fatal
//!   `unsupported-version` (names follow XML 1.0 fifth edition).
//! * XInclude and other vocabularies are plain elements.
//!
//! ## Error codes
//!
//! "Record error" means the record is reported as an `error` item spanning the
//! whole element and parsing goes on after it; the same problem outside any
//! record is `fatal`.
//!
//! | code | kind | when |
//! |---|---|---|
//! | `malformed` | fatal | not well-formed: mismatched or unmatched end tag, unclosed element at end of input, no root or two roots, duplicate attribute, text/reference/CDATA outside the root, character not allowed by XML 1.0 (raw or as `&#N;`), bad name, bad reference syntax, `--` in a comment, misplaced or bad XML declaration, unbound prefix or illegal namespace declaration, truncated markup |
//! | `forbidden` | fatal | a DOCTYPE (DTD) |
//! | `unsupported-encoding` | fatal | UTF-16/32 input or a non-UTF-8 encoding declaration |
//! | `unsupported-version` | fatal | `<?xml version` other than `1.0` |
//! | `invalid-utf8` | record error / fatal | bytes that are not UTF-8 |
//! | `undefined-entity` | record error / fatal | `&name;` other than the five predefined ones |
//! | `field-too-long` | record error | a field value over `max-field-bytes` |
//! | `record-too-long` | record error | a record element over `max-record-bytes` |
//! | `too-many-fields` | record error | more than `max-fields` fields |
//! | `duplicate-field` | record error | two parts of a record map to one field name (only possible with namespace URIs containing `}` or `/`) |
//! | `limit-exceeded` | record error | over `max-attributes` or `max-name-bytes` (element, attribute or field name), or a new layout beyond `max-layouts` |
//! | `limit-exceeded` | fatal | nesting over `max-depth`; more namespace declarations in scope than `max-attributes`; a single tag, or any construct outside a record, over `max-record-bytes`; those limits hit outside a record |
//!
//! ## Bounded memory
//!
//! quick-xml buffers one event (tag, text run, comment ...) at a time. The
//! reader is fed through a wrapper that refuses to hand out more than
//! `max-record-bytes` for one event; a text run, comment, CDATA section or PI
//! that is larger inside a record makes that record a `record-too-long`
//! error and is skipped by scanning, without buffering, to its end (a tag that
//! large is fatal, because its namespace declarations cannot be known without
//! reading it whole). A record stops accumulating fields at its first error.
//! Nesting is limited by `max-depth` (fatal, since skipping arbitrary depth
//! would need unbounded end-tag matching state), and the names and namespace
//! URIs of open elements by `max-record-bytes` in total.
//!
//! ## Resume
//!
//! The adapter is resumable. A checkpoint is taken between items, which always
//! sit right after a record's end tag, so the state is small: line and
//! ordinal counters, the open ancestor elements (qualified name, start
//! offset and line, namespace declarations, whether they are on the `record`
//! path) and the fingerprints of the layouts already counted against
//! `max-layouts`. A resumed parser rebuilds quick-xml's namespace scopes
//! from it and checks end tags itself. A state over 64 KiB (only with huge
//! ancestor names or namespace URIs, or thousands of layouts) is not
//! offered: `checkpoint` returns `None` and the host replays instead.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, Read};

use quick_xml::NsReader;
use quick_xml::encoding::EncodingError;
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::events::Event;
use quick_xml::name::{Namespace, NamespaceError, PrefixDeclaration, QName, ResolveResult};
use sluice_sdk::{
    Adapter, AdapterInfo, Checkpoint, ConfigError, Input, Item, Layout, Level, Location,
    OptionInfo, Options, Record, RecordError, StateReader, StateWriter, byte_order_mark, codes,
    export_adapter, log,
};

/// Error codes of this adapter beyond the SDK's shared ones.
pub mod xml_codes {
    /// An XML version other than 1.0.
    pub const UNSUPPORTED_VERSION: &str = "unsupported-version";
    /// An entity reference other than the five predefined ones.
    pub const UNDEFINED_ENTITY: &str = "undefined-entity";
    /// Two parts of one record map to the same field name.
    pub const DUPLICATE_FIELD: &str = "duplicate-field";
}
use xml_codes::*;

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Field names kept in the layout cache at most; past it the cache is
/// emptied (layouts are then declared again when used), so adversarial field
/// names cannot grow it without bound.
const LAYOUT_CACHE_BYTES: usize = 32 << 20;

/// Version of the checkpoint state layout.
const STATE_VERSION: u64 = 1;

/// Largest checkpoint state offered. The state grows with the open
/// ancestors' names and namespace URIs and the number of layouts; past this
/// (pathological documents only) `checkpoint` returns `None` and the host
/// falls back to replaying from the start.
const MAX_STATE_BYTES: usize = 64 << 10;

const DEFAULTS: Limits = Limits {
    depth: 256,
    attributes: 256,
    name: 1024,
    field: 1 << 20,
    record: 8 << 20,
    fields: 4096,
    layouts: 1024,
};

#[derive(Debug, Clone, Copy)]
struct Limits {
    depth: usize,
    attributes: usize,
    name: usize,
    field: usize,
    record: usize,
    fields: usize,
    layouts: usize,
}

// ---------------------------------------------------------------------------
// Input wrapper
// ---------------------------------------------------------------------------

/// Marker error from [`Src`]: the event being read is larger than the cap.
#[derive(Debug)]
struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("construct larger than max-record-bytes")
    }
}

impl std::error::Error for TooLarge {}

/// The SDK input as quick-xml sees it. It tracks the absolute offset and the
/// line (quick-xml knows neither across resumes), caps how many bytes one
/// event may take (quick-xml buffers a whole event), and can serve a few
/// sniffed bytes before the input's own chunks.
struct Src {
    input: Input,
    /// Bytes pulled from `input` to sniff the encoding, served first.
    head: Vec<u8>,
    head_pos: usize,
    /// Absolute offset of the next unread byte.
    offset: u64,
    /// Line breaks consumed so far (line = breaks + 1).
    breaks: u64,
    /// Whether the last consumed byte was a CR (a following LF is the same
    /// line break).
    prev_cr: bool,
    /// `fill_buf` refuses to go past this absolute offset.
    limit: u64,
    /// Hand out at most one byte on the next `fill_buf`, so that a reader
    /// created mid-document never mistakes a U+FEFF there for a byte order
    /// mark (quick-xml strips one when it starts).
    clip_once: bool,
}

impl Src {
    fn new(input: Input) -> Self {
        let offset = input.offset();
        Src {
            input,
            head: Vec::new(),
            head_pos: 0,
            offset,
            breaks: 0,
            prev_cr: false,
            limit: u64::MAX,
            clip_once: false,
        }
    }

    fn line(&self) -> u64 {
        self.breaks + 1
    }

    fn data(&mut self) -> &[u8] {
        if self.head_pos < self.head.len() {
            &self.head[self.head_pos..]
        } else {
            self.input.fill()
        }
    }

    fn advance(&mut self, n: usize) {
        let from_head = self.head_pos < self.head.len();
        let bytes = if from_head {
            &self.head[self.head_pos..]
        } else {
            self.input.fill()
        };
        let n = n.min(bytes.len());
        self.breaks += count_breaks(&bytes[..n], &mut self.prev_cr);
        if from_head {
            self.head_pos += n;
        } else {
            self.input.advance(n);
        }
        self.offset += n as u64;
    }

    /// Buffer up to `want` bytes in `head` without consuming them.
    fn sniff(&mut self, want: usize) -> &[u8] {
        while self.head.len() < want {
            let chunk = self.input.fill();
            if chunk.is_empty() {
                break;
            }
            let n = (want - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
            self.input.advance(n);
        }
        &self.head[self.head_pos..]
    }

    /// Consume bytes up to (not including) the next `byte`; false at the end.
    fn skip_to(&mut self, byte: u8) -> bool {
        loop {
            let data = self.data();
            if data.is_empty() {
                return false;
            }
            match memchr::memchr(byte, data) {
                Some(i) => {
                    self.advance(i);
                    return true;
                }
                None => {
                    let n = data.len();
                    self.advance(n);
                }
            }
        }
    }

    /// Consume bytes up to and including `term`, given the `tail` of what was
    /// already read (the terminator may straddle it); false at the end.
    fn skip_past(&mut self, term: &[u8], tail: &[u8]) -> bool {
        let k = term.len() - 1;
        // The last `k` bytes before the current chunk.
        let mut prev: Vec<u8> = tail[tail.len().saturating_sub(k)..].to_vec();
        loop {
            let data = self.data();
            if data.is_empty() {
                return false;
            }
            let before = |i: usize, j: usize| -> Option<u8> {
                // Byte `j` positions before data[i].
                match i.checked_sub(j) {
                    Some(p) => Some(data[p]),
                    None => prev.len().checked_sub(j - i).map(|p| prev[p]),
                }
            };
            let found = memchr::memchr_iter(term[k], data)
                .find(|&i| (1..=k).all(|j| before(i, j) == Some(term[k - j])))
                .map(|i| i + 1);
            let n = found.unwrap_or(data.len());
            if n >= k {
                prev = data[n - k..n].to_vec();
            } else {
                prev.extend_from_slice(&data[..n]);
                let excess = prev.len().saturating_sub(k);
                prev.drain(..excess);
            }
            self.advance(n);
            if found.is_some() {
                return true;
            }
        }
    }
}

impl BufRead for Src {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let room = self.limit.saturating_sub(self.offset);
        if room == 0 {
            return Err(io::Error::other(TooLarge));
        }
        let clip = if std::mem::take(&mut self.clip_once) {
            1
        } else {
            usize::MAX
        };
        let room = usize::try_from(room).unwrap_or(usize::MAX).min(clip);
        let data = self.data();
        let n = data.len().min(room);
        Ok(&data[..n])
    }

    fn consume(&mut self, amt: usize) {
        self.advance(amt);
    }
}

impl Read for Src {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Line breaks in `b` (see [`sluice_sdk::count_line_breaks`]), carrying
/// whether it ended with a CR over to the next call.
fn count_breaks(b: &[u8], prev_cr: &mut bool) -> u64 {
    let n = sluice_sdk::count_line_breaks(b, *prev_cr);
    if let Some(&last) = b.last() {
        *prev_cr = last == b'\r';
    }
    n
}

// ---------------------------------------------------------------------------
// Character and name rules (XML 1.0 fifth edition, Namespaces in XML 1.0)
// ---------------------------------------------------------------------------

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Byte index of the first character XML 1.0 does not allow in `s` (valid
/// UTF-8, so only C0 controls and U+FFFE/U+FFFF need checking).
fn find_bad_char(s: &[u8]) -> Option<usize> {
    s.iter().enumerate().find_map(|(i, &b)| {
        let bad = if b < 0x20 {
            !matches!(b, b'\t' | b'\n' | b'\r')
        } else {
            b == 0xEF && s.get(i + 1) == Some(&0xBF) && matches!(s.get(i + 2), Some(0xBE | 0xBF))
        };
        bad.then_some(i)
    })
}

fn is_name_start(c: char) -> bool {
    matches!(c, ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn is_ncname(s: &str) -> bool {
    is_name(s) && !s.contains(':')
}

/// Why `s` is not a qualified name (`NCName` or `NCName:NCName`), if it is not.
fn qname_problem(s: &str) -> Option<&'static str> {
    if !is_name(s) {
        return Some("is not a valid XML name");
    }
    match s.split_once(':') {
        Some((p, l)) if p.is_empty() || l.is_empty() || l.contains(':') => Some(
            "is not a valid qualified name (at most one `:`, between a prefix and a local name)",
        ),
        _ => None,
    }
}

/// `s` shortened for messages (names can be megabytes long).
fn clip(s: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

/// Append `s` with line ends normalised to LF.
fn push_normalized(out: &mut String, s: &str) {
    if memchr::memchr(b'\r', s.as_bytes()).is_none() {
        out.push_str(s);
        return;
    }
    let mut rest = s;
    while let Some(i) = rest.find('\r') {
        out.push_str(&rest[..i]);
        out.push('\n');
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('\n') {
            rest = r;
        }
    }
    out.push_str(rest);
}

fn has_non_ws(s: &str) -> bool {
    s.bytes().any(|b| !is_ws(b))
}

/// Why a reference (`&...;`) cannot be decoded.
enum RefError {
    Syntax,
    Undefined,
    NotAChar(u64),
}

/// Decode the reference named `name` (between `&` and `;`) into `out`.
fn decode_ref(name: &str, out: &mut String) -> Result<(), RefError> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let Some(num) = name.strip_prefix('#') else {
                return Err(if is_name(name) {
                    RefError::Undefined
                } else {
                    RefError::Syntax
                });
            };
            let (digits, radix) = match num.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (num, 10),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return Err(RefError::Syntax);
            }
            let v = u64::from_str_radix(digits, radix).unwrap_or(u64::MAX);
            match u32::try_from(v).ok().and_then(char::from_u32) {
                Some(c) if is_xml_char(c) => c,
                _ => return Err(RefError::NotAChar(v)),
            }
        }
    };
    out.push(c);
    Ok(())
}

fn ref_message(e: &RefError, name: &str) -> (&'static str, String) {
    match e {
        RefError::Syntax => (
            codes::MALFORMED,
            format!(
                "malformed reference `&{};`: use &name; or &#NNN; / &#xHHH; (write &amp; for a literal `&`)",
                clip(name)
            ),
        ),
        RefError::Undefined => (
            UNDEFINED_ENTITY,
            format!(
                "undefined entity &{};: without a DTD (which this adapter does not accept) only &lt; &gt; &amp; &apos; &quot; and character references exist; write the character itself or a character reference",
                clip(name)
            ),
        ),
        RefError::NotAChar(v) => (
            codes::MALFORMED,
            if *v > 0x10FFFF {
                format!("character reference &{};: beyond U+10FFFF", clip(name))
            } else {
                format!(
                    "character reference &{};: U+{v:04X} is not a character XML 1.0 allows",
                    clip(name)
                )
            },
        ),
    }
}

/// Why an attribute value cannot be decoded, and where (byte index in it).
enum ValueError {
    Lt(usize),
    Ref(usize, usize, RefError),
}

/// Decode an attribute value into `out`: references resolved, literal tab,
/// CR, LF and CR LF each turned into one space (XML 1.0 §3.3.3, CDATA).
fn decode_attr(raw: &str, out: &mut String) -> Result<(), ValueError> {
    let b = raw.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' => return Err(ValueError::Lt(i)),
            b'&' => {
                out.push_str(&raw[run..i]);
                let Some(len) = memchr::memchr(b';', &b[i + 1..]) else {
                    return Err(ValueError::Ref(i, b.len(), RefError::Syntax));
                };
                let end = i + 1 + len;
                decode_ref(&raw[i + 1..end], out).map_err(|e| ValueError::Ref(i, end, e))?;
                i = end + 1;
                run = i;
            }
            b'\t' | b'\n' | b'\r' => {
                out.push_str(&raw[run..i]);
                out.push(' ');
                i += if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&raw[run..]);
    Ok(())
}

/// A start tag's content, parsed: its name, the first `max-attributes`
/// attributes, the namespace declarations beyond them, and how many
/// attributes went past the limit.
struct StartTag<'c> {
    name: &'c str,
    attrs: Vec<AttrSpan>,
    extra: Vec<AttrSpan>,
    overflow: usize,
}

/// An attribute that is not a namespace declaration, resolved: its index in
/// `StartTag::attrs`, namespace and local name.
type ResolvedAttr<'c> = (usize, Option<String>, &'c str);

/// Byte ranges of one attribute in a tag's content.
#[derive(Debug, Clone)]
struct AttrSpan {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

fn is_xmlns(name: &str) -> bool {
    name == "xmlns" || name.starts_with("xmlns:")
}

/// Parse a start tag's content (between `<` and `>` or `/>`): the element
/// name's length, the first `max` attributes into `attrs` and, beyond them,
/// only namespace declarations into `extra` (they are still needed to
/// resolve names). Returns how many attributes went past `max`.
fn parse_tag(
    content: &str,
    max: usize,
    attrs: &mut Vec<AttrSpan>,
    extra: &mut Vec<AttrSpan>,
) -> Result<(usize, usize), (usize, Cow<'static, str>)> {
    let c = content.as_bytes();
    let n = c.len();
    let mut i = 0;
    while i < n && !is_ws(c[i]) {
        i += 1;
    }
    let name_end = i;
    if name_end == 0 {
        return Err((
            0,
            "a tag must start with an element name right after `<`".into(),
        ));
    }
    let mut overflow = 0;
    loop {
        let gap = i;
        while i < n && is_ws(c[i]) {
            i += 1;
        }
        if i == n {
            break;
        }
        if i == gap {
            return Err((i, "attributes must be separated by whitespace".into()));
        }
        let ns = i;
        while i < n && !is_ws(c[i]) && c[i] != b'=' {
            i += 1;
        }
        let name = &content[ns..i];
        if let Some(why) = qname_problem(name) {
            return Err((ns, format!("attribute name {:?} {why}", clip(name)).into()));
        }
        while i < n && is_ws(c[i]) {
            i += 1;
        }
        if i == n || c[i] != b'=' {
            return Err((
                i,
                "an attribute name must be followed by `=` and a quoted value".into(),
            ));
        }
        i += 1;
        while i < n && is_ws(c[i]) {
            i += 1;
        }
        if i == n || (c[i] != b'"' && c[i] != b'\'') {
            return Err((i, "an attribute value must be quoted with \" or '".into()));
        }
        let quote = c[i];
        let vs = i + 1;
        let Some(len) = memchr::memchr(quote, &c[vs..]) else {
            return Err((i, "attribute value is not closed".into()));
        };
        i = vs + len + 1;
        let span = AttrSpan {
            name: ns..ns + name.len(),
            value: vs..vs + len,
        };
        if attrs.len() < max {
            attrs.push(span);
        } else {
            overflow += 1;
            if is_xmlns(name) {
                extra.push(span);
            }
        }
    }
    Ok((name_end, overflow))
}

/// Compare field names with digit runs as numbers, so `c[2]` < `c[10]`.
/// A total order in which only equal strings compare equal.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            fn trim(s: &[u8]) -> &[u8] {
                let z = s.iter().take_while(|&&d| d == b'0').count();
                &s[z..]
            }
            let (ra, rb) = (trim(&a[si..i]), trim(&b[sj..j]));
            let o = ra
                .len()
                .cmp(&rb.len())
                .then_with(|| ra.cmp(rb))
                .then_with(|| (i - si).cmp(&(j - sj)));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Stable (process-independent) fingerprint of a layout: FNV-1a over the
/// kind and the sorted names, separated by 0xFF (never in UTF-8).
fn fingerprint<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xFF]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(kind.as_bytes());
    for n in names {
        eat(n.as_bytes());
    }
    h
}

/// Written name of an element or attribute (see the module docs).
fn display_name(ns: Option<&str>, local: &str, record_ns: Option<&str>) -> String {
    match ns {
        None => local.to_owned(),
        Some(u) if Some(u) == record_ns => local.to_owned(),
        Some(XML_NS) => format!("xml:{local}"),
        Some(u) => format!("{{{u}}}{local}"),
    }
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

/// One step of the `record` option: a local name, optionally with a namespace.
#[derive(Debug, Clone)]
struct Step {
    /// `None`: any namespace; `Some(None)`: no namespace.
    ns: Option<Option<String>>,
    local: String,
}

impl Step {
    fn parse(s: &str) -> Result<Step, String> {
        let (ns, local) = match s.strip_prefix('{') {
            Some(rest) => {
                let (uri, local) = rest.split_once('}').ok_or_else(|| {
                    format!("{s:?}: a `{{` must be closed by `}}` before the local name")
                })?;
                (Some((!uri.is_empty()).then(|| uri.to_owned())), local)
            }
            None => (None, s),
        };
        if !is_ncname(local) {
            return Err(format!(
                "{local:?} is not an element local name (no prefix: use {{uri}}local)"
            ));
        }
        Ok(Step {
            ns,
            local: local.to_owned(),
        })
    }

    fn matches(&self, ns: Option<&str>, local: &str) -> bool {
        self.local == local && self.ns.as_ref().is_none_or(|want| want.as_deref() == ns)
    }
}

#[derive(Debug, Clone)]
enum Select {
    /// Every child element of the root.
    Children,
    /// Every outermost element with this name.
    Name(Step),
    /// The elements at this path from the root.
    Path(Vec<Step>),
}

impl Select {
    fn parse(v: Option<&str>) -> Result<Select, ConfigError> {
        let bad = |m: String| ConfigError::option("record", m);
        let Some(v) = v.filter(|v| !v.is_empty()) else {
            return Ok(Select::Children);
        };
        let Some(path) = v.strip_prefix('/') else {
            return Step::parse(v).map(Select::Name).map_err(bad);
        };
        // Split on `/` outside `{...}`: namespace URIs contain slashes.
        let mut steps = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                '/' if depth == 0 => {
                    steps.push(&path[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        steps.push(&path[start..]);
        if steps.iter().any(|s| s.is_empty()) {
            return Err(bad(format!(
                "{v:?}: empty step; write a path like /catalog/book"
            )));
        }
        steps
            .into_iter()
            .map(Step::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Select::Path)
            .map_err(bad)
    }
}

// ---------------------------------------------------------------------------
// Parser state
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the root element.
    Prolog,
    InRoot,
    /// After the root element closed.
    Epilog,
}

/// A problem found in the input, before deciding whether it is a record
/// error or fatal.
#[derive(Debug, Clone)]
struct Problem {
    code: &'static str,
    message: String,
    at: u64,
    line: u64,
    len: u64,
    field: Option<String>,
}

/// A cheap hasher for the small per-element maps of child names (their size
/// is bounded by `max-fields`, so hash flooding cannot grow them).
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

type FastHash = std::hash::BuildHasherDefault<Fx>;

/// An open element.
#[derive(Debug, Default)]
struct Open {
    qname: String,
    offset: u64,
    line: u64,
    /// Namespace declarations on this element: (prefix, "" for the default;
    /// URI).
    decls: Vec<(String, String)>,
    /// Whether this element matches the `record` path so far.
    on_path: bool,
    // Record building (inside a record only):
    /// Field path of this element ("" for the record element).
    path: String,
    /// Direct text so far.
    text: String,
    has_child: bool,
    /// Written names of child elements seen so far, for `[n]` suffixes.
    children: HashMap<String, u32, FastHash>,
}

/// The record being read.
#[derive(Debug)]
struct Rec {
    /// Stack depth (1 = root) of the record element.
    depth: usize,
    offset: u64,
    line: u64,
    ns: Option<String>,
    kind: String,
    fields: Vec<(String, String)>,
    /// First problem; the record becomes an error item when it ends.
    failed: Option<Problem>,
}

/// Why a record gets no layout: (code, message, field at fault).
type LayoutError = (&'static str, String, Option<String>);

/// Layouts by field-name set, each declared once.
#[derive(Default)]
struct Layouts {
    /// Fingerprints of every distinct layout so far: counted against
    /// `max-layouts` and kept in checkpoints.
    known: HashSet<u64>,
    cache: HashMap<u64, Vec<Layout>>,
    cached_bytes: usize,
    last: Option<Layout>,
}

impl Layouts {
    /// The layout for a record's fields and the order in which to push them.
    fn get(
        &mut self,
        kind: &str,
        fields: &[(String, String)],
        max: usize,
    ) -> Result<(Layout, Vec<usize>), LayoutError> {
        let mut order: Vec<usize> = (0..fields.len()).collect();
        order.sort_by(|&a, &b| natural_cmp(&fields[a].0, &fields[b].0));
        let same = |l: &Layout| {
            l.kind() == Some(kind)
                && l.fields().len() == order.len()
                && l.fields()
                    .iter()
                    .zip(&order)
                    .all(|(f, &i)| *f == fields[i].0)
        };
        if let Some(l) = &self.last
            && same(l)
        {
            return Ok((l.clone(), order));
        }
        if let Some(w) = order.windows(2).find(|w| fields[w[0]].0 == fields[w[1]].0) {
            let name = fields[w[0]].0.clone();
            return Err((
                DUPLICATE_FIELD,
                format!(
                    "two parts of this record map to the field name {:?} (namespace URIs containing `}}` or `/` can do this); rename one",
                    clip(&name)
                ),
                Some(name),
            ));
        }
        let fp = fingerprint(kind, order.iter().map(|&i| fields[i].0.as_str()));
        if let Some(l) = self.cache.get(&fp).and_then(|v| v.iter().find(|l| same(l))) {
            self.last = Some(l.clone());
            return Ok((l.clone(), order));
        }
        if !self.known.contains(&fp) {
            if self.known.len() >= max {
                return Err((
                    codes::LIMIT_EXCEEDED,
                    format!(
                        "this record's set of fields would be layout number {}, over max-layouts ({max}); records vary too much in shape: raise max-layouts or select more uniform records",
                        max + 1
                    ),
                    None,
                ));
            }
            self.known.insert(fp);
        }
        let layout = Layout::new(Some(kind), order.iter().map(|&i| fields[i].0.clone()));
        let bytes: usize = layout.fields().iter().map(|f| f.len() + 24).sum();
        if self.cached_bytes + bytes > LAYOUT_CACHE_BYTES {
            self.cache.clear();
            self.cached_bytes = 0;
        }
        self.cached_bytes += bytes;
        self.cache.entry(fp).or_default().push(layout.clone());
        self.last = Some(layout.clone());
        Ok((layout, order))
    }
}

/// Where the event being handled started.
#[derive(Debug, Clone, Copy, Default)]
struct EvPos {
    offset: u64,
    line: u64,
    prev_cr: bool,
}

/// The `xml` adapter. See the [crate docs](crate).
pub struct XmlAdapter {
    /// The reader; `None` until the first `next` of a fresh parse, which
    /// sniffs the encoding from `fresh` first.
    reader: Option<NsReader<Src>>,
    fresh: Option<Src>,
    lim: Limits,
    select: Select,
    key: Option<String>,
    buf: Vec<u8>,
    stack: Vec<Open>,
    /// Bytes of the names and namespace URIs of open elements.
    open_bytes: usize,
    phase: Phase,
    /// Offset of the first byte after a UTF-8 byte order mark.
    doc_start: u64,
    ordinal: u64,
    rec: Option<Rec>,
    layouts: Layouts,
    finished: bool,
    matched: bool,
    ev: EvPos,
    scratch: String,
}

impl XmlAdapter {
    fn reader_mut(&mut self) -> &mut NsReader<Src> {
        self.reader
            .as_mut()
            .expect("the reader exists while parsing")
    }

    fn src(&self) -> &Src {
        match (&self.reader, &self.fresh) {
            (Some(r), _) => r.get_ref(),
            (None, Some(s)) => s,
            (None, None) => unreachable!("the source is always held"),
        }
    }

    fn src_mut(&mut self) -> &mut Src {
        match (&mut self.reader, &mut self.fresh) {
            (Some(r), _) => r.get_mut(),
            (None, Some(s)) => s,
            (None, None) => unreachable!("the source is always held"),
        }
    }

    /// A reader over `src` in the state of `self.stack`: quick-xml's own
    /// end-tag checks are off (we check against our stack, which survives
    /// resumes), and its namespace scopes are rebuilt from the stack.
    fn make_reader(&self, mut src: Src) -> NsReader<Src> {
        src.clip_once = true;
        let mut r = NsReader::from_reader(src);
        let c = r.config_mut();
        c.check_end_names = false;
        c.allow_unmatched_ends = true;
        c.check_comments = false;
        c.expand_empty_elements = false;
        c.trim_text(false);
        c.allow_dangling_amp = false;
        c.trim_markup_names_in_closing_tags = true;
        let res = r.resolver_mut();
        res.set_max_namespace_bindings(self.lim.attributes);
        for (i, open) in self.stack.iter().enumerate() {
            res.set_level(level(i + 1));
            for (p, uri) in &open.decls {
                // Checked when first read; cannot fail now.
                let _ = res.add(prefix_decl(p), Namespace(uri));
            }
        }
        r
    }

    /// Replace a reader that stopped on an error by a fresh one at the same
    /// input position.
    fn rebuild_reader(&mut self) {
        let src = self.reader.take().expect("reader").into_inner();
        self.reader = Some(self.make_reader(src));
    }

    // -- problems -------------------------------------------------------

    /// Position of byte `k` of `text`, which starts `base` bytes after the
    /// event's first byte (the skipped prefix has no line break).
    fn pos(&self, base: usize, text: &[u8], k: usize) -> (u64, u64) {
        let mut cr = if base == 0 { self.ev.prev_cr } else { false };
        let breaks = count_breaks(&text[..k.min(text.len())], &mut cr);
        (self.ev.offset + (base + k) as u64, self.ev.line + breaks)
    }

    fn problem_at(
        &self,
        code: &'static str,
        message: String,
        base: usize,
        text: &[u8],
        k: usize,
    ) -> Problem {
        let (at, line) = self.pos(base, text, k);
        Problem {
            code,
            message,
            at,
            line,
            len: 1,
            field: None,
        }
    }

    /// A problem at the start of the current event.
    fn problem(&self, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            code,
            message: message.into(),
            at: self.ev.offset,
            line: self.ev.line,
            len: 1,
            field: None,
        }
    }

    /// A problem at the end of the input.
    fn problem_at_end(&self, code: &'static str, message: String) -> Problem {
        let src = self.src();
        Problem {
            code,
            message,
            at: src.offset,
            line: src.line(),
            len: 0,
            field: None,
        }
    }

    fn forbidden(&self) -> Problem {
        self.problem(
            codes::FORBIDDEN,
            "a DOCTYPE declaration was found: DTDs and custom entities are not accepted (nothing is expanded or fetched); remove the <!DOCTYPE ...> declaration and use only the predefined entities and character references",
        )
    }

    /// Report a problem that makes the current record an error; outside a
    /// record it is returned to become fatal.
    fn soft(&mut self, p: Problem) -> Result<(), Problem> {
        let Some(rec) = self.rec.as_mut() else {
            return Err(p);
        };
        if rec.failed.is_none() {
            rec.failed = Some(p);
            // Nothing of a failed record is kept: free what it gathered.
            rec.fields = Vec::new();
            for open in &mut self.stack[rec.depth - 1..] {
                open.text = String::new();
                open.path = String::new();
                open.children = HashMap::default();
            }
        }
        Ok(())
    }

    fn building(&self) -> bool {
        self.rec.as_ref().is_some_and(|r| r.failed.is_none())
    }

    fn fatal(&mut self, p: Problem) -> Item {
        self.finished = true;
        self.ordinal += 1;
        let mut e = RecordError::new(
            p.code,
            p.message,
            Location {
                offset: p.at,
                length: p.len,
                line: p.line,
                ordinal: self.ordinal,
            },
        );
        if let Some(f) = p.field {
            e = e.with_field(f);
        }
        Item::Fatal(e)
    }

    // -- driving --------------------------------------------------------

    /// First call of a fresh parse: refuse non-UTF-8 input by its first
    /// bytes, skip a UTF-8 byte order mark, create the reader.
    fn start(&mut self) -> Result<(), Problem> {
        let src = self.fresh.as_mut().expect("a fresh parse holds its source");
        let head = src.sniff(4).to_vec();
        if let Some(bom) = byte_order_mark(&head) {
            if !bom.is_utf8() {
                let e = bom.unsupported(1);
                return Err(Problem {
                    code: codes::UNSUPPORTED_ENCODING,
                    message: e.message,
                    at: 0,
                    line: 1,
                    len: bom.len as u64,
                    field: None,
                });
            }
            src.advance(bom.len);
        }
        let utf = |what: &str| Problem {
            code: codes::UNSUPPORTED_ENCODING,
            message: format!(
                "the input looks like {what}; this adapter reads UTF-8 only: convert the file to UTF-8 (and drop or fix its encoding declaration)"
            ),
            at: 0,
            line: 1,
            len: head.len().min(2) as u64,
            field: None,
        };
        match head.as_slice() {
            [0x00, 0x00, 0x00, b'<'] | [b'<', 0x00, 0x00, 0x00] => return Err(utf("UTF-32")),
            [0x00, b'<', ..] | [b'<', 0x00, ..] => {
                return Err(utf("UTF-16 without byte order mark"));
            }
            [0x4C, 0x6F, 0xA7, 0x94] => return Err(utf("EBCDIC")),
            _ => {}
        }
        // Keep the source until here: checkpoint() needs it even after a
        // fatal item.
        let src = self.fresh.take().expect("checked above");
        self.doc_start = src.offset;
        self.reader = Some(self.make_reader(src));
        Ok(())
    }

    /// Read and handle one event; an item if one is ready.
    fn step(&mut self) -> Option<Item> {
        let cap = self.lim.record as u64;
        let (offset, line, prev_cr) = {
            let src = self.src_mut();
            src.limit = src.offset.saturating_add(cap);
            (src.offset, src.line(), src.prev_cr)
        };
        self.ev = EvPos {
            offset,
            line,
            prev_cr,
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.reader_mut().read_event_into(&mut buf);
        let out = match result {
            Ok(ev) => {
                self.check_record_size();
                self.on_event(ev)
            }
            Err(e) => self.on_error(e, &buf),
        };
        self.src_mut().limit = u64::MAX;
        // One huge event must not pin its buffer for the rest of the parse.
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        match out {
            Ok(item) => item,
            Err(p) => Some(self.fatal(p)),
        }
    }

    fn check_record_size(&mut self) {
        let end = self.src().offset;
        if let Some(rec) = &self.rec
            && rec.failed.is_none()
            && end - rec.offset > self.lim.record as u64
        {
            let p = self.record_too_long();
            // Inside a record by construction.
            let _ = self.soft(p);
        }
    }

    fn record_too_long(&self) -> Problem {
        self.problem(
            codes::RECORD_TOO_LONG,
            format!(
                "the record element is longer than max-record-bytes ({} bytes); raise max-record-bytes or split the record",
                self.lim.record
            ),
        )
    }

    fn on_event(&mut self, ev: Event<'_>) -> Result<Option<Item>, Problem> {
        match ev {
            Event::Start(e) => self.on_start(&e, false, None),
            Event::Empty(e) => self.on_start(&e, true, None),
            Event::End(e) => self.on_end(&e, None),
            Event::Text(t) => self.on_text(&t),
            Event::CData(t) => self.on_cdata(&t),
            Event::GeneralRef(r) => self.on_ref(&r),
            Event::Comment(t) => self.on_comment(&t),
            Event::PI(p) => self.on_pi(&p),
            Event::Decl(d) => self.on_decl(&d),
            Event::DocType(_) => Err(self.forbidden()),
            Event::Eof => self.on_eof(),
        }
    }

    fn on_error(&mut self, e: XmlError, buf: &[u8]) -> Result<Option<Item>, Problem> {
        let doctype = buf.len() >= 3 && buf[..3].eq_ignore_ascii_case(b"<!d");
        if doctype {
            return Err(self.forbidden());
        }
        let len = (self.src().offset - self.ev.offset).max(1);
        let malformed = |me: &Self, msg: String| Problem {
            len,
            ..me.problem(codes::MALFORMED, msg)
        };
        match e {
            XmlError::Io(io) if io.get_ref().is_some_and(|i| i.is::<TooLarge>()) => self.on_oversized(buf),
            XmlError::Encoding(EncodingError::Utf8(u)) => self.on_bad_utf8(u.valid_up_to(), buf),
            XmlError::Syntax(s) => {
                let what = match s {
                    SyntaxError::InvalidBangMarkup => {
                        "`<!` must start a comment `<!--` or a CDATA section `<![CDATA[`".to_owned()
                    }
                    SyntaxError::UnclosedPI | SyntaxError::UnclosedXmlDecl => {
                        "the input ends inside a processing instruction (`?>` missing): the document is truncated".to_owned()
                    }
                    SyntaxError::UnclosedComment => {
                        "the input ends inside a comment (`-->` missing): the document is truncated".to_owned()
                    }
                    SyntaxError::UnclosedCData => {
                        "the input ends inside a CDATA section (`]]>` missing): the document is truncated".to_owned()
                    }
                    other => format!("the input ends inside a tag ({other}): the document is truncated"),
                };
                Err(malformed(self, what))
            }
            XmlError::IllFormed(IllFormedError::UnclosedReference) => Err(malformed(
                self,
                "a `&` must start a reference ending with `;` (write &amp; for a literal `&`)".to_owned(),
            )),
            XmlError::Namespace(NamespaceError::TooManyBindings(n)) => Err(self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "more than {n} namespace declarations in scope (limit: max-attributes); declare namespaces once near the root"
                ),
            )),
            XmlError::Namespace(ne) => Err(malformed(self, format!("illegal namespace declaration: {ne}"))),
            other => Err(malformed(self, format!("not well-formed XML: {other}"))),
        }
    }

    /// An event larger than the cap: inside a record, skip to its end and
    /// fail the record; otherwise fatal.
    fn on_oversized(&mut self, buf: &[u8]) -> Result<Option<Item>, Problem> {
        #[derive(PartialEq)]
        enum Kind {
            Text,
            Comment,
            CData,
            Pi,
            Tag,
        }
        let kind = if !buf.starts_with(b"<") {
            Kind::Text
        } else if buf.starts_with(b"<!--") {
            Kind::Comment
        } else if buf.starts_with(b"<![CDATA[") {
            Kind::CData
        } else if buf.starts_with(b"<?") {
            Kind::Pi
        } else {
            Kind::Tag
        };
        if self.rec.is_none() || kind == Kind::Tag {
            return Err(self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "a single {} is longer than max-record-bytes ({} bytes); this adapter does not buffer more than that for one construct",
                    if kind == Kind::Tag { "tag" } else { "text run, comment or other construct outside a record" },
                    self.lim.record
                ),
            ));
        }
        let p = self.record_too_long();
        self.soft(p)?;
        let mut src = self.reader.take().expect("reader").into_inner();
        src.limit = u64::MAX;
        let found = match kind {
            Kind::Text => {
                src.skip_to(b'<');
                true
            }
            Kind::Comment => src.skip_past(b"-->", buf),
            Kind::CData => src.skip_past(b"]]>", buf),
            _ => src.skip_past(b"?>", buf),
        };
        self.reader = Some(self.make_reader(src));
        if !found {
            return Err(self.problem_at_end(
                codes::MALFORMED,
                "the input ends inside a comment, CDATA section or processing instruction: the document is truncated".to_owned(),
            ));
        }
        Ok(None)
    }

    /// Bytes that are not UTF-8 in an event that was read whole: report
    /// them, then handle the event decoded lossily so that element
    /// structure stays in step.
    fn on_bad_utf8(&mut self, valid: usize, buf: &[u8]) -> Result<Option<Item>, Problem> {
        let (at, line) = self.pos(0, buf, valid);
        let p = Problem {
            code: codes::INVALID_UTF8,
            message: "invalid UTF-8; this adapter reads UTF-8 only: convert the file to UTF-8"
                .to_owned(),
            at,
            line,
            len: 1,
            field: None,
        };
        self.rebuild_reader();
        let text = same_length_lossy(buf);
        let out = if buf.starts_with(b"</") && buf.ends_with(b">") {
            let name = text[2..text.len() - 1].trim_end_matches([' ', '\t', '\r', '\n']);
            self.on_end(name, Some(p))
        } else if buf.starts_with(b"<")
            && !buf.starts_with(b"<!")
            && !buf.starts_with(b"<?")
            && buf.ends_with(b">")
        {
            let inner = &text[1..text.len() - 1];
            match inner.strip_suffix('/') {
                Some(inner) => self.on_start(inner, true, Some(p)),
                None => self.on_start(inner, false, Some(p)),
            }
        } else {
            self.soft(p).map(|()| None)
        };
        // The fresh reader did not see this event: align its scopes.
        let depth = level(self.stack.len());
        if let Some(r) = self.reader.as_mut() {
            r.resolver_mut().set_level(depth);
        }
        out
    }

    fn on_start(
        &mut self,
        content: &str,
        empty: bool,
        bad: Option<Problem>,
    ) -> Result<Option<Item>, Problem> {
        match self.phase {
            Phase::Epilog => {
                return Err(self.problem(
                    codes::MALFORMED,
                    "a second root element starts here: an XML document has exactly one root element; wrap the elements in one",
                ));
            }
            Phase::Prolog => self.phase = Phase::InRoot,
            Phase::InRoot => {}
        }
        let tag = self.parse_start(content)?;
        let depth = self.stack.len() + 1;
        if depth > self.lim.depth {
            return Err(self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "elements nest deeper than max-depth ({}); flatten the document or raise max-depth",
                    self.lim.depth
                ),
            ));
        }
        let decls = self.namespace_decls(content, &tag)?;
        let decl_bytes: usize = decls.iter().map(|(p, u)| p.len() + u.len()).sum();
        if self.open_bytes + tag.name.len() + decl_bytes > self.lim.record {
            return Err(self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "the names and namespace URIs of the open elements exceed max-record-bytes ({} bytes)",
                    self.lim.record
                ),
            ));
        }
        let (ns, local, attrs) = self.resolve(content, &tag, &decls, depth)?;

        // Record selection.
        let parent_on_path = self.stack.last().is_none_or(|p| p.on_path);
        let on_path = match &self.select {
            Select::Path(steps) => {
                parent_on_path
                    && steps
                        .get(depth - 1)
                        .is_some_and(|s| s.matches(ns.as_deref(), local))
            }
            _ => false,
        };
        let starts = self.rec.is_none()
            && match &self.select {
                Select::Children => depth == 2,
                Select::Name(step) => step.matches(ns.as_deref(), local),
                Select::Path(steps) => on_path && depth == steps.len(),
            };
        if starts {
            self.matched = true;
            self.rec = Some(Rec {
                depth,
                offset: self.ev.offset,
                line: self.ev.line,
                ns: ns.clone(),
                kind: local.to_owned(),
                fields: Vec::new(),
                failed: None,
            });
        }
        if let Some(p) = bad {
            self.soft(p)?;
        }
        self.start_limits(content, &tag)?;
        let path = if self.building() && !starts {
            self.child_path(ns.as_deref(), local)?
        } else {
            String::new()
        };
        self.attribute_values(content, &tag, &attrs, &path, starts)?;

        self.open_bytes += tag.name.len() + decl_bytes;
        self.stack.push(Open {
            qname: tag.name.to_owned(),
            offset: self.ev.offset,
            line: self.ev.line,
            decls,
            on_path,
            path,
            ..Open::default()
        });
        Ok(if empty { self.close_top() } else { None })
    }

    /// Syntax, names and duplicate attributes of a start tag.
    fn parse_start<'c>(&self, content: &'c str) -> Result<StartTag<'c>, Problem> {
        let c = content.as_bytes();
        let mut attrs = Vec::new();
        let mut extra = Vec::new();
        let (name_end, overflow) = parse_tag(content, self.lim.attributes, &mut attrs, &mut extra)
            .map_err(|(k, msg)| self.problem_at(codes::MALFORMED, msg.into_owned(), 1, c, k))?;
        let name = &content[..name_end];
        if let Some(why) = qname_problem(name) {
            return Err(self.problem_at(
                codes::MALFORMED,
                format!("element name {:?} {why}", clip(name)),
                1,
                c,
                0,
            ));
        }
        if name.starts_with("xmlns:") {
            return Err(self.problem_at(
                codes::MALFORMED,
                format!("element {:?} uses the reserved prefix `xmlns`", clip(name)),
                1,
                c,
                0,
            ));
        }
        let names: Vec<&str> = attrs.iter().map(|a| &content[a.name.clone()]).collect();
        if let Some(dup) = sluice_sdk::first_duplicate(&names) {
            let k = attrs
                .iter()
                .rev()
                .find(|a| &content[a.name.clone()] == dup)
                .map_or(0, |a| a.name.start);
            return Err(self.problem_at(
                codes::MALFORMED,
                format!(
                    "attribute {:?} appears twice on element <{}>",
                    clip(dup),
                    clip(name)
                ),
                1,
                c,
                k,
            ));
        }
        Ok(StartTag {
            name,
            attrs,
            extra,
            overflow,
        })
    }

    /// The tag's namespace declarations, decoded and checked against the
    /// reserved `xml`/`xmlns` rules. Checked whatever the limits say: the
    /// names after them depend on them.
    fn namespace_decls(
        &self,
        content: &str,
        tag: &StartTag<'_>,
    ) -> Result<Vec<(String, String)>, Problem> {
        let c = content.as_bytes();
        let mut decls = Vec::new();
        for a in tag
            .attrs
            .iter()
            .chain(&tag.extra)
            .filter(|a| is_xmlns(&content[a.name.clone()]))
        {
            let qn = &content[a.name.clone()];
            if find_bad_char(content[a.value.clone()].as_bytes()).is_some() {
                return Err(self.bad_char_in(content, a.value.clone()));
            }
            let mut uri = String::new();
            decode_attr(&content[a.value.clone()], &mut uri)
                .map_err(|e| self.value_problem(e, content, a.value.start).0)?;
            let prefix = qn.strip_prefix("xmlns:").unwrap_or("");
            let why = match prefix {
                "xmlns" => Some("the prefix `xmlns` cannot be declared".to_owned()),
                "xml" if uri != XML_NS => {
                    Some(format!("the prefix `xml` can only be bound to {XML_NS}"))
                }
                "xml" => None,
                "" if uri == XML_NS || uri == XMLNS_NS => {
                    Some(format!("{uri} cannot be the default namespace"))
                }
                "" => None,
                _ if uri.is_empty() => Some(format!(
                    "xmlns:{prefix}=\"\" undeclares a prefix, which XML 1.0 namespaces do not allow"
                )),
                _ if uri == XML_NS || uri == XMLNS_NS => Some(format!(
                    "{uri} is reserved and cannot be bound to the prefix `{prefix}`"
                )),
                _ => None,
            };
            if let Some(why) = why {
                return Err(self.problem_at(
                    codes::MALFORMED,
                    format!("illegal namespace declaration: {why}"),
                    1,
                    c,
                    a.name.start,
                ));
            }
            decls.push((prefix.to_owned(), uri));
        }
        Ok(decls)
    }

    /// Open the element's namespace scope in quick-xml's resolver and
    /// resolve its name and its (non-declaration) attributes' names, which
    /// must be unique as expanded names too. Returns the element's namespace
    /// and local name and, per attribute, (index in `tag.attrs`, namespace,
    /// local name).
    fn resolve<'c>(
        &mut self,
        content: &'c str,
        tag: &StartTag<'c>,
        decls: &[(String, String)],
        depth: usize,
    ) -> Result<(Option<String>, &'c str, Vec<ResolvedAttr<'c>>), Problem> {
        let c = content.as_bytes();
        // quick-xml already pushed this element's declarations from the raw
        // values (it does not decode references): replace them with ours.
        let ev = self.ev;
        let resolver = self.reader_mut().resolver_mut();
        resolver.set_level(level(depth - 1));
        resolver.set_level(level(depth));
        for (p, uri) in decls {
            resolver
                .add(prefix_decl(p), Namespace(uri))
                .map_err(|e| Problem {
                    code: codes::LIMIT_EXCEEDED,
                    message: format!(
                        "{e}; declare namespaces once near the root (limit: max-attributes)"
                    ),
                    at: ev.offset,
                    line: ev.line,
                    len: 1,
                    field: None,
                })?;
        }
        let resolver = self.reader.as_ref().expect("reader").resolver();
        let (res, local) = resolver.resolve_element(QName(tag.name));
        let local = local.into_inner();
        let ns = match res {
            ResolveResult::Bound(n) => Some(n.0.to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => {
                return Err(self.problem_at(
                    codes::MALFORMED,
                    format!(
                        "element <{}> uses the prefix `{p}`, which is not declared (add xmlns:{p}=\"...\")",
                        clip(tag.name)
                    ),
                    1,
                    c,
                    0,
                ));
            }
        };
        let mut attrs: Vec<ResolvedAttr<'c>> = Vec::with_capacity(tag.attrs.len());
        for (i, a) in tag.attrs.iter().enumerate() {
            let qn = &content[a.name.clone()];
            if is_xmlns(qn) {
                continue;
            }
            let Some((p, l)) = qn.split_once(':') else {
                attrs.push((i, None, qn));
                continue;
            };
            match resolver.resolve_attribute(QName(qn)).0 {
                ResolveResult::Bound(n) => attrs.push((i, Some(n.0.to_owned()), l)),
                _ => {
                    return Err(self.problem_at(
                        codes::MALFORMED,
                        format!(
                            "attribute {:?} uses the prefix `{p}`, which is not declared (add xmlns:{p}=\"...\")",
                            clip(qn)
                        ),
                        1,
                        c,
                        a.name.start,
                    ));
                }
            }
        }
        for (j, (i, ns_a, l)) in attrs.iter().enumerate() {
            if ns_a.is_some()
                && let Some((i2, _, _)) =
                    attrs[..j].iter().find(|(_, n2, l2)| n2 == ns_a && l2 == l)
            {
                return Err(self.problem_at(
                    codes::MALFORMED,
                    format!(
                        "attributes {:?} and {:?} have the same namespace and local name",
                        clip(&content[tag.attrs[*i2].name.clone()]),
                        clip(&content[tag.attrs[*i].name.clone()])
                    ),
                    1,
                    c,
                    tag.attrs[*i].name.start,
                ));
            }
        }
        Ok((ns, local, attrs))
    }

    /// Attribute-count and name-length limits of a start tag.
    fn start_limits(&mut self, content: &str, tag: &StartTag<'_>) -> Result<(), Problem> {
        if tag.overflow > 0 {
            let p = self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "element <{}> has {} attributes, more than max-attributes ({})",
                    clip(tag.name),
                    tag.attrs.len() + tag.overflow,
                    self.lim.attributes
                ),
            );
            self.soft(p)?;
        }
        if tag.name.len() > self.lim.name {
            let p = self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "element name {} is longer than max-name-bytes ({})",
                    clip(tag.name),
                    self.lim.name
                ),
            );
            self.soft(p)?;
        }
        if let Some(a) = tag.attrs.iter().find(|a| a.name.len() > self.lim.name) {
            let p = self.problem_at(
                codes::LIMIT_EXCEEDED,
                format!(
                    "attribute name {} is longer than max-name-bytes ({})",
                    clip(&content[a.name.clone()]),
                    self.lim.name
                ),
                1,
                content.as_bytes(),
                a.name.start,
            );
            self.soft(p)?;
        }
        Ok(())
    }

    /// Field path of a new child element inside the record: the parent's
    /// path, `/`, the written name and `[n]` for the n-th same-named sibling.
    fn child_path(&mut self, ns: Option<&str>, local: &str) -> Result<String, Problem> {
        let rec = self.rec.as_ref().expect("called while building");
        let written = display_name(ns, local, rec.ns.as_deref());
        let parent = self
            .stack
            .last_mut()
            .expect("a record element encloses this one");
        parent.has_child = true;
        let n = match parent.children.get_mut(&written) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                parent.children.insert(written.clone(), 1);
                1
            }
        };
        let mut path = String::with_capacity(parent.path.len() + written.len() + 8);
        path.push_str(&parent.path);
        if !parent.path.is_empty() {
            path.push('/');
        }
        path.push_str(&written);
        if n > 1 {
            path.push('[');
            path.push_str(&n.to_string());
            path.push(']');
        }
        if path.len() > self.lim.name {
            let p = self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "field name {} is longer than max-name-bytes ({})",
                    clip(&path),
                    self.lim.name
                ),
            );
            self.soft(p)?;
        }
        Ok(path)
    }

    /// Decode and check every attribute value; inside a record, keep them
    /// as fields (`@a` on the record element, `path/@a` below it).
    fn attribute_values(
        &mut self,
        content: &str,
        tag: &StartTag<'_>,
        attrs: &[ResolvedAttr<'_>],
        path: &str,
        is_record: bool,
    ) -> Result<(), Problem> {
        let mut value = std::mem::take(&mut self.scratch);
        let result = (|| {
            for (i, ns_a, l) in attrs {
                let range = tag.attrs[*i].value.clone();
                let raw = &content[range.clone()];
                if find_bad_char(raw.as_bytes()).is_some() {
                    return Err(self.bad_char_in(content, range));
                }
                value.clear();
                if let Err(e) = decode_attr(raw, &mut value) {
                    let (p, soft) = self.value_problem(e, content, range.start);
                    if !soft {
                        return Err(p);
                    }
                    self.soft(p)?;
                }
                if !self.building() {
                    continue;
                }
                let rec = self.rec.as_ref().expect("building");
                let written = match ns_a.as_deref() {
                    Some(u)
                        if Some(u) == rec.ns.as_deref()
                            && !attrs.iter().any(|(_, n2, l2)| n2.is_none() && l2 == l) =>
                    {
                        (*l).to_owned()
                    }
                    Some(u) => display_name(Some(u), l, None),
                    None => (*l).to_owned(),
                };
                let mut field = String::with_capacity(path.len() + written.len() + 2);
                if !is_record {
                    field.push_str(path);
                    field.push('/');
                }
                field.push('@');
                field.push_str(&written);
                self.add_field(field, value.clone())?;
            }
            Ok(())
        })();
        self.scratch = value;
        result
    }

    /// Problem for a character XML 1.0 does not allow inside an attribute
    /// value at `range` of a tag's content.
    fn bad_char_in(&self, content: &str, range: std::ops::Range<usize>) -> Problem {
        let raw = &content[range.clone()];
        let k = find_bad_char(raw.as_bytes()).unwrap_or(0);
        let ch = raw[k..].chars().next().unwrap_or('\0');
        self.problem_at(
            codes::MALFORMED,
            format!(
                "character U+{:04X} is not allowed in XML 1.0",
                u32::from(ch)
            ),
            1,
            content.as_bytes(),
            range.start + k,
        )
    }

    /// Problem for an attribute value that does not decode, and whether it
    /// may be a record error (undefined entity) rather than fatal.
    fn value_problem(&self, e: ValueError, content: &str, start: usize) -> (Problem, bool) {
        let c = content.as_bytes();
        match e {
            ValueError::Lt(k) => (
                self.problem_at(
                    codes::MALFORMED,
                    "`<` is not allowed in an attribute value; write &lt;".to_owned(),
                    1,
                    c,
                    start + k,
                ),
                false,
            ),
            ValueError::Ref(k, end, re) => {
                let name = content.get(start + k + 1..start + end).unwrap_or("");
                let soft = matches!(re, RefError::Undefined);
                let (code, msg) = ref_message(&re, name);
                (self.problem_at(code, msg, 1, c, start + k), soft)
            }
        }
    }

    fn add_field(&mut self, name: String, value: String) -> Result<(), Problem> {
        if value.len() > self.lim.field {
            let p = Problem {
                field: Some(name.clone()),
                ..self.problem(
                    codes::FIELD_TOO_LONG,
                    format!(
                        "field {} is longer than max-field-bytes ({} bytes)",
                        clip(&name),
                        self.lim.field
                    ),
                )
            };
            return self.soft(p);
        }
        if name.len() > self.lim.name {
            let p = self.problem(
                codes::LIMIT_EXCEEDED,
                format!(
                    "field name {} is longer than max-name-bytes ({})",
                    clip(&name),
                    self.lim.name
                ),
            );
            return self.soft(p);
        }
        let rec = self.rec.as_mut().expect("called inside a record");
        if rec.fields.len() >= self.lim.fields {
            let p = self.problem(
                codes::TOO_MANY_FIELDS,
                format!(
                    "the record has more than max-fields ({}) fields",
                    self.lim.fields
                ),
            );
            return self.soft(p);
        }
        rec.fields.push((name, value));
        Ok(())
    }

    fn on_end(&mut self, name: &str, bad: Option<Problem>) -> Result<Option<Item>, Problem> {
        let Some(top) = self.stack.last() else {
            return Err(self.problem(
                codes::MALFORMED,
                format!("end tag </{}> has no matching start tag", clip(name)),
            ));
        };
        if top.qname != name {
            return Err(self.problem(
                codes::MALFORMED,
                format!(
                    "end tag </{}> does not match the open element <{}> (opened at line {}, byte {}); fix the nesting or the missing end tag",
                    clip(name),
                    clip(&top.qname),
                    top.line,
                    top.offset
                ),
            ));
        }
        if let Some(p) = bad {
            self.soft(p)?;
        }
        Ok(self.close_top())
    }

    /// Close the innermost element; the record if it was the record element.
    fn close_top(&mut self) -> Option<Item> {
        let open = self.stack.pop()?;
        self.open_bytes -= open.qname.len()
            + open
                .decls
                .iter()
                .map(|(p, u)| p.len() + u.len())
                .sum::<usize>();
        let level = self.stack.len() + 1;
        if self.stack.is_empty() {
            self.phase = Phase::Epilog;
        }
        let rec_depth = self.rec.as_ref()?.depth;
        if self.building() {
            let keep = if level == rec_depth {
                has_non_ws(&open.text)
            } else {
                !open.has_child || has_non_ws(&open.text)
            };
            if keep {
                let name = if level == rec_depth {
                    "#text".to_owned()
                } else {
                    open.path
                };
                // A problem here is recorded on the record (it is active).
                let _ = self.add_field(name, open.text);
            }
        }
        if level != rec_depth {
            return None;
        }
        let rec = self.rec.take().expect("checked above");
        Some(self.finish_record(rec))
    }

    fn finish_record(&mut self, rec: Rec) -> Item {
        let end = self.src().offset;
        self.ordinal += 1;
        let location = Location {
            offset: rec.offset,
            length: end - rec.offset,
            line: rec.line,
            ordinal: self.ordinal,
        };
        let mut failed = rec.failed;
        if failed.is_none() && location.length > self.lim.record as u64 {
            failed = Some(Problem {
                at: rec.offset,
                line: rec.line,
                ..self.record_too_long()
            });
        }
        if let Some(p) = failed {
            let mut e = RecordError::new(
                p.code,
                format!("{} (at byte offset {}, line {})", p.message, p.at, p.line),
                location,
            );
            if let Some(f) = p.field {
                e = e.with_field(f);
            }
            return Item::Error(e);
        }
        match self.layouts.get(&rec.kind, &rec.fields, self.lim.layouts) {
            Ok((layout, order)) => {
                let bytes: usize = rec.fields.iter().map(|f| f.1.len()).sum();
                let mut record = Record::with_capacity(&layout, bytes);
                for &i in &order {
                    record.push_text(&rec.fields[i].1);
                }
                if let Some(key) = &self.key
                    && let Some((_, v)) = rec.fields.iter().find(|(n, _)| n == key)
                {
                    record.set_key(v);
                }
                record.set_location(location);
                Item::Record(record)
            }
            Err((code, message, field)) => {
                let mut e = RecordError::new(code, message, location);
                if let Some(f) = field {
                    e = e.with_field(f);
                }
                Item::Error(e)
            }
        }
    }

    /// Append decoded text to the innermost element of the record.
    fn append_text(&mut self, s: &str, normalize: bool) -> Result<(), Problem> {
        if !self.building() {
            return Ok(());
        }
        let rec_depth = self.rec.as_ref().map_or(0, |r| r.depth);
        let is_rec = self.stack.len() == rec_depth;
        let top = self.stack.last_mut().expect("inside the record element");
        if normalize {
            push_normalized(&mut top.text, s);
        } else {
            top.text.push_str(s);
        }
        if top.text.len() > self.lim.field {
            let field = if is_rec {
                "#text".to_owned()
            } else {
                top.path.clone()
            };
            let p = Problem {
                field: Some(field.clone()),
                ..self.problem(
                    codes::FIELD_TOO_LONG,
                    format!(
                        "field {} is longer than max-field-bytes ({} bytes)",
                        clip(&field),
                        self.lim.field
                    ),
                )
            };
            return self.soft(p);
        }
        Ok(())
    }

    fn check_chars(&self, text: &str, base: usize) -> Result<(), Problem> {
        match find_bad_char(text.as_bytes()) {
            None => Ok(()),
            Some(k) => {
                let ch = text[k..].chars().next().unwrap_or('\0');
                Err(self.problem_at(
                    codes::MALFORMED,
                    format!(
                        "character U+{:04X} is not allowed in XML 1.0 (control characters other than tab, LF and CR, and U+FFFE/U+FFFF, are forbidden)",
                        u32::from(ch)
                    ),
                    base,
                    text.as_bytes(),
                    k,
                ))
            }
        }
    }

    fn on_text(&mut self, text: &str) -> Result<Option<Item>, Problem> {
        self.check_chars(text, 0)?;
        let b = text.as_bytes();
        if self.phase != Phase::InRoot {
            if let Some(k) = b.iter().position(|&c| !is_ws(c)) {
                return Err(self.problem_at(
                    codes::MALFORMED,
                    "text outside the root element: only whitespace, comments and processing instructions may surround it".to_owned(),
                    0,
                    b,
                    k,
                ));
            }
            return Ok(None);
        }
        if let Some(k) = memchr::memmem::find(b, b"]]>") {
            return Err(self.problem_at(
                codes::MALFORMED,
                "`]]>` is not allowed in text; write ]]&gt;".to_owned(),
                0,
                b,
                k,
            ));
        }
        self.append_text(text, true)?;
        Ok(None)
    }

    fn outside_root(&self, what: &str) -> Result<(), Problem> {
        if self.phase == Phase::InRoot {
            Ok(())
        } else {
            Err(self.problem(codes::MALFORMED, format!("{what} outside the root element")))
        }
    }

    fn on_cdata(&mut self, text: &str) -> Result<Option<Item>, Problem> {
        self.outside_root("a CDATA section")?;
        self.check_chars(text, 9)?;
        self.append_text(text, true)?;
        Ok(None)
    }

    fn on_ref(&mut self, name: &str) -> Result<Option<Item>, Problem> {
        self.outside_root("an entity or character reference")?;
        let mut out = String::new();
        match decode_ref(name, &mut out) {
            Ok(()) => self.append_text(&out, false)?,
            Err(e) => {
                let soft = matches!(e, RefError::Undefined);
                let (code, message) = ref_message(&e, name);
                let mut p = self.problem(code, message);
                if let Some(top) = self.stack.last()
                    && self.building()
                {
                    let rec_depth = self.rec.as_ref().map_or(0, |r| r.depth);
                    p.field = Some(if self.stack.len() == rec_depth {
                        "#text".to_owned()
                    } else {
                        top.path.clone()
                    });
                }
                if soft {
                    self.soft(p)?;
                } else {
                    return Err(p);
                }
            }
        }
        Ok(None)
    }

    fn on_comment(&mut self, text: &str) -> Result<Option<Item>, Problem> {
        if let Some(k) = memchr::memmem::find(text.as_bytes(), b"--") {
            return Err(self.problem_at(
                codes::MALFORMED,
                "`--` is not allowed inside a comment".to_owned(),
                4,
                text.as_bytes(),
                k,
            ));
        }
        if text.ends_with('-') {
            return Err(self.problem_at(
                codes::MALFORMED,
                "a comment must not end with `--->`".to_owned(),
                4,
                text.as_bytes(),
                text.len() - 1,
            ));
        }
        self.check_chars(text, 4)?;
        Ok(None)
    }

    fn on_pi(&mut self, text: &str) -> Result<Option<Item>, Problem> {
        let target = text.split([' ', '\t', '\r', '\n']).next().unwrap_or("");
        if target.eq_ignore_ascii_case("xml") {
            return Err(self.problem(
                codes::MALFORMED,
                "an XML declaration (<?xml ...?>) is only allowed at the very start of the document; processing instruction targets `xml` (any case) are reserved",
            ));
        }
        if !is_ncname(target) {
            return Err(self.problem(
                codes::MALFORMED,
                format!(
                    "processing instruction target {:?} is not a valid name (names without `:`)",
                    clip(target)
                ),
            ));
        }
        self.check_chars(text, 2)?;
        Ok(None)
    }

    fn on_decl(&mut self, text: &str) -> Result<Option<Item>, Problem> {
        if !(self.phase == Phase::Prolog && self.ev.offset == self.doc_start) {
            return Err(self.problem(
                codes::MALFORMED,
                "an XML declaration (<?xml ...?>) is only allowed at the very start of the document",
            ));
        }
        let b = text.as_bytes();
        let malformed = |me: &Self, k: usize, msg: &str| {
            me.problem_at(
                codes::MALFORMED,
                format!("bad XML declaration: {msg} (expected <?xml version=\"1.0\" encoding=\"UTF-8\"?>)"),
                2,
                b,
                k,
            )
        };
        let mut pairs: Vec<(&str, &str, usize)> = Vec::new();
        let mut i = 3;
        loop {
            let gap = i;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            if i == gap {
                return Err(malformed(self, i, "whitespace expected"));
            }
            let ns = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name = &text[ns..i];
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if name.is_empty() || b.get(i) != Some(&b'=') {
                return Err(malformed(self, i, "`name=\"value\"` expected"));
            }
            i += 1;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let q = b.get(i).copied();
            if !matches!(q, Some(b'"' | b'\'')) {
                return Err(malformed(self, i, "quoted value expected"));
            }
            let vs = i + 1;
            let Some(len) = memchr::memchr(q.unwrap_or(b'"'), &b[vs..]) else {
                return Err(malformed(self, i, "value not closed"));
            };
            pairs.push((name, &text[vs..vs + len], vs));
            i = vs + len + 1;
        }
        let mut it = pairs.into_iter().peekable();
        let Some(("version", version, vk)) = it.next() else {
            return Err(malformed(self, 3, "`version` must come first"));
        };
        let digits = version.strip_prefix("1.").unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_digit()) {
            return Err(malformed(self, vk, "the version must look like 1.0"));
        }
        if version != "1.0" {
            return Err(self.problem_at(
                UNSUPPORTED_VERSION,
                format!("XML version {version} is not supported: this adapter reads XML 1.0; save the document as XML 1.0"),
                2,
                b,
                vk,
            ));
        }
        if let Some(&("encoding", enc, ek)) = it.peek() {
            it.next();
            let mut cs = enc.chars();
            let syntax_ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic())
                && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !syntax_ok {
                return Err(malformed(self, ek, "bad encoding name"));
            }
            if !["UTF-8", "UTF8", "US-ASCII", "ASCII"]
                .iter()
                .any(|e| e.eq_ignore_ascii_case(enc))
            {
                return Err(self.problem_at(
                    codes::UNSUPPORTED_ENCODING,
                    format!(
                        "the document declares encoding {enc:?}; this adapter reads UTF-8 only: convert the file to UTF-8 and declare encoding=\"UTF-8\" (or drop the declaration)"
                    ),
                    2,
                    b,
                    ek,
                ));
            }
        }
        if let Some(&("standalone", sd, sk)) = it.peek() {
            it.next();
            if sd != "yes" && sd != "no" {
                return Err(malformed(self, sk, "standalone must be \"yes\" or \"no\""));
            }
        }
        if let Some((_, _, k)) = it.next() {
            return Err(malformed(
                self,
                k,
                "only version, encoding and standalone, in that order, are allowed",
            ));
        }
        Ok(None)
    }

    fn on_eof(&mut self) -> Result<Option<Item>, Problem> {
        if self.phase == Phase::Epilog {
            self.finished = true;
            if !self.matched && !matches!(self.select, Select::Children) {
                log(
                    Level::Warn,
                    "no element matched the `record` option: the document has no records",
                );
            }
            return Ok(Some(Item::End));
        }
        let message = match self.stack.last() {
            Some(open) => format!(
                "the input ends before element <{}> (opened at line {}, byte {}) is closed ({} element(s) open): the document is truncated or end tags are missing",
                clip(&open.qname),
                open.line,
                open.offset,
                self.stack.len()
            ),
            None => "the document has no root element".to_owned(),
        };
        Err(self.problem_at_end(codes::MALFORMED, message))
    }

    // -- checkpoints ----------------------------------------------------

    fn encode_state(&self) -> Vec<u8> {
        let mut w = StateWriter::new();
        w.u64(STATE_VERSION);
        if self.ordinal == 0 {
            // Nothing emitted yet: the parse starts over from offset 0.
            w.bool(true);
            return w.finish();
        }
        w.bool(false)
            .u64(self.ordinal)
            .u64(self.src().line())
            .u64(match self.phase {
                Phase::Prolog => 0,
                Phase::InRoot => 1,
                Phase::Epilog => 2,
            })
            .u64(self.stack.len() as u64);
        for open in &self.stack {
            w.str(&open.qname)
                .u64(open.offset)
                .u64(open.line)
                .bool(open.on_path)
                .u64(open.decls.len() as u64);
            for (p, u) in &open.decls {
                w.str(p).str(u);
            }
        }
        let mut known: Vec<u64> = self.layouts.known.iter().copied().collect();
        known.sort_unstable();
        w.u64(known.len() as u64);
        for fp in known {
            w.u64(fp);
        }
        w.finish()
    }

    /// Restore the state of a checkpoint; `Ok(false)` for the initial one.
    fn decode_state(&mut self, state: &[u8]) -> Result<bool, sluice_sdk::BadState> {
        use sluice_sdk::BadState;
        let mut r = StateReader::new(state);
        if r.u64()? != STATE_VERSION {
            return Err(BadState);
        }
        if r.bool()? {
            return Ok(false);
        }
        self.ordinal = r.u64()?;
        let line = r.u64()?;
        self.phase = match r.u64()? {
            0 => Phase::Prolog,
            1 => Phase::InRoot,
            2 => Phase::Epilog,
            _ => return Err(BadState),
        };
        let n = r.u64()?;
        if n > self.lim.depth as u64 || line == 0 {
            return Err(BadState);
        }
        for _ in 0..n {
            let qname = r.str()?.to_owned();
            let offset = r.u64()?;
            let line = r.u64()?;
            let on_path = r.bool()?;
            let nd = r.u64()?;
            if nd > self.lim.attributes as u64 {
                return Err(BadState);
            }
            let mut decls = Vec::new();
            for _ in 0..nd {
                decls.push((r.str()?.to_owned(), r.str()?.to_owned()));
            }
            self.open_bytes +=
                qname.len() + decls.iter().map(|(p, u)| p.len() + u.len()).sum::<usize>();
            self.stack.push(Open {
                qname,
                offset,
                line,
                decls,
                on_path,
                ..Open::default()
            });
        }
        let nk = r.u64()?;
        if nk > self.lim.layouts as u64 {
            return Err(BadState);
        }
        for _ in 0..nk {
            self.layouts.known.insert(r.u64()?);
        }
        if !r.is_empty() {
            return Err(BadState);
        }
        let src = self.fresh.as_mut().ok_or(BadState)?;
        src.breaks = line - 1;
        src.prev_cr = false;
        self.matched = true;
        Ok(true)
    }
}

/// `bytes` as text with each invalid byte replaced by `_`: unlike U+FFFD
/// this keeps every byte offset, so positions found in it are input
/// positions (and `_` keeps a damaged name a name).
fn same_length_lossy(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                out.extend(std::iter::repeat_n('_', n));
                rest = &bad[n..];
            }
        }
    }
}

fn level(depth: usize) -> u16 {
    u16::try_from(depth).unwrap_or(u16::MAX)
}

fn prefix_decl(p: &str) -> PrefixDeclaration<'_> {
    if p.is_empty() {
        PrefixDeclaration::Default
    } else {
        PrefixDeclaration::Named(p)
    }
}

const NAMING: &str = "Field names: attribute a of the record element -> @a; its non-whitespace direct text -> #text; text of child c -> c; nested d in c -> c/d; attribute a of c -> c/@a; repeated siblings -> c, c[2], c[3]; text = text and CDATA concatenated, entities decoded, line ends as LF; names in no namespace or the record's namespace by local name, the xml namespace as xml:local, others as {uri}local. Layout kind = record element local name; fields sorted (digit runs numerically), one layout per field-name set.";

impl Adapter for XmlAdapter {
    fn describe() -> AdapterInfo {
        let lim = DEFAULTS;
        AdapterInfo {
            name: "xml".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "Streaming XML 1.0 (UTF-8, no DTD): one record per selected element. {NAMING}"
            ),
            formats: vec!["xml".into()],
            extensions: vec!["xml".into()],
            media_types: vec!["application/xml".into(), "text/xml".into()],
            options: vec![
                OptionInfo::new(
                    "record",
                    None,
                    &format!(
                        "Which elements are records: unset = every child element of the root; `book` = every outermost element with local name book (`{{uri}}book` or `{{}}book` to pin the namespace); `/catalog/book` = the elements at that path from the root. Records do not nest. {NAMING}"
                    ),
                ),
                OptionInfo::new(
                    "key",
                    None,
                    "Field whose value becomes the record's natural key, e.g. `@id` or `isbn` (records without that field have no key)",
                ),
                OptionInfo::new(
                    "max-depth",
                    Some(&lim.depth.to_string()),
                    "Deepest element nesting accepted (root = 1); deeper is fatal `limit-exceeded`, as skipping arbitrary depth would need unbounded state. Bounds memory and work per element",
                ),
                OptionInfo::new(
                    "max-attributes",
                    Some(&lim.attributes.to_string()),
                    "Most attributes on one element (more: `limit-exceeded` record error, fatal outside records); also the most namespace declarations in scope at once (more: fatal). Stops attribute floods (duplicate checks and namespace lookups cost per attribute)",
                ),
                OptionInfo::new(
                    "max-name-bytes",
                    Some(&lim.name.to_string()),
                    "Longest element or attribute name and longest field name (path), in bytes; longer: `limit-exceeded` record error (fatal outside records). Names are kept per open element and repeated in field paths",
                ),
                OptionInfo::new(
                    "max-field-bytes",
                    Some(&lim.field.to_string()),
                    "Longest field value in bytes (after decoding); longer: `field-too-long` record error",
                ),
                OptionInfo::new(
                    "max-record-bytes",
                    Some(&lim.record.to_string()),
                    "Longest record element in input bytes (longer: `record-too-long` record error, skipped without buffering); also the largest single tag, text run, comment or other construct buffered anywhere (a larger tag, or anything that large outside a record, is fatal `limit-exceeded`) and the total size of open element names and namespace URIs. Bounds memory",
                ),
                OptionInfo::new(
                    "max-fields",
                    Some(&lim.fields.to_string()),
                    "Most fields in one record; more: `too-many-fields` record error. Bounds per-record memory and layout size",
                ),
                OptionInfo::new(
                    "max-layouts",
                    Some(&lim.layouts.to_string()),
                    "Most distinct layouts (kind + field-name set) per document; a record needing one more is a `limit-exceeded` record error. Bounds the layout cache (which also drops entries beyond 32 MiB of names and redeclares them when needed)",
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
        let get = |name: &str, default: usize, min: usize, max: usize| {
            options.bounded(name, default, min..=max)
        };
        let lim = Limits {
            depth: get("max-depth", DEFAULTS.depth, 1, 65_000)?,
            attributes: get("max-attributes", DEFAULTS.attributes, 1, 1 << 20)?,
            name: get("max-name-bytes", DEFAULTS.name, 1, 1 << 30)?,
            field: get("max-field-bytes", DEFAULTS.field, 1, 1 << 30)?,
            record: get("max-record-bytes", DEFAULTS.record, 64, 1 << 30)?,
            fields: get("max-fields", DEFAULTS.fields, 1, 1 << 24)?,
            layouts: get("max-layouts", DEFAULTS.layouts, 1, 1 << 20)?,
        };
        let select = Select::parse(options.get("record"))?;
        let key = match options.get("key") {
            Some("") => return Err(ConfigError::option("key", "give a field name such as @id")),
            k => k.map(str::to_owned),
        };
        let mut me = XmlAdapter {
            reader: None,
            fresh: Some(Src::new(input)),
            lim,
            select,
            key,
            buf: Vec::new(),
            stack: Vec::new(),
            open_bytes: 0,
            phase: Phase::Prolog,
            doc_start: 0,
            ordinal: 0,
            rec: None,
            layouts: Layouts::default(),
            finished: false,
            matched: false,
            ev: EvPos::default(),
            scratch: String::new(),
        };
        if let Some(cp) = resume {
            let resumed = me
                .decode_state(&cp.state)
                .map_err(|e| ConfigError::other(format!("cannot resume: {e}")))?;
            if resumed {
                let src = me.fresh.take().expect("held until the first next");
                me.reader = Some(me.make_reader(src));
            }
        }
        Ok(me)
    }

    fn next(&mut self) -> Item {
        if self.finished {
            return Item::End;
        }
        if self.fresh.is_some()
            && let Err(p) = self.start()
        {
            return self.fatal(p);
        }
        loop {
            if let Some(item) = self.step() {
                return item;
            }
        }
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        let state = self.encode_state();
        (state.len() <= MAX_STATE_BYTES).then(|| Checkpoint {
            offset: self.src().offset,
            state,
        })
    }
}

export_adapter!(XmlAdapter);

#[cfg(test)]
mod tests;

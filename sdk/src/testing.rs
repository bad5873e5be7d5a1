//! Run an adapter natively, in an ordinary `cargo test`.
//!
//! [`Harness::run`] parses a byte slice the way the host would, handing the
//! input out in chunks. [`Harness::check`] goes further and is what an
//! adapter's tests should call: it parses with many chunk sizes (1 byte, odd
//! sizes, the whole input) and requires identical items, checks the rules the
//! host enforces on every item, and, for a resumable adapter, resumes from
//! checkpoints and requires the same items again. Any difference panics with
//! the first item that differs.
//!
//! ```
//! use sluice_sdk::testing::Harness;
//! # use sluice_sdk::*;
//! # struct Nothing;
//! # impl Adapter for Nothing {
//! #     fn describe() -> AdapterInfo { AdapterInfo::default() }
//! #     fn open(_: Input, _: &Options, _: Option<Checkpoint>) -> Result<Self, ConfigError> { Ok(Nothing) }
//! #     fn next(&mut self) -> Item { Item::End }
//! # }
//! let out = Harness::<Nothing>::new().check(b"");
//! assert!(out.records().next().is_none());
//! ```

use std::fmt::Write as _;
use std::marker::PhantomData;

use crate::{
    Adapter, Checkpoint, ConfigError, Input, Item, Level, Options, Record, RecordError, Value,
};

/// Chunk plans [`Harness::check`] parses with; each cycles through its sizes.
/// `usize::MAX` hands out the whole input at once.
pub const CHUNK_PLANS: &[&[usize]] = &[
    &[usize::MAX],
    &[1],
    &[2],
    &[3, 1, 4, 1, 5, 9, 2, 6],
    &[7],
    &[64],
    &[4096],
];

/// The most checkpoints [`Harness::check`] resumes from per input; they are
/// spread evenly over the parse.
pub const MAX_RESUMES: usize = 64;

/// What one parse produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Every item, in order, ending with [`Item::End`] or [`Item::Fatal`].
    pub items: Vec<Item>,
    /// `checkpoints[i]` was taken right after `items[i]`.
    pub checkpoints: Vec<Option<Checkpoint>>,
    /// Checkpoint taken before the first item.
    pub initial_checkpoint: Option<Checkpoint>,
    /// Log lines the adapter wrote.
    pub logs: Vec<(Level, String)>,
}

impl Output {
    /// The records.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.items.iter().filter_map(|i| match i {
            Item::Record(r) => Some(r),
            _ => None,
        })
    }

    /// The record errors (not the fatal one).
    pub fn errors(&self) -> impl Iterator<Item = &RecordError> {
        self.items.iter().filter_map(|i| match i {
            Item::Error(e) => Some(e),
            _ => None,
        })
    }

    /// The fatal error that ended the parse, if one did.
    pub fn fatal(&self) -> Option<&RecordError> {
        self.items.iter().find_map(|i| match i {
            Item::Fatal(e) => Some(e),
            _ => None,
        })
    }

    /// Each record's text values, for compact assertions: `Null` becomes
    /// `None`, other non-text values their display form.
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        self.records()
            .map(|r| r.fields().map(|(_, v)| value_text(v)).collect())
            .collect()
    }

    /// The items as JSON lines (the same shape as `sluice plugin test`).
    pub fn to_json_lines(&self) -> String {
        let mut s = String::new();
        for item in &self.items {
            s.push_str(&item_json(item));
            s.push('\n');
        }
        s
    }
}

fn value_text(v: Value<'_>) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Text(t) => Some(t.to_owned()),
        Value::Bytes(b) => Some(format!("{b:?}")),
    }
}

/// One item as a JSON object.
pub fn item_json(item: &Item) -> String {
    let mut s = String::new();
    match item {
        Item::Record(r) => {
            s.push_str("{\"type\":\"record\"");
            if let Some(k) = r.kind() {
                s.push_str(",\"kind\":");
                json_str(&mut s, k);
            }
            if let Some(k) = r.key() {
                s.push_str(",\"key\":");
                json_str(&mut s, k);
            }
            s.push_str(",\"fields\":{");
            for (i, (name, v)) in r.fields().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_str(&mut s, name);
                s.push(':');
                match v {
                    Value::Null => s.push_str("null"),
                    Value::Bool(b) => s.push_str(if b { "true" } else { "false" }),
                    Value::Int(i) => {
                        let _ = write!(s, "{i}");
                    }
                    Value::Float(x) if x.is_finite() => {
                        let _ = write!(s, "{x:?}");
                    }
                    Value::Float(x) => json_str(&mut s, &x.to_string()),
                    Value::Text(t) => json_str(&mut s, t),
                    Value::Bytes(b) => {
                        s.push('[');
                        for (i, byte) in b.iter().enumerate() {
                            if i > 0 {
                                s.push(',');
                            }
                            let _ = write!(s, "{byte}");
                        }
                        s.push(']');
                    }
                }
            }
            s.push('}');
            location_json(&mut s, r.location());
        }
        Item::Error(e) | Item::Fatal(e) => {
            s.push_str(if matches!(item, Item::Error(_)) {
                "{\"type\":\"error\""
            } else {
                "{\"type\":\"fatal\""
            });
            s.push_str(",\"code\":");
            json_str(&mut s, &e.code);
            s.push_str(",\"message\":");
            json_str(&mut s, &e.message);
            if let Some(f) = &e.field {
                s.push_str(",\"field\":");
                json_str(&mut s, f);
            }
            location_json(&mut s, e.location);
        }
        Item::End => s.push_str("{\"type\":\"end\""),
    }
    s.push('}');
    s
}

fn location_json(s: &mut String, l: crate::Location) {
    let _ = write!(
        s,
        ",\"ordinal\":{},\"line\":{},\"offset\":{},\"length\":{}",
        l.ordinal, l.line, l.offset, l.length
    );
}

fn json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Runs adapter `A` natively. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Harness<A> {
    options: Vec<(String, String)>,
    _adapter: PhantomData<fn() -> A>,
}

impl<A: Adapter> Default for Harness<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Adapter> Harness<A> {
    /// A harness with no options.
    pub fn new() -> Self {
        Harness {
            options: Vec::new(),
            _adapter: PhantomData,
        }
    }

    /// Add an option, as `--option name=value` would.
    pub fn option(mut self, name: &str, value: &str) -> Self {
        self.options.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Open a parser on `input`, the way the host does.
    pub fn open(&self, input: Input, resume: Option<Checkpoint>) -> Result<A, ConfigError> {
        let options = Options::new(self.options.clone(), &A::describe().options)?;
        A::open(input, &options, resume)
    }

    /// Parse `input` in 4 KiB chunks.
    pub fn run(&self, input: &[u8]) -> Result<Output, ConfigError> {
        self.run_with_chunks(input, &[4096])
    }

    /// Parse `input` with chunk sizes cycling through `plan`.
    pub fn run_with_chunks(&self, input: &[u8], plan: &[usize]) -> Result<Output, ConfigError> {
        let parser = self.open(Input::from_bytes_with_plan(input, plan, 0), None)?;
        let _ = crate::log::imp::take();
        Ok(drain(parser, input.len()))
    }

    /// Parse `input` every way [`CHUNK_PLANS`] lists and resume from up to
    /// [`MAX_RESUMES`] checkpoints; panic unless all agree and every item
    /// keeps the host's rules. Returns the output of the whole-input parse.
    ///
    /// # Panics
    /// On any difference or broken rule, and if the options are refused.
    pub fn check(&self, input: &[u8]) -> Output {
        let reference = self
            .run_with_chunks(input, CHUNK_PLANS[0])
            .unwrap_or_else(|e| panic!("options refused: {e}"));
        if let Err(e) = check_rules(&reference.items, 1, 0, input.len() as u64) {
            panic!("{e}\nitems:\n{}", reference.to_json_lines());
        }
        for plan in &CHUNK_PLANS[1..] {
            let out = self
                .run_with_chunks(input, plan)
                .expect("options accepted once");
            if let Some(diff) = first_difference(&reference.items, &out.items) {
                panic!("chunk plan {plan:?} changes the output: {diff}");
            }
        }
        if A::describe().resumable {
            self.check_resumes(input, &reference);
        }
        reference
    }

    fn check_resumes(&self, input: &[u8], reference: &Output) {
        let n = reference.items.len();
        let step = n.div_ceil(MAX_RESUMES).max(1);
        let mut starts: Vec<(usize, &Option<Checkpoint>)> =
            vec![(0, &reference.initial_checkpoint)];
        starts.extend(
            (0..n)
                .step_by(step)
                .map(|i| (i + 1, &reference.checkpoints[i])),
        );
        for (done, cp) in starts {
            if done >= n {
                continue;
            }
            let Some(cp) = cp else {
                panic!("a resumable adapter returned no checkpoint after item {done}");
            };
            let offset = usize::try_from(cp.offset).expect("offset fits");
            assert!(
                offset <= input.len(),
                "checkpoint after item {done} points past the input ({offset} > {})",
                input.len()
            );
            for plan in [CHUNK_PLANS[0], CHUNK_PLANS[3]] {
                let parser = self
                    .open(
                        Input::from_bytes_with_plan(&input[offset..], plan, cp.offset),
                        Some(cp.clone()),
                    )
                    .unwrap_or_else(|e| panic!("resume after item {done} refused: {e}"));
                let out = drain(parser, input.len());
                if let Some(diff) = first_difference(&reference.items[done..], &out.items) {
                    panic!(
                        "resuming after item {done} (offset {offset}) changes the output: {diff}"
                    );
                }
            }
        }
    }
}

/// Pull items until the end, with a cap so an adapter that never ends fails
/// the test instead of hanging it.
fn drain<A: Adapter>(mut parser: A, input_len: usize) -> Output {
    let mut out = Output {
        initial_checkpoint: parser.checkpoint(),
        ..Output::default()
    };
    let cap = input_len + 2;
    loop {
        let item = parser.next();
        let last = matches!(item, Item::End | Item::Fatal(_));
        out.items.push(item);
        out.checkpoints.push(parser.checkpoint());
        if last {
            break;
        }
        assert!(
            out.items.len() <= cap,
            "adapter yielded more items than the input has bytes ({input_len}): it never ends"
        );
    }
    out.logs = crate::log::imp::take();
    out
}

/// Check the rules the host enforces on a parse's items: ordinals from
/// `first_ordinal` without gaps; items in order, non-overlapping, at least
/// one byte long (a fatal error at the end may be empty), inside the input;
/// one value per layout field; nothing after the end.
pub fn check_rules(
    items: &[Item],
    first_ordinal: u64,
    start_offset: u64,
    input_len: u64,
) -> Result<(), String> {
    let mut ordinal = first_ordinal;
    let mut pos = start_offset;
    for (i, item) in items.iter().enumerate() {
        let (loc, is_fatal) = match item {
            Item::Record(r) => {
                if r.len() != r.layout().fields().len() {
                    return Err(format!(
                        "item {i}: record has {} values for {} fields",
                        r.len(),
                        r.layout().fields().len()
                    ));
                }
                (r.location(), false)
            }
            Item::Error(e) => (e.location, false),
            Item::Fatal(e) => (e.location, true),
            Item::End => {
                if i + 1 != items.len() {
                    return Err(format!("item {i}: items after the end"));
                }
                continue;
            }
        };
        if loc.ordinal != ordinal {
            return Err(format!(
                "item {i}: ordinal {} where {ordinal} was due",
                loc.ordinal
            ));
        }
        if loc.offset < pos {
            return Err(format!(
                "item {i}: starts at byte {} inside the previous item (which ends at {pos})",
                loc.offset
            ));
        }
        if loc.length == 0 && !(is_fatal && loc.offset == input_len) {
            return Err(format!("item {i}: spans no input byte"));
        }
        if loc.end() > input_len {
            return Err(format!(
                "item {i}: ends at byte {} past the input ({input_len} bytes)",
                loc.end()
            ));
        }
        if is_fatal && i + 1 != items.len() {
            return Err(format!("item {i}: items after a fatal error"));
        }
        pos = loc.end();
        ordinal += 1;
    }
    Ok(())
}

fn first_difference(expected: &[Item], got: &[Item]) -> Option<String> {
    for (i, (a, b)) in expected.iter().zip(got).enumerate() {
        if a != b {
            return Some(format!(
                "item {i}:\n  expected {}\n  got      {}",
                item_json(a),
                item_json(b)
            ));
        }
    }
    (expected.len() != got.len())
        .then(|| format!("{} items expected, {} produced", expected.len(), got.len()))
}

//! One parse: a plugin instance in its own store, driven item by item, with
//! everything it returns checked before the host believes it.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Instance, ResourceAny, TypedFunc};

use super::batch::{Batch, WitBatch, check_shape};
use super::bindings::exports::sluice::adapter::parse as wit;
use super::bindings::sluice::adapter::types as wt;
use super::bindings::{Adapter, AdapterPre};
use super::fault::{ConfigError, FaultKind, ParseError, PluginFault};
use super::host::{HostState, Tripped};
use super::limits::Limits;
use super::{AdapterInfo, Digest, OptionInfo, Plugin, Sandbox};
use crate::record::{Item, Layout, Location, Record, RecordError, Slot, Span};

/// Most records one `next-batch` call is asked for, whatever the caller
/// allows.
const MAX_BATCH_RECORDS: u32 = 1024;

/// Longest error code accepted from a plugin.
const MAX_CODE_BYTES: usize = 64;
/// Longest field name kept in a record error.
const MAX_ERROR_FIELD_BYTES: usize = 1024;
/// Longest kind accepted on a layout.
const MAX_KIND_BYTES: usize = 1024;

/// A place a parse can resume from, as the host stores it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Input offset the resumed parser is fed from.
    pub offset: u64,
    /// The plugin's own state, opaque.
    pub state: Vec<u8>,
    /// Ordinal of the last item before the checkpoint (0 at the start).
    pub ordinal: u64,
    /// End offset of that item: the resumed items start at or after it.
    pub pos: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Ended,
    Failed,
}

/// A parse in progress. Call [`Parse::next`] until it yields
/// [`Item::End`] or [`Item::Fatal`]; a plugin failure ends it with
/// [`ParseError::Fault`].
pub struct Parse {
    store: Store<HostState>,
    guest: Adapter,
    /// `next-batch`, when the plugin exports it (0.2.1 and later).
    next_batch: Option<NextBatch>,
    /// The call whose results are being checked, for fault reports.
    calling: &'static str,
    /// Most records asked of `next-batch` next: grows while calls are
    /// quick, shrinks when one is slow (see [`Parse::next_batch`]).
    batch_cap: u32,
    parser: ResourceAny,
    plugin: Arc<Plugin>,
    limits: Limits,
    layouts: Vec<Arc<Layout>>,
    layout_bytes: usize,
    next_ordinal: u64,
    pos: u64,
    start: u64,
    status: Status,
}

impl std::fmt::Debug for Parse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parse")
            .field("plugin", &self.plugin)
            .field("next_ordinal", &self.next_ordinal)
            .field("pos", &self.pos)
            .finish()
    }
}

impl From<wt::Location> for Location {
    fn from(l: wt::Location) -> Self {
        Location {
            offset: l.offset,
            length: l.length,
            line: l.line,
            ordinal: l.ordinal,
        }
    }
}

/// `parser.next-batch(max-records, max-bytes)`.
type NextBatch = TypedFunc<(ResourceAny, u32, u32), (WitBatch,)>;

/// Instantiate a plugin in `store`: its bindings, and `next-batch` when
/// `batch` (found at load) names it.
fn instantiate(
    store: &mut Store<HostState>,
    pre: &AdapterPre<HostState>,
    batch: Option<&ComponentExportIndex>,
) -> wasmtime::Result<(Adapter, Option<NextBatch>)> {
    let instance: Instance = pre.instance_pre().instantiate(&mut *store)?;
    let guest = Adapter::new(&mut *store, &instance)?;
    let next_batch = batch
        .map(|i| instance.get_typed_func::<(ResourceAny, u32, u32), (WitBatch,)>(&mut *store, i))
        .transpose()?;
    Ok((guest, next_batch))
}

/// What is known about a plugin when a call fails.
pub(super) struct Who<'a> {
    name: &'a str,
    version: &'a str,
    digest: Digest,
}

impl<'a> Who<'a> {
    pub(super) fn of(plugin: &'a Plugin) -> Self {
        Who {
            name: &plugin.info.name,
            version: &plugin.info.version,
            digest: plugin.digest,
        }
    }

    /// A fault of this plugin in `call`, at item `ordinal` and input `offset`.
    pub(super) fn fault(
        &self,
        kind: FaultKind,
        call: &str,
        (ordinal, offset): (u64, u64),
        detail: String,
        panic_message: Option<String>,
    ) -> PluginFault {
        PluginFault {
            kind,
            plugin: self.name.to_owned(),
            version: self.version.to_owned(),
            digest: self.digest.hex(),
            call: call.to_owned(),
            ordinal,
            offset,
            detail,
            panic_message,
        }
    }
}

impl Parse {
    pub(super) fn open(
        sandbox: &Sandbox,
        plugin: Arc<Plugin>,
        input: Box<dyn Read + Send>,
        options: &[(String, String)],
        resume: Option<&Checkpoint>,
        limits: Limits,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self, ParseError> {
        let start = resume.map_or(0, |c| c.offset);
        let state = HostState::new(&plugin.info.name, &limits, input, start, cancel);
        let mut store = sandbox.new_store(state);
        let who = Who::of(&plugin);
        let (next_ordinal, pos) = resume.map_or((1, 0), |c| (c.ordinal + 1, c.pos));

        begin_call(&mut store);
        let (guest, next_batch) = instantiate(&mut store, &plugin.pre, plugin.batch.as_ref())
            .map_err(|e| {
                classify(
                    &mut store,
                    &who,
                    &limits,
                    "instantiate",
                    next_ordinal,
                    pos,
                    e,
                )
            })?;
        let wit_resume = resume.map(|c| wt::Checkpoint {
            offset: c.offset,
            state: c.state.clone(),
        });
        begin_call(&mut store);
        let opened = guest
            .sluice_adapter_parse()
            .parser()
            .call_open(&mut store, options, wit_resume.as_ref())
            .map_err(|e| classify(&mut store, &who, &limits, "open", next_ordinal, pos, e))?;
        let parser = opened.map_err(|e| ConfigError {
            plugin: plugin.info.name.clone(),
            option: e.option_name,
            message: e.message,
        })?;
        Ok(Parse {
            store,
            guest,
            next_batch,
            calling: "next",
            batch_cap: 1,
            parser,
            plugin,
            limits,
            layouts: Vec::new(),
            layout_bytes: 0,
            next_ordinal,
            pos,
            start,
            status: Status::Running,
        })
    }

    /// The plugin this parse runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Ordinal of the last item returned (0 before the first).
    pub fn items_done(&self) -> u64 {
        self.next_ordinal - 1
    }

    /// End offset of the last item returned.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Input bytes handed to the plugin so far (absolute offset).
    pub fn bytes_read(&self) -> u64 {
        self.store.data().fed_to
    }

    /// Log lines dropped because the plugin logged past its bound.
    pub fn log_lines_dropped(&self) -> u64 {
        self.store.data().log.dropped
    }

    /// The next item. (Not an `Iterator`: a parse ends with an error as
    /// often as with an end, and must not be resumed after either.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Item, ParseError> {
        if self.status != Status::Running {
            return Err(ParseError::Finished);
        }
        loop {
            let parser = self.parser;
            let raw = self.call("next", |g, s| {
                g.sluice_adapter_parse().parser().call_next(s, parser)
            })?;
            if let Some(item) = self.take(raw)? {
                return Ok(item);
            }
        }
    }

    /// Whether the plugin returns many items per call (`next-batch`,
    /// interface 0.2.1); [`Parse::next_batch`] works either way.
    pub fn batched(&self) -> bool {
        self.next_batch.is_some()
    }

    /// The next items: at most `max_records` records, and no record after
    /// those that bring the batch to `max_bytes` (counted as
    /// [`crate::record::Record::size_bytes`] does). A batch stops at any
    /// item that is not a record, so a checkpoint taken after it is right
    /// after its last item. It may decode to no item at all when the plugin
    /// only declared a layout. Plugins without `next-batch` are called item
    /// by item.
    ///
    /// A batch call has the same time budget as a `next` call, so the host
    /// asks for fewer records than allowed while records are slow: one at
    /// first, twice as many after each call that took under 1/64 of the CPU
    /// budget, a quarter after one that took over 1/8 of it. A plugin whose
    /// records cost a steady time per record never gets a batch that takes
    /// more than about 1/32 of its budget.
    pub fn next_batch(&mut self, max_records: u32, max_bytes: u32) -> Result<Batch, ParseError> {
        if self.status != Status::Running {
            return Err(ParseError::Finished);
        }
        let max_bytes = max_bytes.max(1);
        let max_records = max_records.max(1);
        let mut batch = Batch::new(self.plugin.clone(), self.limits.max_record_bytes);
        let Some(func) = self.next_batch else {
            let mut records = 0;
            while self.status == Status::Running
                && records < max_records
                && batch.size_bytes() < u64::from(max_bytes)
            {
                let item = self.next()?;
                let record = matches!(item, Item::Record(_));
                batch.push(item);
                if !record {
                    break;
                }
                records += 1;
            }
            return Ok(batch);
        };
        let max_records = max_records.min(self.batch_cap);
        let parser = self.parser;
        let started = std::time::Instant::now();
        let (raw,) = self.call("next-batch", |_, s| {
            func.call(s, (parser, max_records, max_bytes))
        })?;
        let took = started.elapsed();
        let budget = self.limits.cpu_per_call.min(self.limits.wall_per_call);
        if took * 8 > budget {
            self.batch_cap = (self.batch_cap / 4).max(1);
        } else if took * 64 < budget && max_records == self.batch_cap {
            self.batch_cap = self.batch_cap.saturating_mul(2).min(MAX_BATCH_RECORDS);
        }
        let WitBatch {
            records,
            values,
            data,
            then,
        } = raw;
        if records.is_empty() && then.is_none() {
            return Err(self.invalid("it returned an empty batch".into()));
        }
        let layouts = &self.layouts;
        let fields = |i: u32| layouts.get(i as usize).map(|l| l.fields.len());
        let then_is_record = then.as_ref().map(|t| matches!(t, wit::Item::Record(_)));
        let shape = check_shape(
            &records,
            values.len(),
            data.len(),
            fields,
            (max_records, max_bytes),
            then_is_record,
        );
        let bytes = shape.map_err(|detail| self.invalid(detail))?;
        for r in &records {
            self.locate(r.location, false)?;
        }
        // One handle per record (checked above), not the whole list: a
        // batch costs the host its records, whatever was declared before.
        let layouts = records
            .iter()
            .map(|r| self.layouts[r.layout as usize].clone())
            .collect();
        batch.set_records((records, values, data), layouts, bytes);
        if let Some(raw) = then
            && let Some(item) = self.take(raw)?
        {
            batch.push(item);
        }
        Ok(batch)
    }

    /// Check one item of the WIT and turn it into the host's; `None` for a
    /// layout, which is only declared.
    fn take(&mut self, raw: wit::Item) -> Result<Option<Item>, ParseError> {
        Ok(Some(match raw {
            wit::Item::Layout(l) => {
                self.declare(l)?;
                return Ok(None);
            }
            wit::Item::Record(r) => self.record(r)?,
            wit::Item::Error(e) => Item::Error(self.record_error(e, false)?),
            wit::Item::Fatal(e) => {
                let e = self.record_error(e, true)?;
                self.status = Status::Ended;
                Item::Fatal(e)
            }
            wit::Item::End => {
                self.status = Status::Ended;
                Item::End
            }
        }))
    }

    /// A checkpoint right after the last item returned, or `None` if the
    /// plugin cannot resume.
    pub fn checkpoint(&mut self) -> Result<Option<Checkpoint>, ParseError> {
        if !self.plugin.info.resumable || self.status == Status::Failed {
            return Ok(None);
        }
        let parser = self.parser;
        let Some(cp) = self.call("checkpoint", |g, s| {
            g.sluice_adapter_parse().parser().call_checkpoint(s, parser)
        })?
        else {
            return Ok(None);
        };
        if cp.state.len() > self.limits.max_checkpoint_bytes {
            return Err(self.invalid(format!(
                "checkpoint state of {} bytes exceeds the limit of {} bytes",
                cp.state.len(),
                self.limits.max_checkpoint_bytes
            )));
        }
        let fed = self.bytes_read();
        if cp.offset < self.start || cp.offset > fed {
            return Err(self.invalid(format!(
                "checkpoint offset {} lies outside the input read so far ({}..={fed})",
                cp.offset, self.start
            )));
        }
        Ok(Some(Checkpoint {
            offset: cp.offset,
            state: cp.state,
            ordinal: self.items_done(),
            pos: self.pos,
        }))
    }

    /// Run one call into the plugin under fresh budgets; a failure ends the
    /// parse.
    fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&Adapter, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, ParseError> {
        self.calling = name;
        begin_call(&mut self.store);
        match f(&self.guest, &mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.status = Status::Failed;
                let who = Who::of(&self.plugin);
                Err(classify(
                    &mut self.store,
                    &who,
                    &self.limits,
                    name,
                    self.next_ordinal,
                    self.pos,
                    e,
                ))
            }
        }
    }

    /// End the parse with an invalid-output fault of the last call made.
    fn invalid(&mut self, detail: String) -> ParseError {
        self.status = Status::Failed;
        ParseError::from(Who::of(&self.plugin).fault(
            FaultKind::InvalidOutput,
            self.calling,
            (self.next_ordinal, self.pos),
            detail,
            None,
        ))
    }

    fn declare(&mut self, l: wt::Layout) -> Result<(), ParseError> {
        if self.layouts.len() >= self.limits.max_layouts {
            return Err(self.invalid(format!(
                "more than {} layouts declared",
                self.limits.max_layouts
            )));
        }
        if l.fields.len() > self.limits.max_fields {
            return Err(self.invalid(format!(
                "a layout with {} fields exceeds the limit of {}",
                l.fields.len(),
                self.limits.max_fields
            )));
        }
        if l.kind.as_ref().is_some_and(|k| k.len() > MAX_KIND_BYTES) {
            return Err(self.invalid(format!(
                "a layout kind is longer than {MAX_KIND_BYTES} bytes"
            )));
        }
        let bytes = l.kind.as_ref().map_or(0, String::len)
            + l.fields.iter().map(String::len).sum::<usize>();
        self.layout_bytes += bytes;
        if self.layout_bytes > self.limits.max_layout_bytes {
            return Err(self.invalid(format!(
                "layouts exceed {} bytes of names",
                self.limits.max_layout_bytes
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(l.fields.len());
        if let Some(dup) = l.fields.iter().find(|f| !seen.insert(f.as_str())) {
            return Err(self.invalid(format!("a layout names the field {dup:?} twice")));
        }
        self.layouts.push(Arc::new(Layout::new(l.kind, l.fields)));
        Ok(())
    }

    /// Check a location against the contract and advance past it.
    fn locate(&mut self, l: wt::Location, fatal: bool) -> Result<Location, ParseError> {
        let fed = self.bytes_read();
        let problem = if l.ordinal != self.next_ordinal {
            Some(format!(
                "item has ordinal {} where {} was due",
                l.ordinal, self.next_ordinal
            ))
        } else if l.offset < self.pos {
            Some(format!(
                "item starts at byte {}, inside the previous item (which ends at byte {})",
                l.offset, self.pos
            ))
        } else if l.length == 0 && !fatal {
            Some(format!("item at byte {} spans no input byte", l.offset))
        } else if l.offset.saturating_add(l.length) > fed {
            Some(format!(
                "item at byte {} of length {} ends past the {fed} bytes of input read so far",
                l.offset, l.length
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(self.invalid(p));
        }
        let loc = Location::from(l);
        self.pos = loc.end();
        self.next_ordinal += 1;
        Ok(loc)
    }

    fn record(&mut self, r: wit::Record) -> Result<Item, ParseError> {
        let Some(layout) = self.layouts.get(r.layout as usize).cloned() else {
            return Err(self.invalid(format!(
                "a record uses layout {} but only {} were declared",
                r.layout,
                self.layouts.len()
            )));
        };
        if r.values.len() != 2 * layout.fields.len() {
            return Err(self.invalid(format!(
                "a record has {} value words for a layout of {} fields (two words per value)",
                r.values.len(),
                layout.fields.len()
            )));
        }
        let data = r.data;
        let slots = match decode_values(&r.values) {
            Ok(slots) => slots,
            Err(problem) => return Err(self.invalid(problem)),
        };
        if let Some(problem) = check_spans(&data, &slots, r.key) {
            return Err(self.invalid(problem));
        }
        let key = r.key;
        let location = self.locate(r.location, false)?;
        let record = Record {
            layout,
            slots,
            key,
            data,
            location,
        };
        Ok(within_limit(record, self.limits.max_record_bytes))
    }

    fn record_error(&mut self, e: wt::RecordError, fatal: bool) -> Result<RecordError, ParseError> {
        let code_ok = !e.code.is_empty()
            && e.code.len() <= MAX_CODE_BYTES
            && e.code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !code_ok {
            let shown: String = e.code.chars().take(MAX_CODE_BYTES).collect();
            return Err(self.invalid(
                format!("error code {shown:?} is not a kebab-case identifier of at most {MAX_CODE_BYTES} bytes"),
            ));
        }
        let location = self.locate(e.location, fatal)?;
        Ok(RecordError {
            code: e.code,
            message: truncate(e.message, self.limits.max_message_bytes),
            field: e.field.map(|f| truncate(f, MAX_ERROR_FIELD_BYTES)),
            location,
        })
    }
}

/// The record, or a record error if it is over `max` bytes once parsed:
/// the plugin kept the contract but the record is too big for the host, so
/// it is refused like any bad record and the parse goes on.
pub(super) fn within_limit(record: Record, max: usize) -> Item {
    let size = record.size_bytes();
    if size <= max {
        return Item::Record(record);
    }
    Item::Error(RecordError {
        code: "record-too-large".into(),
        message: format!(
            "the record is {size} bytes once parsed; sluice accepts at most {max} bytes per \
             record (split the record, or raise the limit)"
        ),
        field: None,
        location: record.location,
    })
}

/// Decode a record's values from their (type, payload) word pairs.
pub(super) fn decode_values(words: &[u64]) -> Result<Vec<Slot>, String> {
    // A plain loop into a sized vector: this runs for every record.
    let mut slots = Vec::with_capacity(words.len() / 2);
    for (i, pair) in words.chunks_exact(2).enumerate() {
        slots.push(Slot::from_words(pair[0], pair[1]).map_err(|e| format!("value {} {e}", i + 1))?);
    }
    Ok(slots)
}

/// Check that every span lies in `data` and every text span (and the key)
/// is UTF-8. The whole buffer is validated once when it is all text (the
/// common case), leaving only a boundary check per span.
pub(crate) fn check_spans(data: &[u8], values: &[Slot], key: Option<Span>) -> Option<String> {
    let all_text = std::str::from_utf8(data).ok();
    let check = |s: Span, text: bool| -> Option<String> {
        let end = s.start as usize + s.len as usize;
        if end > data.len() {
            return Some(format!(
                "a value spans bytes {}..{end} of a {}-byte buffer",
                s.start,
                data.len()
            ));
        }
        let utf8 = match all_text {
            Some(t) => t.is_char_boundary(s.start as usize) && t.is_char_boundary(end),
            None => std::str::from_utf8(&data[s.range()]).is_ok(),
        };
        (text && !utf8).then(|| "a text value is not UTF-8".to_owned())
    };
    values
        .iter()
        .find_map(|v| match *v {
            Slot::Text(s) => check(s, true),
            Slot::Bytes(s) => check(s, false),
            _ => None,
        })
        .or_else(|| key.and_then(|k| check(k, true)))
}

/// Cut `s` to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn begin_call(store: &mut Store<HostState>) {
    store.set_epoch_deadline(1);
    store.data_mut().budget.start();
}

/// Turn a failed call into the error that says what happened.
fn classify(
    store: &mut Store<HostState>,
    who: &Who<'_>,
    limits: &Limits,
    call: &str,
    ordinal: u64,
    offset: u64,
    err: wasmtime::Error,
) -> ParseError {
    let st = store.data_mut();
    if let Some(source) = st.input_error.take() {
        return ParseError::Input {
            offset: st.fed_to,
            source,
        };
    }
    let stderr = st.stderr.text();
    let panic_message = panic_message(&stderr);
    let (kind, detail) = match st.budget.tripped {
        Some(Tripped::Cancelled) => return ParseError::Cancelled,
        Some(Tripped::Cpu) => (
            FaultKind::CpuBudget,
            format!(
                "one call used more than {:?} of CPU time",
                limits.cpu_per_call
            ),
        ),
        Some(Tripped::Wall) => (
            FaultKind::Deadline,
            format!("one call took longer than {:?}", limits.wall_per_call),
        ),
        None if st.memory.hit => (
            FaultKind::OutOfMemory,
            format!(
                "it needed more than {} MiB of memory",
                limits.memory_bytes >> 20
            ),
        ),
        None => match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::StackOverflow) => (
                FaultKind::StackOverflow,
                "it recursed too deep and overflowed its stack".to_owned(),
            ),
            Some(trap) if panic_message.is_some() => {
                (FaultKind::Panic, format!("it panicked ({trap})"))
            }
            Some(trap) => (FaultKind::Trap, format!("it trapped: {trap}")),
            None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => (FaultKind::Trap, format!("it called exit({})", exit.0)),
                None => (FaultKind::Trap, format!("{err:#}")),
            },
        },
    };
    ParseError::from(who.fault(kind, call, (ordinal, offset), detail, panic_message))
}

/// The message of a Rust panic from what the guest wrote to stderr:
/// `thread '…' panicked at src/lib.rs:3:5:\nmessage\nnote: …`.
fn panic_message(stderr: &str) -> Option<String> {
    let after = &stderr[stderr.find("panicked at ")? + "panicked at ".len()..];
    let (place, rest) = after.split_once(":\n").unwrap_or((after, ""));
    let message = rest.split("\nnote: ").next().unwrap_or("").trim();
    Some(if message.is_empty() {
        format!("panicked at {}", place.trim())
    } else {
        format!("{message} (at {})", place.trim())
    })
}

/// Call `describe()` in a fresh, empty-input store and check what comes
/// back.
pub(super) fn describe(
    sandbox: &Sandbox,
    pre: &AdapterPre<HostState>,
    batch: Option<&ComponentExportIndex>,
    what: &str,
    digest: Digest,
) -> Result<AdapterInfo, Box<PluginFault>> {
    let limits = sandbox.config().limits.clone();
    let state = HostState::new(what, &limits, Box::new(std::io::empty()), 0, None);
    let mut store = sandbox.new_store(state);
    let who = Who {
        name: what,
        version: "?",
        digest,
    };
    let fault =
        |store: &mut Store<HostState>, call, e| match classify(store, &who, &limits, call, 0, 0, e)
        {
            ParseError::Fault(f) => f,
            other => Box::new(who.fault(FaultKind::Trap, call, (0, 0), other.to_string(), None)),
        };
    begin_call(&mut store);
    // This also checks the type of `next-batch`, before any parse needs it.
    let (guest, _) =
        instantiate(&mut store, pre, batch).map_err(|e| fault(&mut store, "instantiate", e))?;
    begin_call(&mut store);
    let info = guest
        .sluice_adapter_parse()
        .call_describe(&mut store)
        .map_err(|e| fault(&mut store, "describe", e))?;
    let version: String = info.version.chars().take(64).collect();
    let described = Who {
        name: what,
        version: &version,
        digest,
    };
    let invalid = |detail: String| {
        Box::new(described.fault(FaultKind::InvalidOutput, "describe", (0, 0), detail, None))
    };
    let name_ok = !info.name.is_empty()
        && info.name.len() <= 64
        && info
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(invalid(format!(
            "name {:?} is not a lowercase identifier of 1 to 64 characters",
            info.name.chars().take(80).collect::<String>()
        )));
    }
    if info.version.is_empty() || info.version.len() > 64 {
        return Err(invalid("version must be 1 to 64 characters".into()));
    }
    let lists = [&info.formats, &info.extensions, &info.media_types];
    if lists
        .iter()
        .any(|l| l.len() > 256 || l.iter().any(|s| s.len() > 256))
        || info.options.len() > 256
        || info.description.len() > 4096
        || info.options.iter().any(|o| {
            o.name.len() > 256
                || o.description.len() > 4096
                || o.default.as_ref().is_some_and(|d| d.len() > 4096)
        })
    {
        return Err(invalid(
            "its description is larger than the host accepts".into(),
        ));
    }
    Ok(AdapterInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        formats: info
            .formats
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        extensions: info
            .extensions
            .into_iter()
            .map(|s| s.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
        media_types: info.media_types,
        options: info
            .options
            .into_iter()
            .map(|o| OptionInfo {
                name: o.name,
                description: o.description,
                default: o.default,
            })
            .collect(),
        resumable: info.resumable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom at 3\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("boom at 3 (at src/lib.rs:10:5)")
        );
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn value_words_decode_to_slots() {
        use crate::record::tag;
        let [t, n, b, i, f, y] = [
            tag::TEXT,
            tag::NULL,
            tag::BOOLEAN,
            tag::INTEGER,
            tag::FLOAT,
            tag::BYTES,
        ]
        .map(u64::from);
        let words = [
            n,
            0,
            b,
            1,
            i,
            (-7i64) as u64,
            f,
            2.5f64.to_bits(),
            t,
            3 | (4 << 32),
            y,
            2 << 32,
        ];
        assert_eq!(
            decode_values(&words).unwrap(),
            [
                Slot::Null,
                Slot::Boolean(true),
                Slot::Integer(-7),
                Slot::Float(2.5),
                Slot::Text(Span { start: 3, len: 4 }),
                Slot::Bytes(Span { start: 0, len: 2 }),
            ]
        );
    }

    #[test]
    fn bad_value_words_are_named() {
        for (words, needle) in [
            ([9, 0], "value 1 has the unknown type 9"),
            ([1, 2], "type 1 with the invalid payload 2"),
            ([0, 5], "type 0 with the invalid payload 5"),
        ] {
            let err = decode_values(&words).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn spans_must_lie_in_the_data_and_text_must_be_utf8() {
        let text = |start, len| Slot::Text(Span { start, len });
        assert_eq!(check_spans(b"abcd", &[text(1, 3)], None), None);
        let past = check_spans(b"abcd", &[text(2, 3)], None).unwrap();
        assert!(
            past.contains("spans bytes 2..5 of a 4-byte buffer"),
            "{past}"
        );
        // Cutting a two-byte character in half is not text; as bytes it is fine.
        let data = "é".as_bytes();
        assert!(check_spans(data, &[text(0, 1)], None).is_some());
        assert_eq!(
            check_spans(data, &[Slot::Bytes(Span { start: 0, len: 1 })], None),
            None
        );
        assert!(check_spans(data, &[], Some(Span { start: 1, len: 1 })).is_some());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 5), "é...");
        assert_eq!(truncate("short".into(), 10), "short");
    }
}

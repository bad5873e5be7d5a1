//! The component side of an adapter: maps the SDK's types onto the generated
//! WIT bindings. Compiled for WebAssembly only.

use std::cell::RefCell;

use crate::__private::bindings::exports::sluice::adapter::parse::{self as wit, GuestParser};
use crate::__private::bindings::sluice::adapter::{input, types};
use crate::input::ChunkSource;
use crate::{Adapter, Checkpoint, ConfigError, Input, Item, Options, RecordError};

pub use wit::Guest;
pub type WitAdapterInfo = types::AdapterInfo;

/// Reads chunks through the host's `input.read`.
struct HostInput;

impl ChunkSource for HostInput {
    fn next_chunk(&mut self) -> Vec<u8> {
        input::read()
    }
}

/// `describe` for the export macro.
pub fn describe<A: Adapter>() -> types::AdapterInfo {
    let info = A::describe();
    types::AdapterInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        formats: info.formats,
        extensions: info.extensions,
        media_types: info.media_types,
        options: info
            .options
            .into_iter()
            .map(|o| types::OptionInfo {
                name: o.name,
                description: o.description,
                default: o.default,
            })
            .collect(),
        resumable: info.resumable,
    }
}

/// The exported `parser` resource for adapter `A`.
pub struct ParserGlue<A: Adapter> {
    state: RefCell<State<A>>,
}

struct State<A> {
    adapter: A,
    /// Layout ids in declaration order: position = WIT layout index.
    declared: Vec<u64>,
    /// A record whose layout was declared by the last `next`, sent now.
    pending: Option<wit::Record>,
}

impl<A: Adapter> State<A> {
    /// The next WIT item: a layout is declared before the first record that
    /// uses it, which then comes on the following call.
    fn step(&mut self) -> wit::Item {
        if let Some(rec) = self.pending.take() {
            return wit::Item::Record(rec);
        }
        match self.adapter.next() {
            Item::Record(r) => {
                let parts = r.into_parts();
                let id = parts.layout.id();
                let known = self.index_of(id);
                let index = known.unwrap_or(self.declared.len() as u32);
                let rec = wit::Record {
                    layout: index,
                    values: parts.values,
                    key: parts.key,
                    data: parts.data,
                    location: location(parts.location),
                };
                if known.is_some() {
                    wit::Item::Record(rec)
                } else {
                    self.declared.push(id);
                    self.pending = Some(rec);
                    wit::Item::Layout(types::Layout {
                        kind: parts.layout.kind().map(str::to_owned),
                        fields: parts.layout.fields().to_vec(),
                    })
                }
            }
            Item::Error(e) => wit::Item::Error(record_error(e)),
            Item::Fatal(e) => wit::Item::Fatal(record_error(e)),
            Item::End => wit::Item::End,
        }
    }

    /// WIT index of `layout`, or `None` if it still has to be declared.
    fn index_of(&self, id: u64) -> Option<u32> {
        // Most parsers use one layout, declared last: check that first.
        if self.declared.last() == Some(&id) {
            return Some(self.declared.len() as u32 - 1);
        }
        self.declared
            .iter()
            .position(|&d| d == id)
            .map(|i| i as u32)
    }
}

fn config_error(e: ConfigError) -> types::ConfigError {
    types::ConfigError {
        option_name: e.option,
        message: e.message,
    }
}

fn location(l: crate::Location) -> types::Location {
    types::Location {
        offset: l.offset,
        length: l.length,
        line: l.line,
        ordinal: l.ordinal,
    }
}

fn record_error(e: RecordError) -> types::RecordError {
    types::RecordError {
        code: e.code,
        message: e.message,
        field: e.field,
        location: location(e.location),
    }
}

impl<A: Adapter> GuestParser for ParserGlue<A> {
    fn open(
        options: Vec<(String, String)>,
        resume: Option<types::Checkpoint>,
    ) -> Result<wit::Parser, types::ConfigError> {
        let info = A::describe();
        let options = Options::new(options, &info.options).map_err(config_error)?;
        let resume = resume.map(|c| Checkpoint {
            offset: c.offset,
            state: c.state,
        });
        let start = resume.as_ref().map_or(0, |c| c.offset);
        let input = Input::new(Box::new(HostInput), start);
        let adapter = A::open(input, &options, resume).map_err(config_error)?;
        Ok(wit::Parser::new(ParserGlue {
            state: RefCell::new(State {
                adapter,
                declared: Vec::new(),
                pending: None,
            }),
        }))
    }

    fn next(&self) -> wit::Item {
        self.state.borrow_mut().step()
    }

    fn next_batch(&self, max_records: u32, max_bytes: u32) -> wit::Batch {
        let mut st = self.state.borrow_mut();
        let mut batch = wit::Batch {
            records: Vec::new(),
            values: Vec::new(),
            data: Vec::new(),
            then: None,
        };
        let mut size: u64 = 0;
        while batch.records.len() < max_records as usize && size < u64::from(max_bytes) {
            let rec = match st.step() {
                wit::Item::Record(rec) => rec,
                other => {
                    batch.then = Some(other);
                    break;
                }
            };
            size += rec.data.len() as u64 + 8 * rec.values.len() as u64;
            if batch.records.is_empty() {
                // Taken, not copied: a record near the memory cap still fits.
                (batch.values, batch.data) = (rec.values, rec.data);
            } else {
                batch.values.extend_from_slice(&rec.values);
                batch.data.extend_from_slice(&rec.data);
            }
            batch.records.push(wit::BatchRecord {
                layout: rec.layout,
                key: rec.key,
                location: rec.location,
                // The wasm32 memory the data lives in is below 4 GiB.
                data_end: batch.data.len() as u32,
            });
        }
        batch
    }

    fn checkpoint(&self) -> Option<types::Checkpoint> {
        let st = self.state.borrow();
        st.adapter.checkpoint().map(|c| types::Checkpoint {
            offset: c.offset,
            state: c.state,
        })
    }
}

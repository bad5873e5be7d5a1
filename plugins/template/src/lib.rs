// A minimal sluice format adapter: one record per non-empty line, with the
// line's text as its only field, `line`. Copy this crate to start your own.
//
// Build the component with
//     cargo build --target wasm32-wasip2 --release -p sluice-plugin-template
// and try it with
//     sluice plugin test target/wasm32-wasip2/release/sluice_plugin_template.wasm some.txt

use sluice_sdk::{
    Adapter, AdapterInfo, Checkpoint, ConfigError, Input, Item, Layout, Location, OptionInfo,
    Options, Record, RecordError, StateReader, StateWriter, codes, export_adapter,
};

pub struct Lines {
    input: Input,
    layout: Layout,
    /// Lines longer than this many bytes are record errors.
    max_line: usize,
    line: u64,
    ordinal: u64,
}

impl Adapter for Lines {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "lines".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "One record per non-empty line of UTF-8 text".into(),
            formats: vec!["lines".into()],
            extensions: vec!["txt".into()],
            media_types: vec!["text/plain".into()],
            options: vec![OptionInfo::new(
                "max-line-bytes",
                Some("65536"),
                "Longest line accepted, in bytes; longer lines are `record-too-long` errors",
            )],
            resumable: true,
        }
    }

    fn open(
        input: Input,
        options: &Options,
        resume: Option<Checkpoint>,
    ) -> Result<Self, ConfigError> {
        let max_line = options.parse::<usize>("max-line-bytes")?.unwrap_or(65536);
        // A checkpoint carries the line and ordinal counters; the input
        // itself restarts at the checkpoint's offset.
        let (line, ordinal) = match resume {
            Some(cp) => {
                let mut r = StateReader::new(&cp.state);
                let bad = |e| ConfigError::other(format!("cannot resume: {e}"));
                (r.u64().map_err(bad)?, r.u64().map_err(bad)?)
            }
            None => (0, 0),
        };
        Ok(Lines {
            input,
            layout: Layout::new(None, ["line"]),
            max_line,
            line,
            ordinal,
        })
    }

    fn next(&mut self) -> Item {
        loop {
            let offset = self.input.offset();
            let mut text = Vec::new();
            let mut length = 0u64;
            // Read up to and including the newline, chunk by chunk.
            loop {
                let chunk = self.input.fill();
                if chunk.is_empty() {
                    break;
                }
                let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                if text.len() <= self.max_line {
                    text.extend_from_slice(&chunk[..take]);
                }
                self.input.advance(take);
                length += take as u64;
                if done {
                    break;
                }
            }
            if length == 0 {
                return Item::End;
            }
            self.line += 1;
            while matches!(text.last(), Some(b'\n' | b'\r')) {
                text.pop();
            }
            if text.is_empty() {
                continue; // blank lines are not records
            }
            self.ordinal += 1;
            let location = Location {
                offset,
                length,
                line: self.line,
                ordinal: self.ordinal,
            };
            if text.len() > self.max_line {
                return Item::Error(RecordError::new(
                    codes::RECORD_TOO_LONG,
                    format!(
                        "line is longer than max-line-bytes ({} bytes)",
                        self.max_line
                    ),
                    location,
                ));
            }
            return match std::str::from_utf8(&text) {
                Ok(s) => {
                    let mut record = Record::new(&self.layout);
                    record.push_text(s).set_location(location);
                    Item::Record(record)
                }
                Err(e) => Item::Error(RecordError::new(
                    codes::INVALID_UTF8,
                    format!(
                        "line is not UTF-8 (bad byte at column {})",
                        e.valid_up_to() + 1
                    ),
                    location,
                )),
            };
        }
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            offset: self.input.offset(),
            state: StateWriter::new().u64(self.line).u64(self.ordinal).finish(),
        })
    }
}

export_adapter!(Lines);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing::Harness;

    #[test]
    fn one_record_per_line() {
        let out = Harness::<Lines>::new().check(b"alpha\r\n\nbeta\ngamma");
        assert_eq!(
            out.rows(),
            [
                [Some("alpha".to_owned())],
                [Some("beta".to_owned())],
                [Some("gamma".to_owned())]
            ]
        );
        let lines: Vec<u64> = out.records().map(|r| r.location().line).collect();
        assert_eq!(lines, [1, 3, 4]);
    }

    #[test]
    fn bad_lines_are_errors_and_parsing_goes_on() {
        let out = Harness::<Lines>::new()
            .option("max-line-bytes", "4")
            .check(b"ok\ntoo long\n\xff\xfe\nfine\n");
        let codes: Vec<&str> = out.errors().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["record-too-long", "invalid-utf8"]);
        assert_eq!(out.records().count(), 2);
    }
}

//! Helpers shared by the corpus-driven tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::path::PathBuf;

use sluice_plugin_csv::CsvAdapter;
use sluice_sdk::testing::{Harness, Output};
use sluice_sdk::{Item, RecordError, Value};

/// `tests/data/corpora` at the workspace root.
pub fn corpora() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpora")
}

pub fn read(rel: &str) -> Vec<u8> {
    let path = corpora().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The single entry of a `*.zip` fixture, inflated in memory.
pub fn unzip(rel: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(read(rel))).expect("a zip archive");
    assert_eq!(archive.len(), 1, "{rel} should hold one entry");
    let mut entry = archive.by_index(0).expect("entry 0");
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry.read_to_end(&mut bytes).expect("inflate");
    bytes
}

pub fn harness(options: &[(&str, &str)]) -> Harness<CsvAdapter> {
    options
        .iter()
        .fold(Harness::new(), |h, (k, v)| h.option(k, v))
}

/// Each record as `(field name, text)` pairs; `None` for null.
pub fn records(out: &Output) -> Vec<Vec<(String, Option<String>)>> {
    out.records()
        .map(|r| {
            r.fields()
                .map(|(name, v)| {
                    let text = match v {
                        Value::Null => None,
                        Value::Text(t) => Some(t.to_owned()),
                        other => panic!("field {name} is not text: {other:?}"),
                    };
                    (name.to_owned(), text)
                })
                .collect()
        })
        .collect()
}

/// All record errors and the fatal one, in order.
pub fn problems(out: &Output) -> Vec<&RecordError> {
    out.items
        .iter()
        .filter_map(|i| match i {
            Item::Error(e) | Item::Fatal(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// `(code, field, offset, length, line, ordinal)` of a record error.
pub fn summary(e: &RecordError) -> (&str, Option<&str>, u64, u64, u64, u64) {
    let l = e.location;
    (
        e.code.as_str(),
        e.field.as_deref(),
        l.offset,
        l.length,
        l.line,
        l.ordinal,
    )
}

pub fn ends_cleanly(out: &Output) -> bool {
    matches!(out.items.last(), Some(Item::End))
}

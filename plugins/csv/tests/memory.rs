//! Memory stays bounded by the limits, whatever the input: the adapter's
//! allocations while parsing the giant and wide fixtures are measured with a
//! counting allocator. Its own test binary, so no other test allocates at
//! the same time; the cases run one after another in one test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::*;
use sluice_sdk::{Adapter, Input, Item};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Parse `input` in 64 KiB chunks; return the codes of the items and the
/// most memory allocated at once beyond what was in use before the parse
/// (the test's own copy of the input is in use before).
fn parse(input: &[u8], options: &[(&str, &str)]) -> (Vec<String>, usize) {
    let harness = harness(options);
    let mut parser = harness
        .open(Input::from_bytes_with_plan(input, &[64 * 1024], 0), None)
        .unwrap();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut codes = Vec::with_capacity(16);
    loop {
        let item = parser.next();
        let (code, last) = match &item {
            Item::Record(_) => ("record".to_owned(), false),
            Item::Error(e) => (e.code.clone(), false),
            Item::Fatal(e) => (format!("fatal {}", e.code), true),
            Item::End => ("end".to_owned(), true),
        };
        if codes.len() < 16 {
            codes.push(code);
        }
        // Items are dropped at once: only the parser's memory is measured.
        drop(item);
        if last {
            break;
        }
    }
    (codes, PEAK.load(Relaxed) - base)
}

const MIB: usize = 1 << 20;

#[test]
fn memory_is_bounded_by_the_limits() {
    let giant = unzip("handmade-hostile/zip/csv_giant_field_64MiB.zip");
    let (codes, peak) = parse(&giant, &[]);
    assert_eq!(codes, ["field-too-long", "record", "end"]);
    // The field buffer stops growing just past max-field-bytes (1 MiB): it
    // doubles, so up to 2 MiB, plus one 64 KiB input chunk and the scratch.
    assert!(peak < 3 * MIB, "64 MiB field, default limits: {peak} bytes");
    let (_, peak) = parse(&giant, &[("max-field-bytes", "65536")]);
    assert!(
        peak < 512 * 1024,
        "64 MiB field, 64 KiB limit: {peak} bytes"
    );

    let unterminated = unzip("handmade-hostile/zip/csv_unterminated_quote_32MiB.zip");
    let (codes, peak) = parse(&unterminated, &[]);
    assert_eq!(codes, ["unterminated-quote", "end"]);
    assert!(peak < 3 * MIB, "32 MiB open quote: {peak} bytes");

    let long_line = unzip("handmade-hostile/csv/long_line_no_newline_4MiB.csv.zip");
    let (codes, peak) = parse(&long_line, &[]);
    assert_eq!(codes, ["field-too-long", "end"]);
    assert!(peak < 3 * MIB, "4 MiB line: {peak} bytes");

    let wide = unzip("handmade-hostile/csv/wide_header_65536_cols.csv.zip");
    let (codes, peak) = parse(&wide, &[]);
    assert_eq!(codes, ["fatal too-many-fields"]);
    // 4096 field ends (8 bytes each) and the names read so far.
    assert!(peak < MIB / 2, "65536 columns: {peak} bytes");

    // Many small fields: the field-end bookkeeping (8 bytes a field) is
    // bounded by max-columns ...
    let mut tiny = b"a\n".to_vec();
    tiny.extend(std::iter::repeat_n(b"x,".as_slice(), 1 << 20).flatten());
    tiny.push(b'\n');
    let (codes, peak) = parse(&tiny, &[("max-columns", "65536")]);
    assert_eq!(codes, ["too-many-fields", "end"]);
    assert!(peak < MIB, "1 M tiny fields, 65536 columns: {peak} bytes");
    // ... and the record data by max-record-bytes (8 MiB by default).
    let mut wide = b"a\n".to_vec();
    let field = [b'y'; 99];
    for _ in 0..(160 * 1024) {
        wide.extend_from_slice(&field);
        wide.push(b',');
    }
    wide.push(b'\n');
    let (codes, peak) = parse(&wide, &[("max-columns", "1048576")]);
    assert_eq!(codes, ["record-too-long", "end"]);
    assert!(peak < 10 * MIB, "16 MiB record: {peak} bytes");
}

/// 17.9 million records from a 256 MiB CSV: streaming keeps memory flat.
/// Slow in the debug profile, so run it on demand:
/// `cargo test -p sluice-plugin-csv --release --test memory -- --ignored`.
#[test]
#[ignore = "streams 256 MiB; run with --release --ignored"]
fn csv_bomb_256mib_streams_in_flat_memory() {
    let bomb = unzip("handmade-hostile/zip/csv_bomb_256MiB.zip");
    let harness = harness(&[]);
    let mut parser = harness
        .open(Input::from_bytes_with_plan(&bomb, &[64 * 1024], 0), None)
        .unwrap();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut records = 0u64;
    loop {
        match parser.next() {
            Item::Record(_) => records += 1,
            Item::End => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(records, 17_895_680);
    let peak = PEAK.load(Relaxed) - base;
    assert!(peak < MIB, "{peak} bytes");
}

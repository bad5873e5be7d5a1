//! Memory stays bounded whatever the input: peak heap growth while parsing
//! hostile or huge inputs, measured with a counting allocator. One test
//! function, so no other test allocates concurrently in this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use sluice_plugin_xml::XmlAdapter;
use sluice_sdk::testing::Harness;
use sluice_sdk::{Adapter, Input, Item};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

/// Parse `doc` in 64 KiB chunks; the items' codes ("record" for records)
/// and the peak heap growth during the parse, items excluded (each is
/// dropped once looked at, as the host would after storing it).
fn parse(opts: &[(&str, &str)], doc: &[u8]) -> (Vec<String>, usize) {
    let h = opts
        .iter()
        .fold(Harness::<XmlAdapter>::new(), |h, (k, v)| h.option(k, v));
    let input = Input::from_bytes(doc, 64 << 10);
    let mut seen = Vec::new();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut parser = h.open(input, None).expect("options");
    let mut n = 0usize;
    loop {
        let item = parser.next();
        let summary = match &item {
            Item::Record(_) => "record".to_owned(),
            Item::Error(e) | Item::Fatal(e) => e.code.clone(),
            Item::End => "end".to_owned(),
        };
        let last = matches!(item, Item::End | Item::Fatal(_));
        drop(item);
        // Keep the summary short for big documents.
        if summary != "record" || n < 3 {
            seen.push(summary);
        }
        n += 1;
        let _ = parser.checkpoint();
        if last {
            break;
        }
    }
    drop(parser);
    (seen, PEAK.load(Relaxed) - base)
}

fn unzip(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/corpora/handmade-hostile/xml")
        .join(name);
    let bytes = std::fs::read(path).expect("fixture");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let mut out = Vec::new();
    archive
        .by_index(0)
        .expect("entry")
        .take(16 << 20)
        .read_to_end(&mut out)
        .expect("inflate");
    out
}

#[test]
fn memory_stays_bounded() {
    assert!(XmlAdapter::describe().resumable);

    // Many small records: streaming, nothing accumulates.
    let mut doc = String::from("<?xml version=\"1.0\"?>\n<items>\n");
    for i in 0..50_000 {
        doc.push_str(&format!(
            "  <item id=\"{i}\"><name>n{i}</name><tag>a</tag><tag>b</tag><price cur=\"EUR\">{}.5</price></item>\n",
            i % 100
        ));
    }
    doc.push_str("</items>\n");
    let (seen, peak) = parse(&[], doc.as_bytes());
    assert_eq!(seen, ["record", "record", "record", "end"]);
    assert!(
        peak < MIB / 2,
        "{} MiB input: peak {peak} bytes",
        doc.len() / MIB
    );

    // A 64 MiB text field: the record fails, the text is skipped unbuffered.
    let big = "x".repeat(64 * MIB);
    let opts = [("max-record-bytes", "1048576")];
    let doc = format!("<r><a>1</a><a><v>{big}</v></a><a>3</a></r>");
    let (seen, peak) = parse(&opts, doc.as_bytes());
    assert_eq!(seen, ["record", "record-too-long", "record", "end"]);
    assert!(peak < 4 * MIB, "giant text: peak {peak}");

    // The same as a comment and as a CDATA section.
    for inner in [format!("<!--{big}-->"), format!("<![CDATA[{big}]]>")] {
        let doc = format!("<r><a>1</a><a>{inner}</a><a>3</a></r>");
        let (seen, peak) = parse(&opts, doc.as_bytes());
        assert_eq!(seen, ["record", "record-too-long", "record", "end"]);
        assert!(peak < 4 * MIB, "giant construct: peak {peak}");
    }

    // Outside any record: refused at the cap.
    let doc = format!("<r>{big}<a/></r>");
    let (seen, peak) = parse(&opts, doc.as_bytes());
    assert_eq!(seen, ["limit-exceeded"]);
    assert!(peak < 4 * MIB, "giant text outside records: peak {peak}");

    // A record just under the limit is kept, in about its own size.
    let doc = format!("<r><a><v>{}</v></a></r>", "y".repeat(MIB - 64));
    let (seen, peak) = parse(
        &[
            ("max-record-bytes", "1048576"),
            ("max-field-bytes", "1048576"),
        ],
        doc.as_bytes(),
    );
    assert_eq!(seen, ["record", "end"]);
    assert!(peak < 6 * MIB, "1 MiB record: peak {peak}");
    drop(big);

    // Entity bombs and XXE: refused at the DOCTYPE, nothing expanded.
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpora");
    for file in [
        "defusedxml-xmltestdata/quadratic.xml",
        "defusedxml-xmltestdata/xmlbomb.xml",
        "defusedxml-xmltestdata/external.xml",
        "handmade-hostile/xml/billion_laughs_classic.xml",
        "handmade-hostile/xml/entity_in_attribute_bomb.xml",
        "handmade-hostile/xml/xxe_parameter_entity.xml",
    ] {
        let doc = std::fs::read(corpora.join(file)).expect("fixture");
        let (seen, peak) = parse(&[], &doc);
        assert_eq!(seen, ["forbidden"], "{file}");
        assert!(peak < MIB, "{file}: peak {peak}");
    }

    // The zipped hostile fixtures.
    for (name, want, bound) in [
        ("deep_nesting_100k.xml.zip", "limit-exceeded", MIB),
        ("unclosed_deep_nesting_100k.xml.zip", "limit-exceeded", MIB),
        (
            "many_namespace_decls_20k.xml.zip",
            "limit-exceeded",
            4 * MIB,
        ),
        ("many_attributes_20k.xml.zip", "limit-exceeded", 2 * MIB),
        ("huge_element_name_1MiB.xml.zip", "limit-exceeded", 8 * MIB),
    ] {
        let doc = unzip(name);
        let (seen, peak) = parse(&[], &doc);
        assert!(seen.iter().any(|s| s == want), "{name}: {seen:?}");
        assert!(peak < bound, "{name}: peak {peak} bytes");
    }
}

//! Mutated documents: the adapter never panics, always ends (with `End` or
//! `fatal`), keeps the host's rules, and gives the same items whatever the
//! chunk boundaries and from every checkpoint (`Harness::check` verifies
//! all of that). Deterministic: a fixed-seed generator, no extra crates.

use std::path::Path;

use sluice_plugin_xml::XmlAdapter;
use sluice_sdk::Item;
use sluice_sdk::testing::Harness;

/// xorshift64*: enough to spread mutations, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&[u8]] = &[
    b"<",
    b">",
    b"/",
    b"&",
    b";",
    b"'",
    b"\"",
    b"=",
    b"]]>",
    b"<!--",
    b"-->",
    b"<![CDATA[",
    b"<?",
    b"?>",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"&nbsp;",
    b"xmlns:p='urn:p'",
    b"p:",
    b"xmlns=''",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"<!DOCTYPE",
    b"<a>",
    b"</a>",
    b"<b/>",
    b" x='1'",
    b"\xe2\x80\xa8",
];

fn mutate(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(5) {
            0 if !d.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(d.len());
                d.drain(at.min(end)..end);
            }
            1 if at < d.len() => d[at] = rng.next() as u8,
            2 if !d.is_empty() => {
                let start = rng.below(d.len());
                let end = (start + 1 + rng.below(40)).min(d.len());
                let copy = d[start..end].to_vec();
                d.splice(at..at, copy);
            }
            3 => d.truncate(at),
            _ => {
                let piece = PIECES[rng.below(PIECES.len())];
                d.splice(at..at, piece.iter().copied());
            }
        }
    }
    d
}

#[test]
fn mutated_documents() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpora");
    let mut seeds: Vec<Vec<u8>> = vec![
        br#"<?xml version="1.0"?><c xmlns="urn:c" xmlns:x="urn:x"><b id="1" x:k="v"><t>T &amp; U</t><t>2</t><![CDATA[<z>]]></b><b id="2"><n><m a="1"/></n>text&#65;</b><!-- c --><?pi d?></c>"#.to_vec(),
        b"<r>\r\n<x>a\rb</x>\r\n<x y='1\r\n2'/>\r\n</r>\r\n".to_vec(),
    ];
    for name in ["simple.xml", "simple-ns.xml"] {
        seeds.push(std::fs::read(corpora.join("defusedxml-xmltestdata").join(name)).expect("seed"));
    }
    for name in [
        "ns_007.xml",
        "text_011.xml",
        "cdata_009.xml",
        "tree_001.xml",
        "attrs_005.xml",
    ] {
        seeds.push(std::fs::read(corpora.join("roxmltree-tests").join(name)).expect("seed"));
    }
    let option_sets: &[&[(&str, &str)]] = &[
        &[],
        &[("record", "b"), ("key", "@id")],
        &[
            ("max-record-bytes", "64"),
            ("max-field-bytes", "8"),
            ("max-depth", "4"),
        ],
        &[
            ("record", "/c/b"),
            ("max-layouts", "2"),
            ("max-attributes", "2"),
        ],
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut fatal, mut clean) = (0, 0);
    for round in 0..1500 {
        let seed = &seeds[round % seeds.len()];
        let doc = mutate(&mut rng, seed);
        let opts = option_sets[rng.below(option_sets.len())];
        let h = opts
            .iter()
            .fold(Harness::<XmlAdapter>::new(), |h, (k, v)| h.option(k, v));
        let out = std::panic::catch_unwind(|| h.check(&doc)).unwrap_or_else(|_| {
            panic!(
                "round {round}, options {opts:?}, document {:?}",
                String::from_utf8_lossy(&doc)
            )
        });
        match out.items.last() {
            Some(Item::Fatal(_)) => fatal += 1,
            Some(Item::End) => clean += 1,
            other => panic!("round {round}: ends with {other:?}"),
        }
    }
    // Both outcomes are exercised.
    assert!(fatal > 100 && clean > 100, "fatal {fatal}, clean {clean}");
}

//! The adapter against the XML corpora in `tests/data/corpora` (see each
//! folder's SOURCE.md for what the files are and the outcome they expect).

use std::io::Read;
use std::path::{Path, PathBuf};

use sluice_plugin_xml::XmlAdapter;
use sluice_sdk::Item;
use sluice_sdk::testing::{Harness, Output, check_rules};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpora")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one deflated entry of a `*.xml.zip` fixture, in memory.
fn unzip(path: &Path) -> Vec<u8> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(read(path))).expect("a zip archive");
    assert_eq!(archive.len(), 1, "{}: one entry expected", path.display());
    let mut entry = archive.by_index(0).expect("entry");
    let mut out = Vec::new();
    // The fixtures are a few hundred KiB; cap the read anyway.
    entry
        .by_ref()
        .take(16 << 20)
        .read_to_end(&mut out)
        .expect("inflate");
    out
}

/// What a parse ended with, in short.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Ended with `End`, with this many record errors.
    Clean { errors: usize },
    /// Ended with a fatal item of this code.
    Fatal(String),
}

fn outcome(out: &Output) -> Outcome {
    match out.fatal() {
        Some(f) => Outcome::Fatal(f.code.clone()),
        None => Outcome::Clean {
            errors: out.errors().count(),
        },
    }
}

fn rejected(out: &Output) -> bool {
    out.fatal().is_some() || out.errors().next().is_some()
}

/// Full check: every chunk plan and resumes must agree.
fn check(doc: &[u8]) -> Output {
    Harness::<XmlAdapter>::new().check(doc)
}

/// For larger inputs: a few chunk plans, rules checked, outputs compared.
fn run_large(doc: &[u8]) -> Output {
    let h = Harness::<XmlAdapter>::new();
    let reference = h
        .run_with_chunks(doc, &[usize::MAX])
        .expect("default options");
    check_rules(&reference.items, 1, 0, doc.len() as u64).expect("host rules");
    for plan in [&[4096][..], &[7, 1, 300]] {
        let other = h.run_with_chunks(doc, plan).expect("default options");
        assert_eq!(
            other.items, reference.items,
            "chunk plan {plan:?} changes the output"
        );
    }
    reference
}

/// What a document without a DTD is expected to give under this adapter's
/// policy when it is well-formed: no fatal, except for the refused
/// encodings and versions.
fn policy_fatal(doc: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(doc);
    let decl = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if let Some(decl) = decl
        .strip_prefix("<?xml ")
        .and_then(|d| d.split("?>").next())
    {
        let attr = |name: &str| {
            let at = decl.find(&format!("{name}="))? + name.len() + 1;
            let q = decl[at..].chars().next()?;
            decl[at + 1..].split(q).next().map(str::to_owned)
        };
        if attr("version").is_some_and(|v| v != "1.0") {
            return Some("unsupported-version");
        }
        if attr("encoding").is_some_and(|e| !e.eq_ignore_ascii_case("utf-8")) {
            return Some("unsupported-encoding");
        }
    }
    // The declaration comes first, so it is judged first.
    text.contains("<!DOCTYPE").then_some("forbidden")
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()
}

/// W3C conformance suite, Edinburgh part: every `not-wf` case is rejected
/// (fatal, or a record error), and every `valid`/`invalid` case (both are
/// well-formed) parses without fatal unless the adapter's policy refuses its
/// DTD, encoding or version.
///
/// Not-wf cases this adapter accepts, on purpose:
/// * `rmt-016`, `rmt-019` (xml-1.1/016.xml, 019.xml): names with characters
///   that XML 1.0 editions 1 to 4 forbid but the fifth edition (which this
///   adapter follows, like XML 1.1) allows; the catalog marks them not-wf for
///   `EDITION="1 2 3 4"` only.
#[test]
fn xmlconf_eduni() {
    const ACCEPTED_NOT_WF: &[&str] = &["rmt-016", "rmt-019"];
    let root = corpora().join("xmlconf-eduni");
    let catalogs = [
        "errata-2e/errata2e.xml",
        "errata-3e/errata3e.xml",
        "namespaces/1.0/rmt-ns10.xml",
        "namespaces/1.1/rmt-ns11.xml",
        "namespaces/errata-1e/errata1e.xml",
        "xml-1.1/xml11.xml",
    ];
    let (mut not_wf, mut wf) = (0, 0);
    let mut failures = Vec::new();
    for catalog in catalogs {
        let path = root.join(catalog);
        let dir = path.parent().expect("dir").to_owned();
        let text = String::from_utf8(read(&path)).expect("catalog is UTF-8");
        for tag in text.split("<TEST ").skip(1) {
            let tag = tag.split('>').next().expect("tag");
            let tag = format!(" {tag}");
            let (id, uri, kind) = (
                attr(&tag, "ID").expect("ID"),
                attr(&tag, "URI").expect("URI"),
                attr(&tag, "TYPE").expect("TYPE"),
            );
            let doc = read(&dir.join(uri));
            let out = check(&doc);
            match kind {
                "not-wf" if ACCEPTED_NOT_WF.contains(&id) => {
                    assert!(
                        !rejected(&out),
                        "{id} is now rejected: drop it from ACCEPTED_NOT_WF"
                    );
                }
                "not-wf" => {
                    not_wf += 1;
                    if !rejected(&out) {
                        failures.push(format!("{id} ({catalog} {uri}) not-wf but accepted"));
                    }
                }
                "valid" | "invalid" => {
                    wf += 1;
                    let want = match policy_fatal(&doc) {
                        Some(code) => Outcome::Fatal(code.into()),
                        None => Outcome::Clean { errors: 0 },
                    };
                    if outcome(&out) != want {
                        failures.push(format!(
                            "{id} ({catalog} {uri}) {kind}: want {want:?}, got\n{}",
                            out.to_json_lines()
                        ));
                    }
                }
                // Optional errors: either outcome, the checks above ran.
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!((not_wf, wf), (45, 105), "catalog case counts");
}

/// roxmltree's test files: every `*_err_*` case, and any whose expectation
/// is an error, is rejected; the others parse without fatal unless the
/// policy refuses them (all their entity tests use a DTD).
#[test]
fn roxmltree() {
    let dir = corpora().join("roxmltree-tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .filter(|n| n.ends_with(".xml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 92);
    let mut failures = Vec::new();
    for name in &names {
        let doc = read(&dir.join(name));
        let yaml = String::from_utf8(read(&dir.join(name.replace(".xml", ".yaml")))).expect("yaml");
        let must_fail = name.contains("_err_") || yaml.trim_start().starts_with("error:");
        let out = check(&doc);
        if must_fail {
            if !rejected(&out) {
                failures.push(format!(
                    "{name}: expected an error, got\n{}",
                    out.to_json_lines()
                ));
            }
        } else {
            let want = match policy_fatal(&doc) {
                Some(code) => Outcome::Fatal(code.into()),
                None => Outcome::Clean { errors: 0 },
            };
            if outcome(&out) != want {
                failures.push(format!(
                    "{name}: want {want:?}, got\n{}",
                    out.to_json_lines()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// roxmltree expectations for documents this adapter reads: text after
/// entity decoding and line-end normalisation.
#[test]
fn roxmltree_text_values() {
    let dir = corpora().join("roxmltree-tests");
    let opts = |name: &str, record: &str| {
        Harness::<XmlAdapter>::new()
            .option("record", record)
            .check(&read(&dir.join(name)))
    };
    let text = |out: &Output| -> Vec<String> {
        out.records()
            .flat_map(|r| {
                r.fields()
                    .map(|(_, v)| format!("{v:?}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(text(&opts("text_009.xml", "/root")), ["Text(\"0d >\")"]);
    assert_eq!(
        text(&opts("attrs_004.xml", "/p")),
        ["Text(\"\\r\\rA\\n\\nB\\r\\n\")"]
    );
    assert_eq!(text(&opts("attrs_005.xml", "/e")), ["Text(\" b \")"]);
    assert_eq!(
        text(&opts("cdata_002.xml", "/e")),
        ["Text(\"\\n    <![CDATA[abc]]>\\n  \")"]
    );
    assert_eq!(text(&opts("cdata_005.xml", "/p")), ["Text(\"Text\")"]);
    assert_eq!(
        text(&opts("cdata_007.xml", "style")),
        ["Text(\"some\\nlong\\ntext\\n\")"]
    );
}

/// defusedxml's attack files: all of them carry a DTD and are refused before
/// anything is expanded or fetched; the two benign controls parse.
#[test]
fn defusedxml() {
    let dir = corpora().join("defusedxml-xmltestdata");
    for name in [
        "xmlbomb.xml",
        "xmlbomb2.xml",
        "cyclic.xml",
        "quadratic.xml",
        "external.xml",
        "external_file.xml",
        "dtd.xml",
        "dtd_element.xml",
    ] {
        let out = check(&read(&dir.join(name)));
        assert_eq!(out.items.len(), 1, "{name}: nothing before the fatal");
        let fatal = out.fatal().unwrap_or_else(|| panic!("{name}: not refused"));
        assert_eq!(fatal.code, "forbidden", "{name}");
        assert!(
            fatal.message.contains("remove the <!DOCTYPE"),
            "{name}: {}",
            fatal.message
        );
    }
    for name in ["simple.xml", "simple-ns.xml"] {
        let out = check(&read(&dir.join(name)));
        assert_eq!(outcome(&out), Outcome::Clean { errors: 0 }, "{name}");
        assert_eq!(out.records().count(), 3, "{name}");
    }
    let out = check(&read(&dir.join("simple-ns.xml")));
    let first = out.records().next().expect("a record");
    assert_eq!(first.kind(), Some("element"));
    // In the record's (default) namespace: plain names.
    assert_eq!(
        first.fields().map(|(n, _)| n).collect::<Vec<_>>(),
        ["#text", "@key"]
    );
}

/// Every hand-made hostile XML file ends in its documented outcome.
#[test]
fn handmade_hostile() {
    let dir = corpora().join("handmade-hostile/xml");
    // (file, expected outcome, records before it)
    let cases: &[(&str, Outcome, usize)] = &[
        (
            "billion_laughs_classic.xml",
            Outcome::Fatal("forbidden".into()),
            0,
        ),
        (
            "entity_in_attribute_bomb.xml",
            Outcome::Fatal("forbidden".into()),
            0,
        ),
        ("xxe_local_file.xml", Outcome::Fatal("forbidden".into()), 0),
        (
            "xxe_parameter_entity.xml",
            Outcome::Fatal("forbidden".into()),
            0,
        ),
        (
            "xxe_remote_loopback.xml",
            Outcome::Fatal("forbidden".into()),
            0,
        ),
        (
            "external_dtd_loopback.xml",
            Outcome::Fatal("forbidden".into()),
            0,
        ),
        ("control_chars.xml", Outcome::Fatal("malformed".into()), 0),
        // 5,000 attributes: over max-attributes before the duplicate.
        (
            "duplicate_attribute_last.xml",
            Outcome::Clean { errors: 1 },
            0,
        ),
        (
            "encoding_mismatch.xml",
            Outcome::Fatal("unsupported-encoding".into()),
            0,
        ),
        ("invalid_utf8.xml", Outcome::Clean { errors: 1 }, 0),
        (
            "truncated_in_cdata.xml",
            Outcome::Fatal("malformed".into()),
            0,
        ),
        ("two_roots.xml", Outcome::Fatal("malformed".into()), 1),
        (
            "utf16le_bom.xml",
            Outcome::Fatal("unsupported-encoding".into()),
            0,
        ),
        // Plain elements: nothing is included.
        ("xinclude_local_file.xml", Outcome::Clean { errors: 0 }, 1),
    ];
    let mut seen = Vec::new();
    for (name, want, records) in cases {
        let out = check(&read(&dir.join(name)));
        assert_eq!(&outcome(&out), want, "{name}:\n{}", out.to_json_lines());
        assert_eq!(out.records().count(), *records, "{name}");
        seen.push(name.to_string());
    }
    let out = check(&read(&dir.join("xinclude_local_file.xml")));
    let rec = out.records().next().expect("record");
    assert_eq!(
        rec.fields()
            .map(|(n, v)| format!("{n}={v:?}"))
            .collect::<Vec<_>>(),
        [
            "@id=Text(\"1\")",
            "name/{http://www.w3.org/2001/XInclude}include=Text(\"\")",
            "name/{http://www.w3.org/2001/XInclude}include/@href=Text(\"file:///etc/passwd\")",
            "name/{http://www.w3.org/2001/XInclude}include/@parse=Text(\"text\")",
        ]
    );
    let err = check(&read(&dir.join("invalid_utf8.xml")));
    let e = err.errors().next().expect("error");
    assert_eq!(e.code, "invalid-utf8");
    assert!(
        e.message.contains("byte offset 73, line 2"),
        "{}",
        e.message
    );

    // The zipped ones, decompressed in memory.
    let zipped: &[(&str, &str, Outcome)] = &[
        (
            "deep_nesting_100k.xml.zip",
            "max-depth",
            Outcome::Fatal("limit-exceeded".into()),
        ),
        (
            "unclosed_deep_nesting_100k.xml.zip",
            "max-depth",
            Outcome::Fatal("limit-exceeded".into()),
        ),
        (
            "many_namespace_decls_20k.xml.zip",
            "namespace",
            Outcome::Fatal("limit-exceeded".into()),
        ),
        (
            "many_attributes_20k.xml.zip",
            "max-attributes",
            Outcome::Clean { errors: 1 },
        ),
        (
            "huge_element_name_1MiB.xml.zip",
            "max-name-bytes",
            Outcome::Clean { errors: 1 },
        ),
    ];
    for (name, why, want) in zipped {
        let out = run_large(&unzip(&dir.join(name)));
        assert_eq!(&outcome(&out), want, "{name}:\n{}", out.to_json_lines());
        let message = match out.items.iter().find(|i| !matches!(i, Item::End)) {
            Some(Item::Fatal(e) | Item::Error(e)) => e.message.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(message.contains(why), "{name}: {message}");
        seen.push(name.to_string());
    }
    // Nothing in the folder is left untested.
    let mut all: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .collect();
    all.sort();
    seen.sort();
    assert_eq!(all, seen);
}

/// Not-wf cases that the DTD policy refuses before reaching what they test:
/// with the DOCTYPE removed (it only declares attribute types, or an entity
/// that then becomes undefined) the error they test is still caught.
/// Left out: rmt-ns10-012 (without its NMTOKEN declaration the two
/// namespace names differ, so it becomes well-formed), rmt-ns10-043/044 and
/// rmt-e3e-12 (their error is inside the DTD itself), xml-1.1 ones (the
/// version is refused anyway).
#[test]
fn not_wf_without_their_dtd() {
    let root = corpora().join("xmlconf-eduni");
    let cases = [
        (
            "namespaces/1.0/009.xml",
            "malformed",
            "same namespace and local name",
        ),
        (
            "namespaces/1.0/010.xml",
            "malformed",
            "same namespace and local name",
        ),
        ("namespaces/1.0/011.xml", "undefined-entity", "&tilde;"),
        (
            "namespaces/errata-1e/NE13a.xml",
            "malformed",
            "default namespace",
        ),
        (
            "namespaces/errata-1e/NE13b.xml",
            "malformed",
            "default namespace",
        ),
        (
            "namespaces/errata-1e/NE13c.xml",
            "malformed",
            "reserved prefix `xmlns`",
        ),
        ("errata-2e/E27.xml", "invalid-utf8", "UTF-8"),
        ("errata-2e/E38.xml", "undefined-entity", "&e;"),
    ];
    for (file, code, needle) in cases {
        let doc = String::from_utf8_lossy(&read(&root.join(file))).into_owned();
        let doc = if file.ends_with("E27.xml") {
            // Lossy decoding would hide the bad bytes: cut them raw.
            let raw = read(&root.join(file));
            let end = raw
                .windows(3)
                .position(|w| w == b"]>\n")
                .expect("subset end")
                + 3;
            raw[end..].to_vec()
        } else {
            let start = doc.find("<!DOCTYPE").expect("doctype");
            let end = doc[start..].find("]>").expect("subset end") + start + 2;
            format!("{}{}", &doc[..start], &doc[end..]).into_bytes()
        };
        let out = check(&doc);
        let fatal = out
            .fatal()
            .unwrap_or_else(|| panic!("{file}: accepted\n{}", out.to_json_lines()));
        assert_eq!(fatal.code, code, "{file}: {}", fatal.message);
        assert!(fatal.message.contains(needle), "{file}: {}", fatal.message);
    }
}

//! Unit tests: naming rule, `record` forms, limits, error codes with exact
//! positions, resume.

use super::*;
use sluice_sdk::testing::{Harness, Output};

fn harness(opts: &[(&str, &str)]) -> Harness<XmlAdapter> {
    opts.iter().fold(Harness::new(), |h, (k, v)| h.option(k, v))
}

/// Parse with every chunk plan and resume (`Harness::check`).
fn parse(opts: &[(&str, &str)], doc: &str) -> Output {
    harness(opts).check(doc.as_bytes())
}

/// Each record as `name=value` strings, in layout order.
fn records(out: &Output) -> Vec<Vec<String>> {
    out.records()
        .map(|r| {
            r.fields()
                .map(|(n, v)| match v {
                    sluice_sdk::Value::Text(t) => format!("{n}={t}"),
                    other => format!("{n}={other:?}"),
                })
                .collect()
        })
        .collect()
}

fn one(opts: &[(&str, &str)], doc: &str) -> Vec<String> {
    let out = parse(opts, doc);
    assert!(
        out.fatal().is_none() && out.errors().next().is_none(),
        "{}",
        out.to_json_lines()
    );
    let mut recs = records(&out);
    assert_eq!(recs.len(), 1, "{}", out.to_json_lines());
    recs.remove(0)
}

/// (code, offset, line) of the fatal item.
fn fatal(opts: &[(&str, &str)], doc: &[u8]) -> (String, u64, u64, String) {
    let out = harness(opts).check(doc);
    let f = out
        .fatal()
        .unwrap_or_else(|| panic!("no fatal:\n{}", out.to_json_lines()));
    (
        f.code.clone(),
        f.location.offset,
        f.location.line,
        f.message.clone(),
    )
}

/// The only record error: (code, record offset, record line, message, field).
fn error(opts: &[(&str, &str)], doc: &str) -> (String, u64, u64, String, Option<String>) {
    let out = parse(opts, doc);
    assert!(out.fatal().is_none(), "{}", out.to_json_lines());
    let errs: Vec<_> = out.errors().collect();
    assert_eq!(errs.len(), 1, "{}", out.to_json_lines());
    let e = errs[0];
    (
        e.code.clone(),
        e.location.offset,
        e.location.line,
        e.message.clone(),
        e.field.clone(),
    )
}

// -- naming rule ---------------------------------------------------------

#[test]
fn attributes_children_and_nesting() {
    let doc = r#"<catalog><book id="7" lang="en"><title>Dune</title><author><name>Frank</name><born year="1920"/></author></book></catalog>"#;
    assert_eq!(
        one(&[], doc),
        [
            "@id=7",
            "@lang=en",
            "author/born=",
            "author/born/@year=1920",
            "author/name=Frank",
            "title=Dune"
        ]
    );
}

#[test]
fn repeated_siblings_are_numbered() {
    let doc =
        "<r><rec><a>1</a><b>x</b><a>2</a><a>3</a><c><d>p</d></c><c><d>q</d><d>s</d></c></rec></r>";
    assert_eq!(
        one(&[], doc),
        [
            "a=1",
            "a[2]=2",
            "a[3]=3",
            "b=x",
            "c/d=p",
            "c[2]/d=q",
            "c[2]/d[2]=s"
        ]
    );
}

#[test]
fn digit_runs_sort_numerically() {
    let doc: String = format!(
        "<r><rec>{}</rec></r>",
        (1..=11).map(|i| format!("<v>{i}</v>")).collect::<String>()
    );
    let got = one(&[], &doc);
    assert_eq!(got[0], "v=1");
    assert_eq!(got[1], "v[2]=2");
    assert_eq!(got[9], "v[10]=10");
    assert_eq!(got[10], "v[11]=11");
    assert_eq!(natural_cmp("c[2]", "c[10]"), Ordering::Less);
    assert_eq!(natural_cmp("a01", "a1"), Ordering::Greater);
    assert_eq!(natural_cmp("a1", "a1"), Ordering::Equal);
    assert_eq!(natural_cmp("a", "a/b"), Ordering::Less);
}

#[test]
fn text_of_record_element_and_mixed_content() {
    // Direct text of the record: #text; mixed content keeps text in
    // document order; indentation of elements with children is dropped.
    let doc =
        "<r>\n  <p id=\"1\">Hello <b>big</b> world<br/>!</p>\n  <p>\n    <q>x</q>\n  </p>\n</r>";
    let out = parse(&[], doc);
    assert_eq!(
        records(&out),
        [
            vec!["#text=Hello  world!", "@id=1", "b=big", "br="],
            vec!["q=x"],
        ]
    );
}

#[test]
fn leaf_text_whitespace_and_empty_elements() {
    let doc = "<r><rec><a>  padded  </a><b/><c></c><d> </d></rec></r>";
    assert_eq!(one(&[], doc), ["a=  padded  ", "b=", "c=", "d= "]);
}

#[test]
fn cdata_entities_and_char_refs() {
    let doc = "<r><rec><a>x<![CDATA[<&>]]>y &lt;&gt;&amp;&apos;&quot; &#65;&#x42;&#x1F600;</a><b><![CDATA[]]></b></rec></r>";
    assert_eq!(one(&[], doc), ["a=x<&>y <>&'\" AB\u{1F600}", "b="]);
}

#[test]
fn line_ends_are_normalised_in_text_not_in_char_refs() {
    let doc = "<r><rec><a>1\r\n2\r3\n</a><b>&#13;&#10;</b><c><![CDATA[x\r\ny]]></c></rec></r>";
    assert_eq!(one(&[], doc), ["a=1\n2\n3\n", "b=\r\n", "c=x\ny"]);
}

#[test]
fn attribute_values_are_normalised() {
    let doc = "<r><rec a=\"x\ty\r\nz\rw\" b='&#9;&#10;&#13;' c=\"&lt;&quot;'\"/></r>";
    assert_eq!(one(&[], doc), ["@a=x y z w", "@b=\t\n\r", "@c=<\"'"]);
}

#[test]
fn namespaces_default_and_prefixed() {
    let doc = concat!(
        r#"<feed xmlns="urn:feed" xmlns:m="urn:media" xmlns:x="urn:x">"#,
        r#"<entry id="1" x:flag="y" xml:lang="en"><title>T</title><m:thumb url="u"/>"#,
        r#"<other xmlns="urn:other"><deep>d</deep></other></entry></feed>"#
    );
    assert_eq!(
        one(&[], doc),
        [
            "@id=1",
            "@xml:lang=en",
            "@{urn:x}flag=y",
            "title=T",
            "{urn:media}thumb=",
            "{urn:media}thumb/@url=u",
            "{urn:other}other/{urn:other}deep=d",
        ]
    );
}

#[test]
fn prefixed_attribute_in_record_namespace() {
    // Local name, unless an unprefixed attribute of the same element has it.
    let doc = r#"<r xmlns:a="urn:a"><a:rec a:k="1" a:id="2" id="3"/></r>"#;
    assert_eq!(one(&[], doc), ["@id=3", "@k=1", "@{urn:a}id=2"]);
}

#[test]
fn same_written_name_from_two_namespaces_counts_as_repeat() {
    let doc = r#"<r xmlns="urn:a"><rec><x>1</x><x xmlns="">2</x></rec></r>"#;
    assert_eq!(one(&[], doc), ["x=1", "x[2]=2"]);
}

#[test]
fn escaped_namespace_uri_is_decoded() {
    // quick-xml would bind the raw `urn:&#x61;`; we bind `urn:a`.
    let doc = r#"<r xmlns:p="urn:&#x61;"><p:rec><p:v>1</p:v></p:rec></r>"#;
    assert_eq!(one(&[("record", "{urn:a}rec")], doc), ["v=1"]);
}

#[test]
fn layout_kind_key_and_shared_layouts() {
    let doc = r#"<r><book id="1"><a>x</a><b>y</b></book><book id="2"><b>q</b><a>p</a></book><cd id="3"/></r>"#;
    let out = parse(&[("key", "@id")], doc);
    let recs: Vec<_> = out.records().collect();
    assert_eq!(recs[0].kind(), Some("book"));
    assert_eq!(recs[2].kind(), Some("cd"));
    // Same field-name set in another order: the same layout.
    assert_eq!(recs[0].layout(), recs[1].layout());
    assert_eq!(recs[1].get_by_name("a"), Some(sluice_sdk::Value::Text("p")));
    let keys: Vec<_> = recs.iter().map(|r| r.key()).collect();
    assert_eq!(keys, [Some("1"), Some("2"), Some("3")]);
    // A missing key field: no key.
    let out = parse(&[("key", "isbn")], doc);
    assert!(out.records().all(|r| r.key().is_none()));
}

#[test]
fn outside_records_is_ignored_but_checked() {
    let doc = "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n<!-- c --><?pi x?>\n<r a=\"root attr\">root text<rec>1</rec>more &amp; text<!-- c --><rec>2</rec></r>\n<!-- after -->\n";
    let out = parse(&[], doc);
    assert_eq!(records(&out), [vec!["#text=1"], vec!["#text=2"]]);
}

// -- record option ------------------------------------------------------

#[test]
fn record_by_local_name_at_any_depth_outermost_wins() {
    let doc = "<a><item>1</item><g><item>2<item>nested</item></item></g></a>";
    let out = parse(&[("record", "item")], doc);
    assert_eq!(
        records(&out),
        [vec!["#text=1"], vec!["#text=2", "item=nested"]]
    );
}

#[test]
fn record_by_path_and_namespace() {
    let doc =
        r#"<c xmlns:n="urn:n"><book>1</book><n:book>2</n:book><shelf><book>3</book></shelf></c>"#;
    // A plain name is a local name: any namespace.
    let by_path = parse(&[("record", "/c/book")], doc);
    assert_eq!(records(&by_path), [vec!["#text=1"], vec!["#text=2"]]);
    let by_ns = parse(&[("record", "{urn:n}book")], doc);
    assert_eq!(records(&by_ns), [vec!["#text=2"]]);
    let no_ns = parse(&[("record", "{}book")], doc);
    assert_eq!(records(&no_ns), [vec!["#text=1"], vec!["#text=3"]]);
    let path_ns = parse(&[("record", "/c/{urn:n}book")], doc);
    assert_eq!(records(&path_ns), [vec!["#text=2"]]);
    let deep = parse(&[("record", "/c/shelf/book")], doc);
    assert_eq!(records(&deep), [vec!["#text=3"]]);
    let root = parse(&[("record", "/c")], doc);
    assert_eq!(records(&root).len(), 1);
    assert_eq!(root.records().next().map(|r| r.location().offset), Some(0));
    let none = parse(&[("record", "nothing")], doc);
    assert_eq!(none.records().count(), 0);
    assert!(none.fatal().is_none());
}

#[test]
fn bad_options_are_refused() {
    let h = |k: &str, v: &str| harness(&[(k, v)]).run(b"<r/>").err().map(|e| e.to_string());
    assert!(h("record", "a:b").is_some_and(|m| m.contains("record")));
    assert!(h("record", "/a//b").is_some());
    assert!(h("record", "{urn:x").is_some());
    assert!(h("record", "1x").is_some());
    assert!(h("max-depth", "0").is_some_and(|m| m.contains("max-depth")));
    assert!(h("max-record-bytes", "10").is_some());
    assert!(h("max-fields", "lots").is_some());
    assert!(h("key", "").is_some());
    assert!(h("record", "/a/{urn:x/y}b").is_none());
}

#[test]
fn describe_lists_every_option() {
    let info = XmlAdapter::describe();
    assert!(info.resumable);
    let names: Vec<_> = info.options.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "record",
            "key",
            "max-depth",
            "max-attributes",
            "max-name-bytes",
            "max-field-bytes",
            "max-record-bytes",
            "max-fields",
            "max-layouts"
        ]
    );
    assert!(info.description.contains("c[2]") && info.description.contains("{uri}local"));
}

// -- limits ---------------------------------------------------------------

#[test]
fn max_depth_is_fatal_at_the_element() {
    let (code, off, line, msg) = fatal(&[("max-depth", "3")], b"<a>\n<b><c>\n<d/></c></b></a>");
    assert_eq!((code.as_str(), off, line), ("limit-exceeded", 11, 3));
    assert!(msg.contains("max-depth (3)"), "{msg}");
    assert!(
        parse(&[("max-depth", "3")], "<a><b><c/></b></a>")
            .fatal()
            .is_none()
    );
}

#[test]
fn max_attributes_record_error_or_fatal_outside() {
    let doc = "<r><x a='1' b='2' c='3'/><x a='1'/></r>";
    let (code, off, _, msg, _) = error(&[("max-attributes", "2")], doc);
    assert_eq!((code.as_str(), off), ("limit-exceeded", 3));
    assert!(msg.contains("3 attributes"), "{msg}");
    assert_eq!(parse(&[("max-attributes", "2")], doc).records().count(), 1);
    let (code, off, ..) = fatal(&[("max-attributes", "2")], b"<r a='1' b='2' c='3'><x/></r>");
    assert_eq!((code.as_str(), off), ("limit-exceeded", 0));
}

#[test]
fn max_name_bytes_for_elements_attributes_and_paths() {
    let o = [("max-name-bytes", "5")];
    assert_eq!(error(&o, "<r><x><toolong/></x></r>").0, "limit-exceeded");
    assert_eq!(error(&o, "<r><x attrib='1'/></r>").0, "limit-exceeded");
    // Each name fits, the path `ab/cd` (5) fits, `ab/cd/e` (7) does not.
    assert_eq!(one(&o, "<r><x><ab><cd>1</cd></ab></x></r>"), ["ab/cd=1"]);
    assert_eq!(
        error(&o, "<r><x><ab><cd><e/></cd></ab></x><y/></r>").0,
        "limit-exceeded"
    );
    assert_eq!(fatal(&o, b"<rootname/>").0, "limit-exceeded");
}

#[test]
fn max_field_bytes_text_and_attribute() {
    let o = [("max-field-bytes", "4")];
    let (code, off, line, msg, field) = error(
        &o,
        "<r><x><a>12</a></x>\n<x><b>123<![CDATA[45]]></b></x></r>",
    );
    assert_eq!((code.as_str(), off, line), ("field-too-long", 20, 2));
    assert_eq!(field.as_deref(), Some("b"));
    assert!(msg.contains("max-field-bytes (4"), "{msg}");
    let (code, .., field) = error(&o, "<r><x v='12345'/></r>");
    assert_eq!(
        (code.as_str(), field.as_deref()),
        ("field-too-long", Some("@v"))
    );
    let (.., field) = error(&o, "<r><x>abcde</x></r>");
    assert_eq!(field.as_deref(), Some("#text"));
}

#[test]
fn max_record_bytes_skips_the_record() {
    let o = [("max-record-bytes", "64")];
    let big = "y".repeat(100);
    let doc = format!("<r><x>1</x><x><a>{big}</a><b/></x><x>3</x></r>");
    let out = parse(&o, &doc);
    assert_eq!(records(&out), [vec!["#text=1"], vec!["#text=3"]]);
    let e = out.errors().next().expect("error");
    assert_eq!(
        (
            e.code.as_str(),
            e.location.offset,
            e.location.line,
            e.location.ordinal
        ),
        ("record-too-long", 11, 1, 2)
    );
    assert!(
        e.message.contains("max-record-bytes (64 bytes)"),
        "{}",
        e.message
    );
    assert_eq!(
        e.location.length,
        doc.find("<x>3").expect("third") as u64 - 11
    );
}

#[test]
fn oversized_constructs_inside_a_record_are_skipped() {
    let o = [("max-record-bytes", "64")];
    let big = "z".repeat(200);
    for inner in [
        big.clone(),
        format!("<!--{big}-->"),
        // The skip ends at the first `-->`; the rest is text in the <x>.
        format!("<!--{big}-->-->"),
        format!("<![CDATA[{big}]]]]>"),
        format!("<?pi {big}??>"),
        format!("&amp;{big}&lt;"),
    ] {
        let doc = format!("<r><x>1</x><x>{inner}</x><x>3</x></r>");
        let out = harness(&o)
            .run_with_chunks(doc.as_bytes(), &[5])
            .expect("options");
        let first = harness(&o).check(doc.as_bytes());
        assert_eq!(out.items, first.items);
        assert_eq!(
            records(&first),
            [vec!["#text=1"], vec!["#text=3"]],
            "{inner}"
        );
        assert_eq!(
            first.errors().next().map(|e| e.code.as_str()),
            Some("record-too-long")
        );
    }
}

#[test]
fn oversized_tag_or_construct_outside_a_record_is_fatal() {
    let o = [("max-record-bytes", "64")];
    let attrs = " a='1'".repeat(20);
    let (code, off, ..) = fatal(&o, format!("<r><x{attrs}/></r>").as_bytes());
    assert_eq!((code.as_str(), off), ("limit-exceeded", 3));
    let (code, off, ..) = fatal(&o, format!("<r><!--{}--></r>", "c".repeat(100)).as_bytes());
    assert_eq!((code.as_str(), off), ("limit-exceeded", 3));
}

#[test]
fn max_fields() {
    let o = [("max-fields", "3")];
    assert_eq!(one(&o, "<r><x a='1'><b/><c/></x></r>").len(), 3);
    let (code, off, line, msg, _) = error(&o, "<r>\n<x a='1'><b/><c/>\n<d/></x></r>");
    assert_eq!((code.as_str(), off, line), ("too-many-fields", 4, 2));
    // Reported at the fourth field's element.
    assert!(msg.contains("byte offset 22, line 3"), "{msg}");
}

#[test]
fn max_layouts_counts_distinct_field_sets() {
    let o = [("max-layouts", "2")];
    let doc = "<r><x><a/></x><x><b/></x><x><a/></x><x><c/></x><y><a/></y><x><b/></x></r>";
    let out = parse(&o, doc);
    let kinds: Vec<String> = out
        .items
        .iter()
        .map(|i| match i {
            Item::Record(_) => "record".into(),
            Item::Error(e) => e.code.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "record",
            "record",
            "record",
            "limit-exceeded",
            "limit-exceeded",
            "record",
            "End"
        ]
    );
}

// -- error codes and positions -------------------------------------------

#[test]
fn malformed_positions() {
    let cases: &[(&[u8], u64, u64, &str)] = &[
        (b"<r>\n<a></b>\n</r>", 7, 2, "does not match"),
        (b"<r>\n<a>text", 11, 2, "input ends before element <a>"),
        (b"<r/>\n<r/>", 5, 2, "second root"),
        (b"<r>\n  <a x='1' x='2'/></r>", 15, 2, "appears twice"),
        (b"<r><a>ok&#0;</a></r>", 8, 1, "U+0000"),
        (b"<r>\n<a>b\x07</a></r>", 8, 2, "U+0007"),
        (b"<r><a at\x01tr='1'/></r>", 6, 1, "not a valid XML name"),
        (b"<r><1a/></r>", 4, 1, "not a valid XML name"),
        (b"<r><p:a/></r>", 4, 1, "prefix `p`"),
        (b"<r><a p:x='1'/></r>", 6, 1, "prefix `p`"),
        (b"  hello <r/>", 2, 1, "text outside the root"),
        (b"<r>a]]>b</r>", 4, 1, "]]>"),
        (b"<r><!-- a -- b --></r>", 10, 1, "--"),
        (b"<r/>\n<?xml version='1.0'?>", 5, 2, "very start"),
        (b"\n<?xml version='1.0'?><r/>", 1, 2, "very start"),
        (b"<r a='<'/>", 6, 1, "&lt;"),
        (b"<r>&amp</r>", 3, 1, "reference"),
        (b"<r>&#xD800;</r>", 3, 1, "U+D800"),
        (b"<r a='1'b='2'/>", 8, 1, "whitespace"),
        (b"<r><![CDATA[x", 3, 1, "CDATA"),
        (b"", 0, 1, "no root"),
        (b"<r/>\r\n\r\n<", 8, 3, "truncated"),
    ];
    for (doc, off, line, needle) in cases {
        let (code, o, l, msg) = fatal(&[], doc);
        let text = String::from_utf8_lossy(doc);
        assert_eq!(
            (code.as_str(), o, l),
            ("malformed", *off, *line),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(needle), "{text:?}: {msg}");
    }
    // Lines count LF, CR LF and lone CR once each.
    let (_, off, line, _) = fatal(&[], b"<r>\r\n\r<a>\n\r\n</b></r>");
    assert_eq!((off, line), (12, 5));
}

#[test]
fn forbidden_doctype() {
    let (code, off, line, msg) = fatal(
        &[],
        b"<?xml version=\"1.0\"?>\n<!DOCTYPE r SYSTEM \"http://x/r.dtd\">\n<r/>",
    );
    assert_eq!((code.as_str(), off, line), ("forbidden", 22, 2));
    assert!(
        msg.contains("DTDs and custom entities are not accepted"),
        "{msg}"
    );
    assert!(msg.contains("remove the <!DOCTYPE"), "{msg}");
    // Also a broken or lowercase one, and one after the root started.
    assert_eq!(fatal(&[], b"<!doctype r>").0, "forbidden");
    assert_eq!(fatal(&[], b"<!DOCTYPE r [ <!ENTITY").0, "forbidden");
    assert_eq!(fatal(&[], b"<r><!DOCTYPE r></r>").0, "forbidden");
}

#[test]
fn unsupported_encoding() {
    for (doc, off) in [
        (&b"\xff\xfe<\x00r\x00/\x00>\x00"[..], 0),
        (b"\xfe\xff\x00<\x00r", 0),
        (b"<\x00r\x00/\x00>\x00", 0),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?><r/>", 30),
        (
            b"\xef\xbb\xbf<?xml version='1.0' encoding='windows-1252'?><r/>",
            33,
        ),
    ] {
        let (code, o, line, msg) = fatal(&[], doc);
        assert_eq!((code.as_str(), o, line), ("unsupported-encoding", off, 1));
        assert!(msg.contains("convert the file to UTF-8"), "{msg}");
    }
    for ok in [
        "<?xml version='1.0' encoding='UTF-8'?><r/>",
        "<?xml version='1.0' encoding='us-ascii'?><r/>",
        "\u{feff}<?xml version=\"1.0\"?><r/>",
    ] {
        assert!(parse(&[], ok).fatal().is_none(), "{ok}");
    }
}

#[test]
fn unsupported_version_and_bad_declarations() {
    let (code, off, line, msg) = fatal(&[], b"\n<?xml version=\"1.1\"?><r/>");
    assert_eq!((code.as_str(), off, line), ("malformed", 1, 2), "{msg}");
    let (code, off, line, msg) = fatal(&[], b"<?xml version=\"1.1\"?><r/>");
    assert_eq!((code.as_str(), off, line), ("unsupported-version", 15, 1));
    assert!(msg.contains("XML 1.0"), "{msg}");
    for bad in [
        &b"<?xml?><r/>"[..],
        b"<?xml encoding='UTF-8'?><r/>",
        b"<?xml version='1.0' standalone='maybe'?><r/>",
        b"<?xml version='1.0' standalone='yes' encoding='UTF-8'?><r/>",
        b"<?xml version='2'?><r/>",
        b"<?XML version='1.0'?><r/>",
    ] {
        assert_eq!(
            fatal(&[], bad).0,
            "malformed",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn invalid_utf8_is_a_record_error_inside_records() {
    let doc = b"<r>\n<x>ok</x>\n<x>b\xffd</x>\n<x a='\xfe'/>\n<x>fine</x></r>";
    let out = harness(&[]).check(doc);
    let errs: Vec<_> = out.errors().collect();
    assert_eq!(errs.len(), 2, "{}", out.to_json_lines());
    assert_eq!(
        (
            errs[0].code.as_str(),
            errs[0].location.offset,
            errs[0].location.line
        ),
        ("invalid-utf8", 14, 3)
    );
    assert!(
        errs[0].message.contains("byte offset 18, line 3"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[1].location.offset, 25);
    assert_eq!(records(&out), [vec!["#text=ok"], vec!["#text=fine"]]);
    // In an element name too: structure still followed.
    let out = harness(&[]).check(b"<r><x><n\xff>1</n\xff></x><x>2</x></r>");
    assert_eq!(out.errors().count(), 1);
    assert_eq!(records(&out), [vec!["#text=2"]]);
    // Outside a record: fatal, at the byte.
    let (code, off, line, _) = fatal(&[], b"<r>\n\xc3(<x/></r>");
    assert_eq!((code.as_str(), off, line), ("invalid-utf8", 4, 2));
}

#[test]
fn undefined_entity() {
    let doc = "<r><x>a</x>\n<x>&nbsp;</x><x>b</x></r>";
    let (code, off, line, msg, field) = error(&[], doc);
    assert_eq!((code.as_str(), off, line), ("undefined-entity", 12, 2));
    assert!(
        msg.contains("&nbsp;") && msg.contains("byte offset 15, line 2"),
        "{msg}"
    );
    assert_eq!(field.as_deref(), Some("#text"));
    let (code, .., field) = error(&[], "<r><x><y a='&foo;'/></x></r>");
    assert_eq!((code.as_str(), field), ("undefined-entity", None));
    let (code, off, ..) = fatal(&[], b"<r>&foo;<x/></r>");
    assert_eq!((code.as_str(), off), ("undefined-entity", 3));
}

#[test]
fn duplicate_field_from_odd_namespace_uris() {
    let doc = r#"<r><x xmlns:a="u}v/{w" xmlns:b="u" xmlns:c="w"><a:x/><b:v><c:x/></b:v></x></r>"#;
    let (code, off, line, _, field) = error(&[], doc);
    assert_eq!(
        (code.as_str(), off, line, field.as_deref()),
        ("duplicate-field", 3, 1, Some("{u}v/{w}x"))
    );
}

#[test]
fn namespace_declaration_rules() {
    for bad in [
        &br#"<r xmlns:p=""/>"#[..],
        br#"<r xmlns:xml="urn:x"/>"#,
        br#"<r xmlns:xmlns="urn:x"/>"#,
        br#"<r xmlns:p="http://www.w3.org/2000/xmlns/"/>"#,
        br#"<r xmlns="http://www.w3.org/XML/1998/namespace"/>"#,
        br#"<r xmlns:p="http://www.w3.org/XML/1998/namesp&#x61;ce"/>"#,
        br#"<xmlns:r/>"#,
        br#"<r xmlns:a="urn:x" xmlns:b="urn:x" a:k="1" b:k="2"/>"#,
        br#"<r xmlns:a="urn:x" xmlns:b="urn:&#x78;" a:k="1" b:k="2"/>"#,
    ] {
        assert_eq!(
            fatal(&[], bad).0,
            "malformed",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(
        parse(
            &[],
            r#"<r xmlns:xml="http://www.w3.org/XML/1998/namespace" xmlns=""/>"#
        )
        .fatal()
        .is_none()
    );
}

#[test]
fn many_namespace_declarations_are_fatal() {
    let decls: String = (0..5).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect();
    let (code, off, ..) = fatal(
        &[("max-attributes", "4")],
        format!("<r{decls}/>").as_bytes(),
    );
    assert_eq!((code.as_str(), off), ("limit-exceeded", 0));
    // In scope across levels counts too.
    let doc = "<r xmlns:a='urn:a' xmlns:b='urn:b'><x xmlns:c='urn:c' xmlns:d='urn:d'><y xmlns:e='urn:e'/></x></r>";
    assert_eq!(
        fatal(&[("max-attributes", "4")], doc.as_bytes()).0,
        "limit-exceeded"
    );
}

// -- resume ---------------------------------------------------------------

/// Resume by hand after record 2 and compare with the uninterrupted parse.
#[test]
fn resume_mid_document() {
    let doc = concat!(
        "<?xml version='1.0'?>\r\n<feed xmlns='urn:f' xmlns:m='urn:m'>\r\n",
        "<wrap><e id='1'><m:t>a</m:t></e>\r\n<e id='2'><t>b</t></e>\r\n",
        "<e id='3'><m:t>c</m:t></e></wrap><e id='4'/><wrap><e id='5'>x</e></wrap>\r\n</feed>\r\n",
    )
    .as_bytes();
    let h = harness(&[("record", "/feed/wrap/e"), ("key", "@id")]);
    let full = h.run_with_chunks(doc, &[3]).expect("options");
    assert_eq!(full.records().count(), 4);
    let cp = full.checkpoints[1].clone().expect("checkpoint");
    let parser = h
        .open(
            Input::from_bytes_at(&doc[cp.offset as usize..], 2, cp.offset),
            Some(cp),
        )
        .expect("resume accepted");
    let mut parser = parser;
    let mut rest = Vec::new();
    loop {
        let item = parser.next();
        let last = matches!(item, Item::End | Item::Fatal(_));
        rest.push(item);
        if last {
            break;
        }
    }
    assert_eq!(rest, full.items[2..]);
    let third = match &rest[0] {
        Item::Record(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (third.key(), third.location().line, third.location().ordinal),
        (Some("3"), 5, 3)
    );
    assert_eq!(third.fields().next().map(|(n, _)| n), Some("@id"));
    // The harness resumes from every checkpoint too.
    h.check(doc);
}

#[test]
fn resume_keeps_layout_count_and_root_record() {
    let doc = "<r><x><a/></x><x><b/></x><x><a/></x><x><c/></x><x><b/></x></r>";
    parse(&[("max-layouts", "2")], doc);
    parse(&[("record", "/r")], doc);
    parse(
        &[("record", "x"), ("max-record-bytes", "64")],
        &format!("<r><x>{}</x><x/></r>", "q".repeat(99)),
    );
}

#[test]
fn corrupt_checkpoint_state_is_refused() {
    let h = harness(&[]);
    for state in [vec![], vec![9], vec![1, 0, 5]] {
        let cp = Checkpoint { offset: 3, state };
        assert!(
            h.open(Input::from_bytes_at(b"<x/></r>", 1, 3), Some(cp))
                .is_err()
        );
    }
}

// -- helpers --------------------------------------------------------------

#[test]
fn count_breaks_across_chunks() {
    let mut cr = false;
    assert_eq!(count_breaks(b"a\r", &mut cr), 1);
    assert_eq!(count_breaks(b"\nb\r\r\n\n", &mut cr), 3);
    assert!(!cr);
}

#[test]
fn skip_past_finds_split_terminators() {
    for chunk in [1, 2, 3, 100] {
        let mut src = Src::new(Input::from_bytes(b"a-->b]]>x", chunk));
        assert!(src.skip_past(b"-->", b"<!--"));
        assert_eq!(src.offset, 4);
        assert!(src.skip_past(b"]]>", b""));
        assert_eq!(src.offset, 8);
        assert!(!src.skip_past(b"?>", b""));
        let mut src = Src::new(Input::from_bytes(b">rest", chunk));
        assert!(src.skip_past(b"]]>", b"xx]]"));
        assert_eq!(src.offset, 1);
    }
}

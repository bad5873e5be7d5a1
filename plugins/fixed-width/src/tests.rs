//! Unit tests. Every parse goes through `Harness::check`, which also re-runs
//! it with many chunk sizes and resumes it from checkpoints.

use super::*;
use sluice_sdk::testing::{Harness, Output};

fn harness(columns: &str) -> Harness<FixedWidth> {
    Harness::<FixedWidth>::new().option("columns", columns)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn config_error(h: Harness<FixedWidth>) -> ConfigError {
    match h.run(b"") {
        Ok(_) => panic!("options accepted"),
        Err(e) => e,
    }
}

fn errors(out: &Output) -> Vec<&RecordError> {
    out.errors().collect()
}

fn loc(offset: u64, length: u64, line: u64, ordinal: u64) -> Location {
    Location {
        offset,
        length,
        line,
        ordinal,
    }
}

/// The single column's value in each record.
fn column(out: &Output) -> Vec<Value<'_>> {
    out.records().map(|r| r.get(1).unwrap()).collect()
}

#[test]
fn describe_declares_every_option() {
    let info = FixedWidth::describe();
    assert_eq!(info.name, "fixed-width");
    assert_eq!(info.formats, ["fixed-width"]);
    assert!(info.resumable);
    let declared: Vec<(&str, Option<&str>)> = info
        .options
        .iter()
        .map(|o| (o.name.as_str(), o.default.as_deref()))
        .collect();
    assert_eq!(
        declared,
        [
            ("columns", None),
            ("kind", None),
            ("key", None),
            ("skip-lines", Some("0")),
            ("trim", Some("right")),
            ("allow-short", Some("false")),
            ("strict", Some("false")),
            ("max-line-bytes", Some("1048576")),
        ]
    );
    assert!(info.options.iter().all(|o| !o.description.is_empty()));
}

#[test]
fn text_columns_by_range_and_by_width() {
    let input = b"ABCJane   Paris \nDEFBob    Oslo  \n";
    let by_range = harness("code:1-3,name:4-10,city:11-16").check(input);
    let by_width = harness("code:3, name:7, city:6").check(input);
    for out in [&by_range, &by_width] {
        assert_eq!(
            out.rows(),
            [
                [s("ABC"), s("Jane"), s("Paris")],
                [s("DEF"), s("Bob"), s("Oslo")]
            ]
        );
        let r = out.records().next().unwrap();
        assert_eq!(r.layout().fields(), ["code", "name", "city"]);
        assert_eq!(r.kind(), None);
        assert_eq!(r.key(), None);
        assert_eq!(r.location(), loc(0, 17, 1, 1));
    }
}

#[test]
fn ranges_may_leave_gaps_and_come_in_any_order() {
    // Field order is the order of the entries, not of the positions.
    let out = harness("b:5-6,a:1-2").check(b"xx..yy\n");
    assert_eq!(out.rows(), [[s("yy"), s("xx")]]);
}

#[test]
fn fillers_and_mixed_syntax() {
    // A width entry starts right after the previous entry, range or width.
    let out = harness("a:2-3,b:2,_:1,c:2").check(b"-AABB|CC\n");
    assert_eq!(out.rows(), [[s("AA"), s("BB"), s("CC")]]);
    let r = out.records().next().unwrap();
    assert_eq!(r.layout().fields(), ["a", "b", "c"]);
    // Fillers may repeat and may be given as ranges.
    let out = harness("_:1-1,a:1,_:1,b:1").check(b"-A|B\n");
    assert_eq!(out.rows(), [[s("A"), s("B")]]);
}

#[test]
fn trim_modes() {
    let rows = |trim: Option<&str>| {
        let mut h = harness("t:1-6,end:1");
        if let Some(t) = trim {
            h = h.option("trim", t);
        }
        h.check(b"  ab  |\n").rows()
    };
    assert_eq!(rows(None), [[s("  ab"), s("|")]]);
    assert_eq!(rows(Some("right")), [[s("  ab"), s("|")]]);
    assert_eq!(rows(Some("both")), [[s("ab"), s("|")]]);
    assert_eq!(rows(Some("none")), [[s("  ab  "), s("|")]]);
    // An all-space text cell is empty text, not null.
    assert_eq!(
        harness("t:3,x:1").check(b"   x\n").rows(),
        [[s(""), s("x")]]
    );
}

#[test]
fn integers() {
    let out = harness("id:2,n:20:integer").check(
        b"a1                  42\n\
          a2            -0000017\n\
          a3 +123               \n\
          a4                    \n\
          a5-9223372036854775808\n",
    );
    assert_eq!(
        column(&out),
        [
            Value::Int(42),
            Value::Int(-17),
            Value::Int(123),
            Value::Null,
            Value::Int(i64::MIN)
        ]
    );
}

#[test]
fn bad_integers() {
    let out = harness("id:2,n:20:integer").check(
        b"b1                 12a\n\
          b2                1 2 \n\
          b3 9223372036854775808\n\
          b4                 - 5\n\
          b5                 1.0\n",
    );
    assert_eq!(out.records().count(), 0);
    let messages: Vec<&str> = out.errors().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "column \"n\" (positions 3-22): \"12a\" is not an integer (digits with an optional sign)",
            "column \"n\" (positions 3-22): \"1 2\" is not an integer (digits with an optional sign)",
            "column \"n\" (positions 3-22): \"9223372036854775808\" is out of range for a 64-bit integer",
            "column \"n\" (positions 3-22): \"- 5\" is not an integer (digits with an optional sign)",
            "column \"n\" (positions 3-22): \"1.0\" is not an integer (digits with an optional sign)",
        ]
    );
    for e in out.errors() {
        assert_eq!(e.code, "bad-value");
        assert_eq!(e.field.as_deref(), Some("n"));
    }
}

#[test]
fn decimals_and_floats() {
    let out = harness("id:1,n:10:decimal")
        .check(b"a     12.50\nb      -0.5\nc        .5\nd        5.\ne   +007.25\nf           \n");
    assert_eq!(
        column(&out),
        [
            Value::Float(12.5),
            Value::Float(-0.5),
            Value::Float(0.5),
            Value::Float(5.0),
            Value::Float(7.25),
            Value::Null
        ]
    );
    let out =
        harness("id:1,n:10:decimal").check(b"a       1e3\nb       1,5\nc         .\nd       inf\n");
    assert_eq!(out.records().count(), 0);
    assert!(
        out.errors().all(|e| e.code == "bad-value"
            && e.message.ends_with(
                "is not a decimal number (digits with an optional sign and one decimal point)"
            )),
        "{}",
        out.to_json_lines()
    );

    let out = harness("id:1,n:10:float").check(b"a       1e3\nb   -2.5E-1\nc       0.1\n");
    assert_eq!(
        column(&out),
        [Value::Float(1000.0), Value::Float(-0.25), Value::Float(0.1)]
    );
    let out =
        harness("id:1,n:10:float").check(b"a       inf\nb       NaN\nc     1e999\nd       1,5\n");
    assert_eq!(out.records().count(), 0);
    assert!(
        out.errors()
            .all(|e| e.message.ends_with("is not a finite number")),
        "{}",
        out.to_json_lines()
    );
}

#[test]
fn booleans() {
    let out = harness("id:1,b:5:boolean").check(
        b"a    Y\nb    n\nc    T\nd    f\ne    1\nf    0\ng true\nhFALSE\ni  yes\nj   No\nk     \n",
    );
    use Value::{Bool, Null};
    assert_eq!(
        column(&out),
        [
            Bool(true),
            Bool(false),
            Bool(true),
            Bool(false),
            Bool(true),
            Bool(false),
            Bool(true),
            Bool(false),
            Bool(true),
            Bool(false),
            Null
        ]
    );
    let out = harness("id:1,b:5:boolean").check(b"a    X\nb    2\n");
    let e = errors(&out);
    assert_eq!(e.len(), 2);
    assert_eq!(
        e[0].message,
        "column \"b\" (positions 2-6): \"X\" is not a boolean (use Y/N, yes/no, T/F, true/false or 1/0)"
    );
}

#[test]
fn dates_are_validated_and_written_as_iso_text() {
    let out =
        harness("id:1,d:10:date").check(b"a  20240229\nb2023-12-31\nc 19000101 \nd          \n");
    assert_eq!(
        column(&out),
        [
            Value::Text("2024-02-29"),
            Value::Text("2023-12-31"),
            Value::Text("1900-01-01"),
            Value::Null
        ]
    );
    let out = harness("id:1,d:10:date").check(
        b"a  20230229\nb  19000229\nc2023-1-011\nd  00000000\ne  20231301\nf 2023/12/31\ng 2023-12-31\n",
    );
    let bad: Vec<&str> = out.errors().map(|e| e.message.as_str()).collect();
    assert_eq!(bad.len(), 7, "{}", out.to_json_lines());
    assert_eq!(
        bad[0],
        "column \"d\" (positions 2-11): \"20230229\" is not a valid date (YYYYMMDD or YYYY-MM-DD)"
    );
    assert_eq!(out.records().count(), 0);
}

#[test]
fn every_error_code_with_its_exact_location() {
    let input: &[u8] = b"AB12\n\nAB\xFF1\nAB1\nABx9\r\nABCDEFGHIJ\nCD34";
    let out = harness("code:2,n:2:integer")
        .option("max-line-bytes", "8")
        .check(input);
    assert_eq!(out.rows(), [[s("AB"), s("12")], [s("CD"), s("34")]]);
    let locations: Vec<Location> = out.records().map(Record::location).collect();
    assert_eq!(locations, [loc(0, 5, 1, 1), loc(32, 4, 7, 6)]);

    let e = errors(&out);
    let summary: Vec<(&str, Location, Option<&str>)> = e
        .iter()
        .map(|e| (e.code.as_str(), e.location, e.field.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("invalid-utf8", loc(6, 5, 3, 2), Some("n")),
            ("ragged-row", loc(11, 4, 4, 3), None),
            ("bad-value", loc(15, 6, 5, 4), Some("n")),
            ("record-too-long", loc(21, 11, 6, 5), None),
        ]
    );
    assert_eq!(
        e[0].message,
        "line is not valid UTF-8: byte 0xFF at character position 3 (byte 3 of the line); \
         convert the file to UTF-8 (it may be Latin-1 or Windows-1252)"
    );
    assert_eq!(
        e[1].message,
        "line is 3 characters long but the layout needs 4 (column \"n\" is at 3-4); pass \
         allow-short=true to read missing columns as null"
    );
    assert_eq!(
        e[2].message,
        "column \"n\" (positions 3-4): \"x9\" is not an integer (digits with an optional sign)"
    );
    assert_eq!(
        e[3].message,
        "line is 10 bytes long (without its terminator), over max-line-bytes (8); raise \
         max-line-bytes if such lines are legitimate"
    );
    assert!(matches!(out.items.last(), Some(Item::End)));
}

#[test]
fn a_record_has_the_first_of_its_problems() {
    // Too long beats everything; bad UTF-8 beats width; width beats values.
    let out = harness("a:2:integer,b:2:integer")
        .option("max-line-bytes", "6")
        .check(b"\xFFxxxxxx\n\xFFx\nxx\n");
    let codes: Vec<&str> = out.errors().map(|e| e.code.as_str()).collect();
    assert_eq!(codes, ["record-too-long", "invalid-utf8", "ragged-row"]);
    // With several bad values, the first column in layout order is named.
    let out = harness("a:2:integer,b:2:integer").check(b"xxyy\n");
    assert_eq!(errors(&out)[0].field.as_deref(), Some("a"));
}

#[test]
fn crlf_and_a_last_line_without_terminator() {
    let out = harness("code:2,n:2:integer").check(b"AB12\r\nCD34\r\n\r\nEF56\r");
    assert_eq!(
        out.rows(),
        [[s("AB"), s("12")], [s("CD"), s("34")], [s("EF"), s("56")]]
    );
    let locations: Vec<Location> = out.records().map(Record::location).collect();
    assert_eq!(
        locations,
        [loc(0, 6, 1, 1), loc(6, 6, 2, 2), loc(14, 5, 4, 3)]
    );
    // The CR is a terminator, not data: strict mode does not see it as a
    // character after the layout, and trim=none does not keep it.
    let out = harness("t:4")
        .option("strict", "true")
        .option("trim", "none")
        .check(b"ab  \r\n");
    assert_eq!(out.rows(), [[s("ab  ")]]);
}

#[test]
fn blank_lines_are_skipped_but_counted() {
    let out = harness("a:2").check(b"\n  \n\t\r\nxy\n \n");
    assert_eq!(out.rows(), [[s("xy")]]);
    assert_eq!(out.records().next().unwrap().location(), loc(7, 3, 4, 1));
    assert_eq!(harness("a:2").check(b"").items, [Item::End]);
    assert_eq!(harness("a:2").check(b"\n\r\n   ").items, [Item::End]);
}

#[test]
fn skip_lines_skips_anything() {
    // The header is not UTF-8 and is longer than max-line-bytes: skipped
    // lines are not parsed, and a skipped blank line still counts.
    let out = harness("a:2,b:2:integer")
        .option("skip-lines", "3")
        .option("max-line-bytes", "10")
        .check(b"ACCOUNT STATEMENT \xE9T\xE9 2024\n\nAA BB\nxy12\nzw34\n");
    assert_eq!(out.rows(), [[s("xy"), s("12")], [s("zw"), s("34")]]);
    let r = out.records().next().unwrap();
    assert_eq!(r.location(), loc(34, 5, 4, 1));
    // More lines to skip than the input has.
    let out = harness("a:2")
        .option("skip-lines", "5")
        .check(b"one\ntwo\n");
    assert_eq!(out.items, [Item::End]);
}

#[test]
fn short_lines() {
    let cols = "a:2,n:3:integer,t:3";
    let input: &[u8] = b"ab123xyz\nab12\nab\na\n";
    let out = harness(cols).check(input);
    assert_eq!(out.records().count(), 1);
    let e = errors(&out);
    assert_eq!(e.len(), 3);
    assert!(e.iter().all(|e| e.code == "ragged-row"));
    assert_eq!(
        e[0].message,
        "line is 4 characters long but the layout needs 8 (column \"n\" is at 3-5); pass \
         allow-short=true to read missing columns as null"
    );

    // allow-short: a column cut short keeps what is there, missing ones are
    // null whatever their type.
    let out = harness(cols).option("allow-short", "true").check(input);
    assert_eq!(out.errors().count(), 0);
    assert_eq!(
        out.rows(),
        [
            [s("ab"), s("123"), s("xyz")],
            [s("ab"), s("12"), None],
            [s("ab"), None, None],
            [s("a"), None, None],
        ]
    );
}

#[test]
fn long_lines() {
    let cols = "a:2,b:2";
    let input: &[u8] = b"aabbEXTRA\naabb    \naabb\n";
    // By default the tail is ignored.
    let out = harness(cols).check(input);
    assert_eq!(out.rows().len(), 3);
    // strict refuses text after the layout, but not space padding.
    let out = harness(cols).option("strict", "true").check(input);
    assert_eq!(out.rows(), [[s("aa"), s("bb")], [s("aa"), s("bb")]]);
    let e = errors(&out);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].code, "ragged-row");
    assert_eq!(e[0].location, loc(0, 10, 1, 1));
    assert_eq!(
        e[0].message,
        "line is 9 characters long but the layout ends at 4, and strict=true refuses the extra \
         text \"EXTRA\""
    );
    // A trailing filler extends the layout: the padding is then required.
    let out = harness("a:2,b:2,_:4").option("strict", "true").check(input);
    let codes: Vec<&str> = out.errors().map(|e| e.code.as_str()).collect();
    assert_eq!(codes, ["ragged-row", "ragged-row"]);
    assert_eq!(out.rows(), [[s("aa"), s("bb")]]);
}

#[test]
fn positions_count_characters_not_bytes() {
    // "ë" is 2 bytes, each CJK character 3, the emoji 4.
    let input = "Zoë  東京都 🎉 1\nJosé 北京  ✓ 0\n".as_bytes();
    let out = harness("name:5,city:4,mark:2,flag:1:boolean").check(input);
    assert_eq!(
        out.rows(),
        [
            [s("Zoë"), s("東京都"), s("🎉"), s("true")],
            [s("José"), s("北京"), s("✓"), s("false")]
        ]
    );
    // Widths and ragged rows are counted in characters too.
    let out = harness("name:5,city:4").check("Zoë  東京\n".as_bytes());
    assert_eq!(
        errors(&out)[0].message,
        "line is 7 characters long but the layout needs 9 (column \"city\" is at 6-9); pass \
         allow-short=true to read missing columns as null"
    );
    let out = harness("name:3")
        .option("strict", "true")
        .check("abcé€\n".as_bytes());
    assert!(
        errors(&out)[0]
            .message
            .starts_with("line is 5 characters long")
    );
    // The position of a bad byte is a character position, and names its column.
    let out = harness("name:5,city:4").check(b"Zo\xC3\xAB  \xFF\xFF\n");
    let e = errors(&out);
    assert_eq!(e[0].field.as_deref(), Some("city"));
    assert!(
        e[0].message
            .contains("byte 0xFF at character position 6 (byte 7 of the line)"),
        "{}",
        e[0].message
    );
}

#[test]
fn key_and_kind() {
    let out = harness("id:3:integer,name:5")
        .option("key", "id")
        .option("kind", "customer")
        .check(b"007Alice\n   Bob  \n 42Carol\n");
    let keys: Vec<Option<&str>> = out.records().map(Record::key).collect();
    // The key is the cell's text without its spaces; an empty cell gives
    // no key.
    assert_eq!(keys, [Some("007"), None, Some("42")]);
    assert!(out.records().all(|r| r.kind() == Some("customer")));
    assert_eq!(
        out.rows(),
        [
            [s("7"), s("Alice")],
            [None, s("Bob")],
            [s("42"), s("Carol")]
        ]
    );
    let out = harness("id:3,name:5")
        .option("key", "name")
        .check(b"007  Bob\n");
    assert_eq!(out.records().next().unwrap().key(), Some("Bob"));
}

#[test]
fn byte_order_marks() {
    // A UTF-8 BOM is not a character: it does not shift line 1.
    let out = harness("a:2,b:2").check(b"\xEF\xBB\xBFaabb\nccdd\n");
    assert_eq!(out.rows(), [[s("aa"), s("bb")], [s("cc"), s("dd")]]);
    assert_eq!(out.records().next().unwrap().location(), loc(0, 8, 1, 1));
    // A line holding only the BOM is blank.
    let out = harness("a:2,b:2").check(b"\xEF\xBB\xBF\naabb\n");
    assert_eq!(out.records().next().unwrap().location(), loc(4, 5, 2, 1));
    // A BOM elsewhere is an ordinary (zero-width) character.
    let out = harness("a:2,b:2").check(b"aabb\n\xEF\xBB\xBFccdd\n");
    assert_eq!(out.rows()[1], [s("\u{feff}c"), s("cd")]);

    // UTF-16 and UTF-32 end the parse, whichever byte order.
    for (input, name, len) in [
        (&b"\xFF\xFEa\x00a\x00b\x00b\x00\n\x00"[..], "UTF-16LE", 2),
        (&b"\xFE\xFF\x00a\x00a\x00b\x00b\x00\n"[..], "UTF-16BE", 2),
        (
            &b"\xFF\xFE\x00\x00a\x00\x00\x00\n\x00\x00\x00"[..],
            "UTF-32LE",
            4,
        ),
        (
            &b"\x00\x00\xFE\xFF\x00\x00\x00a\x00\x00\x00\n"[..],
            "UTF-32BE",
            4,
        ),
    ] {
        let out = harness("a:2,b:2").check(input);
        assert_eq!(out.items.len(), 1, "{name}");
        let fatal = out.fatal().expect("a fatal error");
        assert_eq!(fatal.code, "unsupported-encoding");
        assert!(fatal.message.contains(name), "{}", fatal.message);
        assert_eq!(fatal.location, loc(0, len, 1, 1));
    }
}

#[test]
fn over_long_lines_are_not_buffered() {
    let mut input = vec![b'x'; 4 << 20];
    input.extend_from_slice(b"\nab\n");
    let h = harness("a:2").option("max-line-bytes", "1000");
    let mut parser = h
        .open(Input::from_bytes(&input, 64 << 10), None)
        .expect("options accepted");
    let Item::Error(e) = parser.next() else {
        panic!("expected an error");
    };
    assert_eq!(e.code, "record-too-long");
    assert_eq!(e.location, loc(0, (4 << 20) + 1, 1, 1));
    assert!(parser.buf.capacity() <= 4096, "{}", parser.buf.capacity());
    assert!(matches!(parser.next(), Item::Record(_)));
    assert!(matches!(parser.next(), Item::End));
}

#[test]
fn resumes_in_the_middle() {
    // check() resumes from every checkpoint; this input mixes records,
    // errors, blank and skipped lines so every counter matters.
    let input = "HDR\n\nAB12\nAB\u{e9}x\n\nCD34\r\nEF\n\n\nGH78".as_bytes();
    let out = harness("code:2,n:2:integer")
        .option("skip-lines", "1")
        .check(input);
    let ordinals: Vec<(u64, u64)> = out
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some((r.location().line, r.location().ordinal)),
            Item::Error(e) => Some((e.location.line, e.location.ordinal)),
            _ => None,
        })
        .collect();
    assert_eq!(ordinals, [(3, 1), (4, 2), (6, 3), (7, 4), (10, 5)]);

    // Resuming by hand from the checkpoint after the second item.
    let cp = out.checkpoints[1].clone().expect("a checkpoint");
    assert_eq!(cp.offset, 16);
    let start = usize::try_from(cp.offset).unwrap();
    let mut parser = harness("code:2,n:2:integer")
        .option("skip-lines", "1")
        .open(
            Input::from_bytes_at(&input[start..], 3, cp.offset),
            Some(cp),
        )
        .expect("resume accepted");
    let Item::Record(r) = parser.next() else {
        panic!("expected a record");
    };
    assert_eq!(r.location(), loc(17, 6, 6, 3));
}

#[test]
fn corrupt_checkpoint_state_is_refused() {
    for state in [vec![], vec![9, 1, 1], vec![1, 1, 1, 0], vec![1, 1, 5]] {
        let cp = Checkpoint { offset: 0, state };
        let e = harness("a:1")
            .open(Input::from_bytes(b"", 1), Some(cp))
            .err()
            .expect("refused");
        assert!(e.message.starts_with("cannot resume:"), "{e}");
    }
}

#[test]
fn bad_columns_are_config_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "",
            "entry 1 is empty; separate entries with single commas, with no trailing comma",
        ),
        (
            "a:1,,b:2",
            "entry 2 is empty; separate entries with single commas, with no trailing comma",
        ),
        (
            "a:1,",
            "entry 2 is empty; separate entries with single commas, with no trailing comma",
        ),
        (
            "a",
            "entry 1 (\"a\") is not name:start-end[:type] or name:width[:type]",
        ),
        (
            "a:1:text:x",
            "entry 1 (\"a:1:text:x\") is not name:start-end[:type] or name:width[:type]",
        ),
        (":1-2", "entry 1 (\":1-2\") has no name"),
        (
            "a:0",
            "column \"a\" has width 0; every column covers at least one character",
        ),
        ("a:0-3", "column \"a\": positions start at 1, not 0"),
        (
            "a:5-3",
            "column \"a\": end 3 is before start 5; write start-end with start <= end",
        ),
        ("a:x", "column \"a\": width \"x\" is not a whole number"),
        ("a:-3", "column \"a\": start \"\" is not a whole number"),
        ("a:1-b", "column \"a\": end \"b\" is not a whole number"),
        (
            "a:1-6,b:5-10",
            "columns \"a\" (1-6) and \"b\" (5-10) overlap at positions 5-6",
        ),
        (
            "a:2-9,_:3-4",
            "columns \"a\" (2-9) and \"_\" (3-4) overlap at positions 3-4",
        ),
        (
            "a:3,b:2-3",
            "columns \"a\" (1-3) and \"b\" (2-3) overlap at positions 2-3",
        ),
        (
            "id:1-6,name:7-9,id:10-12",
            "column name \"id\" is used twice (at 1-6 and at 10-12); names must be unique",
        ),
        (
            "a:1:money",
            "column \"a\": unknown type \"money\"; use text, integer, decimal, float, boolean or \
             date",
        ),
        (
            "_:1:integer",
            "entry 1 (\"_:1:integer\") is a filler (_), which is skipped and takes no type",
        ),
        (
            "_:1,_:2",
            "declares no column other than fillers (_); name at least one",
        ),
        (
            "a:1048570-1048577",
            "column \"a\" ends at position 1048577, but max-line-bytes is 1048576, so no \
             accepted line could reach it",
        ),
    ];
    for (columns, message) in cases {
        let e = config_error(harness(columns));
        assert_eq!(e.option.as_deref(), Some("columns"), "{columns:?}");
        assert_eq!(e.message, *message, "{columns:?}");
    }
}

#[test]
fn column_syntax_is_lenient_about_spaces_and_type_case() {
    let out = harness(" id : 1 - 2 : Integer ,\n name: 3 ").check(b"12abc\n");
    assert_eq!(out.rows(), [[s("12"), s("abc")]]);
}

#[test]
fn bad_options_are_config_errors() {
    let e = config_error(Harness::<FixedWidth>::new());
    assert_eq!(e.option.as_deref(), Some("columns"));
    assert!(e.message.starts_with("required: "), "{e}");

    let cases: &[(&str, &str, &str)] = &[
        (
            "key",
            "amount",
            "\"amount\" is not a column; the columns are: id, name",
        ),
        (
            "key",
            "_",
            "\"_\" is not a column; the columns are: id, name",
        ),
        (
            "trim",
            "left",
            "invalid value \"left\": use none, right or both",
        ),
        (
            "kind",
            " ",
            "is empty; give an entity name or leave the option out",
        ),
        (
            "max-line-bytes",
            "0",
            "must be between 1 and 1073741824, got 0",
        ),
        (
            "max-line-bytes",
            "2000000000",
            "must be between 1 and 1073741824, got 2000000000",
        ),
        (
            "allow-short",
            "maybe",
            "invalid value \"maybe\": use true or false",
        ),
        ("strict", "2", "invalid value \"2\": use true or false"),
    ];
    for (option, value, message) in cases {
        let e = config_error(harness("id:1-2,_:1,name:3").option(option, value));
        assert_eq!(e.option.as_deref(), Some(*option));
        assert_eq!(e.message, *message, "{option}={value}");
    }
    let e = config_error(harness("id:2").option("skip-lines", "-1"));
    assert_eq!(e.option.as_deref(), Some("skip-lines"));
    // The layout must fit in the line limit.
    let e = config_error(harness("id:10").option("max-line-bytes", "9"));
    assert!(e.message.contains("max-line-bytes is 9"), "{e}");
}

#[test]
fn messages_cut_long_values() {
    let value = "x".repeat(60);
    let out = harness("n:60:integer").check(format!("{value}\n").as_bytes());
    let e = errors(&out);
    assert_eq!(
        e[0].message,
        format!(
            "column \"n\" (positions 1-60): \"{}\"... is not an integer (digits with an optional \
             sign)",
            "x".repeat(40)
        )
    );
}

//! A small bank statement in a typical fixed-width export layout, parsed the
//! way a tenant would configure it, through the SDK's test harness (every
//! chunk size, every checkpoint resumed).
//!
//! `data/statement.txt` is invented: two header lines, seven transactions
//! with non-ASCII descriptions (one with CJK characters, which look shifted
//! in a terminal but are one position each), a blank line and a trailer that
//! does not fit the layout.

use sluice_plugin_fixed_width::FixedWidth;
use sluice_sdk::testing::{Harness, Output};
use sluice_sdk::{Item, Location, Value};

const STATEMENT: &[u8] = include_bytes!("data/statement.txt");
const EXPECTED: &str = include_str!("data/statement.expected.jsonl");

/// The layout as a bank's format description would list it.
const COLUMNS: &str = "txn_id:1-8, posted:9-16:date, value_date:17-24:date, type:25-27, \
                       description:28-57, amount:58-70:decimal, currency:71-73, \
                       cleared:74-74:boolean, balance:75-89:decimal";

fn parse() -> Output {
    Harness::<FixedWidth>::new()
        .option("columns", COLUMNS)
        .option("skip-lines", "2")
        .option("key", "txn_id")
        .option("kind", "transaction")
        .option("strict", "true")
        .check(STATEMENT)
}

fn cents(v: Option<Value<'_>>) -> i64 {
    match v {
        Some(Value::Float(x)) => (x * 100.0).round() as i64,
        other => panic!("not an amount: {other:?}"),
    }
}

#[test]
fn statement_matches_the_expected_items() {
    let got = parse().to_json_lines();
    assert!(
        got == EXPECTED,
        "items differ from tests/data/statement.expected.jsonl; if the change is intended, \
         replace the file with:\n{got}"
    );
}

#[test]
fn statement_records() {
    let out = parse();
    let records: Vec<_> = out.records().collect();
    assert_eq!(records.len(), 7);

    let first = records[0];
    assert_eq!(first.kind(), Some("transaction"));
    assert_eq!(first.key(), Some("TX240301"));
    let fields: Vec<(&str, Value)> = first.fields().collect();
    assert_eq!(
        fields,
        [
            ("txn_id", Value::Text("TX240301")),
            ("posted", Value::Text("2024-03-01")),
            ("value_date", Value::Text("2024-03-01")),
            ("type", Value::Text("CRD")),
            ("description", Value::Text("Salary March Acme GmbH")),
            ("amount", Value::Float(3200.0)),
            ("currency", Value::Text("EUR")),
            ("cleared", Value::Bool(true)),
            ("balance", Value::Float(5700.0)),
        ]
    );
    // Line 3 is the first after the two header lines; 89 characters + LF.
    assert_eq!(
        first.location(),
        Location {
            offset: 174,
            length: 90,
            line: 3,
            ordinal: 1
        }
    );

    // Multi-byte descriptions do not shift the columns after them.
    let descriptions: Vec<_> = records
        .iter()
        .map(|r| r.get_by_name("description").unwrap())
        .collect();
    assert_eq!(descriptions[1], Value::Text("Rent Müllerstraße 12"));
    assert_eq!(descriptions[5], Value::Text("Online order 注文 4411"));

    // The pending transaction has no value date and is not cleared.
    let pending = records[5];
    assert_eq!(pending.get_by_name("value_date"), Some(Value::Null));
    assert_eq!(pending.get_by_name("cleared"), Some(Value::Bool(false)));

    // Every running balance is the previous one plus the amount.
    let mut balance = 250_000; // opening balance, in cents
    for r in &records {
        balance += cents(r.get_by_name("amount"));
        assert_eq!(cents(r.get_by_name("balance")), balance, "{r:?}");
    }
    assert_eq!(balance, 439_319);
}

#[test]
fn the_trailer_is_a_ragged_row() {
    let out = parse();
    let errors: Vec<_> = out.errors().collect();
    assert_eq!(errors.len(), 1);
    let e = errors[0];
    assert_eq!(e.code, "ragged-row");
    let trailer = b"END OF STATEMENT   7 ITEMS   CLOSING BALANCE EUR 4393.19\n";
    assert_eq!(
        e.location,
        Location {
            offset: (STATEMENT.len() - trailer.len()) as u64,
            length: trailer.len() as u64,
            line: 11,
            ordinal: 8
        }
    );
    assert!(matches!(out.items.last(), Some(Item::End)));
}

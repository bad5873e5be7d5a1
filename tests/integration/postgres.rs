//! The PostgreSQL target against a real server: imports through the real
//! engine, constraint failures isolated by bisection, tables that do not
//! fit, connections killed mid-import, undo, and SIGKILLed processes.
//!
//! The server comes from `SLUICE_TEST_POSTGRES_URL` (CI starts one; see
//! `.ci/run`). Without it the tests pass without running, and say so once on
//! stderr. Every test works in its own schema, dropped at the end, so tests
//! run in parallel.

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use sluice::journal::{JobState, Stage};
use sluice::sink::postgres::{PgSink, identifier, redact};
use sluice::sink::{Ledger, Sink, SinkError, StepRecord, UndoAction, UndoScope};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::common::{
    Fixture, at_every_occurrence, crash_points, csv_rows, fresh_data_dir, id_v_rows, jobs_of, run,
    sluice_cmd, test_input,
};

const SKIP: &str = "PostgreSQL tests skipped: set \
                    SLUICE_TEST_POSTGRES_URL=postgres://user@127.0.0.1:PORT/db to run them";

/// A schema of its own on the test server, and a client to look at it.
struct Pg {
    schema: String,
    /// The target URL: the server's, with `?schema=`.
    url: String,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    /// `None` (after saying so) when no server is configured.
    fn new() -> Option<Pg> {
        Self::with_params("")
    }

    /// With extra URL parameters (`&k=v`).
    fn with_params(extra: &str) -> Option<Pg> {
        let base = match std::env::var("SLUICE_TEST_POSTGRES_URL") {
            Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => {
                // Straight to stderr: the test harness hides what passing
                // tests print, and a skip must not pass unnoticed.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    let _ = writeln!(std::io::stderr(), "{SKIP}");
                });
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "t_{}_{:x}_{}",
            std::process::id(),
            nanos,
            N.fetch_add(1, Ordering::SeqCst)
        );
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema={schema}{extra}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&base, NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {base}: {e}"));
            tokio::spawn(conn);
            client
        });
        let pg = Pg {
            schema,
            url,
            rt,
            client,
        };
        pg.exec(&format!("CREATE SCHEMA {}", pg.schema));
        Some(pg)
    }

    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Rows of `sql`, every value as text.
    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let messages = self
            .rt
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    }

    fn one(&self, sql: &str) -> String {
        let rows = self.rows(sql);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].clone().unwrap_or_default()
    }

    fn count(&self, sql: &str) -> i64 {
        self.one(sql).parse().unwrap()
    }

    /// `"schema"."name"`.
    fn t(&self, name: &str) -> String {
        format!("\"{}\".\"{name}\"", self.schema)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.rt.block_on(
            self.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)),
        );
    }
}

/// `url` with `password` set, unless it has one.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    match rest.split_once('@') {
        Some((user, host)) if !user.contains(':') => {
            format!("{scheme}://{user}:{password}@{host}")
        }
        Some(_) => url.to_owned(),
        None => format!("{scheme}://postgres:{password}@{rest}"),
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn urls_are_checked_and_kept_without_password() {
    assert_eq!(
        redact("postgres://ann:s3cret@db.local:5433/sales?schema=imports").unwrap(),
        "postgres://ann@db.local:5433/sales?schema=imports"
    );
    assert_eq!(
        redact("postgresql://ann@db/sales?password=pw&sslmode=disable").unwrap(),
        "postgresql://ann@db/sales?sslmode=disable"
    );
    assert_eq!(
        redact("postgres://db/sales").unwrap(),
        "postgres://db/sales"
    );
    let e = redact("mysql://ann:pw@db/sales").unwrap_err();
    assert!(
        e.contains("not a PostgreSQL URL") && !e.contains("pw"),
        "{e}"
    );
    let e = redact("postgres://ann:pw@db/sales?sslmode=require").unwrap_err();
    assert!(e.contains("TLS") && !e.contains("pw@"), "{e}");
    let e = redact("postgres://ann@db/sales?colour=blue").unwrap_err();
    assert!(e.contains("colour"), "{e}");
    let e = redact("postgres://ann@db/sales?schema=").unwrap_err();
    assert!(e.contains("schema"), "{e}");
    let sink = PgSink::connect("postgres://ann@db/sales?schema=Imports%20A").unwrap();
    assert_eq!(sink.schema(), "Imports A");
    assert_eq!(
        PgSink::connect("postgres://ann@db/sales").unwrap().schema(),
        "public"
    );
}

#[test]
fn long_names_are_cut_with_a_hash() {
    assert_eq!(identifier("customers"), "customers");
    let base = "a".repeat(70);
    let (x, y) = (
        identifier(&format!("{base}x")),
        identifier(&format!("{base}y")),
    );
    assert_eq!(x.len(), 63);
    assert_ne!(x, y);
    assert!(
        x.starts_with(&"a".repeat(54)) && x.as_bytes()[54] == b'_',
        "{x}"
    );
    let accented = "é".repeat(40); // 80 bytes
    let id = identifier(&accented);
    assert!(id.len() <= 63 && id.starts_with("éé"), "{id}");
}

#[test]
fn csv_imports_into_a_table_and_a_second_import_adds_nothing() {
    let Some(pg) = Pg::new() else { return };
    // A password in the URL (the test server trusts local connections, so
    // any will do) is used by this process but never journaled.
    let url = with_password(&pg.url, "not-in-the-journal");
    let f = Fixture::new(40);
    let target = |r: &mut sluice::engine::ImportRequest| {
        r.key = Some("id".into());
        r.target = Some(url.clone());
    };
    let job = f.import("people.csv", &csv_rows(100, 0), target);
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert_eq!((job.counts.applied, job.counts.failed), (100, 0));
    assert_eq!(job.target, pg.url);
    assert!(!format!("{job:?}").contains("not-in-the-journal"));
    let expected: Vec<Vec<Option<String>>> = (1..=100)
        .map(|i| {
            vec![
                s("acme"),
                Some(i.to_string()),
                Some(i.to_string()),
                Some(format!("name-{i}")),
                Some((i * 7 % 1000).to_string()),
                Some(job.id.to_string()),
                Some(i.to_string()),
            ]
        })
        .collect();
    let table = pg.t("people");
    let select = format!(
        "SELECT tenant, key, id, name, amount, _sluice_job, _sluice_ordinal FROM {table} \
         ORDER BY key::int"
    );
    assert_eq!(pg.rows(&select), expected);
    assert!(
        pg.one(&format!("SELECT obj_description('{table}'::regclass)"))
            .starts_with("sluice-managed"),
        "sluice marks the tables it creates"
    );
    let history = pg.t("sluice_history");
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM {history} WHERE job = {} AND before IS NULL",
            job.id
        )),
        100
    );

    // The same data again, as a new job: the same rows, none duplicated.
    let again = f.import("people.csv", &csv_rows(100, 0), |r| {
        target(r);
        r.force_new = true;
    });
    assert_eq!((again.counts.applied, again.counts.failed), (100, 0));
    let mut expected_again = expected.clone();
    for row in &mut expected_again {
        row[5] = Some(again.id.to_string());
    }
    assert_eq!(pg.rows(&select), expected_again);
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM {history} WHERE job = {} AND before IS NOT NULL",
            again.id
        )),
        100,
        "the second job keeps the first one's rows as before-images"
    );

    // A new field becomes a new column; rows without it keep NULL.
    let job3 = f.import(
        "people.csv",
        b"id,name,amount,email\n1,ann,5,ann@example.com\n",
        target,
    );
    assert_eq!((job3.counts.applied, job3.counts.failed), (1, 0));
    assert_eq!(
        pg.rows(&format!(
            "SELECT key, name, email FROM {table} WHERE key IN ('1', '2') ORDER BY key"
        )),
        vec![
            vec![s("1"), s("ann"), s("ann@example.com")],
            vec![s("2"), s("name-2"), None],
        ]
    );
    assert_eq!(pg.count(&format!("SELECT count(*) FROM {table}")), 100);
}

#[test]
fn records_the_database_refuses_fail_alone_and_the_rest_commits() {
    let Some(pg) = Pg::new() else { return };
    let table = pg.t("people");
    pg.exec(&format!(
        "CREATE TABLE {table} (tenant text NOT NULL, key text NOT NULL, id bigint, name text, \
         amount bigint CHECK (amount % 10 <> 3), _sluice_job bigint, _sluice_ordinal bigint, \
         UNIQUE (name), \
         PRIMARY KEY (tenant, key))"
    ));
    // Record 50's amount is not a number; records 60 and 61 share a name
    // (unique): the first one written wins.
    let name = |i: u64| match i {
        60 | 61 => "twin".to_owned(),
        i => format!("name-{i}"),
    };
    let mut csv = String::from("id,name,amount\n");
    for i in 1..=100 {
        let amount = if i == 50 {
            "lots".to_owned()
        } else {
            (i * 7 % 1000).to_string()
        };
        csv.push_str(&format!("{i},{},{amount}\n", name(i)));
    }
    let refused: Vec<u64> = (1..=100u64)
        .filter(|i| *i != 50 && i * 7 % 1000 % 10 == 3)
        .collect();
    assert!(refused.len() > 3, "the data exercises the constraint");
    let f = Fixture::new(25);
    let job = f.import("people.csv", csv.as_bytes(), |r| {
        r.key = Some("id".into());
        r.target = Some(pg.url.clone());
    });
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert!(!refused.contains(&61));
    let failed = refused.len() as u64 + 2;
    assert_eq!(
        (job.counts.applied, job.counts.failed),
        (100 - failed, failed)
    );
    let errs = f.errors(job.id);
    assert_eq!(errs.len() as u64, failed);
    for (ordinal, e) in &errs {
        assert_eq!(e.stage, Stage::Apply);
        assert_eq!(e.class.as_deref(), Some("permanent"));
        if *ordinal == 61 {
            assert_eq!(e.code, "pg-23505", "{}", e.message);
            assert!(e.message.contains("people_name_key"), "{}", e.message);
        } else if *ordinal == 50 {
            assert_eq!(e.code, "pg-bad-value");
            assert!(
                e.message.contains("\"amount\"") && e.message.contains("bigint"),
                "{}",
                e.message
            );
        } else {
            assert!(refused.contains(ordinal), "{ordinal}");
            assert_eq!(e.code, "pg-23514", "{}", e.message);
            assert!(
                e.message.contains("check constraint") && e.message.contains(&table),
                "{}",
                e.message
            );
            assert_eq!(
                e.record,
                format!("{ordinal},{},{}\n", name(*ordinal), ordinal * 7 % 1000)
            );
        }
    }
    let keys: Vec<u64> = pg
        .rows(&format!("SELECT key FROM {table} ORDER BY key::int"))
        .into_iter()
        .map(|r| r[0].as_ref().unwrap().parse().unwrap())
        .collect();
    let want: Vec<u64> = (1..=100)
        .filter(|i| *i != 50 && *i != 61 && !refused.contains(i))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(
        pg.one(&format!("SELECT amount + id FROM {table} WHERE key = '3'")),
        "24",
        "text from the CSV went into bigint columns as numbers"
    );
    // Refused records left nothing behind, not even history.
    assert_eq!(
        pg.count(&format!("SELECT count(*) FROM {}", pg.t("sluice_history"))),
        want.len() as i64
    );
}

#[test]
fn typed_columns_take_converted_values_and_reject_what_does_not_convert() {
    let Some(pg) = Pg::new() else { return };
    let table = pg.t("items");
    pg.exec(&format!(
        "CREATE TABLE {table} (tenant text NOT NULL, key text NOT NULL, n integer, \
         flag boolean, doc jsonb, price numeric(10,2), day date, note varchar(5), \
         created timestamptz NOT NULL DEFAULT now(), _sluice_job bigint, _sluice_ordinal bigint, \
         UNIQUE (tenant, key))"
    ));
    let csv = "key,n,flag,doc,price,day,note\n\
               a,1,yes,\"{\"\"x\"\": 1}\",9.99,2024-02-29,hi\n\
               b,99999999999,t,{},1,2024-01-01,hi\n\
               c,3,maybe,{},1,2024-01-01,hi\n\
               d,4,f,not json,1,2024-01-01,hi\n\
               e,5,f,[],1,2023-02-30,hi\n\
               f,6,0,null,2.5,2024-03-01,toolong\n\
               g,,f,{},1,2024-01-01,hi\n\
               h,-8,OFF,[1],0.5,2024-12-31,\n";
    let f = Fixture::new(100);
    let job = f.import("items.csv", csv.as_bytes(), |r| {
        r.key = Some("key".into());
        r.target = Some(pg.url.clone());
    });
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    let errs = f.errors(job.id);
    let codes: Vec<(&str, &str)> = errs
        .iter()
        .map(|(_, e)| (&e.record[..1], e.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("b", "pg-bad-value"),
            ("c", "pg-bad-value"),
            ("d", "pg-bad-value"),
            ("e", "pg-22008"),
            ("f", "pg-22001"),
            ("g", "pg-bad-value"),
        ]
    );
    let message = |k: &str| {
        &errs
            .iter()
            .find(|(_, e)| e.record.starts_with(k))
            .unwrap()
            .1
            .message
    };
    assert!(
        message("b").contains("\"n\"") && message("b").contains("integer"),
        "{}",
        message("b")
    );
    assert!(
        message("c").contains("\"flag\"") && message("c").contains("boolean"),
        "{}",
        message("c")
    );
    assert!(
        message("d").contains("\"doc\"") && message("d").contains("not JSON"),
        "{}",
        message("d")
    );
    assert!(message("e").contains("out of range"), "{}", message("e"));
    assert_eq!(
        pg.rows(&format!(
            "SELECT key, n, flag, doc, price, day, note FROM {table} ORDER BY key"
        )),
        vec![
            vec![
                s("a"),
                s("1"),
                s("t"),
                s("{\"x\": 1}"),
                s("9.99"),
                s("2024-02-29"),
                s("hi")
            ],
            vec![
                s("h"),
                s("-8"),
                s("f"),
                s("[1]"),
                s("0.50"),
                s("2024-12-31"),
                s("")
            ],
        ]
    );
}

#[test]
fn a_table_that_does_not_fit_fails_its_records_naming_the_column() {
    let Some(pg) = Pg::new() else { return };
    let table = pg.t("people");
    pg.exec(&format!(
        "CREATE TABLE {table} (tenant text NOT NULL, key text NOT NULL, id text, amount text, \
         _sluice_job bigint, _sluice_ordinal bigint, PRIMARY KEY (tenant, key))"
    ));
    let f = Fixture::new(100);
    let job = f.import("people.csv", &csv_rows(10, 0), |r| {
        r.key = Some("id".into());
        r.target = Some(pg.url.clone());
    });
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert_eq!((job.counts.applied, job.counts.failed), (0, 10));
    let errs = f.errors(job.id);
    assert_eq!(errs.len(), 10);
    let e = &errs[0].1;
    assert_eq!(
        (e.stage, e.code.as_str()),
        (Stage::Apply, "pg-table-mismatch")
    );
    assert_eq!(e.class.as_deref(), Some("permanent"));
    assert!(
        e.message.contains("no column \"name\"")
            && e.message
                .contains(&format!("ALTER TABLE {table} ADD COLUMN \"name\" text"))
            && e.message.contains("not created by sluice"),
        "{}",
        e.message
    );
    assert_eq!(pg.count(&format!("SELECT count(*) FROM {table}")), 0);
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = '{}' \
             AND table_name = 'people'",
            pg.schema
        )),
        6,
        "sluice does not change a table it did not create"
    );

    // Without a unique constraint on (tenant, key) the message says so too.
    pg.exec(&format!(
        "ALTER TABLE {table} DROP CONSTRAINT people_pkey, ADD COLUMN name text"
    ));
    let job = f.import("people.csv", &csv_rows(3, 0), |r| {
        r.key = Some("id".into());
        r.target = Some(pg.url.clone());
    });
    let e = &f.errors(job.id)[0].1;
    assert!(
        e.message
            .contains("unique constraint on exactly (tenant, key)")
            && e.message.contains("ADD UNIQUE (tenant, key)"),
        "{}",
        e.message
    );
}

#[test]
fn connections_killed_mid_import_are_retried_and_every_row_lands_once() {
    let app = format!(
        "sluice_kill_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let Some(pg) = Pg::with_params(&format!("&application_name={app}")) else {
        return;
    };
    let killer = Pg::new().expect("configured");
    const ROWS: usize = 20_000;
    let f = Fixture::new(250);
    let done = AtomicBool::new(false);
    let kills = std::thread::scope(|scope| {
        let killing = scope.spawn(|| {
            let mut kills = 0;
            let started = std::time::Instant::now();
            while !done.load(Ordering::SeqCst)
                && kills < 3
                && started.elapsed() < std::time::Duration::from_secs(120)
            {
                std::thread::sleep(std::time::Duration::from_millis(60));
                let pids = killer.rows(&format!(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = '{app}'"
                ));
                for pid in pids {
                    let pid = pid[0].as_deref().unwrap();
                    if killer.one(&format!("SELECT pg_terminate_backend({pid})")) == "t" {
                        kills += 1;
                    }
                }
            }
            kills
        });
        let job = f.import("rows.csv", &csv_rows(ROWS, 0), |r| {
            r.key = Some("id".into());
            r.target = Some(pg.url.clone());
        });
        done.store(true, Ordering::SeqCst);
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        assert_eq!(
            (job.counts.applied, job.counts.failed),
            (ROWS as u64, 0),
            "{:?}",
            f.errors(job.id).first()
        );
        killing.join().unwrap()
    });
    assert!(
        kills > 0,
        "no connection was killed: the import was too quick"
    );
    eprintln!("postgres: {kills} sluice connections killed mid-import, all rows landed");
    let table = pg.t("rows");
    assert_eq!(
        pg.rows(&format!(
            "SELECT count(*), count(DISTINCT key), min(key::int), max(key::int) FROM {table}"
        )),
        vec![vec![
            Some(ROWS.to_string()),
            Some(ROWS.to_string()),
            s("1"),
            Some(ROWS.to_string())
        ]]
    );
    assert_eq!(
        pg.count(&format!("SELECT count(*) FROM {}", pg.t("sluice_history"))),
        ROWS as i64
    );
}

#[test]
fn undo_removes_created_rows_restores_updated_ones_and_keeps_changed_ones() {
    let Some(pg) = Pg::new() else { return };
    let f = Fixture::new(2);
    let import = |range, tag| {
        let job = f.import("t.csv", &id_v_rows(range, tag), |r| {
            r.key = Some("id".into());
            r.target = Some(pg.url.clone());
            r.force_new = true;
        });
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        job
    };
    let table = pg.t("t");
    let contents = || pg.rows(&format!("SELECT key, v FROM {table} ORDER BY key"));
    let history = |job: u64| {
        pg.count(&format!(
            "SELECT count(*) FROM {} WHERE job = {job}",
            pg.t("sluice_history")
        ))
    };

    // A job that created 5 rows; one is changed from outside since (the
    // provenance columns left alone, as a normal UPDATE would).
    let a = import(1..=5, "a");
    pg.exec(&format!("UPDATE {table} SET v = 'outside' WHERE key = '2'"));
    let undone = f.rt.block_on(f.engine.undo(a.id)).unwrap();
    assert_eq!(undone.state, JobState::Undone, "{:?}", undone.error);
    assert_eq!(undone.undo_counts.get("removed"), Some(&4));
    assert_eq!(
        undone.undo_counts.get("kept: changed since import"),
        Some(&1)
    );
    let kept = f.undo_entries(a.id, UndoAction::KeptChanged);
    let kept: Vec<_> = kept.into_iter().map(|e| e.key).collect();
    assert_eq!(kept, ["2"]);
    assert_eq!(contents(), vec![vec![s("2"), s("outside")]]);
    assert_eq!(history(a.id), 0);

    // Jobs that update: undo restores the before-images, newest job first.
    let b = import(1..=3, "b");
    let c = import(2..=4, "c");
    let undone = f.rt.block_on(f.engine.undo(c.id)).unwrap();
    assert_eq!(undone.state, JobState::Undone, "{:?}", undone.error);
    assert_eq!(undone.undo_counts.get("restored"), Some(&2));
    assert_eq!(undone.undo_counts.get("removed"), Some(&1));
    assert_eq!(
        contents(),
        vec![
            vec![s("1"), s("b1")],
            vec![s("2"), s("b2")],
            vec![s("3"), s("b3")]
        ]
    );
    assert_eq!(
        pg.one(&format!(
            "SELECT string_agg(DISTINCT _sluice_job::text, ',') FROM {table}"
        )),
        b.id.to_string(),
        "provenance is restored with the row"
    );
    let undone = f.rt.block_on(f.engine.undo(b.id)).unwrap();
    assert_eq!(undone.undo_counts.get("removed"), Some(&2));
    assert_eq!(undone.undo_counts.get("restored"), Some(&1));
    assert_eq!(contents(), vec![vec![s("2"), s("outside")]]);
    assert_eq!(history(b.id) + history(c.id), 0);
    // A job whose rows were all taken back already: everything unchanged.
    let d = import(7..=7, "d");
    pg.exec(&format!("DELETE FROM {table} WHERE key = '7'"));
    let undone = f.rt.block_on(f.engine.undo(d.id)).unwrap();
    assert_eq!(undone.undo_counts.get("unchanged"), Some(&1));

    // A row the database will not let go (a foreign key points at it) is
    // reported and kept; the rest of the undo goes on.
    let e = import(10..=12, "e");
    let children = pg.t("children");
    pg.exec(&format!(
        "CREATE TABLE {children} (tenant text, parent text, \
         FOREIGN KEY (tenant, parent) REFERENCES {table} (tenant, key)); \
         INSERT INTO {children} VALUES ('acme', '11')"
    ));
    let undone = f.rt.block_on(f.engine.undo(e.id)).unwrap();
    assert_eq!(undone.state, JobState::Undone, "{:?}", undone.error);
    assert_eq!(undone.undo_counts.get("removed"), Some(&2));
    assert_eq!(undone.undo_counts.get("failed"), Some(&1));
    let failed = f.undo_entries(e.id, UndoAction::Failed).remove(0);
    let message = failed.message.unwrap_or_default();
    assert_eq!(failed.key, "11");
    assert!(
        message.contains("23503") && message.contains("children"),
        "{message}"
    );
    assert_eq!(
        contents(),
        vec![vec![s("11"), s("e11")], vec![s("2"), s("outside")]]
    );
    assert_eq!(history(e.id), 0);
}

/// Undo through the ledger is not what a transactional target uses.
struct NoLedger;

impl Ledger for NoLedger {
    fn record(&self, _: u64, _: u32, _: u64, _: &StepRecord) -> Result<(), SinkError> {
        panic!("the PostgreSQL target keeps no ledger")
    }
    fn steps(&self, _: u64, _: u32, _: u64) -> Result<Vec<StepRecord>, SinkError> {
        panic!("the PostgreSQL target keeps no ledger")
    }
    fn records(
        &self,
        _: u64,
        _: Option<(u32, u64)>,
        _: usize,
    ) -> Result<Vec<(u32, u64, Vec<StepRecord>)>, SinkError> {
        panic!("the PostgreSQL target keeps no ledger")
    }
}

#[test]
fn compensation_undoes_only_what_the_journal_never_recorded() {
    let Some(pg) = Pg::new() else { return };
    let f = Fixture::new(100);
    let job = f.import("rows.csv", &csv_rows(10, 0), |r| {
        r.key = Some("id".into());
        r.target = Some(pg.url.clone());
    });
    assert_eq!(job.counts.applied, 10);
    let sink = PgSink::connect(&pg.url).unwrap();
    let ledger: Arc<dyn Ledger> = Arc::new(NoLedger);
    let undo = |scope: UndoScope, limit| {
        f.rt.block_on(sink.undo(job.id, &scope, limit, ledger.clone()))
            .unwrap()
    };
    let keys = |p: &sluice::sink::UndoPage| -> Vec<(String, UndoAction)> {
        p.entries
            .iter()
            .map(|e| (e.key.clone(), e.action))
            .collect()
    };
    // As if the journal had recorded part 0 up to record 6 only.
    let page = undo(UndoScope::Unjournaled(vec![(0, 6)]), 3);
    assert_eq!(
        keys(&page),
        [
            ("10".to_owned(), UndoAction::Removed),
            ("9".into(), UndoAction::Removed),
            ("8".into(), UndoAction::Removed)
        ]
    );
    assert!(!page.done);
    let page = undo(UndoScope::Unjournaled(vec![(0, 6)]), 3);
    assert_eq!(keys(&page), [("7".to_owned(), UndoAction::Removed)]);
    assert!(page.done);
    let table = pg.t("rows");
    assert_eq!(
        pg.one(&format!(
            "SELECT string_agg(key, ',' ORDER BY key::int) FROM {table}"
        )),
        "1,2,3,4,5,6"
    );
    // Parts the journal has no watermark for are wholly in scope.
    let page = undo(UndoScope::Unjournaled(vec![(1, 0)]), 100);
    assert_eq!(page.entries.len(), 6);
    assert!(page.done);
    assert_eq!(pg.count(&format!("SELECT count(*) FROM {table}")), 0);
}

// ---------------------------------------------------------------------------
// Real processes, killed with SIGKILL at named points.

const CRASH_ROWS: usize = 1_100;

fn sluice(data: &Path) -> Command {
    sluice_cmd(data, "250")
}

/// `rows.csv`: records of kind `rows`.
fn crash_input() -> PathBuf {
    std::fs::create_dir_all(Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-crash")).unwrap();
    test_input("pg-crash/rows.csv", &csv_rows(CRASH_ROWS, 0))
}

fn import_cmd(data: &Path, input: &Path, url: &str) -> Command {
    let mut c = sluice(data);
    c.args(["import", "--key", "id", "--json", "--target", url])
        .arg(input);
    c
}

fn jobs(data: &Path) -> Vec<serde_json::Value> {
    jobs_of(&mut sluice(data))
}

/// The table as an uninterrupted import leaves it (job 1 in a fresh data
/// directory, so provenance columns compare too).
fn table_rows(pg: &Pg) -> Vec<Vec<Option<String>>> {
    pg.rows(&format!(
        "SELECT tenant, key, id, name, amount, _sluice_job, _sluice_ordinal FROM {} ORDER BY key",
        pg.t("rows")
    ))
}

/// Rows that exist before the import (in a table marked as sluice's, with
/// the CLI's default tenant), which it updates: undo must restore them.
/// Returns the table's contents.
fn seed(pg: &Pg) -> Vec<Vec<Option<String>>> {
    pg.exec(&format!(
        "CREATE TABLE {t} (tenant text NOT NULL, key text NOT NULL, id text, name text, \
         amount text, _sluice_job bigint, _sluice_ordinal bigint, PRIMARY KEY (tenant, key)); \
         COMMENT ON TABLE {t} IS 'sluice-managed: seeded by a test'; \
         INSERT INTO {t} (tenant, key, id, name) \
           SELECT 'default', i::text, i::text, 'old-' || i FROM generate_series(1, 100, 9) i",
        t = pg.t("rows")
    ));
    let rows = table_rows(pg);
    assert_eq!(rows.len(), 12);
    rows
}

/// Tables compared with a short report: sizes and the first difference.
#[track_caller]
fn same_rows(got: &[Vec<Option<String>>], want: &[Vec<Option<String>>], label: &str) {
    if got != want {
        let first = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i));
        panic!(
            "{label}: {} rows, expected {}; first difference at row {first:?}: {:?} instead of \
             {:?}",
            got.len(),
            want.len(),
            first.and_then(|i| got.get(i)),
            first.and_then(|i| want.get(i)),
        );
    }
}

fn history_rows(pg: &Pg) -> i64 {
    pg.count(&format!("SELECT count(*) FROM {}", pg.t("sluice_history")))
}

#[test]
fn killed_while_applying_to_postgres_recovery_loses_and_duplicates_nothing() {
    let Some(reference) = Pg::new() else { return };
    let input = crash_input();
    let dir = fresh_data_dir();
    let seeded = seed(&reference);
    let out = run(&mut import_cmd(dir.path(), &input, &reference.url));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let want = table_rows(&reference);
    assert_eq!(want.len(), CRASH_ROWS);
    assert_ne!(want, seeded);
    let mut crashes = 0;
    for point in crash_points("apply") {
        crashes += at_every_occurrence(point, |spec| {
            let pg = Pg::new().unwrap();
            seed(&pg);
            let dir = fresh_data_dir();
            let out = run(import_cmd(dir.path(), &input, &pg.url).env("SLUICE_CRASH_AT", spec));
            let crashed = out.status.signal() == Some(9);
            assert!(crashed || out.status.code() == Some(0), "{spec}: {out:?}");
            let out = run(sluice(dir.path()).arg("recover"));
            assert!(out.status.success(), "{spec}: recover: {out:?}");
            let jobs = jobs(dir.path());
            assert_eq!(jobs.len(), 1, "{spec}: {jobs:?}");
            assert_eq!(jobs[0]["state"], "completed", "{spec}: {}", jobs[0]);
            assert_eq!(
                jobs[0]["counts"]["applied"], CRASH_ROWS,
                "{spec}: {}",
                jobs[0]
            );
            same_rows(&table_rows(&pg), &want, &format!("{spec}: table differs"));
            assert_eq!(
                history_rows(&pg),
                CRASH_ROWS as i64,
                "{spec}: one history row per record"
            );
            // A batch applied again kept the true before-images.
            let out = run(sluice(dir.path()).args(["undo", "1"]));
            assert!(out.status.success(), "{spec}: undo: {out:?}");
            same_rows(
                &table_rows(&pg),
                &seeded,
                &format!("{spec}: undo did not restore"),
            );
            crashed
        });
    }
    eprintln!("postgres crash points: {crashes} SIGKILLed imports recovered");
}

#[test]
fn killed_while_undoing_on_postgres_the_undo_resumes_and_finishes() {
    let Some(_) = Pg::new() else { return };
    let input = crash_input();
    let mut crashes = 0;
    for point in crash_points("undo") {
        let mut runs = 0;
        crashes += at_every_occurrence(point, |spec| {
            runs += 1;
            let pg = Pg::new().unwrap();
            let before = seed(&pg);
            let dir = fresh_data_dir();
            let out = run(&mut import_cmd(dir.path(), &input, &pg.url));
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            let out = run(sluice(dir.path())
                .args(["undo", "1"])
                .env("SLUICE_CRASH_AT", spec));
            let crashed = out.status.signal() == Some(9);
            assert!(crashed || out.status.success(), "{spec}: {out:?}");
            // Resume by recovery or by asking again, alternately.
            let out = if runs % 2 == 1 {
                run(sluice(dir.path()).arg("recover"))
            } else {
                run(sluice(dir.path()).args(["undo", "1"]))
            };
            assert!(out.status.success() || !crashed, "{spec}: resume: {out:?}");
            let jobs = jobs(dir.path());
            assert_eq!(jobs[0]["state"], "undone", "{spec}: {}", jobs[0]);
            same_rows(
                &table_rows(&pg),
                &before,
                &format!("{spec}: table not restored"),
            );
            assert_eq!(history_rows(&pg), 0, "{spec}: history left over");
            crashed
        });
    }
    eprintln!("postgres undo crash points: {crashes} SIGKILLed undos finished");
}

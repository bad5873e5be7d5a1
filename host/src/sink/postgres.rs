//! PostgreSQL target: `--target postgres://USER@HOST:PORT/DATABASE[?schema=NAME]`.
//!
//! # Mapping
//!
//! Records go to one table per kind in one schema (the URL's `schema`
//! parameter, default `public`):
//!
//! | sluice | PostgreSQL |
//! |---|---|
//! | kind | table `"<kind>"` |
//! | field | column `"<field>"` |
//! | tenant | column `tenant` (`text not null`) |
//! | key | column `key` (`text not null`) |
//! | who wrote the row | columns `_sluice_job` and `_sluice_ordinal` (`bigint`) |
//!
//! The primary key is `(tenant, key)`. Identifiers are the kind and field
//! names exactly (quoted, so case and punctuation are kept); a name longer
//! than PostgreSQL's 63 bytes is cut to 54 bytes plus `_` and 8 hex digits
//! of its SHA-256 ([`identifier`]), so two long names never share a column.
//!
//! Column types come from the values: text → `text`, integer → `bigint`,
//! float → `double precision` (integers and floats mixed), boolean →
//! `boolean`, bytes → `bytea`, only nulls or mixed kinds → `text`.
//!
//! A table sluice creates is marked by its comment (`sluice-managed: …`); it
//! is created on first use and gains a column for each new field. A table
//! that exists and is not sluice's is **checked, never changed**: it needs
//! `tenant`, `key` with a unique constraint (or primary key) on exactly
//! `(tenant, key)`, `_sluice_job` and `_sluice_ordinal` (`bigint`), a column
//! for every field that sluice can write (not generated), and a default for
//! every `NOT NULL` column the records do not fill. Otherwise its records
//! fail permanently with a message naming each missing or mismatched column
//! and the SQL that fixes it. Such a table may use other column types:
//! values are converted where that loses nothing (the text `"42"` into a
//! `bigint`, as CSV gives only text; `"t"`/`"yes"` into a `boolean`; JSON
//! text into `json`/`jsonb`; `\x…` hex text into `bytea`), and sent as text
//! for the server to convert for any other type (`numeric`, `date`,
//! `uuid` …). A value that does not convert fails its record permanently,
//! naming the field, the column and its type. Fields named `tenant` or
//! `key` are the identity: their value must equal the record's tenant or
//! key (a CSV column `key` used as `--key key` is fine).
//!
//! # Exactly once
//!
//! Each batch is applied in **one transaction** of two statements, sent
//! together (pipelined):
//!
//! 1. `SELECT … FOR UPDATE` locks the rows the batch will change, in key
//!    order (so concurrent importers do not deadlock, and nobody changes a
//!    row between reading its before-image and writing it);
//! 2. one statement over the batch's values (arrays, one per column, so
//!    the statement is prepared once and any number of rows is one
//!    round-trip) that both
//!    - upserts the records (`INSERT … ON CONFLICT (tenant, key) DO
//!      UPDATE`), idempotent by identity, and
//!    - inserts one row per record into `sluice_history` (same schema),
//!      keyed by `(job, part, ordinal)`, with the identity, the
//!      **before-image** (`to_jsonb` of the row as the statement found it,
//!      or NULL if it did not exist) and the **after-image** (the columns
//!      the record wrote, as the table holds them). `ON CONFLICT DO
//!      NOTHING` keeps the images of the first application, so a batch
//!      applied again after a crash keeps the true state before the job.
//!
//! The engine's journal commits "interval applied" only after the target
//! write. A crash between the two re-applies the interval on resume, which
//! is harmless: the upsert writes the same values again and the history
//! keeps its first before-image. We chose this over committing the
//! journal's watermark inside the PostgreSQL transaction because the
//! journal is a separate, generic redb database shared by all targets: a
//! watermark in PostgreSQL would be a second source of truth that recovery
//! would have to reconcile with the journal, while idempotent upserts plus
//! history make replays harmless with no coordination, and keep what undo
//! needs atomic with the change itself. [`Sink::reconcile`] has nothing to
//! do.
//!
//! # Failures
//!
//! A record the database refuses (constraint, bad value) is isolated by
//! bisection: the transaction is rolled back and each half is applied in
//! its own transaction, recursively, so only the offending records fail and
//! the rest commit. Their outcome code is `pg-<SQLSTATE>` with the server's
//! message.
//!
//! | SQLSTATE / error | class |
//! |---|---|
//! | connection refused or lost, timeout, `08…`, `40001`, `40P01`, `53…`, `55P03`, `57014`, `57P01`–`57P03`, `58…` | transient: retried by the engine, connection re-opened |
//! | `42P01`, `42703`, `42804` (a table changed under sluice) | transient, after forgetting what sluice knew about the table |
//! | `22…`, `23…` (`23505`, `23503`, `23514`, `23502` …), `21…`, `P0001`, `2F…`, `38…`, `39…`, `44…` | permanent, per record (bisection) |
//! | a value that does not convert; a table that does not fit | permanent, per record, before anything is sent |
//! | anything else (`28…` login, `3D000` no database, `42…` privileges …) | permanent, the whole batch, with the message |
//!
//! # Undo
//!
//! One transaction per page: the job's history rows (newest first), then
//! for each, if the row is still as the job left it (same `_sluice_job` and
//! `_sluice_ordinal`, and the columns it wrote still equal the
//! after-image, so an outside `UPDATE` that leaves the provenance columns
//! alone is noticed too), its before-image is restored (`Restored`) or it
//! is deleted (`Removed`); if it already equals the before-image (null
//! columns added since do not count), `Unchanged`; otherwise it is kept
//! (`KeptChanged`). The history rows are deleted in the same transaction, so
//! an interrupted undo resumes where it stopped. A table sluice created
//! stays when undo empties it. If the database refuses part of a page (a
//! foreign key now points at a row to remove …), the page is done again one
//! record at a time under savepoints: the refused records are kept and
//! reported `Failed` with the server's message, the others are undone.
//!
//! `sluice_history` keeps a row per record applied until the job is undone;
//! rows of jobs that will never be undone can be deleted by hand
//! (`DELETE FROM sluice_history WHERE job = N`).
//!
//! # Connections and passwords
//!
//! [`PgSink::connect`] only parses the URL; connections are opened on first
//! use and reused (a few are kept idle). The journal keeps the URL without
//! its password ([`redact`]). The process that receives the URL at import
//! opens its sink with the full URL; later commands (`recover`, `undo`) take
//! the password from `PGPASSWORD`. TLS is not supported by
//! this build (`sslmode=require` is refused).
//!
//! Known limits: a row inserted by someone else *between* the lock and the
//! upsert of a batch (it did not exist when the batch locked) is recorded
//! as created by the job, so undo would remove it if nobody changes it
//! afterwards. A trigger that changes the values a record writes makes the
//! row differ from its after-image, so undo keeps it (`KeptChanged`): the
//! safe side.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{
    Batch, FailureClass, Ledger, Outcome, Sink, SinkError, UndoAction, UndoEntry, UndoPage,
    UndoScope, error_chain,
};
use crate::lock;
use crate::record::Value;

/// The table undo information is kept in, in the target schema.
pub const HISTORY_TABLE: &str = "sluice_history";
/// How the comment of a table sluice created starts.
const MARKER: &str = "sluice-managed";
/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENT: usize = 63;
/// Connections kept open between batches.
const IDLE_CONNECTIONS: usize = 4;
/// For undo's queries, which look rows up by key or walk the history's
/// primary key backwards: statistics of freshly filled tables are often
/// stale, and a hash join, or a bitmap scan and a sort, would read the whole
/// job's history for each page. Local to the transaction.
const KEYED_PLANS: &str = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
                           SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off";
/// Back to the session's settings (catalog queries need hash joins).
const USUAL_PLANS: &str =
    "RESET enable_hashjoin; RESET enable_mergejoin; RESET enable_bitmapscan; RESET enable_sort";
/// Columns sluice manages itself; a field with one of these names is not a
/// column of its own.
const TENANT: &str = "tenant";
const KEY: &str = "key";
const JOB_COL: &str = "_sluice_job";
const ORDINAL_COL: &str = "_sluice_ordinal";

// ---------------------------------------------------------------------------
// URLs

/// A `postgres://` URL taken apart, without decoding.
struct Url<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    hosts: &'a str,
    path: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, String> {
        let url = url.trim();
        let (scheme, rest) = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|s| url.strip_prefix(s).map(|r| (*s, r)))
            .ok_or_else(|| {
                "not a PostgreSQL URL: it must start with postgres:// or postgresql:// \
                 (postgres://USER@HOST:PORT/DATABASE?schema=NAME)"
                    .to_owned()
            })?;
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match base.find('/') {
            Some(i) => base.split_at(i),
            None => (base, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':').ok_or(u)) {
            Some(Ok((u, p))) => (Some(u), Some(p)),
            Some(Err(u)) => (Some(u), None),
            None => (None, None),
        };
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        Ok(Url {
            scheme,
            user,
            password,
            hosts,
            path,
            params,
        })
    }

    /// The URL again; without the password if `redact`, without the
    /// `schema` parameter (which only sluice knows) if `for_driver`.
    fn render(&self, redact: bool, for_driver: bool) -> String {
        let mut s = String::from(self.scheme);
        if let Some(user) = self.user.filter(|u| !u.is_empty()) {
            s.push_str(user);
            if let Some(p) = self.password.filter(|_| !redact) {
                s.push(':');
                s.push_str(p);
            }
            s.push('@');
        } else if let Some(p) = self.password.filter(|p| !redact && !p.is_empty()) {
            s.push(':');
            s.push_str(p);
            s.push('@');
        }
        s.push_str(self.hosts);
        s.push_str(self.path);
        let params: Vec<String> = self
            .params
            .iter()
            .filter(|(k, _)| {
                let secret = redact && *k == "password";
                let ours = for_driver && *k == "schema";
                !secret && !ours
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !params.is_empty() {
            s.push('?');
            s.push_str(&params.join("&"));
        }
        s
    }

    fn schema(&self) -> Result<String, String> {
        match self.params.iter().rev().find(|(k, _)| *k == "schema") {
            None => Ok("public".to_owned()),
            Some((_, v)) => {
                let name = percent_decode(v)?;
                if name.is_empty() {
                    return Err(
                        "the schema parameter is empty; write ?schema=NAME or leave it out \
                                for the public schema"
                            .into(),
                    );
                }
                Ok(identifier(&name))
            }
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8 text"))
}

/// The URL without its password, as kept in the journal. Refuses URLs that
/// are not PostgreSQL's or that the driver cannot use.
pub fn redact(url: &str) -> Result<String, String> {
    PgSink::connect(url).map(|s| s.label)
}

fn driver_config(parsed: &Url<'_>, redacted: &str) -> Result<Config, String> {
    let config = Config::from_str(&parsed.render(false, true))
        .map_err(|e| format!("invalid PostgreSQL URL {redacted}: {}", error_chain(&e)))?;
    if matches!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    ) {
        return Err(format!(
            "PostgreSQL URL {redacted} asks for sslmode=require, but this build of sluice has no \
             TLS support; connect without TLS (sslmode=disable or prefer) over a trusted network \
             or a tunnel"
        ));
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Identifiers

/// The PostgreSQL identifier sluice uses for a kind or field name: the name
/// itself, or, when longer than 63 bytes, its first 54 bytes (at a character
/// boundary), `_` and 8 hex digits of its SHA-256.
pub fn identifier(name: &str) -> String {
    if name.len() <= MAX_IDENT {
        return name.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let mut cut = MAX_IDENT - 1 - hash.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}", &name[..cut])
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---------------------------------------------------------------------------
// Types and values

/// How sluice sends values for a column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cat {
    Text,
    Int8,
    Int4,
    Int2,
    Float8,
    Float4,
    Bool,
    Bytea,
    /// `json`/`jsonb`: checked JSON text, cast by the server.
    Json,
    /// Anything else: text, cast by the server.
    Other,
}

impl Cat {
    fn of(base_type_oid: i64) -> Cat {
        match base_type_oid {
            25 | 1043 | 1042 | 19 => Cat::Text,
            20 => Cat::Int8,
            23 => Cat::Int4,
            21 => Cat::Int2,
            701 => Cat::Float8,
            700 => Cat::Float4,
            16 => Cat::Bool,
            17 => Cat::Bytea,
            114 | 3802 => Cat::Json,
            _ => Cat::Other,
        }
    }

    /// The array type values travel in.
    fn array(self) -> &'static str {
        match self {
            Cat::Text | Cat::Json | Cat::Other => "text[]",
            Cat::Int8 => "int8[]",
            Cat::Int4 => "int4[]",
            Cat::Int2 => "int2[]",
            Cat::Float8 => "float8[]",
            Cat::Float4 => "float4[]",
            Cat::Bool => "bool[]",
            Cat::Bytea => "bytea[]",
        }
    }
}

/// A value converted for its column.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    I64(i64),
    I32(i32),
    I16(i16),
    F64(f64),
    F32(f32),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// Convert `v` for a column of category `cat`, losing nothing; `Err` says
/// why not.
fn convert(v: Value<'_>, cat: Cat) -> Result<Cell, String> {
    if v == Value::Null {
        return Ok(Cell::Null);
    }
    let int = |v: Value<'_>| -> Result<i64, String> {
        match v {
            Value::Int(i) => Ok(i),
            Value::Text(t) => t
                .trim()
                .parse::<i64>()
                .map_err(|_| "not an integer".to_owned()),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Ok(x as i64),
            Value::Float(_) => Err("a number with a fraction (or out of range)".into()),
            Value::Bool(_) => Err("a boolean".into()),
            Value::Bytes(_) => Err("bytes".into()),
            Value::Null => unreachable!(),
        }
    };
    let float = |v: Value<'_>| -> Result<f64, String> {
        match v {
            Value::Float(x) => Ok(x),
            Value::Int(i) if i.unsigned_abs() <= 1 << 53 => Ok(i as f64),
            Value::Int(_) => Err("an integer too large for a float without rounding".into()),
            Value::Text(t) => t
                .trim()
                .parse::<f64>()
                .map_err(|_| "not a number".to_owned()),
            Value::Bool(_) => Err("a boolean".into()),
            Value::Bytes(_) => Err("bytes".into()),
            Value::Null => unreachable!(),
        }
    };
    let text = |v: Value<'_>| -> Result<String, String> {
        match v {
            Value::Bytes(b) => std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| "bytes that are not UTF-8 text".to_owned()),
            other => Ok(other.to_text().unwrap_or_default()),
        }
    };
    let range = |i: i64, bits: u32| {
        let max = (1i64 << (bits - 1)) - 1;
        if i > max || i < -max - 1 {
            Err(format!("{i} is out of range for a {bits}-bit integer"))
        } else {
            Ok(i)
        }
    };
    Ok(match cat {
        Cat::Text | Cat::Other => Cell::Text(text(v)?),
        Cat::Int8 => Cell::I64(int(v)?),
        Cat::Int4 => Cell::I32(range(int(v)?, 32)? as i32),
        Cat::Int2 => Cell::I16(range(int(v)?, 16)? as i16),
        Cat::Float8 => Cell::F64(float(v)?),
        Cat::Float4 => {
            let x = float(v)?;
            if x.is_finite() && x.abs() > f32::MAX as f64 {
                return Err(format!("{x} is out of range for a real"));
            }
            Cell::F32(x as f32)
        }
        Cat::Bool => Cell::Bool(match v {
            Value::Bool(b) => b,
            Value::Int(0) => false,
            Value::Int(1) => true,
            Value::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "y" | "yes" | "on" | "1" => true,
                "f" | "false" | "n" | "no" | "off" | "0" => false,
                _ => return Err("not a boolean (true/false, t/f, yes/no, on/off, 1/0)".into()),
            },
            _ => return Err("not a boolean".into()),
        }),
        Cat::Bytea => Cell::Bytes(match v {
            Value::Bytes(b) => b.to_vec(),
            Value::Text(t) => match t.strip_prefix("\\x") {
                Some(h) => hex::decode(h).map_err(|_| "bad \\x hex bytes".to_owned())?,
                None => t.as_bytes().to_vec(),
            },
            _ => return Err("not bytes or text".into()),
        }),
        Cat::Json => Cell::Text(match v {
            Value::Text(t) => {
                serde_json::from_str::<serde_json::Value>(t)
                    .map_err(|e| format!("not JSON ({e})"))?;
                t.to_owned()
            }
            Value::Bytes(_) => return Err("bytes".into()),
            other => other.to_json().to_string(),
        }),
    })
}

/// The column type sluice creates for values seen in a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    Int,
    Float,
    Bool,
    Bytes,
    Text,
}

impl Seen {
    fn add(self, v: Value<'_>) -> Seen {
        let this = match v {
            Value::Null => return self,
            Value::Int(_) => Seen::Int,
            Value::Float(_) => Seen::Float,
            Value::Bool(_) => Seen::Bool,
            Value::Bytes(_) => Seen::Bytes,
            Value::Text(_) => Seen::Text,
        };
        match (self, this) {
            (Seen::Nothing, t) => t,
            (a, b) if a == b => a,
            (Seen::Int, Seen::Float) | (Seen::Float, Seen::Int) => Seen::Float,
            _ => Seen::Text,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Seen::Int => "bigint",
            Seen::Float => "double precision",
            Seen::Bool => "boolean",
            Seen::Bytes => "bytea",
            Seen::Nothing | Seen::Text => "text",
        }
    }
}

/// A column of values as one array parameter.
fn array(cells: &[&Cell], cat: Cat) -> Box<dyn ToSql + Sync + Send> {
    macro_rules! collect {
        ($variant:ident) => {
            Box::new(
                cells
                    .iter()
                    .map(|c| match c {
                        Cell::$variant(x) => Some(x.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        };
    }
    match cat {
        Cat::Text | Cat::Json | Cat::Other => collect!(Text),
        Cat::Int8 => collect!(I64),
        Cat::Int4 => collect!(I32),
        Cat::Int2 => collect!(I16),
        Cat::Float8 => collect!(F64),
        Cat::Float4 => collect!(F32),
        Cat::Bool => collect!(Bool),
        Cat::Bytea => collect!(Bytes),
    }
}

// ---------------------------------------------------------------------------
// Tables

#[derive(Debug, Clone)]
struct Column {
    name: String,
    sql_type: String,
    cat: Cat,
    not_null: bool,
    has_default: bool,
    generated: bool,
    identity_always: bool,
}

impl Column {
    /// `src` as a value of this column in SQL.
    fn expr(&self, src: &str) -> String {
        match self.cat {
            Cat::Json | Cat::Other => format!("{src}::{}", self.sql_type),
            _ => src.to_owned(),
        }
    }

    fn writable(&self) -> bool {
        !self.generated && !self.identity_always
    }
}

/// What sluice knows of a table.
#[derive(Debug)]
struct Table {
    qualified: String,
    ours: bool,
    columns: Vec<Column>,
    unique_key: bool,
}

impl Table {
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Why this table cannot take records with `fields` (column names, the
    /// type sluice would give them), if it cannot: every problem, and the
    /// SQL that fixes it.
    fn problems(&self, fields: &[(String, &'static str)], tenant: &str) -> Option<String> {
        let q = &self.qualified;
        let mut problems = Vec::new();
        let mut fixes = Vec::new();
        let mut need = |name: &str, cats: &[Cat], add: String, retype: &str| match self.column(name)
        {
            None => {
                problems.push(format!("it has no column {}", quote(name)));
                fixes.push(add);
            }
            Some(c) if !cats.contains(&c.cat) => {
                problems.push(format!(
                    "its column {} is of type {}, not {retype}",
                    quote(name),
                    c.sql_type
                ));
                fixes.push(format!(
                    "ALTER TABLE {q} ALTER COLUMN {} TYPE {retype}",
                    quote(name)
                ));
            }
            Some(_) => {}
        };
        need(
            TENANT,
            &[Cat::Text, Cat::Other],
            format!(
                "ALTER TABLE {q} ADD COLUMN tenant text NOT NULL DEFAULT {}",
                literal(tenant)
            ),
            "text",
        );
        need(
            KEY,
            &[
                Cat::Text,
                Cat::Other,
                Cat::Int8,
                Cat::Int4,
                Cat::Int2,
                Cat::Float8,
            ],
            format!("ALTER TABLE {q} ADD COLUMN key text"),
            "text",
        );
        need(
            JOB_COL,
            &[Cat::Int8],
            format!("ALTER TABLE {q} ADD COLUMN {JOB_COL} bigint"),
            "bigint",
        );
        need(
            ORDINAL_COL,
            &[Cat::Int8],
            format!("ALTER TABLE {q} ADD COLUMN {ORDINAL_COL} bigint"),
            "bigint",
        );
        if !self.unique_key {
            problems.push(
                "it has no primary key or unique constraint on exactly (tenant, key), which \
                 sluice needs to update records by identity"
                    .into(),
            );
            fixes.push(format!("ALTER TABLE {q} ADD UNIQUE (tenant, key)"));
        }
        for (name, sql) in fields {
            match self.column(name) {
                None => {
                    problems.push(format!(
                        "it has no column {} for the field {}",
                        quote(name),
                        quote(name)
                    ));
                    fixes.push(format!("ALTER TABLE {q} ADD COLUMN {} {sql}", quote(name)));
                }
                Some(c) if !c.writable() => {
                    problems.push(format!(
                        "its column {} is generated, so the field {} cannot be written to it",
                        quote(name),
                        quote(name)
                    ));
                    fixes.push(format!(
                        "remove the field {} from the input, or ALTER TABLE {q} ALTER COLUMN {} \
                         DROP EXPRESSION / DROP IDENTITY",
                        quote(name),
                        quote(name)
                    ));
                }
                Some(_) => {}
            }
        }
        let filled: HashSet<&str> = fields
            .iter()
            .map(|(n, _)| n.as_str())
            .chain([TENANT, KEY, JOB_COL, ORDINAL_COL])
            .collect();
        for c in &self.columns {
            if c.not_null && !c.has_default && c.writable() && !filled.contains(c.name.as_str()) {
                problems.push(format!(
                    "its column {} is NOT NULL without a default, and the records have no field \
                     {}",
                    quote(&c.name),
                    quote(&c.name)
                ));
                fixes.push(format!(
                    "ALTER TABLE {q} ALTER COLUMN {} SET DEFAULT <value> (or DROP NOT NULL)",
                    quote(&c.name)
                ));
            }
        }
        if problems.is_empty() {
            return None;
        }
        let whose = if self.ours {
            "was created by sluice but has been changed since"
        } else {
            "exists and was not created by sluice, so sluice checks it and does not change it"
        };
        Some(format!(
            "table {q} {whose}; it cannot take these records: {}. Fix it with: {}; then import \
             again",
            problems.join("; "),
            fixes.join("; ")
        ))
    }
}

// ---------------------------------------------------------------------------
// Failures

/// What to do about a failed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Retry later on a new connection.
    Transient,
    /// The table changed under sluice: forget it, then retry.
    Stale,
    /// Something in the records: isolate them by bisection.
    Record,
    /// Nothing in the records: the whole batch fails.
    Batch,
}

#[derive(Debug, Clone)]
struct PgFail {
    class: Class,
    code: String,
    message: String,
}

impl PgFail {
    fn outcome(&self, what: &str) -> Outcome {
        let class = match self.class {
            Class::Transient | Class::Stale => FailureClass::Transient,
            Class::Record | Class::Batch => FailureClass::Permanent,
        };
        Outcome::Failed {
            class,
            code: self.code.clone(),
            message: format!("{}{what}", self.message),
        }
    }

    /// The engine names the target itself.
    fn sink_error(&self) -> SinkError {
        let msg = self.message.clone();
        match self.class {
            Class::Transient | Class::Stale => SinkError::Transient(msg),
            Class::Record | Class::Batch => SinkError::Permanent(msg),
        }
    }
}

/// Classify a driver error; `doing` says what sluice was doing.
fn classify(e: &tokio_postgres::Error, doing: &str) -> PgFail {
    let Some(db) = e.as_db_error() else {
        let text = error_chain(e);
        // Errors in sluice's use of the driver or the configuration do not
        // heal by waiting; everything else here is the connection.
        let permanent = [
            "authentication error",
            "invalid configuration",
            "invalid connection",
        ]
        .iter()
        .chain(&["error serializing", "error deserializing", "invalid column"])
        .any(|p| text.starts_with(p));
        return if permanent {
            PgFail {
                class: Class::Batch,
                code: "pg-client".into(),
                message: format!("{doing}: {text}"),
            }
        } else {
            PgFail {
                class: Class::Transient,
                code: "pg-connection".into(),
                message: format!(
                    "{doing}: the connection failed ({text}); check that the server is up and \
                     reachable (sluice retries)"
                ),
            }
        };
    };
    let code = db.code().code();
    let class = match code {
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => Class::Transient,
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => Class::Transient,
        "42P01" | "42703" | "42804" => Class::Stale,
        "P0001" => Class::Record,
        c if ["21", "22", "23", "2F", "38", "39", "44"]
            .iter()
            .any(|p| c.starts_with(p)) =>
        {
            Class::Record
        }
        _ => Class::Batch,
    };
    let mut message = format!(
        "{doing}: PostgreSQL said {} (SQLSTATE {code})",
        db.message()
    );
    if let Some(d) = db.detail() {
        let d: String = d.chars().take(300).collect();
        message.push_str(&format!("; {}", d.trim_end_matches('.')));
    }
    if let Some(c) = db.constraint() {
        message.push_str(&format!("; constraint {}", quote(c)));
    }
    if let Some(c) = db.column() {
        message.push_str(&format!("; column {}", quote(c)));
    }
    if let Some(h) = db.hint() {
        message.push_str(&format!("; hint: {h}"));
    }
    let advice = match (class, code, &code[..2]) {
        (Class::Batch, _, "28") => {
            "; check the user and password (in the URL at import, or PGPASSWORD) and pg_hba.conf"
        }
        (Class::Batch, "3D000", _) => "; check the database name in the target URL",
        (Class::Batch, "42501", _) => {
            "; grant the user CREATE on the schema (or create the tables and sluice_history \
             beforehand) and INSERT, UPDATE, DELETE, SELECT on the tables"
        }
        (Class::Batch, _, "42") => "; check the target table's definition and the privileges",
        _ => "",
    };
    message.push_str(advice);
    PgFail {
        class,
        code: format!("pg-{code}"),
        message,
    }
}

// ---------------------------------------------------------------------------
// The sink

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// A failure left the connection in doubt: do not reuse it.
    broken: bool,
}

impl Conn {
    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }

    async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }

    async fn simple(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }
}

/// A PostgreSQL database as a target. See the [module docs](self).
pub struct PgSink {
    /// The URL without password: the sink's name.
    label: String,
    config: Config,
    /// The schema's identifier, unquoted.
    schema: String,
    idle: Mutex<Vec<Conn>>,
    tables: Mutex<HashMap<String, Arc<Table>>>,
    /// The schema and the history table exist.
    history_ready: AtomicBool,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("target", &self.label)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// Parse the URL; the connection is made on first use. Without a
    /// password in the URL, `PGPASSWORD` is used.
    pub fn connect(url: &str) -> Result<Self, String> {
        let parsed = Url::parse(url)?;
        let label = parsed.render(true, false);
        let mut config = driver_config(&parsed, &label)?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(PgSink {
            schema: parsed.schema()?,
            label,
            config,
            idle: Mutex::new(Vec::new()),
            tables: Mutex::new(HashMap::new()),
            history_ready: AtomicBool::new(false),
        })
    }

    /// The URL without its password, as the journal keeps it.
    pub fn redacted(&self) -> &str {
        &self.label
    }

    /// The schema records go to.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.schema), quote(table))
    }

    fn history(&self) -> String {
        self.qualified(HISTORY_TABLE)
    }

    async fn checkout(&self) -> Result<Conn, PgFail> {
        loop {
            let idle = lock(&self.idle).pop();
            match idle {
                Some(c) if !c.client.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| classify(&e, &format!("connecting to {}", self.label)))?;
        let label = self.label.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target = %label, "PostgreSQL connection ended: {}", error_chain(&e));
            }
        });
        Ok(Conn {
            client,
            statements: HashMap::new(),
            broken: false,
        })
    }

    fn checkin(&self, conn: Conn) {
        if conn.broken || conn.client.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn forget_tables(&self) {
        lock(&self.tables).clear();
        self.history_ready.store(false, Ordering::SeqCst);
    }

    /// Read a table's definition from the catalog.
    async fn load(&self, conn: &Conn, table: &str) -> Result<Option<Table>, tokio_postgres::Error> {
        let rows = conn
            .client
            .query(
                "SELECT c.oid::int8, coalesce(obj_description(c.oid, 'pg_class'), ''), \
                        a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        (CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END)::int8, \
                        a.attnotnull, a.atthasdef, a.attgenerated <> '', a.attidentity = 'a' \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_type ty ON ty.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                 ORDER BY a.attnum",
                &[&self.schema, &table],
            )
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let oid: i64 = first.get(0);
        let comment: String = first.get(1);
        let unique_key: bool = conn
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i \
                 WHERE i.indrelid = $1::int8::oid AND i.indisunique AND i.indimmediate \
                   AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2 \
                   AND ARRAY(SELECT a.attname::text FROM pg_attribute a \
                             WHERE a.attrelid = i.indrelid \
                               AND a.attnum IN (i.indkey[0], i.indkey[1]) ORDER BY 1) \
                       = ARRAY['key', 'tenant'])",
                &[&oid],
            )
            .await?
            .get(0);
        let columns = rows
            .iter()
            .map(|r| Column {
                name: r.get(2),
                sql_type: r.get(3),
                cat: Cat::of(r.get(4)),
                not_null: r.get(5),
                has_default: r.get(6),
                generated: r.get(7),
                identity_always: r.get(8),
            })
            .collect();
        Ok(Some(Table {
            qualified: self.qualified(table),
            ours: comment.starts_with(MARKER),
            columns,
            unique_key,
        }))
    }

    /// The table for `group`, created or extended if it is sluice's, or why
    /// it cannot take the group's records.
    async fn ensure(
        &self,
        conn: &mut Conn,
        group: &Group,
        tenant: &str,
    ) -> Result<Result<Arc<Table>, String>, PgFail> {
        let cached = lock(&self.tables).get(&group.table).cloned();
        if let Some(t) = cached
            && self.history_ready.load(Ordering::SeqCst)
            && group.fields.iter().all(|f| t.column(&f.column).is_some())
        {
            return Ok(t.problems(&group.columns(), tenant).map_or(Ok(t), Err));
        }
        let doing = format!("preparing table {}", self.qualified(&group.table));
        let fail = |e: tokio_postgres::Error| classify(&e, &doing);
        conn.simple("BEGIN").await.map_err(fail)?;
        let result = self.ensure_locked(conn, group).await;
        let result = match result {
            Ok(t) => conn.simple("COMMIT").await.map(|()| t),
            Err(e) => Err(e),
        };
        let table = match result {
            Ok(t) => t,
            Err(e) => {
                let _ = conn.simple("ROLLBACK").await;
                let f = fail(e);
                if f.class != Class::Record && f.class != Class::Batch {
                    conn.broken = true;
                }
                return Err(f);
            }
        };
        self.history_ready.store(true, Ordering::SeqCst);
        let table = Arc::new(table);
        lock(&self.tables).insert(group.table.clone(), table.clone());
        Ok(table
            .problems(&group.columns(), tenant)
            .map_or(Ok(table), Err))
    }

    async fn ensure_locked(
        &self,
        conn: &Conn,
        group: &Group,
    ) -> Result<Table, tokio_postgres::Error> {
        // DDL of one schema, by any sluice process, one at a time.
        let lock_key = i64::from_le_bytes(
            Sha256::digest(format!("sluice:{}", self.schema))[..8]
                .try_into()
                .expect("8 bytes"),
        );
        conn.client
            .execute("SELECT pg_advisory_xact_lock($1::int8)", &[&lock_key])
            .await?;
        let schema_exists: bool = conn
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.schema],
            )
            .await?
            .get(0);
        if !schema_exists {
            conn.simple(&format!("CREATE SCHEMA {}", quote(&self.schema)))
                .await?;
        }
        if self.load(conn, HISTORY_TABLE).await?.is_none() {
            conn.simple(&format!(
                "CREATE TABLE {h} (\
                   job bigint NOT NULL, part bigint NOT NULL, ordinal bigint NOT NULL, \
                   tenant text NOT NULL, kind text NOT NULL, table_name text NOT NULL, \
                   key text NOT NULL, before jsonb, after jsonb, \
                   recorded_at timestamptz NOT NULL DEFAULT now(), \
                   PRIMARY KEY (job, part, ordinal)); \
                 COMMENT ON TABLE {h} IS {c}",
                h = self.history(),
                c = literal(&format!(
                    "{MARKER}: what undo needs for each record sluice applied here: its \
                     identity, its before-image (NULL: it did not exist) and the columns as \
                     written (after). Rows go when their job is undone."
                )),
            ))
            .await?;
        }
        let q = self.qualified(&group.table);
        match self.load(conn, &group.table).await? {
            None => {
                let mut cols = vec![
                    "tenant text NOT NULL".to_owned(),
                    "key text NOT NULL".into(),
                ];
                cols.extend(
                    group
                        .fields
                        .iter()
                        .map(|f| format!("{} {}", quote(&f.column), f.seen.sql())),
                );
                cols.push(format!("{JOB_COL} bigint"));
                cols.push(format!("{ORDINAL_COL} bigint"));
                cols.push("PRIMARY KEY (tenant, key)".into());
                conn.simple(&format!(
                    "CREATE TABLE {q} ({}); COMMENT ON TABLE {q} IS {}",
                    cols.join(", "),
                    literal(&format!(
                        "{MARKER}: created by sluice for the kind {:?}; sluice adds a column \
                         for each new field",
                        group.kind
                    )),
                ))
                .await?;
            }
            Some(t) if t.ours => {
                let add: Vec<String> = group
                    .fields
                    .iter()
                    .filter(|f| t.column(&f.column).is_none())
                    .map(|f| {
                        format!(
                            "ADD COLUMN IF NOT EXISTS {} {}",
                            quote(&f.column),
                            f.seen.sql()
                        )
                    })
                    .collect();
                if add.is_empty() {
                    return Ok(t);
                }
                conn.simple(&format!("ALTER TABLE {q} {}", add.join(", ")))
                    .await?;
            }
            Some(t) => return Ok(t),
        }
        Ok(self
            .load(conn, &group.table)
            .await?
            .expect("the table was just created"))
    }

    async fn apply_batch(&self, conn: &mut Conn, batch: &Batch) -> Result<Vec<Outcome>, PgFail> {
        let n = batch.items.len();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        // Group records by kind and layout: one statement per group.
        let mut groups: Vec<Group> = Vec::new();
        // Records of a batch share a few layouts: look each (kind, layout)
        // up once, borrowing from the batch.
        let mut by_layout: HashMap<(&str, usize), usize> = HashMap::new();
        let mut by_fields: HashMap<(&str, &[String]), usize> = HashMap::new();
        let mut group_of = Vec::with_capacity(n);
        for item in &batch.items {
            let layout = item.record.layout();
            let g = match by_layout.get(&(item.kind.as_str(), Arc::as_ptr(layout) as usize)) {
                Some(g) => *g,
                None => {
                    let key = (item.kind.as_str(), layout.fields.as_slice());
                    let g = *by_fields.entry(key).or_insert_with(|| {
                        groups.push(Group::new(&item.kind, &layout.fields));
                        groups.len() - 1
                    });
                    by_layout.insert((item.kind.as_str(), Arc::as_ptr(layout) as usize), g);
                    g
                }
            };
            let group = &mut groups[g];
            for f in &mut group.fields {
                f.seen = f.seen.add(item.record.get(f.index).unwrap_or(Value::Null));
            }
            group_of.push(g);
        }
        // Tables, then values converted for their columns.
        for (g, group) in groups.iter_mut().enumerate() {
            let refuse = |outcomes: &mut Vec<Option<Outcome>>, code: &str, message: &str| {
                for (i, _) in group_of.iter().enumerate().filter(|(_, x)| **x == g) {
                    outcomes[i] = Some(Outcome::refused(code, message));
                }
            };
            if let Some(problem) = &group.invalid {
                refuse(&mut outcomes, "pg-bad-name", problem);
                continue;
            }
            match self.ensure(conn, group, &batch.tenant).await {
                Ok(Ok(t)) => group.prepare(t, self),
                Ok(Err(problem)) => refuse(&mut outcomes, "pg-table-mismatch", &problem),
                Err(f) if matches!(f.class, Class::Transient | Class::Stale) => {
                    if f.class == Class::Stale {
                        self.forget_tables();
                    }
                    return Err(f);
                }
                Err(f) => {
                    for (i, _) in group_of.iter().enumerate().filter(|(_, x)| **x == g) {
                        outcomes[i] = Some(f.outcome(""));
                    }
                }
            }
        }
        let mut rows = Vec::with_capacity(n);
        for (i, item) in batch.items.iter().enumerate() {
            let group = &groups[group_of[i]];
            if outcomes[i].is_some() {
                continue;
            }
            match group.row(group_of[i], i, item, &batch.tenant, batch.job) {
                Ok(row) => rows.push(row),
                Err((code, message)) => outcomes[i] = Some(Outcome::refused(code, message)),
            }
        }
        // Write, isolating refused records by bisection.
        let mut queue: VecDeque<Vec<usize>> = VecDeque::new();
        if !rows.is_empty() {
            queue.push_back((0..rows.len()).collect());
        }
        let mut committed = false;
        let mut stopped: Option<PgFail> = None;
        while let Some(set) = queue.pop_front() {
            if let Some(f) = &stopped {
                for &r in &set {
                    outcomes[rows[r].item] = Some(f.outcome(""));
                }
                continue;
            }
            match self.write(conn, batch, &groups, &rows, &set).await {
                Ok(()) => {
                    committed = true;
                    for &r in &set {
                        outcomes[rows[r].item] = Some(Outcome::Applied);
                    }
                }
                Err(f) if f.class == Class::Record && set.len() > 1 => {
                    let (a, b) = set.split_at(set.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Err(f) if f.class == Class::Record => {
                    let row = &rows[set[0]];
                    let item = &batch.items[row.item];
                    let table = &groups[row.group].table;
                    let what = format!(
                        " (table {}, key {:?}, record {} of part {} of job {}); fix the record or \
                         the table's constraints and import it again",
                        self.qualified(table),
                        item.key,
                        item.ordinal,
                        batch.part,
                        batch.job
                    );
                    outcomes[row.item] = Some(f.outcome(&what));
                }
                Err(f) => {
                    if f.class == Class::Stale {
                        self.forget_tables();
                    }
                    if matches!(f.class, Class::Transient | Class::Stale) {
                        conn.broken = true;
                    }
                    if !committed && f.class != Class::Batch {
                        return Err(f);
                    }
                    for &r in &set {
                        outcomes[rows[r].item] = Some(f.outcome(""));
                    }
                    stopped = Some(f);
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every record has an outcome"))
            .collect())
    }

    /// Apply rows `set` in one transaction.
    async fn write(
        &self,
        conn: &mut Conn,
        batch: &Batch,
        groups: &[Group],
        rows: &[Row],
        set: &[usize],
    ) -> Result<(), PgFail> {
        let doing = |g: Option<&Group>| match g {
            Some(g) => format!("writing to table {}", self.qualified(&g.table)),
            None => format!("committing a batch to {}", self.label),
        };
        conn.simple("BEGIN")
            .await
            .map_err(|e| classify(&e, &doing(None)))?;
        let mut result = Ok(());
        'groups: for (g, group) in groups.iter().enumerate() {
            let mine: Vec<&Row> = set
                .iter()
                .map(|&r| &rows[r])
                .filter(|r| r.group == g)
                .collect();
            for run in runs(mine) {
                if let Err(e) = self.write_run(conn, batch, group, &run).await {
                    result = Err(classify(&e, &doing(Some(group))));
                    break 'groups;
                }
            }
        }
        if result.is_ok() {
            crate::faults::point("apply.mid-target-commit");
            result = conn
                .simple("COMMIT")
                .await
                .map_err(|e| classify(&e, &doing(None)));
        }
        if result.is_err() {
            let _ = conn.simple("ROLLBACK").await;
        }
        result
    }

    async fn write_run(
        &self,
        conn: &mut Conn,
        batch: &Batch,
        group: &Group,
        run: &[&Row],
    ) -> Result<(), tokio_postgres::Error> {
        let sql = group.sql.as_ref().expect("prepared groups only have rows");
        let lock = conn.statement(&sql.lock).await?;
        let upsert = conn.statement(&sql.upsert).await?;
        let tenants = cells_of(run, |r| &r.tenant, sql.tenant_cat);
        let keys = cells_of(run, |r| &r.key, sql.key_cat);
        let ordinals: Vec<i64> = run.iter().map(|r| r.ordinal).collect();
        let idents: Vec<&str> = run.iter().map(|r| r.ident.as_str()).collect();
        let fields: Vec<Box<dyn ToSql + Sync + Send>> = sql
            .cats
            .iter()
            .enumerate()
            .map(|(f, cat)| cells_of(run, |r| &r.cells[f], *cat))
            .collect();
        let job = batch.job as i64;
        let part = i64::from(batch.part);
        let lock_params: [&(dyn ToSql + Sync); 2] = [&*tenants, &*keys];
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &job,
            &part,
            &batch.tenant,
            &group.kind,
            &group.table,
            &ordinals,
            &idents,
            &*tenants,
            &*keys,
        ];
        params.extend(fields.iter().map(|b| &**b as &(dyn ToSql + Sync)));
        let client = &conn.client;
        tokio::try_join!(
            client.execute(&lock, &lock_params),
            client.execute(&upsert, &params)
        )?;
        Ok(())
    }

    async fn undo_page(
        &self,
        conn: &mut Conn,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        careful: bool,
    ) -> Result<UndoPage, PgFail> {
        let doing = format!("undoing job {job} in {}", self.label);
        let fail = |e: tokio_postgres::Error| classify(&e, &doing);
        let exists: bool = conn
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.history()])
            .await
            .map_err(fail)?
            .get(0);
        if !exists {
            return Ok(UndoPage {
                entries: Vec::new(),
                done: true,
            });
        }
        conn.simple("BEGIN").await.map_err(fail)?;
        let result = self.undo_locked(conn, job, scope, limit, careful).await;
        let result = match result {
            Ok(page) => conn.simple("COMMIT").await.map(|()| page),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = conn.simple("ROLLBACK").await;
        }
        result.map_err(fail)
    }

    async fn undo_locked(
        &self,
        conn: &mut Conn,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        careful: bool,
    ) -> Result<UndoPage, tokio_postgres::Error> {
        let (all, parts, marks) = match scope {
            UndoScope::Job => (true, Vec::new(), Vec::new()),
            UndoScope::Unjournaled(m) => (
                false,
                m.iter().map(|(p, _)| i64::from(*p)).collect::<Vec<i64>>(),
                m.iter().map(|(_, w)| *w as i64).collect::<Vec<i64>>(),
            ),
        };
        let job_id = job as i64;
        conn.simple(KEYED_PLANS).await?;
        let page = conn
            .statement(&format!(
                    "SELECT part, ordinal, tenant, kind, table_name, key, before IS NULL \
                     FROM {} AS h \
                     WHERE job = $1 AND ($2::bool OR h.ordinal > coalesce(( \
                         SELECT m.w FROM ROWS FROM (unnest($3::int8[]), unnest($4::int8[])) AS m(p, w) \
                         WHERE m.p = h.part LIMIT 1), -1)) \
                     ORDER BY part DESC, ordinal DESC LIMIT $5 FOR UPDATE",
                self.history()
            ))
            .await?;
        let rows = conn
            .client
            .query(&page, &[&job_id, &all, &parts, &marks, &(limit as i64)])
            .await?;
        struct Entry {
            part: i64,
            ordinal: i64,
            tenant: String,
            kind: String,
            table: String,
            key: String,
            created: bool,
            action: UndoAction,
            message: Option<String>,
        }
        let mut entries: Vec<Entry> = rows
            .iter()
            .map(|r| Entry {
                part: r.get(0),
                ordinal: r.get(1),
                tenant: r.get(2),
                kind: r.get(3),
                table: r.get(4),
                key: r.get(5),
                created: r.get(6),
                action: UndoAction::Unchanged,
                message: None,
            })
            .collect();
        let done = rows.len() < limit;
        let mut names: Vec<String> = entries.iter().map(|e| e.table.clone()).collect();
        names.sort();
        names.dedup();
        // The catalog queries want the planner's usual choices.
        conn.simple(USUAL_PLANS).await?;
        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            let table = self.load(conn, &name).await?;
            tables.push((name, table));
        }
        conn.simple(KEYED_PLANS).await?;
        for (name, table) in tables {
            let mine: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].table == name)
                .collect();
            let usable = table.as_ref().and_then(|t| {
                let cols = [TENANT, KEY, JOB_COL, ORDINAL_COL].map(|c| t.column(c));
                match cols {
                    [Some(tc), Some(kc), Some(_), Some(_)] => Some((t, tc.clone(), kc.clone())),
                    _ => None,
                }
            });
            let Some((table, tenant_col, key_col)) = usable else {
                for &i in &mine {
                    let e = &mut entries[i];
                    if e.created {
                        e.action = UndoAction::Unchanged;
                        e.message = Some(format!(
                            "table {} no longer exists or lost sluice's columns; nothing to remove",
                            self.qualified(&name)
                        ));
                    } else {
                        e.action = UndoAction::KeptChanged;
                        e.message = Some(format!(
                            "table {} no longer exists or lost its tenant, key or _sluice_ \
                             columns, so the record's before-image cannot be restored",
                            self.qualified(&name)
                        ));
                    }
                }
                continue;
            };
            // Identities as the table's columns hold them.
            let mut ok = Vec::new();
            let mut cells = Vec::new();
            for &i in &mine {
                let e = &entries[i];
                match (
                    convert(Value::Text(&e.tenant), tenant_col.cat),
                    convert(Value::Text(&e.key), key_col.cat),
                ) {
                    (Ok(t), Ok(k)) => {
                        ok.push(i);
                        cells.push((t, k));
                    }
                    _ => {
                        let e = &mut entries[i];
                        e.action = UndoAction::KeptChanged;
                        e.message = Some(format!(
                            "the key {:?} no longer fits column key ({}) of table {}",
                            e.key, key_col.sql_type, table.qualified
                        ));
                    }
                }
            }
            if ok.is_empty() {
                continue;
            }
            let refs: Vec<&(Cell, Cell)> = cells.iter().collect();
            let tenants = cells_of(&refs, |c| &c.0, tenant_col.cat);
            let keys = cells_of(&refs, |c| &c.1, key_col.cat);
            let ut = tenant_col.expr("u.tenant");
            let uk = key_col.expr("u.key");
            let q = &table.qualified;
            conn.execute(
                &format!(
                    "SELECT count(*) FROM ROWS FROM (unnest($1::{}), unnest($2::{})) \
                         AS u(tenant, key) CROSS JOIN LATERAL (SELECT 1 FROM {q} AS t \
                         WHERE t.tenant = {ut} AND t.key = {uk} FOR UPDATE) AS l",
                    tenant_col.cat.array(),
                    key_col.cat.array()
                ),
                &[&*tenants, &*keys],
            )
            .await?;
            let part_ids: Vec<i64> = ok.iter().map(|&i| entries[i].part).collect();
            let ordinals: Vec<i64> = ok.iter().map(|&i| entries[i].ordinal).collect();
            let index: Vec<i64> = (0..ok.len() as i64).collect();
            let decided = conn
                .query(
                    &format!(
                        "SELECT u.n, \
                           coalesce(t.{JOB_COL} = $1 AND t.{ORDINAL_COL} = u.ordinal \
                             AND NOT EXISTS (SELECT 1 FROM jsonb_each(h.after) AS a \
                                             WHERE to_jsonb(t) -> a.key IS DISTINCT FROM a.value), \
                             false), \
                           CASE WHEN t.tenant IS NULL THEN h.before IS NULL \
                             ELSE coalesce(jsonb_strip_nulls(to_jsonb(t)) \
                                           = jsonb_strip_nulls(h.before), false) END, \
                           t.tenant IS NOT NULL \
                         FROM ROWS FROM (unnest($2::int8[]), unnest($3::int8[]), \
                                         unnest($4::{}), unnest($5::{}), unnest($6::int8[])) \
                              AS u(part, ordinal, tenant, key, n) \
                         JOIN {h} AS h ON h.job = $1 AND h.part = u.part AND h.ordinal = u.ordinal \
                         LEFT JOIN {q} AS t ON t.tenant = {ut} AND t.key = {uk}",
                        tenant_col.cat.array(),
                        key_col.cat.array(),
                        h = self.history(),
                    ),
                    &[&job_id, &part_ids, &ordinals, &*tenants, &*keys, &index],
                )
                .await?;
            let mut remove = Vec::new();
            let mut restore = Vec::new();
            for r in decided {
                let n: i64 = r.get(0);
                let (ours, same, present): (bool, bool, bool) = (r.get(1), r.get(2), r.get(3));
                let i = ok[n as usize];
                let e = &mut entries[i];
                e.action = if ours && e.created {
                    remove.push(n as usize);
                    UndoAction::Removed
                } else if ours {
                    restore.push(n as usize);
                    UndoAction::Restored
                } else if same {
                    UndoAction::Unchanged
                } else {
                    e.message = Some(if present {
                        format!("changed in table {q} since job {job} wrote it; kept as it is")
                    } else {
                        format!("deleted from table {q} since job {job} wrote it; not restored")
                    });
                    UndoAction::KeptChanged
                };
            }
            let delete_sql = format!(
                "DELETE FROM {q} AS t USING ROWS FROM (unnest($1::{}), unnest($2::{})) \
                 AS u(tenant, key) WHERE t.tenant = {ut} AND t.key = {uk}",
                tenant_col.cat.array(),
                key_col.cat.array()
            );
            let sets: Vec<String> = table
                .columns
                .iter()
                .filter(|c| c.writable() && c.name != TENANT && c.name != KEY)
                .map(|c| format!("{n} = r.{n}", n = quote(&c.name)))
                .collect();
            let restore_sql = format!(
                "UPDATE {q} AS t SET {} \
                 FROM {h} AS h, jsonb_populate_record(NULL::{q}, h.before) AS r \
                 WHERE h.job = $1 AND (h.part, h.ordinal) IN \
                       (SELECT * FROM ROWS FROM (unnest($2::int8[]), unnest($3::int8[]))) \
                   AND t.tenant = r.tenant AND t.key = r.key",
                sets.join(", "),
                h = self.history(),
            );
            // All at once; or, when the database refused that (a foreign key
            // now points at a row to remove ...), one record at a time, each
            // under a savepoint, so the refused ones are reported and kept.
            let (removes, restores): (Vec<Vec<usize>>, Vec<Vec<usize>>) = if careful {
                (
                    remove.iter().map(|&n| vec![n]).collect(),
                    restore.iter().map(|&n| vec![n]).collect(),
                )
            } else {
                (vec![remove], vec![restore])
            };
            for (is_remove, set) in removes
                .into_iter()
                .map(|s| (true, s))
                .chain(restores.into_iter().map(|s| (false, s)))
            {
                if set.is_empty() {
                    continue;
                }
                if careful {
                    conn.simple("SAVEPOINT sluice_undo").await?;
                }
                let done = if is_remove {
                    let picked: Vec<&(Cell, Cell)> = set.iter().map(|&n| &cells[n]).collect();
                    let tenants = cells_of(&picked, |c| &c.0, tenant_col.cat);
                    let keys = cells_of(&picked, |c| &c.1, key_col.cat);
                    conn.execute(&delete_sql, &[&*tenants, &*keys]).await
                } else {
                    let part_ids: Vec<i64> = set.iter().map(|&n| entries[ok[n]].part).collect();
                    let ordinals: Vec<i64> = set.iter().map(|&n| entries[ok[n]].ordinal).collect();
                    conn.execute(&restore_sql, &[&job_id, &part_ids, &ordinals])
                        .await
                };
                match done {
                    Ok(_) if careful => conn.simple("RELEASE SAVEPOINT sluice_undo").await?,
                    Ok(_) => {}
                    Err(e) if careful && classify(&e, "").class == Class::Record => {
                        conn.simple(
                            "ROLLBACK TO SAVEPOINT sluice_undo; RELEASE SAVEPOINT sluice_undo",
                        )
                        .await?;
                        let f = classify(
                            &e,
                            &format!(
                                "{} it in table {q}",
                                if is_remove { "removing" } else { "restoring" }
                            ),
                        );
                        let entry = &mut entries[ok[set[0]]];
                        entry.action = UndoAction::Failed;
                        entry.message = Some(format!(
                            "{}; it was left as it is: fix what blocks it and change the row \
                             by hand",
                            f.message
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let part_ids: Vec<i64> = entries.iter().map(|e| e.part).collect();
        let ordinals: Vec<i64> = entries.iter().map(|e| e.ordinal).collect();
        conn.execute(
            &format!(
                "DELETE FROM {} WHERE job = $1 AND (part, ordinal) IN \
                     (SELECT * FROM ROWS FROM (unnest($2::int8[]), unnest($3::int8[])))",
                self.history()
            ),
            &[&job_id, &part_ids, &ordinals],
        )
        .await?;
        Ok(UndoPage {
            entries: entries
                .into_iter()
                .map(|e| UndoEntry {
                    part: e.part as u32,
                    ordinal: e.ordinal as u64,
                    kind: e.kind,
                    key: e.key,
                    action: e.action,
                    message: e.message,
                })
                .collect(),
            done,
        })
    }
}

/// One column's values of `rows`, as an array parameter.
fn cells_of<R>(rows: &[&R], pick: impl Fn(&R) -> &Cell, cat: Cat) -> Box<dyn ToSql + Sync + Send> {
    let cells: Vec<&Cell> = rows.iter().map(|r| pick(r)).collect();
    array(&cells, cat)
}

/// Split rows into runs without a repeated identity (one statement cannot
/// upsert a row twice), each sorted by identity so concurrent writers lock
/// rows in the same order.
fn runs(rows: Vec<&Row>) -> Vec<Vec<&Row>> {
    let mut out: Vec<Vec<&Row>> = Vec::new();
    let mut seen: HashSet<(&Cell, &Cell)> = HashSet::new();
    let mut current = Vec::new();
    for r in rows {
        if !seen.insert((&r.tenant, &r.key)) {
            out.push(std::mem::take(&mut current));
            seen.clear();
            seen.insert((&r.tenant, &r.key));
        }
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    for run in &mut out {
        run.sort_by(|a, b| a.ident.cmp(&b.ident));
    }
    out
}

impl Eq for Cell {}

impl std::hash::Hash for Cell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Cell::Null => {}
            Cell::Text(s) => s.hash(state),
            Cell::I64(i) => i.hash(state),
            Cell::I32(i) => i.hash(state),
            Cell::I16(i) => i.hash(state),
            Cell::F64(x) => x.to_bits().hash(state),
            Cell::F32(x) => x.to_bits().hash(state),
            Cell::Bool(b) => b.hash(state),
            Cell::Bytes(b) => b.hash(state),
        }
    }
}

/// A field of a group's layout that has a column.
#[derive(Debug)]
struct Field {
    /// Index in the layout.
    index: usize,
    name: String,
    column: String,
    seen: Seen,
}

/// The SQL of a group, once its table is known.
#[derive(Debug)]
struct GroupSql {
    lock: String,
    upsert: String,
    tenant_cat: Cat,
    key_cat: Cat,
    cats: Vec<Cat>,
    table: Arc<Table>,
}

/// Records of one kind and layout: one table, one statement.
#[derive(Debug)]
struct Group {
    kind: String,
    table: String,
    fields: Vec<Field>,
    /// Fields that name sluice's own columns: (index, name, column).
    reserved: Vec<(usize, String, String)>,
    /// Why the group's records cannot be mapped at all.
    invalid: Option<String>,
    sql: Option<GroupSql>,
}

impl Group {
    fn new(kind: &str, layout: &[String]) -> Group {
        let mut fields = Vec::new();
        let mut reserved = Vec::new();
        let mut invalid = None;
        let mut columns = HashSet::new();
        if kind.is_empty() {
            invalid = Some(
                "the record's kind is empty, so it has no table; give the input a name or the \
                 plugin a kind"
                    .to_owned(),
            );
        }
        for (index, name) in layout.iter().enumerate() {
            let column = identifier(name);
            if name.is_empty() {
                invalid = Some(format!(
                    "field {} of the records has an empty name, which cannot be a column; name \
                     it (e.g. in the CSV header)",
                    index + 1
                ));
            } else if [TENANT, KEY, JOB_COL, ORDINAL_COL].contains(&column.as_str()) {
                reserved.push((index, name.clone(), column));
            } else if !columns.insert(column.clone()) {
                invalid = Some(format!(
                    "two fields map to the same column {}; rename one",
                    quote(&column)
                ));
            } else {
                fields.push(Field {
                    index,
                    name: name.clone(),
                    column,
                    seen: Seen::Nothing,
                });
            }
        }
        Group {
            kind: kind.to_owned(),
            table: identifier(kind),
            fields,
            reserved,
            invalid,
            sql: None,
        }
    }

    /// Column names and the types sluice would create them with.
    fn columns(&self) -> Vec<(String, &'static str)> {
        self.fields
            .iter()
            .map(|f| (f.column.clone(), f.seen.sql()))
            .collect()
    }

    fn prepare(&mut self, table: Arc<Table>, sink: &PgSink) {
        let col = |name: &str| table.column(name).expect("checked").clone();
        let (tc, kc) = (col(TENANT), col(KEY));
        let cols: Vec<Column> = self.fields.iter().map(|f| col(&f.column)).collect();
        let q = &table.qualified;
        // A subquery with FOR UPDATE is never flattened into a join: one
        // index lookup per record, in the order given (sorted by key),
        // whatever the planner thinks of the table's size.
        let lock = format!(
            "SELECT count(*) FROM ROWS FROM (unnest($1::{}), unnest($2::{})) AS u(tenant, key) \
             CROSS JOIN LATERAL (SELECT 1 FROM {q} AS t WHERE t.tenant = {} AND t.key = {} \
             FOR UPDATE) AS l",
            tc.cat.array(),
            kc.cat.array(),
            tc.expr("u.tenant"),
            kc.expr("u.key"),
        );
        let mut unnest = vec![
            "unnest($6::int8[])".to_owned(),
            "unnest($7::text[])".into(),
            format!("unnest($8::{})", tc.cat.array()),
            format!("unnest($9::{})", kc.cat.array()),
        ];
        let mut names = vec![
            "ord".to_owned(),
            "ident".into(),
            "tenant".into(),
            "key".into(),
        ];
        for (n, c) in cols.iter().enumerate() {
            unnest.push(format!("unnest(${}::{})", 10 + n, c.cat.array()));
            names.push(format!("c{n}"));
        }
        let (it, ik) = (tc.expr("i.tenant"), kc.expr("i.key"));
        let targets: Vec<String> = cols.iter().map(|c| quote(&c.name)).collect();
        let values: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(n, c)| c.expr(&format!("i.c{n}")))
            .collect();
        let mut sets: Vec<String> = targets
            .iter()
            .map(|t| format!("{t} = EXCLUDED.{t}"))
            .collect();
        sets.push(format!("{JOB_COL} = EXCLUDED.{JOB_COL}"));
        sets.push(format!("{ORDINAL_COL} = EXCLUDED.{ORDINAL_COL}"));
        let comma = |v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!("{}, ", v.join(", "))
            }
        };
        // The after-image: the written columns as the table holds them.
        // jsonb_build_object takes at most 100 arguments.
        let pairs: Vec<String> = cols
            .iter()
            .zip(&values)
            .map(|(c, v)| format!("{}, ({v})::{}", literal(&c.name), c.sql_type))
            .collect();
        let after = if pairs.is_empty() {
            "'{}'::jsonb".to_owned()
        } else {
            pairs
                .chunks(50)
                .map(|c| format!("jsonb_build_object({})", c.join(", ")))
                .collect::<Vec<_>>()
                .join(" || ")
        };
        // One statement, its parts reading the same snapshot: the history
        // row (before-image: the row as the statement found it) and the
        // upsert. No join between the two, so the plan stays linear.
        let upsert = format!(
            "WITH i AS (SELECT * FROM ROWS FROM ({unnest}) AS i({names})), \
             h AS (INSERT INTO {h} (job, part, ordinal, tenant, kind, table_name, key, before, after) \
                   SELECT $1::int8, $2::int8, i.ord, $3::text, $4::text, $5::text, i.ident, \
                          (SELECT to_jsonb(t) FROM {q} AS t WHERE t.tenant = {it} AND t.key = {ik}), \
                          {after} \
                   FROM i ON CONFLICT (job, part, ordinal) DO NOTHING) \
             INSERT INTO {q} AS t (tenant, key, {targets}{JOB_COL}, {ORDINAL_COL}) \
             SELECT {it}, {ik}, {values}$1::int8, i.ord FROM i \
             ON CONFLICT (tenant, key) DO UPDATE SET {sets}",
            unnest = unnest.join(", "),
            names = names.join(", "),
            targets = comma(&targets),
            values = comma(&values),
            sets = sets.join(", "),
            h = sink.history(),
        );
        self.sql = Some(GroupSql {
            lock,
            upsert,
            tenant_cat: tc.cat,
            key_cat: kc.cat,
            cats: cols.iter().map(|c| c.cat).collect(),
            table,
        });
    }

    /// One record converted for the table, or why it cannot be.
    fn row(
        &self,
        group_index: usize,
        item_index: usize,
        item: &super::BatchItem,
        tenant: &str,
        job: u64,
    ) -> Result<Row, (&'static str, String)> {
        let sql = self.sql.as_ref().expect("prepared");
        let table = &sql.table;
        let where_ = || {
            format!(
                "table {}, key {:?}, record {} of job {job}",
                table.qualified, item.key, item.ordinal
            )
        };
        let record = &item.record;
        for (index, name, column) in &self.reserved {
            let value = record.get(*index).unwrap_or(Value::Null);
            let expected = match column.as_str() {
                TENANT => Some(tenant),
                KEY => Some(item.key.as_str()),
                _ => None,
            };
            let fits = match (expected, value) {
                (_, Value::Null) => expected.is_some(),
                (Some(e), v) => v.to_text().as_deref() == Some(e),
                (None, _) => false,
            };
            if !fits {
                return Err((
                    "pg-reserved-field",
                    format!(
                        "the field {} names sluice's column {} {}, but its value {} is not the \
                         record's {} ({}); rename the field ({})",
                        quote(name),
                        quote(column),
                        match column.as_str() {
                            TENANT | KEY => "(the record's identity)",
                            _ => "(who wrote the row)",
                        },
                        show(value),
                        column,
                        expected.unwrap_or("set by sluice"),
                        where_()
                    ),
                ));
            }
        }
        let col = |name: &str| table.column(name).expect("checked");
        let identity = |what: &str, text: &str| {
            let c = col(what);
            convert(Value::Text(text), c.cat).map_err(|why| {
                (
                    "pg-bad-key",
                    format!(
                        "the record's {what} {text:?} cannot be stored in column {what} ({}) of {}: \
                         {why}; change the column's type to text or fix the {what}",
                        c.sql_type,
                        where_()
                    ),
                )
            })
        };
        let tenant_cell = identity(TENANT, tenant)?;
        let key_cell = identity(KEY, &item.key)?;
        let mut cells = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let c = col(&f.column);
            let value = record.get(f.index).unwrap_or(Value::Null);
            let cell = convert(value, c.cat).map_err(|why| {
                (
                    "pg-bad-value",
                    format!(
                        "field {} = {} cannot be stored in column {} ({}) of {}: {why}; fix the \
                         value, or change the column's type (ALTER TABLE {} ALTER COLUMN {} TYPE \
                         text)",
                        quote(&f.name),
                        show(value),
                        quote(&f.column),
                        c.sql_type,
                        where_(),
                        table.qualified,
                        quote(&f.column)
                    ),
                )
            })?;
            cells.push(cell);
        }
        Ok(Row {
            item: item_index,
            group: group_index,
            ordinal: item.ordinal as i64,
            ident: item.key.clone(),
            tenant: tenant_cell,
            key: key_cell,
            cells,
        })
    }
}

/// A value for a message, shortened.
fn show(v: Value<'_>) -> String {
    let s = v.to_json().to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// One record ready to write.
#[derive(Debug)]
struct Row {
    /// Index in the batch.
    item: usize,
    group: usize,
    ordinal: i64,
    /// The key as sluice knows it (text).
    ident: String,
    tenant: Cell,
    key: Cell,
    cells: Vec<Cell>,
}

#[async_trait::async_trait]
impl Sink for PgSink {
    fn name(&self) -> &str {
        &self.label
    }

    async fn apply(
        &self,
        batch: Arc<Batch>,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError> {
        if batch.items.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.checkout().await.map_err(|f| f.sink_error())?;
        let result = self.apply_batch(&mut conn, &batch).await;
        match result {
            Ok(outcomes) => {
                self.checkin(conn);
                Ok(outcomes)
            }
            Err(f) => {
                // The engine logs it with its retry decision.
                tracing::debug!(job = batch.job, part = batch.part, "{}", f.message);
                if matches!(f.class, Class::Record | Class::Batch) {
                    self.checkin(conn);
                }
                Err(f.sink_error())
            }
        }
    }

    async fn undo(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError> {
        // Transient failures are retried by the engine, page by page.
        let mut careful = false;
        loop {
            let result = match self.checkout().await {
                Ok(mut conn) => {
                    let r = self.undo_page(&mut conn, job, scope, limit, careful).await;
                    if r.is_ok() {
                        self.checkin(conn);
                    }
                    r
                }
                Err(f) => Err(f),
            };
            match result {
                Ok(page) => return Ok(page),
                Err(f) if f.class == Class::Record && !careful => {
                    tracing::info!(job, "{}; undoing this page record by record", f.message);
                    careful = true;
                }
                Err(f) => return Err(f.sink_error()),
            }
        }
    }
}

//! Throughput and peak memory, measured (never asserted).
//!
//! `cargo bench -p sluice --bench throughput` generates config-like CSV
//! files (10 columns, quoted commas, about 1% of rows with an embedded
//! newline) in the target directory and measures, each path in its own
//! process so peak RSS is its own:
//!
//! - parse: the `csv` crate with a reused `ByteRecord` (the native
//!   baseline); the csv adapter compiled natively, building the same owned
//!   records it returns in the sandbox; the sandboxed csv plugin with its CPU
//!   limits on, called as pass 1 calls it (batches of 256 records).
//! - import: a whole import (spool, both passes, journal, embedded store)
//!   beside the baseline, and the peak RSS of an import several times larger.
//! - copy (only when `SLUICE_BENCH_POSTGRES_URL` names a PostgreSQL database
//!   the bench may create a table in): `COPY ... FROM STDIN` of the same
//!   file into a logged table, without and with a primary key, for scale.
//!
//! Arguments after `--`: `parse`, `import` (default: both), `--rows N`
//! (default 1,000,000), `--big-factor K` (default 4), `--runs R` (default 3:
//! each path's median run is reported).

// A benchmark binary reports on stdout.
#![allow(clippy::print_stdout)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1], Path::new(&args[2]));
        return;
    }
    let rows = flag(&args, "--rows").unwrap_or(1_000_000);
    let big = flag(&args, "--big-factor").unwrap_or(4);
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| matches!(*a, "parse" | "import"))
        .collect();
    let want = |what: &str| only.is_empty() || only.contains(&what);
    let file = generate(rows);
    println!(
        "input: {} rows, {:.1} MB ({})",
        rows,
        std::fs::metadata(&file).unwrap().len() as f64 / 1e6,
        file.display()
    );
    // This machine's speed drifts by tens of percent over minutes, so each
    // path runs `--runs` times, the paths interleaved (every round runs each
    // once), and the median run of each is reported: the ratios then compare
    // runs made under the same conditions.
    let mut paths = vec!["native-csv"];
    if want("parse") {
        paths.extend(["native-adapter", "sandbox"]);
    }
    if want("import") {
        paths.extend(["import", "import-nokey"]);
    }
    let postgres = std::env::var_os("SLUICE_BENCH_POSTGRES_URL").is_some();
    if want("import") && postgres {
        paths.extend(["copy", "copy-pk"]);
    }
    let runs = flag(&args, "--runs").unwrap_or(3).max(1);
    let mut results: Vec<Vec<Value>> = vec![Vec::new(); paths.len()];
    for _ in 0..runs {
        for (path, out) in paths.iter().zip(&mut results) {
            out.push(measure(path, &file));
        }
    }
    let median = |path: &str| -> Value {
        let i = paths.iter().position(|p| *p == path).expect("measured");
        let mut all = results[i].clone();
        all.sort_by(|a, b| secs(a).total_cmp(&secs(b)));
        all[all.len() / 2].clone()
    };
    println!("median of {runs} runs each, interleaved");
    let baseline = median("native-csv");
    report("native csv crate, reused ByteRecord", &baseline, &baseline);
    if want("parse") {
        let native = median("native-adapter");
        report("csv adapter natively, owned records", &native, &baseline);
        let sandboxed = median("sandbox");
        report(
            "csv plugin in the sandbox, batched calls, CPU limit on",
            &sandboxed,
            &baseline,
        );
        println!(
            "sandboxed / same-work native: {:.2}x",
            rate(&sandboxed) / rate(&native)
        );
    }
    if want("import") {
        let import = median("import");
        report(
            "import end to end, --key (both passes, journal, store)",
            &import,
            &baseline,
        );
        phases(&import);
        let plain = median("import-nokey");
        report("import end to end, keys from positions", &plain, &baseline);
        phases(&plain);
        if postgres {
            let copy = median("copy");
            report("PostgreSQL COPY FROM STDIN, logged table", &copy, &baseline);
            let copy_pk = median("copy-pk");
            report(
                "same, with a primary key on the key column",
                &copy_pk,
                &baseline,
            );
            println!(
                "import --key / COPY: {:.2}x; / COPY with a primary key: {:.2}x",
                rate(&import) / rate(&copy),
                rate(&import) / rate(&copy_pk)
            );
        }
        // Memory, not speed, is the point of the larger input: one run each.
        let big_file = generate(rows * big);
        let big_plain = measure("import-nokey", &big_file);
        report(
            &format!("import, keys from positions, {big}x the rows (one run)"),
            &big_plain,
            &baseline,
        );
        let big_import = measure("import", &big_file);
        report(
            &format!("import, --key, {big}x the rows (one run)"),
            &big_import,
            &baseline,
        );
    }
}

fn secs(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap()
}

/// How long each phase of an import took.
fn phases(v: &Value) {
    println!(
        "{:<50} spool {:.2} s, validate (pass 1) {:.2} s, apply (pass 2) {:.2} s, the rest {:.2} s",
        "  phases",
        v["spool_secs"].as_f64().unwrap_or(0.0),
        v["validate_secs"].as_f64().unwrap_or(0.0),
        v["apply_secs"].as_f64().unwrap_or(0.0),
        v["secs"].as_f64().unwrap_or(0.0)
            - v["spool_secs"].as_f64().unwrap_or(0.0)
            - v["validate_secs"].as_f64().unwrap_or(0.0)
            - v["apply_secs"].as_f64().unwrap_or(0.0)
    );
}

fn flag(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn rate(v: &Value) -> f64 {
    v["records"].as_f64().unwrap() / secs(v)
}

fn report(label: &str, v: &Value, baseline: &Value) {
    println!(
        "{label:<50} {:>9.0} records/s  {:>6.3}x native  peak RSS {:>6.1} MiB  ({} records, {:.2} s)",
        rate(v),
        rate(v) / rate(baseline),
        v["peak_rss_kib"].as_f64().unwrap() / 1024.0,
        v["records"],
        v["secs"].as_f64().unwrap()
    );
}

/// Run one path in a child process and return what it measured.
fn measure(path: &str, file: &Path) -> Value {
    // Read the input once first: the kernel may have dropped some of its
    // pages since the last run (this machine reclaims idle page cache), and
    // every path should start from a cached file.
    std::io::copy(
        &mut std::fs::File::open(file).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", path])
        .arg(file)
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("child prints JSON")
}

/// Peak resident set of this process, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn child(path: &str, file: &Path) {
    let started = Instant::now();
    let records = match path {
        "native-csv" => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_path(file)
                .unwrap();
            let mut record = csv::ByteRecord::new();
            let mut n = 0u64;
            while reader.read_byte_record(&mut record).unwrap() {
                n += 1;
            }
            n
        }
        "native-adapter" => {
            use sluice_sdk::{Adapter, Input, Item};
            let f = std::fs::File::open(file).unwrap();
            let mut parser = sluice_sdk::testing::Harness::<sluice_plugin_csv::CsvAdapter>::new()
                .open(Input::from_reader(f, 64 << 10), None)
                .unwrap();
            let mut n = 0u64;
            loop {
                match parser.next() {
                    Item::Record(r) => {
                        std::hint::black_box(&r);
                        n += 1;
                    }
                    Item::Error(_) => {}
                    Item::End | Item::Fatal(_) => break,
                }
            }
            n
        }
        "sandbox" => {
            use sluice::record::Item;
            let dir = tempfile::tempdir().unwrap();
            let sandbox = sluice::sandbox::Sandbox::new(sluice::sandbox::SandboxConfig {
                cache_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            })
            .unwrap();
            let (_, wasm) = sluice::registry::bundled::ALL
                .iter()
                .find(|(n, _)| *n == "csv.wasm")
                .unwrap();
            let plugin = sandbox.load("csv.wasm", wasm).unwrap();
            let input = std::fs::File::open(file).unwrap();
            let started = Instant::now();
            let mut parse = sandbox
                .open(&plugin, Box::new(input), &[], None, None, None)
                .unwrap();
            // As pass 1 calls it: batches of up to 256 records or 1 MiB,
            // decoded into records (here on the same thread).
            let (mut n, mut items) = (0u64, Vec::new());
            loop {
                parse
                    .next_batch(256, 1 << 20)
                    .unwrap()
                    .decode(&mut items)
                    .unwrap();
                for item in items.drain(..) {
                    match item {
                        Item::Record(r) => {
                            std::hint::black_box(&r);
                            n += 1;
                        }
                        Item::Error(_) => {}
                        Item::End | Item::Fatal(_) => return print_child(n, started, path),
                    }
                }
            }
        }
        "import" | "import-nokey" => {
            let dir = tempfile::tempdir().unwrap();
            let engine =
                sluice::engine::Engine::open(dir.path(), sluice::engine::EngineConfig::default())
                    .unwrap();
            let rt = tokio::runtime::Runtime::new().unwrap();
            // Compile the plugin before the clock starts: a real service
            // has it cached.
            engine.registry().resolve(None, "csv").unwrap();
            let started = Instant::now();
            let mut spooled = 0.0;
            let job = rt.block_on(async {
                let input = tokio::fs::File::open(file).await.unwrap();
                let req = sluice::engine::ImportRequest {
                    source: file.display().to_string(),
                    tenant: "bench".into(),
                    key: (path == "import").then(|| "key".into()),
                    ..Default::default()
                };
                let id = engine.submit(req, input).await.unwrap().job();
                spooled = started.elapsed().as_secs_f64();
                engine.run(id).await.unwrap()
            });
            assert_eq!(job.counts.failed + job.counts.rejected, 0, "{job:?}");
            let t = &job.times;
            let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0,
                _ => 0.0,
            };
            let total = started.elapsed().as_secs_f64();
            let v = json!({"path": path, "records": job.counts.applied, "secs": total,
                "peak_rss_kib": peak_rss_kib(), "spool_secs": spooled,
                "validate_secs": secs(t.scan_started, t.scan_finished),
                "apply_secs": secs(t.apply_started, t.finished)});
            let mut out = std::io::stdout().lock();
            writeln!(out, "{v}").unwrap();
            return;
        }
        "copy" | "copy-pk" => {
            let url = std::env::var("SLUICE_BENCH_POSTGRES_URL").expect("a PostgreSQL URL");
            let (records, secs) = copy_into_postgres(&url, file, path == "copy-pk");
            return print_child_secs(records, secs, path);
        }
        other => panic!("unknown path {other}"),
    };
    print_child(records, started, path);
}

fn print_child(records: u64, started: Instant, path: &str) {
    print_child_secs(records, started.elapsed().as_secs_f64(), path);
}

fn print_child_secs(records: u64, secs: f64, path: &str) {
    let v = json!({"path": path, "records": records, "secs": secs, "peak_rss_kib": peak_rss_kib()});
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").unwrap();
}

/// `COPY` `file` into a fresh table, streaming it from here as `psql
/// \\copy` would. The clock starts once the table exists.
fn copy_into_postgres(url: &str, file: &Path, primary_key: bool) -> (u64, f64) {
    use futures_util::SinkExt as _;
    use tokio::io::AsyncReadExt as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connects to SLUICE_BENCH_POSTGRES_URL");
        tokio::spawn(connection);
        let key = if primary_key {
            "text primary key"
        } else {
            "text"
        };
        client
            .batch_execute(&format!(
                "drop table if exists sluice_bench_copy;
                 create table sluice_bench_copy (key {key}, service text, environment text,
                   region text, setting text, value text, type text, owner text,
                   updated_at text, notes text)"
            ))
            .await
            .unwrap();
        let started = Instant::now();
        let sink = client
            .copy_in("copy sluice_bench_copy from stdin (format csv, header true)")
            .await
            .unwrap();
        let mut sink = std::pin::pin!(sink);
        let mut input = tokio::fs::File::open(file).await.unwrap();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = input.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            sink.send(bytes::Bytes::copy_from_slice(&buf[..n]))
                .await
                .unwrap();
        }
        let rows = sink.as_mut().finish().await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        client
            .batch_execute("drop table sluice_bench_copy")
            .await
            .unwrap();
        (rows, secs)
    })
}

/// Generate (once) `rows` config-like CSV rows in the target directory.
fn generate(rows: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("bench-config-{rows}.csv"));
    // Written under another name and renamed when complete, so an existing
    // file is a whole one.
    if path.exists() {
        return path;
    }
    let tmp = path.with_extension("partial");
    let mut w = BufWriter::new(std::fs::File::create(&tmp).unwrap());
    writeln!(
        w,
        "key,service,environment,region,setting,value,type,owner,updated_at,notes"
    )
    .unwrap();
    let services = ["billing", "search", "auth", "gateway", "ledger", "mailer"];
    let envs = ["prod", "staging", "dev"];
    let regions = ["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"];
    let types = ["int", "bool", "string", "duration"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = services[(x % 6) as usize];
        let e = envs[(x >> 8) as usize % 3];
        let r = regions[(x >> 16) as usize % 4];
        let t = types[(x >> 24) as usize % 4];
        let value = match t {
            "int" => format!("{}", x % 100_000),
            "bool" => format!("{}", x.is_multiple_of(2)),
            "duration" => format!("{}s", x % 3600),
            _ => format!("\"v{:x}, tuned\"", x % 0xffff),
        };
        let notes = if x.is_multiple_of(100) {
            "\"multi-line note:\nreviewed by the platform team\"".to_owned()
        } else if x.is_multiple_of(3) {
            format!("\"changed in release {}.{}, see runbook\"", x % 40, x % 7)
        } else {
            "default".to_owned()
        };
        writeln!(
            w,
            "cfg-{i:08},{s},{e},{r},{s}.{e}.setting_{:04},{value},{t},team-{},2024-{:02}-{:02}T12:00:00Z,{notes}",
            x % 5000,
            x % 40,
            x % 12 + 1,
            x % 28 + 1
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

//! Crash tests with real processes: a child `sluice import` is killed with
//! SIGKILL, at named crash points compiled into test builds and at random
//! times, then recovered. The oracle (see the reliability matrix): the final
//! store equals an uninterrupted run's (nothing lost, nothing duplicated,
//! nothing unexpected), every job is terminal, counts match, and no spool or
//! temporary file is left.
//!
//! A crash before the job reached the journal means the import was never
//! acknowledged: like a real client, the test then retries the import, and
//! the retry must not import twice.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::common::{
    at_every_occurrence, crash_points, csv_rows, fresh_data_dir, jobs_of, run, sluice_cmd,
    test_input, zip_of,
};

const ROWS: usize = 3_000;
const INTERVAL: &str = "250";

fn sluice(data: &Path) -> Command {
    sluice_cmd(data, INTERVAL)
}

fn input_file() -> PathBuf {
    test_input("crash-input.csv", &csv_rows(ROWS, 97))
}

fn import(data: &Path, input: &Path) -> Command {
    let mut c = sluice(data);
    c.args(["import", "--key", "id", "--json"]).arg(input);
    c
}

fn export(data: &Path) -> String {
    let out = run(sluice(data).args(["store", "export"]));
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn jobs(data: &Path) -> Vec<Value> {
    jobs_of(&mut sluice(data))
}

fn spool_debris(data: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for dir in [data.join("spool"), data.join("spool/tmp")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().unwrap().is_file() {
                    left.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    left
}

/// The uninterrupted run every crashed run must end up equal to.
struct Reference {
    export: String,
    counts: Value,
}

fn reference(input: &Path) -> &'static Reference {
    static REFS: std::sync::Mutex<Vec<(PathBuf, &'static Reference)>> =
        std::sync::Mutex::new(Vec::new());
    let mut refs = REFS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = refs.iter().find(|(p, _)| p == input) {
        return r;
    }
    let r: &'static Reference = Box::leak(Box::new({
        let dir = imported(input);
        let jobs = jobs(dir.path());
        assert_eq!(jobs.len(), 1);
        Reference {
            export: export(dir.path()),
            counts: jobs[0]["counts"].clone(),
        }
    }));
    refs.push((input.to_path_buf(), r));
    r
}

/// Recover (possibly crashing again inside recovery), retry the import as
/// an unacknowledged client would, and check the oracle.
fn recover_and_check(data: &Path, input: &Path, label: &str, crash_in_recovery: Option<&str>) {
    if let Some(point) = crash_in_recovery {
        let out = run(sluice(data).arg("recover").env("SLUICE_CRASH_AT", point));
        assert!(
            out.status.success() || out.status.signal() == Some(9),
            "{label}: recovery with a crash: {out:?}"
        );
    }
    let out = run(sluice(data).arg("recover"));
    assert!(out.status.success(), "{label}: recover: {out:?}");
    let retry = run(&mut import(data, input));
    assert!(
        matches!(retry.status.code(), Some(3)),
        "{label}: retried import: {}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let reference = reference(input);
    let jobs = jobs(data);
    assert_eq!(
        jobs.len(),
        1,
        "{label}: exactly one job for one import: {jobs:?}"
    );
    let job = &jobs[0];
    assert_eq!(job["state"], "completed", "{label}: {job}");
    for k in ["scanned", "rejected", "applied", "failed"] {
        assert_eq!(
            job["counts"][k], reference.counts[k],
            "{label}: count {k}: {job}"
        );
    }
    let got = export(data);
    if got != reference.export {
        let (g, r): (Vec<_>, Vec<_>) = (got.lines().collect(), reference.export.lines().collect());
        panic!(
            "{label}: store differs from the uninterrupted run: {} records vs {}; first difference: {:?}",
            g.len(),
            r.len(),
            g.iter().zip(&r).find(|(a, b)| a != b)
        );
    }
    assert!(
        spool_debris(data).is_empty(),
        "{label}: spool debris {:?}",
        spool_debris(data)
    );
}

/// Crash points a plain (not ZIP, not HTTP) import reaches; recovery points
/// are exercised by double crashes.
fn import_points() -> Vec<&'static str> {
    ["spool", "journal", "scan", "apply", "job"]
        .into_iter()
        .flat_map(crash_points)
        .collect()
}

/// Kill an import of `input` at every occurrence of each point, one step
/// further each run, until the import gets past the point's last occurrence
/// (as SQLite's crash tests do); recover and check each time. Returns how
/// many runs were killed.
fn crash_at_every_occurrence(input: &Path, points: &[&str]) -> usize {
    reference(input);
    let mut crashes = 0;
    for point in points {
        crashes += at_every_occurrence(point, |spec| {
            let dir = fresh_data_dir();
            let out = run(import(dir.path(), input).env("SLUICE_CRASH_AT", spec));
            let crashed = out.status.signal() == Some(9);
            assert!(crashed || out.status.code() == Some(3), "{spec}: {out:?}");
            recover_and_check(dir.path(), input, spec, None);
            crashed
        });
    }
    crashes
}

#[test]
fn killed_at_every_crash_point_recovery_loses_and_duplicates_nothing() {
    let points = import_points();
    let crashes = crash_at_every_occurrence(&input_file(), &points);
    eprintln!(
        "crash points: {crashes} SIGKILLed imports at {} points recovered",
        points.len()
    );
}

/// A ZIP of three CSV entries, for the expansion crash points.
fn zip_input() -> PathBuf {
    let entries: Vec<(String, Vec<u8>)> = ["a.csv", "b.csv", "c.csv"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let rows = String::from_utf8(csv_rows(ROWS / 3, 97)).unwrap();
            // Distinct keys per entry: prefix every id with the entry number.
            let rows: String = rows
                .lines()
                .enumerate()
                .map(|(n, l)| {
                    if n == 0 {
                        format!("{l}\n")
                    } else {
                        format!("{i}{l}\n")
                    }
                })
                .collect();
            (name.to_string(), rows.into_bytes())
        })
        .collect();
    let entries: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    test_input("crash-input.zip", &zip_of(&entries))
}

#[test]
fn killed_while_expanding_a_zip_recovery_loses_and_duplicates_nothing() {
    let crashes = crash_at_every_occurrence(&zip_input(), &crash_points("zip"));
    eprintln!("zip crash points: {crashes} SIGKILLed imports recovered");
    assert!(crashes >= 9, "{crashes}");
}

#[test]
fn a_crash_during_recovery_is_recovered_too() {
    let input = input_file();
    reference(&input);
    for (first, second) in [
        ("apply.after-target-write:2", "recover.start"),
        ("scan.after-commit:3", "recover.after-sweep"),
        ("apply.before-batch:4", "apply.after-target-write:1"),
        ("scan.mid-interval:2", "scan.before-commit:2"),
        ("job.before-spool-cleanup", "recover.after-sweep"),
    ] {
        let dir = fresh_data_dir();
        let out = run(import(dir.path(), &input).env("SLUICE_CRASH_AT", first));
        assert_eq!(out.status.signal(), Some(9), "{first}: {out:?}");
        recover_and_check(
            dir.path(),
            &input,
            &format!("{first} then {second}"),
            Some(second),
        );
    }
}

#[test]
fn killed_at_random_times_recovery_loses_and_duplicates_nothing() {
    let input = input_file();
    reference(&input);
    // How long an uninterrupted import takes here bounds the kill times.
    let dir = fresh_data_dir();
    let started = Instant::now();
    assert_eq!(run(&mut import(dir.path(), &input)).status.code(), Some(3));
    let full = started.elapsed();
    let mut seed: u64 = 0x5eed_cafe;
    let mut killed = 0;
    for round in 0..12 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = full.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        let dir = fresh_data_dir();
        let mut child = import(dir.path(), &input).spawn().unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let _ = child.wait();
        recover_and_check(
            dir.path(),
            &input,
            &format!("random kill {round} at {at:?}"),
            None,
        );
    }
    eprintln!("random kills: {killed} of 12 imports killed mid-run (full run {full:?})");
    assert!(killed > 0);
}

/// Import (uninterrupted) into a fresh data directory and return it.
fn imported(input: &Path) -> tempfile::TempDir {
    let dir = fresh_data_dir();
    let out = run(&mut import(dir.path(), input));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn undo_killed_at_any_page_resumes_and_leaves_nothing() {
    let input = input_file();
    let mut crashes = 0;
    for point in crash_points("undo") {
        for nth in [1, 3, 6] {
            let dir = imported(&input);
            let spec = format!("{point}:{nth}");
            let out = run(sluice(dir.path())
                .args(["undo", "1"])
                .env("SLUICE_CRASH_AT", &spec));
            if out.status.signal() == Some(9) {
                crashes += 1;
                // A crashed undo is resumed by recovery, or by asking again.
                let resumed = if nth % 2 == 1 {
                    run(sluice(dir.path()).arg("recover"))
                } else {
                    run(sluice(dir.path()).args(["undo", "1"]))
                };
                assert!(resumed.status.success(), "{spec}: {resumed:?}");
            } else {
                assert_eq!(out.status.code(), Some(0), "{spec}: {out:?}");
            }
            assert_eq!(
                export(dir.path()),
                "",
                "{spec}: the store is empty after undo"
            );
            let job = &jobs(dir.path())[0];
            assert_eq!(job["state"], "undone", "{spec}: {job}");
            let removed = job["undo"]["removed"].as_u64().unwrap_or(0);
            assert!(removed > 0, "{spec}: {job}");
        }
    }
    assert!(crashes >= 4, "{crashes}");
}

/// Start a child import of 60,000 rows (group commits of 500) and return
/// once its job exists, so it is well inside its passes.
fn spawn_long_import(dir: &Path, name: &str) -> std::process::Child {
    let input = test_input(name, &csv_rows(60_000, 0));
    let child = import(dir, &input)
        .env("SLUICE_INTERVAL_ITEMS", "500")
        .spawn()
        .unwrap();
    let started = Instant::now();
    while jobs(dir).is_empty() {
        assert!(started.elapsed().as_secs() < 30, "the job never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn ctrl_c_stops_an_import_resumably() {
    let dir = fresh_data_dir();
    let child = spawn_long_import(dir.path(), "ctrl-c-input.csv");
    // Interrupt it like a terminal would, once its signal handler is up.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    // An import of this size runs for about a second in a test build.
    assert!(
        !out.status.success(),
        "the import finished before the signal landed: make the input larger"
    );
    // The handler stopped it at a safe point and said how to resume.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sluice recover"),
        "{out:?}"
    );
    let state = jobs(dir.path())[0]["state"].as_str().unwrap().to_owned();
    assert!(
        !["completed", "cancelled", "failed"].contains(&state.as_str()),
        "left resumable: {state}"
    );
    let rec = run(sluice(dir.path()).arg("recover"));
    assert!(rec.status.success(), "{rec:?}");
    assert_eq!(jobs(dir.path())[0]["state"], "completed");
    assert_eq!(export(dir.path()).lines().count(), 60_000);
}

#[test]
fn cancel_from_another_process_stops_at_a_safe_point() {
    let dir = fresh_data_dir();
    let child = spawn_long_import(dir.path(), "cancel-input.csv");
    let out = run(sluice(dir.path()).args(["cancel", "1"]));
    assert!(out.status.success(), "{out:?}");
    let imported = child.wait_with_output().unwrap();
    let job = &jobs(dir.path())[0];
    assert_eq!(job["state"], "cancelled", "{job} {imported:?}");
    assert_eq!(imported.status.code(), Some(1));
    // What the journal says was applied is exactly what the store holds.
    let applied = job["counts"]["applied"].as_u64().unwrap();
    assert_eq!(export(dir.path()).lines().count() as u64, applied, "{job}");
    assert!(spool_debris(dir.path()).is_empty());
}

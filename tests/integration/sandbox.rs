//! The sandbox against a deliberately hostile guest: every misbehaviour ends
//! its own parse with a classified error that names the plugin and the place,
//! and the host keeps serving other parses.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice::record::{Item, Value};
use sluice::sandbox::{FaultKind, Limits, LoadError, Parse, ParseError, PluginFault};

use crate::common::{hostile, opts, sandbox};

const INPUT: &[u8] = b"one\ntwo\nthree\nfour\nfive\n";

/// Parse `input` with the hostile guest in `mode` after `after` good records:
/// the items before the end, and how it ended.
fn run(
    mode: &str,
    after: u64,
    input: &[u8],
    limits: Option<&Limits>,
) -> (Vec<Item>, Result<Item, ParseError>) {
    drive(mode, after, input, limits, |parse, out| {
        out.push(parse.next()?);
        Ok(())
    })
}

/// Like [`run`], through `next_batch` as pass 1 calls the plugin: at most
/// `per` records and 1 MiB per call, each batch decoded.
fn run_batched(
    mode: &str,
    after: u64,
    input: &[u8],
    limits: Option<&Limits>,
    per: u32,
) -> (Vec<Item>, Result<Item, ParseError>) {
    drive(mode, after, input, limits, |parse, out| {
        assert!(parse.batched());
        parse.next_batch(per, 1 << 20)?.decode(out)
    })
}

/// Open the hostile guest and call `step` (which appends items) until the
/// parse ends or fails.
fn drive(
    mode: &str,
    after: u64,
    input: &[u8],
    limits: Option<&Limits>,
    mut step: impl FnMut(&mut Parse, &mut Vec<Item>) -> Result<(), ParseError>,
) -> (Vec<Item>, Result<Item, ParseError>) {
    let plugin = hostile();
    let after = after.to_string();
    let mut parse = match sandbox().open(
        &plugin,
        Box::new(Cursor::new(input.to_vec())),
        &opts(&[("mode", mode), ("after", &after)]),
        None,
        limits,
        None,
    ) {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut items = Vec::new();
    loop {
        let mut out = Vec::new();
        if let Err(e) = step(&mut parse, &mut out) {
            return (items, Err(e));
        }
        for item in out {
            match item {
                Item::End | Item::Fatal(_) => return (items, Ok(item)),
                item => items.push(item),
            }
        }
    }
}

fn fault(result: Result<Item, ParseError>) -> PluginFault {
    match result {
        Err(ParseError::Fault(f)) => *f,
        other => panic!("expected a plugin fault, got {other:?}"),
    }
}

/// Limits with short time budgets so runaway tests end quickly.
fn quick() -> Limits {
    Limits {
        cpu_per_call: Duration::from_millis(300),
        wall_per_call: Duration::from_secs(5),
        ..Limits::default()
    }
}

#[test]
fn a_well_behaved_guest_parses_line_by_line() {
    let (items, end) = run("ok", 0, INPUT, None);
    assert_eq!(end.unwrap(), Item::End);
    let texts: Vec<_> = items
        .iter()
        .map(|i| match i {
            Item::Record(r) => r.get(0).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        ["one", "two", "three", "four", "five"].map(Value::Text)
    );
    let Item::Record(third) = &items[2] else {
        unreachable!()
    };
    assert_eq!(
        (
            third.location().offset,
            third.location().length,
            third.location().ordinal
        ),
        (8, 6, 3)
    );
    assert_eq!(third.kind(), Some("line"));
}

#[test]
fn faults_name_the_plugin_version_digest_and_place() {
    let (items, end) = run("loop", 2, INPUT, Some(&quick()));
    assert_eq!(items.len(), 2);
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::CpuBudget);
    assert_eq!(
        (f.plugin.as_str(), f.version.as_str()),
        ("hostile", "6.6.6")
    );
    assert_eq!(f.digest, hostile().digest().hex());
    assert_eq!((f.call.as_str(), f.ordinal, f.offset), ("next", 3, 8));
    let msg = f.to_string();
    for needle in [
        "hostile 6.6.6",
        &f.digest[..12],
        "record 3",
        "byte offset 8",
        "cpu-budget",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

#[test]
fn an_infinite_loop_before_any_record_is_stopped() {
    let (_, end) = run("loop-open", 0, INPUT, Some(&quick()));
    let f = fault(end);
    assert_eq!(
        (f.kind, f.call.as_str(), f.ordinal),
        (FaultKind::CpuBudget, "open", 1)
    );
}

#[test]
fn the_wall_clock_budget_stops_a_call_the_cpu_budget_allows() {
    let limits = Limits {
        cpu_per_call: Duration::from_secs(60),
        wall_per_call: Duration::from_millis(200),
        ..Limits::default()
    };
    let (_, end) = run("loop", 0, INPUT, Some(&limits));
    assert_eq!(fault(end).kind, FaultKind::Deadline);
}

#[test]
fn memory_growth_stops_at_the_cap() {
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..quick()
    };
    let (items, end) = run("grow-memory", 1, INPUT, Some(&limits));
    assert_eq!(items.len(), 1);
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::OutOfMemory, "{f}");
    assert!(f.to_string().contains("32 MiB"), "{f}");
}

#[test]
fn deep_recursion_is_a_stack_overflow() {
    let (_, end) = run("recurse", 0, INPUT, Some(&quick()));
    assert_eq!(fault(end).kind, FaultKind::StackOverflow);
}

#[test]
fn overflowing_rusts_shadow_stack_is_a_trap() {
    // Rust keeps large frames in linear memory; running out of that stack
    // shows up as an out-of-bounds access, which is still only a trap.
    let (_, end) = run("recurse-buffers", 0, INPUT, Some(&quick()));
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::Trap);
    assert!(f.detail.contains("out of bounds"), "{f}");
}

#[test]
fn a_panic_mid_stream_keeps_its_message() {
    let (items, end) = run("panic", 3, INPUT, None);
    assert_eq!(items.len(), 3);
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::Panic);
    let msg = f.panic_message.as_deref().unwrap();
    assert!(msg.starts_with("hostile guest panics at record 4"), "{msg}");
    assert!(f.to_string().contains("hostile guest panics at record 4"));
}

#[test]
fn a_panic_after_flooding_stderr_still_shows_its_message() {
    let (_, end) = run("stderr-flood", 0, INPUT, None);
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::Panic);
    assert!(
        f.panic_message
            .unwrap()
            .starts_with("panic after flooding stderr")
    );
}

#[test]
fn one_gigantic_record_is_refused_and_the_parse_goes_on() {
    // 24 MiB of text in one record: inside the memory cap, over the host's
    // 16 MiB record limit.
    let (items, _) = run("gigantic", 0, INPUT, None);
    let Item::Error(e) = &items[0] else {
        panic!("expected a record error, got {:?}", items.first())
    };
    assert_eq!(e.code, "record-too-large");
    assert_eq!(e.location.ordinal, 1);
    assert!(
        items.len() > 1,
        "the parse continued after the refused record"
    );
}

#[test]
fn endless_records_stop_at_the_end_of_the_input() {
    let (items, end) = run("endless", 0, INPUT, None);
    // Each record claims a byte, so at most one per input byte gets through.
    assert_eq!(items.len(), INPUT.len());
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::InvalidOutput);
    assert!(f.detail.contains("past the"), "{f}");
}

#[test]
fn contract_violations_are_invalid_output() {
    for (mode, needle) in [
        ("overlap", "inside the previous item"),
        ("past-input", "ends past the"),
        ("skip-ordinal", "ordinal 6 where 2 was due"),
        ("missing-value", "0 value words for a layout of 1 fields"),
        ("many-fields", "200000 fields exceeds the limit"),
    ] {
        let (_, end) = run(mode, 1, INPUT, None);
        let f = fault(end);
        assert_eq!(f.kind, FaultKind::InvalidOutput, "{mode}: {f}");
        assert!(f.detail.contains(needle), "{mode}: {f}");
    }
}

#[test]
fn batches_end_every_misbehaviour_as_single_calls_do() {
    // What pass 1 sees: the same fault for the same misbehaviour, and the
    // same items up to the batch the plugin failed in.
    // Time budgets only where a mode needs one to end: elsewhere a loaded
    // machine could trip one path's budget and not the other's.
    let memory = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let (quick, default) = (quick(), Limits::default());
    for mode in [
        "ok",
        "loop",
        "grow-memory",
        "recurse",
        "recurse-buffers",
        "gigantic",
        "many-fields",
        "endless",
        "overlap",
        "past-input",
        "skip-ordinal",
        "missing-value",
        "panic",
        "stderr-flood",
        "wasi",
        "exit",
    ] {
        for per in [1, 2, 256] {
            let limits = match mode {
                "loop" => &quick,
                "grow-memory" => &memory,
                _ => &default,
            };
            let (single, single_end) = run(mode, 2, INPUT, Some(limits));
            let (batched, batched_end) = run_batched(mode, 2, INPUT, Some(limits), per);
            assert!(single.starts_with(&batched), "{mode} per {per}");
            match (single_end, batched_end) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{mode} per {per}");
                    assert_eq!(single.len(), batched.len(), "{mode} per {per}");
                }
                (a, b) => {
                    let (a, b) = (fault(a), fault(b));
                    assert_eq!(a.kind, b.kind, "{mode} per {per}: {a} / {b}");
                    let call = if b.call == "next-batch" {
                        "next"
                    } else {
                        &b.call
                    };
                    assert_eq!(a.call, call, "{mode} per {per}: {b}");
                }
            }
        }
    }
}

#[test]
fn batches_shrink_to_fit_slow_records_in_the_time_budget() {
    // Each record takes tens of milliseconds: a whole batch of them would
    // take seconds, over the budget, where a call per record keeps well
    // inside it. The host sizes batches from the time calls take.
    let lines: Vec<u8> = (0..40)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let limits = Limits {
        cpu_per_call: Duration::from_millis(500),
        wall_per_call: Duration::from_secs(5),
        ..Limits::default()
    };
    let (items, end) = run_batched("slow", 0, &lines, Some(&limits), 256);
    assert_eq!(end.unwrap(), Item::End);
    assert_eq!(items.len(), 40);
}

#[test]
fn a_batch_that_breaks_the_contract_is_invalid_output() {
    for (mode, needle) in [
        ("overlap", "inside the previous item"),
        ("skip-ordinal", "ordinal 6 where 2 was due"),
        ("missing-value", "value words"),
    ] {
        let (_, end) = run_batched(mode, 1, INPUT, None, 256);
        let f = fault(end);
        assert_eq!(
            (f.kind, f.call.as_str()),
            (FaultKind::InvalidOutput, "next-batch"),
            "{mode}: {f}"
        );
        assert!(f.detail.contains(needle), "{mode}: {f}");
    }
}

#[test]
fn log_floods_are_bounded() {
    let plugin = hostile();
    let mut parse = sandbox()
        .open(
            &plugin,
            Box::new(Cursor::new(INPUT.to_vec())),
            &opts(&[("mode", "log-flood")]),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(parse.next().unwrap(), Item::End);
    assert!(
        parse.log_lines_dropped() > 99_000,
        "{}",
        parse.log_lines_dropped()
    );
}

#[test]
fn exit_is_a_trap() {
    let (_, end) = run("exit", 0, INPUT, None);
    let f = fault(end);
    assert_eq!(f.kind, FaultKind::Trap);
    // WASI 0.2's exit carries only success or failure: 3 arrives as 1.
    assert!(f.detail.contains("exit(1)"), "{f}");
}

#[test]
fn a_std_guest_gets_no_files_network_environment_or_clock() {
    let (items, _) = run("wasi", 0, INPUT, None);
    let Item::Record(r) = &items[0] else {
        panic!("{items:?}")
    };
    let field = |name: &str| match r.get_by_name(name) {
        Some(Value::Text(t)) => t.to_owned(),
        other => panic!("{name}: {other:?}"),
    };
    for name in ["fs", "dir", "write", "net", "dns"] {
        let got = field(name);
        assert!(got.starts_with("denied"), "{name}: {got}");
    }
    assert_eq!(field("env"), "", "no environment variables");
    assert_eq!(field("args"), "", "no arguments");
    assert_eq!(
        field("clock"),
        "0",
        "the wall clock is stopped at the epoch"
    );
    assert!(!std::path::Path::new("sluice-escape.txt").exists());
}

#[test]
fn cancel_stops_a_running_call() {
    let plugin = hostile();
    let cancel = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        cpu_per_call: Duration::from_secs(60),
        wall_per_call: Duration::from_secs(60),
        ..Limits::default()
    };
    let mut parse = sandbox()
        .open(
            &plugin,
            Box::new(Cursor::new(INPUT.to_vec())),
            &opts(&[("mode", "loop")]),
            None,
            Some(&limits),
            Some(cancel.clone()),
        )
        .unwrap();
    let flag = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::Relaxed);
    });
    assert!(matches!(parse.next(), Err(ParseError::Cancelled)));
    t.join().unwrap();
    assert!(matches!(parse.next(), Err(ParseError::Finished)));
}

#[test]
fn the_host_keeps_serving_while_a_plugin_misbehaves() {
    // A runaway parse and good parses at the same time, on one sandbox.
    let bad = std::thread::spawn(|| run("loop", 0, INPUT, Some(&quick())).1);
    let good: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| run("ok", 0, INPUT, None)))
        .collect();
    for g in good {
        let (items, end) = g.join().unwrap();
        assert_eq!((items.len(), end.unwrap()), (5, Item::End));
    }
    assert_eq!(fault(bad.join().unwrap()).kind, FaultKind::CpuBudget);
    // And the same plugin still works after its own faults.
    assert_eq!(run("ok", 0, INPUT, None).0.len(), 5);
}

#[test]
fn components_that_are_not_adapters_are_refused_with_the_reason() {
    let empty = wat::parse_str("(component)").unwrap();
    let err = sandbox().load("empty.wasm", &empty).unwrap_err();
    assert!(matches!(err, LoadError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("not a sluice adapter"), "{err}");

    // An adapter built for an older or a newer interface line.
    for version in ["0.1.0", "0.3.0"] {
        let other = wat::parse_str(format!(
            r#"(component
                (instance $i)
                (export "sluice:adapter/parse@{version}" (instance $i)))"#
        ))
        .unwrap();
        let err = sandbox().load("other.wasm", &other).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("targets sluice:adapter@{version}"))
                && msg.contains(">=0.2.0, <0.3.0"),
            "{msg}"
        );
    }

    let err = sandbox()
        .load("garbage.wasm", b"not wasm at all")
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[test]
fn loading_is_cached_by_digest() {
    let a = hostile();
    let b = hostile();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.info().name, "hostile");
    assert_eq!(a.interface_version(), "0.2.1");
}

#[test]
fn an_installed_plugin_altered_on_disk_is_refused() {
    use sluice::registry::{Registry, RegistryError};
    use sluice::sandbox::{Sandbox, SandboxConfig};
    let process = || {
        Arc::new(
            Sandbox::new(SandboxConfig {
                cache_dir: Some(crate::common::shared_cache()),
                ..SandboxConfig::default()
            })
            .unwrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path(), process());
    let entry = registry
        .install(
            "hostile.wasm",
            &crate::common::hostile_bytes(),
            Some("acme"),
        )
        .unwrap();
    let blob = dir
        .path()
        .join("plugins")
        .join(format!("{}.wasm", entry.digest));
    let mut bytes = std::fs::read(&blob).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    // This process keeps the component it verified at install ...
    registry.resolve(Some("acme"), "hostile").unwrap();
    // ... another one reads the blob and refuses it.
    let other = Registry::new(dir.path(), process());
    let e = other.resolve(Some("acme"), "hostile").unwrap_err();
    assert!(matches!(e, RegistryError::Tampered { .. }), "{e}");
    assert!(e.to_string().contains("reinstall"), "{e}");
}

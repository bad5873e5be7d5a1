//! The import engine in process: two passes, record isolation, reports,
//! identical imports, targets that refuse or falter, resume after a stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sluice::engine::{Engine, ImportRequest, Storage, Submitted};
use sluice::journal::{JobState, Journal, Stage};
use sluice::sink::embedded::EmbeddedStore;
use sluice::sink::{Batch, Ledger, Outcome, Sink, SinkError, UndoPage, UndoScope};
use sluice::spool::RealFs;

use crate::common::{Fixture, csv_rows, id_v_rows, keyed, test_config};

#[test]
fn duplicate_keys_are_found_across_many_intervals() {
    // Intervals of 3 records: each repeat sits in a later interval than its
    // first use, so it is found among the committed keys, not the pending.
    let f = Fixture::new(3);
    let mut csv = String::from("id,v\n");
    for i in 1..=300 {
        csv.push_str(&format!("k{i},{i}\n"));
    }
    for i in [1, 150, 299] {
        csv.push_str(&format!("k{i},again\n"));
    }
    let job = f.import("keys.csv", csv.as_bytes(), keyed);
    assert_eq!((job.counts.applied, job.counts.rejected), (300, 3));
    let dups: Vec<(u64, String)> = f
        .errors(job.id)
        .into_iter()
        .map(|(ordinal, e)| (ordinal, e.message))
        .collect();
    let ordinals: Vec<u64> = dups.iter().map(|d| d.0).collect();
    assert_eq!(ordinals, [301, 302, 303]);
    for ((_, message), first) in dups.iter().zip([1, 150, 299]) {
        assert!(message.contains(&format!("record {first} ")), "{message}");
    }
}

#[test]
fn bad_records_are_isolated_and_reported_with_their_text() {
    let f = Fixture::new(4);
    let csv = b"id,name,amount\n1,alice,10\n2,bob\n3,carol,30\n1,again,5\n4,\"dan \"\"d\"\"\",7\n";
    let job = f.import("people.csv", csv, keyed);
    assert_eq!(job.state, JobState::Completed);
    assert!(job.totals_exact);
    let c = &job.counts;
    assert_eq!((c.scanned, c.rejected, c.applied, c.failed), (5, 2, 3, 0));
    let p = f.engine.progress(job.id).unwrap();
    assert_eq!(
        (p.state, p.total, p.processed, p.applied, p.rejected),
        (JobState::Completed, Some(5), 5, 3, 2)
    );
    assert_eq!(p.scanned_bytes, p.bytes);
    assert_eq!(
        f.export(),
        concat!(
            r#"{"tenant":"acme","kind":"people","key":"1","fields":{"id":"1","name":"alice","amount":"10"}}"#,
            "\n",
            r#"{"tenant":"acme","kind":"people","key":"3","fields":{"id":"3","name":"carol","amount":"30"}}"#,
            "\n",
            r#"{"tenant":"acme","kind":"people","key":"4","fields":{"id":"4","name":"dan \"d\"","amount":"7"}}"#,
            "\n"
        )
    );
    let errs = f.errors(job.id);
    assert_eq!(errs.len(), 2);
    let (ordinal, ragged) = &errs[0];
    assert_eq!((*ordinal, ragged.line, ragged.offset), (2, 3, 26));
    assert_eq!(
        (ragged.stage, ragged.code.as_str()),
        (Stage::Parse, "ragged-row")
    );
    assert_eq!(ragged.record, "2,bob\n");
    let (ordinal, dup) = &errs[1];
    assert_eq!(
        (*ordinal, dup.stage, dup.code.as_str()),
        (4, Stage::Validate, "duplicate-key")
    );
    assert!(dup.message.contains("record 1 (line 2)"), "{}", dup.message);
    assert_eq!(job.errors_by_code.get("parse:ragged-row"), Some(&1));
    assert!(
        f.spool_files().is_empty(),
        "spool cleaned: {:?}",
        f.spool_files()
    );
}

#[test]
fn a_dry_run_validates_without_applying() {
    let f = Fixture::new(10);
    let job = f.import("rows.csv", &csv_rows(50, 10), |r| r.dry_run = true);
    assert_eq!(job.state, JobState::Validated);
    assert_eq!(
        (job.counts.scanned, job.counts.rejected, job.counts.applied),
        (50, 5, 0)
    );
    assert_eq!(f.export(), "");
    assert!(f.spool_files().is_empty());
}

#[test]
fn an_identical_import_is_found_not_repeated() {
    let f = Fixture::new(10);
    let csv = csv_rows(30, 0);
    let first = f.import("rows.csv", &csv, |_| {});
    let again = f.submit("other-name.csv", &csv, |_| {});
    assert_eq!(again, Submitted::Existing(first.id));
    assert!(
        f.spool_files().is_empty(),
        "the second upload was discarded"
    );
    // --new makes a new job, and position-derived keys make it land on the
    // same records instead of duplicating them.
    let export = f.export();
    let forced = f.import("rows.csv", &csv, |r| r.force_new = true);
    assert_ne!(forced.id, first.id);
    assert_eq!(forced.counts.applied, 30);
    assert_eq!(f.export(), export);
    // A different tenant is a different import.
    let other = f.submit("rows.csv", &csv, |r| r.tenant = "globex".into());
    assert!(matches!(other, Submitted::New(_)));
}

#[test]
fn tenants_are_kept_apart() {
    let f = Fixture::new(10);
    let csv = b"id,v\n1,a\n";
    f.import("t.csv", csv, keyed);
    f.import("t.csv", b"id,v\n1,b\n", |r| {
        r.key = Some("id".into());
        r.tenant = "globex".into();
    });
    let mut out = Vec::new();
    f.engine.store().export(Some("globex"), &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"tenant\":\"globex\",\"kind\":\"t\",\"key\":\"1\",\"fields\":{\"id\":\"1\",\"v\":\"b\"}}\n"
    );
    assert_eq!(f.export().lines().count(), 2);
}

#[test]
fn key_field_problems_are_validation_errors() {
    let f = Fixture::new(10);
    let job = f.import("k.csv", b"id,v\n,a\n2,b\n", keyed);
    assert_eq!((job.counts.rejected, job.counts.applied), (1, 1));
    assert_eq!(f.errors(job.id)[0].1.code, "empty-key");
    let job = f.import("k2.csv", b"a,b\n1,2\n", |r| r.key = Some("nope".into()));
    let e = &f.errors(job.id)[0].1;
    assert_eq!(e.code, "missing-key-field");
    assert!(e.message.contains("its fields: a, b"), "{}", e.message);
}

#[test]
fn a_plugin_fault_fails_its_job_and_cleans_up() {
    let f = Fixture::new(10);
    f.install_hostile();
    let job = f.import("x.txt", b"a\nb\nc\n", |r| {
        r.format = Some("hostile".into());
        r.options = vec![
            ("mode".into(), "panic".into()),
            ("after".into(), "2".into()),
        ];
    });
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.unwrap();
    assert!(
        error.contains("plugin hostile 6.6.6") && error.contains("panic"),
        "{error}"
    );
    assert!(f.spool_files().is_empty());
    assert_eq!(f.export(), "");
}

#[test]
fn bad_options_fail_the_job_with_the_plugins_message() {
    let f = Fixture::new(10);
    let job = f.import("x.csv", b"a\n1\n", |r| {
        r.options = vec![("delimiter".into(), "too-long".into())]
    });
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.unwrap().contains("delimiter"));
}

#[test]
fn unknown_formats_are_refused_before_a_job_exists() {
    let f = Fixture::new(10);
    let err =
        f.rt.block_on(f.engine.submit(
            sluice::engine::ImportRequest {
                source: "data.unknown".into(),
                tenant: "acme".into(),
                ..Default::default()
            },
            std::io::Cursor::new(b"x".to_vec()),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("pass --format"), "{err}");
    assert!(f.engine.journal().jobs().unwrap().is_empty());
    assert!(f.spool_files().is_empty());
}

#[test]
fn cancelling_a_job_that_is_not_running_ends_it() {
    let f = Fixture::new(10);
    let id = f.submit("rows.csv", &csv_rows(10, 0), |_| {}).job();
    let job = f.rt.block_on(f.engine.cancel(id)).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(f.spool_files().is_empty());
    assert_eq!(f.export(), "");
}

/// A target in front of the embedded store that falters on cue.
struct Faltering {
    store: Arc<EmbeddedStore>,
    calls: AtomicU32,
    transient_until: u32,
    io_at: Option<u32>,
    refuse_key: Option<String>,
}

#[async_trait::async_trait]
impl Sink for Faltering {
    fn name(&self) -> &str {
        "faltering"
    }

    async fn apply(
        &self,
        batch: Arc<Batch>,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.transient_until {
            return Err(SinkError::Transient("503 Service Unavailable".into()));
        }
        if self.io_at == Some(call) {
            // Write, then fail as if the process lost track of the commit.
            self.store.apply_sync(&batch)?;
            return Err(SinkError::Io("disk vanished".into()));
        }
        let mut keep = (*batch).clone();
        keep.items
            .retain(|i| Some(&i.key) != self.refuse_key.as_ref());
        self.store.apply_sync(&keep)?;
        Ok(batch
            .items
            .iter()
            .map(|i| {
                if Some(&i.key) == self.refuse_key.as_ref() {
                    Outcome::refused("constraint", "amount must be positive")
                } else {
                    Outcome::Applied
                }
            })
            .collect())
    }

    async fn undo(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        _ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError> {
        self.store.undo_sync(job, scope, limit)
    }
}

/// A data directory with an engine whose target is a [`Faltering`] sink.
fn faltering_fixture(
    interval: u64,
    sink: impl FnOnce(Arc<EmbeddedStore>) -> Faltering,
) -> (Fixture, Arc<Faltering>) {
    faltering_fixture_with(test_config(interval), sink)
}

fn faltering_fixture_with(
    config: sluice::engine::EngineConfig,
    sink: impl FnOnce(Arc<EmbeddedStore>) -> Faltering,
) -> (Fixture, Arc<Faltering>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let sink = Arc::new(sink(store.clone()));
    let engine = Engine::with_storage(
        dir.path(),
        config,
        Storage {
            journal: Journal::open(&dir.path().join("journal.redb")).unwrap(),
            store,
            spool_fs: Arc::new(RealFs),
        },
        Some(sink.clone() as Arc<dyn Sink>),
    )
    .unwrap();
    let f = Fixture {
        dir,
        engine,
        rt: crate::common::runtime(),
    };
    (f, sink)
}

fn faltering(store: Arc<EmbeddedStore>) -> Faltering {
    Faltering {
        store,
        calls: AtomicU32::new(0),
        transient_until: 0,
        io_at: None,
        refuse_key: None,
    }
}

#[test]
fn a_record_the_target_refuses_fails_alone() {
    let (f, _) = faltering_fixture(4, |s| Faltering {
        refuse_key: Some("5".into()),
        ..faltering(s)
    });
    let job = f.import("rows.csv", &csv_rows(10, 0), keyed);
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.counts.applied, job.counts.failed), (9, 1));
    let e = &f.errors(job.id)[0];
    assert_eq!(
        (e.0, e.1.stage, e.1.code.as_str()),
        (5, Stage::Apply, "constraint")
    );
    assert_eq!(e.1.record, "5,name-5,35\n");
    assert_eq!(f.export().lines().count(), 9);
}

#[test]
fn transient_target_errors_are_retried_without_duplicates() {
    let (f, sink) = faltering_fixture(4, |s| Faltering {
        transient_until: 3,
        ..faltering(s)
    });
    let job = f.import("rows.csv", &csv_rows(10, 0), |_| {});
    assert_eq!((job.counts.applied, job.counts.failed), (10, 0));
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        3 + 3,
        "3 refusals, then 3 batches"
    );
    assert_eq!(f.export().lines().count(), 10);
}

#[test]
fn a_stop_between_target_write_and_journal_commit_resumes_exactly_once() {
    let reference = Fixture::new(4);
    reference.import("rows.csv", &csv_rows(20, 7), keyed);

    let (f, _) = faltering_fixture(4, |s| Faltering {
        io_at: Some(2),
        ..faltering(s)
    });
    let id = f.submit("rows.csv", &csv_rows(20, 7), keyed).job();
    let err = f.run(id).unwrap_err();
    assert!(err.to_string().contains("sluice recover"), "{err}");
    let stopped = f.engine.journal().job(id).unwrap();
    assert_eq!(stopped.state, JobState::Applying, "left resumable");
    // A restarted process recovers it.
    let f = f.reopen(test_config(4));
    let report = f.rt.block_on(f.engine.recover()).unwrap();
    assert_eq!(report.resumed, vec![(id, JobState::Completed)]);
    let job = f.engine.journal().job(id).unwrap();
    assert_eq!(
        (job.counts.scanned, job.counts.rejected, job.counts.applied),
        (20, 2, 18)
    );
    assert_eq!(f.export(), reference.export());
    assert!(f.spool_files().is_empty());
}

/// The record stages pass 1 left in the spool.
fn stages(f: &Fixture) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(f.dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "stage"))
        .collect()
}

/// The record stages pass 1 left in the spool, removed as a machine that
/// lost them would; returns how many there were.
fn lose_stages(f: &Fixture) -> usize {
    let stages = stages(f);
    for path in &stages {
        std::fs::remove_file(path).unwrap();
    }
    stages.len()
}

#[test]
fn a_plugin_that_resumes_differently_is_caught_before_applying() {
    let (f, _) = faltering_fixture(2, |s| Faltering {
        io_at: Some(2),
        ..faltering(s)
    });
    f.install_hostile();
    let id = f
        .submit("lines.txt", b"a\nb\nc\nd\ne\nf\n", |r| {
            r.format = Some("hostile".into());
            r.options = vec![("mode".into(), "drift".into())];
        })
        .job();
    assert!(f.run(id).is_err());
    // Without its record stage, pass 2 parses the part again from the
    // checkpoint, where this plugin drifts.
    assert_eq!(lose_stages(&f), 1);
    let f = f.reopen(test_config(2));
    f.rt.block_on(f.engine.recover()).unwrap();
    let job = f.engine.journal().job(id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.unwrap();
    assert!(
        error.contains("not deterministic") && error.contains("records 3..=4"),
        "{error}"
    );
    // The first interval was applied and journaled; the drifting one
    // (re-parsed from its checkpoint after the stop) was not applied, and
    // what the interrupted attempt had written of it was compensated.
    assert_eq!(job.counts.applied, 2);
    let export = f.export();
    assert_eq!(export.lines().count(), 2, "{export}");
    assert!(
        !export.contains("\"c\"") && !export.contains("\"C\""),
        "{export}"
    );
    assert!(f.spool_files().is_empty());
}

#[test]
fn with_its_stage_a_resumed_apply_uses_the_records_pass_1_validated() {
    // The same drifting plugin and stop as above: the stage still holds the
    // records pass 1 validated, so pass 2 applies exactly those without
    // parsing again, and the job completes.
    let reference = Fixture::new(2);
    reference.install_hostile();
    let input = b"a\nb\nc\nd\ne\nf\n";
    let hostile = |r: &mut ImportRequest| {
        r.format = Some("hostile".into());
        r.options = vec![("mode".into(), "drift".into())];
    };
    reference.import("lines.txt", input, hostile);
    let (f, _) = faltering_fixture(2, |s| Faltering {
        io_at: Some(2),
        ..faltering(s)
    });
    f.install_hostile();
    let id = f.submit("lines.txt", input, hostile).job();
    assert!(f.run(id).is_err());
    let f = f.reopen(test_config(2));
    f.rt.block_on(f.engine.recover()).unwrap();
    let job = f.engine.journal().job(id).unwrap();
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert_eq!(job.counts.applied, 6);
    assert_eq!(f.export(), reference.export());
    assert!(f.spool_files().is_empty());
}

#[test]
fn a_stage_that_would_fill_the_disk_stops_and_pass_2_parses_instead() {
    let input = csv_rows(40, 7);
    let reference = Fixture::new(4);
    reference.import("rows.csv", &input, keyed);
    let mut config = test_config(4);
    config.stage_reserve_bytes = u64::MAX;
    let (f, _) = faltering_fixture_with(config.clone(), |s| Faltering {
        io_at: Some(3),
        ..faltering(s)
    });
    let id = f.submit("rows.csv", &input, keyed).job();
    assert!(f.run(id).is_err());
    // Stopped in pass 2: the stage holds nothing.
    let sizes: Vec<u64> = stages(&f)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(sizes, [0]);
    let f = f.reopen(config);
    let report = f.rt.block_on(f.engine.recover()).unwrap();
    assert_eq!(report.resumed, vec![(id, JobState::Completed)]);
    let job = f.engine.journal().job(id).unwrap();
    assert_eq!((job.counts.rejected, job.counts.applied), (5, 35));
    assert_eq!(f.export(), reference.export());
    assert!(f.spool_files().is_empty());
}

#[test]
fn a_lost_or_damaged_stage_is_parsed_again_and_changes_nothing() {
    let input = csv_rows(40, 7);
    let reference = Fixture::new(4);
    reference.import("rows.csv", &input, keyed);
    for damage in ["lost", "cut", "flipped"] {
        let (f, _) = faltering_fixture(4, |s| Faltering {
            io_at: Some(3),
            ..faltering(s)
        });
        let id = f.submit("rows.csv", &input, keyed).job();
        assert!(f.run(id).is_err(), "{damage}");
        let stage = stages(&f).pop().expect("pass 1 left a stage");
        let bytes = std::fs::read(&stage).unwrap();
        match damage {
            "lost" => std::fs::remove_file(&stage).unwrap(),
            "cut" => std::fs::write(&stage, &bytes[..bytes.len() / 2]).unwrap(),
            _ => {
                // Values changed in place: still well-formed records, so
                // only the payload hash tells. Rows 1, 3, 10-19 and 30-39
                // only, so pass 2 goes from parsing to the stage and back.
                let mut bad = bytes.clone();
                for at in 0..bad.len() - 6 {
                    if [b"name-1", b"name-3"].contains(&&bad[at..at + 6].try_into().unwrap()) {
                        bad[at] = b'N';
                    }
                }
                assert_ne!(bad, bytes);
                std::fs::write(&stage, &bad).unwrap();
            }
        }
        let f = f.reopen(test_config(4));
        let report = f.rt.block_on(f.engine.recover()).unwrap();
        assert_eq!(report.resumed, vec![(id, JobState::Completed)], "{damage}");
        let job = f.engine.journal().job(id).unwrap();
        assert_eq!(
            (job.counts.scanned, job.counts.rejected, job.counts.applied),
            (40, 5, 35),
            "{damage}"
        );
        assert_eq!(f.export(), reference.export(), "{damage}");
        assert!(f.spool_files().is_empty(), "{damage}");
    }
}

#[test]
fn without_a_stage_pass_2_parses_every_interval_and_agrees() {
    // Pass 2 checks each interval it parses against pass 1's digest; the
    // last interval is full, one short, or one over.
    for rows in [39, 40, 41] {
        let input = csv_rows(rows, 7);
        let reference = Fixture::new(4);
        let expected = reference.import("rows.csv", &input, keyed);
        let mut config = test_config(4);
        config.stage_records = false;
        let f = Fixture::new(4).reopen(config);
        let job = f.import("rows.csv", &input, keyed);
        assert_eq!(job.state, JobState::Completed, "{rows}: {:?}", job.error);
        assert_eq!(job.counts, expected.counts, "{rows}");
        assert_eq!(f.export(), reference.export(), "{rows}");
        assert!(
            stages(&f).is_empty() && f.spool_files().is_empty(),
            "{rows}"
        );
    }
}

#[test]
fn a_full_scan_queue_changes_nothing() {
    // With one batch of room, the parse thread finds the queue full most of
    // the time and decodes batches itself: the import must not notice.
    let input = csv_rows(3000, 7);
    let reference = Fixture::new(500);
    let expected = reference.import("rows.csv", &input, keyed);
    let mut config = test_config(500);
    config.scan_queue = 1;
    let f = Fixture::new(500).reopen(config);
    let job = f.import("rows.csv", &input, keyed);
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert_eq!(job.counts, expected.counts);
    assert_eq!(f.export(), reference.export());
    let errors = |f: &Fixture, id| {
        let mut out = Vec::new();
        f.engine
            .journal()
            .for_each_error(id, |part, ordinal, e| {
                out.push(format!(
                    "{part} {ordinal} {} {} {}",
                    e.line, e.code, e.message
                ));
                Ok(())
            })
            .unwrap();
        out
    };
    assert_eq!(errors(&f, job.id), errors(&reference, expected.id));
    assert_eq!(errors(&f, job.id).len(), 3000 / 7);
}

#[test]
fn a_plugin_built_for_interface_0_2_0_imports_as_before() {
    // The csv plugin as the sluice-sdk of interface 0.2.0 built it (one
    // item per call; see tests/data/plugins/README.md): components like it
    // exist, and the host must keep running them unchanged.
    let old = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/plugins/csv-0.2.0.wasm"),
    )
    .unwrap();
    let f = Fixture::new(4);
    f.engine
        .registry()
        .install("csv-0.2.0.wasm", &old, Some("legacy"))
        .unwrap();
    let (_, plugin) = f.engine.registry().resolve(Some("legacy"), "csv").unwrap();
    assert_eq!(plugin.interface_version(), "0.2.0");
    let (_, current) = f.engine.registry().resolve(None, "csv").unwrap();
    assert_eq!(current.interface_version(), "0.2.1");
    let input = csv_rows(41, 7);
    let now = f.import("rows.csv", &input, keyed);
    let then = f.import("rows.csv", &input, |r| {
        r.key = Some("id".into());
        r.tenant = "legacy".into();
    });
    let parts = f.engine.journal().parts(then.id).unwrap();
    assert_eq!(parts[0].plugin.digest, plugin.digest().hex());
    assert_eq!(then.state, JobState::Completed, "{:?}", then.error);
    assert_eq!(then.counts, now.counts);
    let export = |tenant| {
        let mut out = Vec::new();
        f.engine.store().export(Some(tenant), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let legacy = export("legacy");
    assert_eq!(legacy.lines().count(), 36);
    assert_eq!(legacy.replace("\"legacy\"", "\"acme\""), export("acme"));
}

#[test]
fn progress_is_derived_from_the_journal() {
    let f = Fixture::new(10);
    let job = f.import("rows.csv", &csv_rows(25, 5), |_| {});
    let p = sluice::progress::Progress::of(&job);
    assert_eq!(
        (p.total, p.scanned, p.rejected, p.applied, p.processed),
        (Some(25), 25, 5, 20, 25)
    );
    assert_eq!(p.bytes, csv_rows(25, 5).len() as u64);
}

#[test]
fn undo_removes_what_a_job_created_and_keeps_what_changed_since() {
    let f = Fixture::new(4);
    let a = f.import("t.csv", &id_v_rows(1..=5, "a"), |r| {
        r.key = Some("id".into())
    });
    let b = f.import("t.csv", &id_v_rows(3..=7, "b"), |r| {
        r.key = Some("id".into())
    });
    // Undo A: 1 and 2 are A's and go; 3..5 were changed by B since and stay.
    let undone = f.rt.block_on(f.engine.undo(a.id)).unwrap();
    assert_eq!(undone.state, JobState::Undone);
    assert_eq!(undone.undo_counts.get("removed"), Some(&2));
    assert_eq!(
        undone.undo_counts.get("kept: changed since import"),
        Some(&3)
    );
    let kept = f.undo_entries(a.id, sluice::sink::UndoAction::KeptChanged);
    let kept: Vec<_> = kept.into_iter().map(|e| e.key).collect();
    assert_eq!(kept, ["5", "4", "3"]);
    // Undo B: 6 and 7 go, 3..5 get A's values back (B's before-images).
    let undone = f.rt.block_on(f.engine.undo(b.id)).unwrap();
    assert_eq!(undone.undo_counts.get("removed"), Some(&2));
    assert_eq!(undone.undo_counts.get("restored"), Some(&3));
    let export = f.export();
    assert_eq!(export.lines().count(), 3, "{export}");
    assert!(
        export.contains(r#""v":"a3""#) && export.contains(r#""v":"a5""#),
        "{export}"
    );
    // Undone jobs cannot be undone again; dry runs have nothing to undo.
    assert!(f.rt.block_on(f.engine.undo(b.id)).is_err());
    let dry = f.import("t.csv", &id_v_rows(1..=2, "d"), |r| r.dry_run = true);
    let err = f.rt.block_on(f.engine.undo(dry.id)).unwrap_err();
    assert!(err.to_string().contains("dry run"), "{err}");
}

#[test]
fn the_cli_report_shows_the_first_errors_and_counts_the_rest() {
    let dir = crate::common::fresh_data_dir();
    // 300 rows, every second one ragged: 150 errors.
    let input = crate::common::test_input("report-input.csv", &csv_rows(300, 2));
    let out = crate::common::run(
        crate::common::sluice_cmd(dir.path(), "64")
            .args(["import", "--key", "id"])
            .arg(&input),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = stderr
        .lines()
        .filter(|l| l.starts_with("  record "))
        .count();
    assert_eq!(shown, 100, "{stderr}");
    assert!(stderr.contains("  ... and 50 more"), "{stderr}");
}

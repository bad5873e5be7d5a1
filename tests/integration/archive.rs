//! ZIP uploads through the whole engine: entries become parts parsed by the
//! plugin their extension selects; hostile archives end with a named reason,
//! leave nothing behind and write nothing outside the spool.

use std::path::Path;

use sluice::journal::JobState;

use crate::common::{Fixture, zip_of};

#[test]
fn a_zip_upload_is_expanded_into_parts_each_with_its_plugin() {
    let f = Fixture::new(3);
    let zip = zip_of(&[
        ("exports/customers.csv", b"id,name\n1,Acme\n2,Globex\n"),
        ("exports/orders.csv", b"id;total\n10;9.5\n11\n"),
        (
            "catalog.xml",
            b"<catalog><book id=\"b1\"><title>Dune</title></book></catalog>",
        ),
    ]);
    let job = f.import("upload.zip", &zip, |r| {
        r.options = vec![("csv.delimiter".into(), ";".into())];
    });
    // The `csv.` option reaches only the CSV parts: customers.csv is then a
    // one-column file, orders.csv parses, and the XML part is unaffected.
    assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    assert_eq!(job.parts, 3);
    assert!(job.archive);
    let parts = f.engine.journal().parts(job.id).unwrap();
    let names: Vec<_> = parts
        .iter()
        .map(|p| (p.name.as_str(), p.plugin.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("exports/customers.csv", "csv"),
            ("exports/orders.csv", "csv"),
            ("catalog.xml", "xml")
        ]
    );
    assert_eq!((job.counts.scanned, job.counts.rejected), (5, 1));
    let export = f.export();
    assert!(export.contains(r#""kind":"orders""#), "{export}");
    assert!(export.contains(r#""kind":"book""#), "{export}");
    assert!(f.spool_files().is_empty());
}

#[test]
fn an_entry_no_plugin_handles_fails_the_upload_with_its_name() {
    let f = Fixture::new(10);
    let job = f.import(
        "u.zip",
        &zip_of(&[("a.csv", b"x\n1\n"), ("notes.odd", b"?")]),
        |_| {},
    );
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.unwrap();
    assert!(
        error.contains("notes.odd") && error.contains("--format"),
        "{error}"
    );
    assert!(
        f.spool_files().is_empty(),
        "parts removed: {:?}",
        f.spool_files()
    );
}

/// Every hostile archive of the corpora, imported for real.
#[test]
fn hostile_archives_end_with_a_named_reason_and_leave_nothing() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpora");
    let cases: &[(&str, &str)] = &[
        ("handmade-hostile/zip/slip_dotdot.zip", "parent-traversal"),
        ("handmade-hostile/zip/slip_absolute.zip", "absolute-path"),
        (
            "handmade-hostile/zip/slip_backslash.zip",
            "parent-traversal",
        ),
        (
            "handmade-hostile/zip/slip_dot_segments.zip",
            "parent-traversal",
        ),
        ("handmade-hostile/zip/slip_symlink_absolute.zip", "symlink"),
        ("handmade-hostile/zip/slip_symlink_relative.zip", "symlink"),
        ("handmade-hostile/zip/name_nul_byte.zip", "nul-in-name"),
        ("handmade-hostile/zip/empty_and_dot_names.zip", "empty-name"),
        ("handmade-hostile/zip/duplicate_names.zip", "duplicate-name"),
        ("handmade-hostile/zip/case_collision.zip", "name-collision"),
        (
            "handmade-hostile/zip/unicode_nfc_nfd_collision.zip",
            "name-collision",
        ),
        (
            "handmade-hostile/zip/lying_uncompressed_size.zip",
            "size-mismatch",
        ),
        ("handmade-hostile/zip/crc_mismatch.zip", "crc-mismatch"),
        (
            "handmade-hostile/zip/nested_zip_3_levels.zip",
            "nested-archive",
        ),
        ("handmade-hostile/zip/csv_bomb_256MiB.zip", "ratio-too-high"),
        (
            "handmade-hostile/zip/csv_giant_field_64MiB.zip",
            "ratio-too-high",
        ),
        (
            "handmade-hostile/zip/deep_and_long_paths.zip",
            "path-too-deep",
        ),
        ("fifield-zipbomb/overlap.zip", "overlapping-entries"),
        ("fifield-zipbomb/zbsm.zip", "overlapping-entries"),
        ("fifield-zipbomb/zbbz2.zip", "unsupported-method"),
        ("fifield-zipbomb/no_overlap.zip", "ratio-too-high"),
        ("zip2-testdata/aes_archive.zip", "encrypted"),
    ];
    let f = Fixture::new(100);
    for (file, code) in cases {
        let bytes = std::fs::read(corpora.join(file)).unwrap();
        let job = f.import(file, &bytes, |r| r.format = Some("csv".into()));
        assert_eq!(job.state, JobState::Failed, "{file}");
        let error = job.error.clone().unwrap_or_default();
        assert!(error.contains(&format!("({code})")), "{file}: {error}");
        assert!(
            f.spool_files().is_empty(),
            "{file}: debris {:?}",
            f.spool_files()
        );
    }
    assert_eq!(f.export(), "", "no record from a rejected archive");
    // Nothing escaped: the slip targets do not exist, and the data
    // directory holds only sluice's own entries.
    for escaped in [
        "/tmp/zipslip_evil.csv",
        "/tmp/zipslip_abs_evil.csv",
        "/tmp/nul_evil.csv",
    ] {
        assert!(!Path::new(escaped).exists(), "{escaped}");
    }
    let mut top: Vec<String> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["journal.redb", "locks", "spool", "store.redb"]);
}

#[test]
fn archives_that_are_not_zips_are_parsed_as_what_they_are() {
    // A ".zip" that is really CSV is sniffed by content, not by name.
    let f = Fixture::new(10);
    let job = f.import("not_a_zip.zip", b"a,b\n1,2\n", |r| {
        r.format = Some("csv".into())
    });
    assert_eq!(
        (job.state, job.archive, job.counts.applied),
        (JobState::Completed, false, 1)
    );
    // A truncated archive that still starts like one is rejected.
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpora");
    let bytes = std::fs::read(corpora.join("handmade-hostile/zip/truncated_no_eocd.zip")).unwrap();
    let job = f.import("t.zip", &bytes, |_| {});
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.unwrap().contains("(not-a-zip)"));
}

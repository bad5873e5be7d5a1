//! Named crash points for the crash tests.
//!
//! In debug builds (which is what tests run), `SLUICE_CRASH_AT=<point>` or
//! `SLUICE_CRASH_AT=<point>:<n>` makes the process kill itself with SIGKILL
//! the first (or n-th) time it reaches that point: the test then recovers
//! and checks nothing was lost or duplicated. Release builds compile the
//! points to nothing.
//!
//! The points, in the order a job meets them, are listed in [`POINTS`].

/// Every crash point, so tests can iterate over them.
pub const POINTS: &[&str] = &[
    "spool.mid-write",
    "spool.before-fsync",
    "spool.before-rename",
    "spool.before-dir-fsync",
    "spool.before-journal",
    "journal.after-create",
    "zip.mid-entry",
    "zip.before-crc-check",
    "zip.after-entry",
    "scan.mid-interval",
    "scan.before-commit",
    "scan.after-commit",
    "apply.before-batch",
    "apply.mid-target-commit",
    "http.after-intended",
    "http.after-call",
    "http.between-steps",
    "http.mid-compensation",
    "apply.after-target-write",
    "apply.after-commit",
    "job.before-complete",
    "job.before-spool-cleanup",
    "undo.before-page",
    "http.mid-undo",
    "undo.after-target",
    "recover.start",
    "recover.after-sweep",
];

/// Crash here if `SLUICE_CRASH_AT` names this point.
#[inline]
pub fn point(name: &'static str) {
    #[cfg(debug_assertions)]
    imp::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Target {
        point: String,
        nth: u64,
        hits: AtomicU64,
    }

    fn target() -> Option<&'static Target> {
        static TARGET: OnceLock<Option<Target>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let spec = std::env::var("SLUICE_CRASH_AT").ok()?;
                let (point, nth) = match spec.rsplit_once(':') {
                    Some((p, n)) if n.parse::<u64>().is_ok() => (p.to_owned(), n.parse().ok()?),
                    _ => (spec, 1),
                };
                Some(Target {
                    point,
                    nth: nth.max(1),
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(name: &str) {
        let Some(t) = target() else { return };
        if t.point == name && t.hits.fetch_add(1, Ordering::SeqCst) + 1 == t.nth {
            // SIGKILL, like a power cut or the OOM killer: no destructors,
            // no flushing, nothing after this line runs.
            // SAFETY: getpid and kill have no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

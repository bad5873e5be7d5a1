//! Diagnostics from an adapter.
//!
//! Inside the sandbox a line goes to the host, which keeps a bounded amount
//! per parse. Natively it goes to a per-thread buffer that
//! [`testing`](crate::testing) reports.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Write one log line.
pub fn log(level: Level, message: &str) {
    imp::write(level, message);
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::__private::bindings::sluice::adapter::log::{Level as L, write as host_write};

    pub(super) fn write(level: Level, message: &str) {
        let level = match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        host_write(level, message);
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use super::Level;
    use std::cell::RefCell;

    /// Lines kept per thread, like the host's bound.
    const MAX_LINES: usize = 1000;

    thread_local! {
        static LINES: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn write(level: Level, message: &str) {
        LINES.with(|l| {
            let mut l = l.borrow_mut();
            if l.len() < MAX_LINES {
                l.push((level, message.to_owned()));
            }
        });
    }

    /// Take the lines logged on this thread so far.
    pub(crate) fn take() -> Vec<(Level, String)> {
        LINES.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}

//! Choosing a job's target from `--target`.
//!
//! - `embedded` (the default): the store in the data directory.
//! - `postgres://…` or `postgresql://…`: a PostgreSQL database
//!   ([`crate::sink::postgres`]). The password is not kept in the journal:
//!   give it in the URL at import and in `PGPASSWORD` for later commands
//!   (`recover`, `undo`), or use a passwordless local connection.
//! - a path to a `.toml` file: an HTTP API described by that mapping
//!   ([`crate::sink::http`]); the journal keeps the absolute path.

use std::sync::Arc;

use crate::sink::Sink;

/// The embedded store's target name.
pub const EMBEDDED: &str = "embedded";

/// Resolve `target` as given: the form kept in the journal, and the sink
/// opened from the given form (which may hold a password the journal does
/// not keep); `None` for the embedded store, which the engine holds.
/// Opening checks the target, so a broken one is refused before a job
/// exists, not when it applies.
pub fn resolve(target: Option<&str>) -> Result<(String, Option<Arc<dyn Sink>>), String> {
    let Some(t) = target
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != EMBEDDED)
    else {
        return Ok((EMBEDDED.to_owned(), None));
    };
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let sink = crate::sink::postgres::PgSink::connect(t)?;
        return Ok((sink.redacted().to_owned(), Some(Arc::new(sink))));
    }
    let path = std::path::Path::new(t);
    if path.extension().is_some_and(|e| e == "toml") {
        let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
        if !abs.is_file() {
            return Err(format!("mapping file {} does not exist", abs.display()));
        }
        let sink = crate::sink::http::HttpSink::from_file(&abs)?;
        return Ok((abs.display().to_string(), Some(Arc::new(sink))));
    }
    Err("use `embedded`, a postgres:// URL, or an HTTP mapping file (.toml)".into())
}

/// Open the sink for a target in its journal form (recovery, undo).
pub fn open(target: &str) -> Result<Arc<dyn Sink>, String> {
    if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        return crate::sink::postgres::PgSink::connect(target)
            .map(|s| Arc::new(s) as Arc<dyn Sink>);
    }
    crate::sink::http::HttpSink::from_file(std::path::Path::new(target))
        .map(|s| Arc::new(s) as Arc<dyn Sink>)
}

//! The sandbox: runs format plugins (WebAssembly components) with no ambient
//! capability and bounded memory, CPU and wall-clock time.
//!
//! One [`Sandbox`] per process holds the wasmtime `Engine`, the linker and
//! the compiled components, cached by content digest (in memory, and on disk
//! as precompiled artifacts when a cache directory is set). Each parse gets a
//! fresh `Store` ([`Parse`]), so a plugin that traps, loops or bloats ends its
//! own parse and nothing else. All calls are synchronous: callers on an async
//! runtime run them on blocking threads.

mod batch;
mod bindings;
mod fault;
mod host;
mod limits;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, Linker};
use wasmtime::{Config, Engine, Store};

pub use batch::Batch;
pub use fault::{ConfigError, FaultKind, LoadError, ParseError, PluginFault};
pub use limits::{Limits, SandboxConfig};
pub(crate) use parse::check_spans;
pub use parse::{Checkpoint, Parse};

/// The boundary's value types, shared with the host's records.
pub(crate) use bindings::sluice::adapter::types as wit_types;

use bindings::AdapterPre;
use host::HostState;

/// The WIT package plugins must export, and the versions this host accepts.
pub const INTERFACE_PACKAGE: &str = "sluice:adapter";
/// Oldest interface version accepted (inclusive).
pub const INTERFACE_MIN: (u64, u64, u64) = (0, 2, 0);
/// First interface version not accepted (exclusive): 0.2.x is the 0.2 line.
pub const INTERFACE_MAX: (u64, u64, u64) = (0, 3, 0);
/// The version that added `parser.next-batch`.
const BATCH_SINCE: (u64, u64, u64) = (0, 2, 1);

/// SHA-256 of a component's bytes: its identity everywhere (registry,
/// cache, journal).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// Lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.hex()[..12])
    }
}

/// One option a plugin accepts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OptionInfo {
    pub name: String,
    pub description: String,
    pub default: Option<String>,
}

/// What a plugin says about itself (`describe()`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdapterInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub formats: Vec<String>,
    pub extensions: Vec<String>,
    pub media_types: Vec<String>,
    pub options: Vec<OptionInfo>,
    pub resumable: bool,
}

/// A loaded plugin: compiled, checked, described, ready to instantiate.
pub struct Plugin {
    digest: Digest,
    info: AdapterInfo,
    interface: String,
    pre: AdapterPre<HostState>,
    /// `parser.next-batch`, for plugins of interface 0.2.1 and later.
    batch: Option<ComponentExportIndex>,
}

impl Plugin {
    /// Content digest of the component.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// The interface version it exports (`0.2.1`).
    pub fn interface_version(&self) -> &str {
        &self.interface
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Advances the engine's epoch so running plugin code checks its budgets;
/// stops when the sandbox is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The process-wide plugin runtime. Cheap to share behind an `Arc`.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: SandboxConfig,
    loaded: Mutex<HashMap<Digest, Arc<Plugin>>>,
    _ticker: EpochTicker,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish()
    }
}

/// The sandbox could not start (wasmtime refused its configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the WebAssembly engine: {0}")]
pub struct StartError(String);

impl Sandbox {
    /// Start the engine and its epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, StartError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .parallel_compilation(true);
        // SLUICE_WASM_PERFMAP=1 writes /tmp/perf-<pid>.map so `perf` can name
        // plugin functions (for profiling plugins; off by default).
        if std::env::var_os("SLUICE_WASM_PERFMAP").is_some_and(|v| v == "1") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(|e| StartError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker).map_err(|e| StartError(e.to_string()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        let tick = config.epoch_tick;
        thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    thread::sleep(tick);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| StartError(format!("cannot start the epoch thread: {e}")))?;

        Ok(Sandbox {
            engine,
            linker,
            config,
            loaded: Mutex::new(HashMap::new()),
            _ticker: EpochTicker { stop },
        })
    }

    /// The configuration the sandbox was started with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Load a plugin from its component bytes: compile it (or load the
    /// precompiled artifact for its digest), check its interface version and
    /// imports, and call `describe()`. Loading the same bytes again returns
    /// the same plugin without compiling. `what` names the plugin in errors
    /// (a file name, a registry entry).
    pub fn load(&self, what: &str, wasm: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let digest = Digest::of(wasm);
        if let Some(p) = self.lock_loaded().get(&digest) {
            return Ok(p.clone());
        }
        let component = self.compile(what, digest, wasm)?;
        let interface = self.check_interface(what, &component)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Incompatible {
                    what: what.to_owned(),
                    detail: format!(
                        "it needs an import the sandbox does not give (plugins get no files, \
                     network or host services beyond their input and log): {e:#}"
                    ),
                })?;
        let pre = AdapterPre::new(instance_pre).map_err(|e| LoadError::Incompatible {
            what: what.to_owned(),
            detail: format!("its exports do not match {INTERFACE_PACKAGE}@{interface}: {e:#}"),
        })?;
        let batch = Self::batch_export(what, &component, &interface)?;
        let info = parse::describe(self, &pre, batch.as_ref(), what, digest).map_err(|source| {
            LoadError::Describe {
                what: what.to_owned(),
                source,
            }
        })?;
        let plugin = Arc::new(Plugin {
            digest,
            info,
            interface,
            pre,
            batch,
        });
        self.lock_loaded().insert(digest, plugin.clone());
        tracing::debug!(plugin = %plugin.info.name, version = %plugin.info.version, %digest, "plugin loaded");
        Ok(plugin)
    }

    /// The plugin loaded from bytes with this digest, if any.
    pub fn loaded(&self, digest: &Digest) -> Option<Arc<Plugin>> {
        self.lock_loaded().get(digest).cloned()
    }

    /// Open a parse of `input` (positioned at `resume.offset`, or at the start
    /// without a checkpoint) with the plugin's options. `cancel`, when set,
    /// stops a running call within one epoch tick.
    pub fn open(
        &self,
        plugin: &Arc<Plugin>,
        input: Box<dyn Read + Send>,
        options: &[(String, String)],
        resume: Option<&Checkpoint>,
        limits: Option<&Limits>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Parse, ParseError> {
        let limits = limits.unwrap_or(&self.config.limits).clone();
        Parse::open(self, plugin.clone(), input, options, resume, limits, cancel)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Plugin>>> {
        crate::lock(&self.loaded)
    }

    pub(crate) fn new_store(&self, state: HostState) -> Store<HostState> {
        let mut store = Store::new(&self.engine, state);
        HostState::install(&mut store);
        store
    }

    /// Path of the precompiled artifact for `digest` on this engine build.
    fn artifact_path(&self, dir: &Path, digest: Digest) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        dir.join(format!("{}-{:016x}.cwasm", digest.hex(), h.finish()))
    }

    fn compile(&self, what: &str, digest: Digest, wasm: &[u8]) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            what: what.to_owned(),
            detail: format!("{e:#}"),
        };
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, wasm).map_err(invalid);
        };
        let path = self.artifact_path(dir, digest);
        if path.exists() {
            // SAFETY: the artifact was written by `Component::serialize` of
            // this engine build (its name carries the compatibility hash)
            // into the data directory, which only sluice writes.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling unusable cached component: {e:#}");
                }
            }
        }
        let component = Component::new(&self.engine, wasm).map_err(invalid)?;
        // The cache only saves time: failing to write it is not fatal.
        if let Err(e) = Self::store_artifact(&component, dir, &path) {
            tracing::warn!(path = %path.display(), "cannot cache the compiled component: {e}");
        }
        Ok(component)
    }

    /// Write a compiled component to the cache.
    fn store_artifact(component: &Component, dir: &Path, path: &Path) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        std::fs::create_dir_all(dir)?;
        // Write beside under a name no other writer uses, then rename: a
        // reader never sees half an artifact, and two processes or threads
        // compiling the same component at once both succeed.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// `parser.next-batch` of a component exporting interface 0.2.1 or
    /// later (which must have it); `None` for 0.2.0.
    fn batch_export(
        what: &str,
        component: &Component,
        interface: &str,
    ) -> Result<Option<ComponentExportIndex>, LoadError> {
        if parse_version(interface).is_none_or(|v| v < BATCH_SINCE) {
            return Ok(None);
        }
        let name = format!("{INTERFACE_PACKAGE}/parse@{interface}");
        component
            .get_export_index(None, &name)
            .and_then(|parse| component.get_export_index(Some(&parse), "[method]parser.next-batch"))
            .map(Some)
            .ok_or_else(|| LoadError::Incompatible {
                what: what.to_owned(),
                detail: format!(
                    "it targets {INTERFACE_PACKAGE}@{interface} but does not export \
                     parser.next-batch, which {} added; rebuild it with a current sluice-sdk",
                    show_version(BATCH_SINCE)
                ),
            })
    }

    /// Find the exported `sluice:adapter/parse@X` and check X is accepted.
    fn check_interface(&self, what: &str, component: &Component) -> Result<String, LoadError> {
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(name, _)| name).collect();
        let prefix = format!("{INTERFACE_PACKAGE}/parse@");
        let Some(version) = exports.iter().find_map(|n| n.strip_prefix(&prefix)) else {
            return Err(LoadError::Incompatible {
                what: what.to_owned(),
                detail: format!(
                    "it is not a sluice adapter: it does not export {INTERFACE_PACKAGE}/parse \
                     (it exports: {})",
                    if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    }
                ),
            });
        };
        let accepted =
            parse_version(version).is_some_and(|v| v >= INTERFACE_MIN && v < INTERFACE_MAX);
        if !accepted {
            return Err(LoadError::Incompatible {
                what: what.to_owned(),
                detail: format!(
                    "it targets {INTERFACE_PACKAGE}@{version}, and this sluice accepts \
                     {INTERFACE_PACKAGE} >={}, <{}",
                    show_version(INTERFACE_MIN),
                    show_version(INTERFACE_MAX)
                ),
            });
        }
        Ok(version.to_owned())
    }
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let v = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(v)
}

fn show_version((a, b, c): (u64, u64, u64)) -> String {
    format!("{a}.{b}.{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("0.1.0"), Some((0, 1, 0)));
        assert_eq!(parse_version("0.1.7-rc.1"), Some((0, 1, 7)));
        assert_eq!(parse_version("0.1"), None);
        assert_eq!(parse_version("x.1.0"), None);
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }
}

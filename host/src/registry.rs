//! The plugin registry: which format plugins a tenant can use.
//!
//! Three scopes, searched in order: the tenant's own plugins, plugins
//! installed for everyone, and the plugins bundled in the binary (csv, xml,
//! fixed-width), which need no install step. Installed components are stored
//! by content digest under `<data>/plugins/`, validated and precompiled at
//! install time; the index, `registry.json`, is replaced atomically under a
//! file lock. Component files are never deleted, so a job pinned to a digest
//! can always resume with the same bytes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sandbox::{AdapterInfo, Digest, LoadError, Plugin, Sandbox};

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> Self {
        RegistryError::Load(Box::new(e))
    }
}

/// The plugins compiled into this binary.
pub mod bundled {
    /// `(file name, component bytes)` of each bundled plugin.
    pub const ALL: &[(&str, &[u8])] = &[
        ("csv.wasm", include_bytes!(env!("SLUICE_BUNDLED_CSV"))),
        ("xml.wasm", include_bytes!(env!("SLUICE_BUNDLED_XML"))),
        (
            "fixed-width.wasm",
            include_bytes!(env!("SLUICE_BUNDLED_FIXED_WIDTH")),
        ),
    ];
}

/// Where a plugin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Installed for one tenant.
    Tenant,
    /// Installed for every tenant.
    Global,
    /// Compiled into the binary.
    Bundled,
}

/// One plugin the registry knows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub digest: String,
    pub scope: Scope,
    /// The tenant, for [`Scope::Tenant`].
    pub tenant: Option<String>,
    /// Seconds since the Unix epoch, for installed plugins.
    pub installed_at: Option<u64>,
    pub info: AdapterInfo,
}

impl Entry {
    /// Whether this entry handles `selector` (a plugin name or format name).
    fn handles(&self, selector: &str) -> bool {
        let s = selector.to_ascii_lowercase();
        self.info.name == s || self.info.formats.contains(&s)
    }

    fn handles_extension(&self, ext: &str) -> bool {
        let ext = ext.trim_start_matches('.').to_ascii_lowercase();
        self.info.extensions.contains(&ext)
    }
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error(transparent)]
    Load(#[from] Box<LoadError>),
    #[error("plugin registry {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "plugin registry index {path} is corrupt ({detail}); restore it or remove it and reinstall the plugins"
    )]
    Corrupt { path: String, detail: String },
    #[error("no plugin handles {what}{}; list the available ones with `sluice plugins{}`", tenant.as_ref().map(|t| format!(" for tenant {t}")).unwrap_or_default(), tenant.as_ref().map(|t| format!(" --tenant {t}")).unwrap_or_default())]
    NotFound {
        what: String,
        tenant: Option<String>,
    },
    #[error(
        "installed plugin {digest} is missing or altered on disk ({path}); reinstall it with `sluice plugin add`"
    )]
    Tampered { digest: String, path: String },
    #[error("invalid tenant name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadTenant(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Check a tenant name: it ends up in journal keys and listings.
pub fn check_tenant(tenant: &str) -> Result<(), RegistryError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadTenant(tenant.to_owned()))
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Index {
    version: u32,
    plugins: Vec<Entry>,
}

/// The registry of one data directory.
pub struct Registry {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    bundled: OnceLock<Vec<(Entry, Arc<Plugin>)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish()
    }
}

impl Registry {
    /// The registry under `<data_dir>/plugins`.
    pub fn new(data_dir: &Path, sandbox: Arc<Sandbox>) -> Self {
        Registry {
            dir: data_dir.join("plugins"),
            sandbox,
            bundled: OnceLock::new(),
        }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    fn read_index(&self) -> Result<Index, RegistryError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                version: 1,
                plugins: Vec::new(),
            }),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The bundled plugins, loaded once per registry.
    fn bundled(&self) -> Result<&[(Entry, Arc<Plugin>)], RegistryError> {
        if let Some(b) = self.bundled.get() {
            return Ok(b);
        }
        let loaded: Vec<(Entry, Arc<Plugin>)> = bundled::ALL
            .iter()
            .map(|(name, bytes)| {
                let plugin = self.sandbox.load(&format!("bundled {name}"), bytes)?;
                Ok((
                    Entry {
                        digest: plugin.digest().hex(),
                        scope: Scope::Bundled,
                        tenant: None,
                        installed_at: None,
                        info: plugin.info().clone(),
                    },
                    plugin,
                ))
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(self.bundled.get_or_init(|| loaded))
    }

    /// Every plugin visible to `tenant` (or only global and bundled ones
    /// without a tenant), in resolution order: tenant, global, bundled.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<Entry>, RegistryError> {
        if let Some(t) = tenant {
            check_tenant(t)?;
        }
        let index = self.read_index()?;
        let mut out: Vec<Entry> = index
            .plugins
            .iter()
            .filter(|e| {
                e.scope == Scope::Tenant && e.tenant.as_deref() == tenant && tenant.is_some()
            })
            .cloned()
            .collect();
        out.extend(
            index
                .plugins
                .iter()
                .filter(|e| e.scope == Scope::Global)
                .cloned(),
        );
        out.extend(self.bundled()?.iter().map(|(e, _)| e.clone()));
        Ok(out)
    }

    /// Validate, precompile and install a component for `tenant` (or for
    /// everyone). Installing a plugin with the name of one already in the
    /// same scope replaces it.
    pub fn install(
        &self,
        what: &str,
        wasm: &[u8],
        tenant: Option<&str>,
    ) -> Result<Entry, RegistryError> {
        if let Some(t) = tenant {
            check_tenant(t)?;
        }
        // Loading compiles, checks the interface version and imports, and
        // calls describe(): a plugin that fails any of it is refused here.
        let plugin = self.sandbox.load(what, wasm)?;
        let digest = plugin.digest().hex();
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let blob = self.blob_path(&digest);
        if !blob.exists() {
            write_atomic(&blob, wasm)?;
        }
        let entry = Entry {
            digest,
            scope: if tenant.is_some() {
                Scope::Tenant
            } else {
                Scope::Global
            },
            tenant: tenant.map(str::to_owned),
            installed_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
            info: plugin.info().clone(),
        };
        let lock_path = self.dir.join("registry.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut index = self.read_index()?;
        index.version = 1;
        index.plugins.retain(|e| {
            !(e.scope == entry.scope && e.tenant == entry.tenant && e.info.name == entry.info.name)
        });
        index.plugins.push(entry.clone());
        let json = serde_json::to_vec_pretty(&index).expect("the index serializes");
        write_atomic(&self.index_path(), &json)?;
        drop(lock);
        tracing::info!(plugin = %entry.info.name, version = %entry.info.version, digest = %entry.digest, tenant = ?tenant, "plugin installed");
        Ok(entry)
    }

    /// The plugin `tenant` uses for `selector` (a plugin or format name).
    pub fn resolve(
        &self,
        tenant: Option<&str>,
        selector: &str,
    ) -> Result<(Entry, Arc<Plugin>), RegistryError> {
        self.find(tenant, selector, |e| e.handles(selector))
    }

    /// The plugin `tenant` uses for files with extension `ext`.
    pub fn resolve_extension(
        &self,
        tenant: Option<&str>,
        ext: &str,
    ) -> Result<(Entry, Arc<Plugin>), RegistryError> {
        self.find(tenant, &format!("files with extension .{ext}"), |e| {
            e.handles_extension(ext)
        })
    }

    /// The plugin with this digest, wherever it is installed (for resuming a
    /// job pinned to it).
    pub fn by_digest(&self, digest: &str) -> Result<(Entry, Arc<Plugin>), RegistryError> {
        let index = self.read_index()?;
        if let Some(e) = index.plugins.iter().find(|e| e.digest == digest) {
            return Ok((e.clone(), self.load(e)?));
        }
        self.bundled()?
            .iter()
            .find(|(e, _)| e.digest == digest)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                what: format!("digest {digest}"),
                tenant: None,
            })
    }

    fn find(
        &self,
        tenant: Option<&str>,
        what: &str,
        matches: impl Fn(&Entry) -> bool,
    ) -> Result<(Entry, Arc<Plugin>), RegistryError> {
        for entry in self.list(tenant)? {
            if matches(&entry) {
                let plugin = self.load(&entry)?;
                return Ok((entry, plugin));
            }
        }
        Err(RegistryError::NotFound {
            what: what.to_owned(),
            tenant: tenant.map(str::to_owned),
        })
    }

    /// Load an entry's component, checking its bytes still have its digest.
    fn load(&self, entry: &Entry) -> Result<Arc<Plugin>, RegistryError> {
        if entry.scope == Scope::Bundled {
            return self
                .bundled()?
                .iter()
                .find(|(e, _)| e.digest == entry.digest)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| RegistryError::NotFound {
                    what: format!("bundled plugin {}", entry.digest),
                    tenant: None,
                });
        }
        // Loaded before: the sandbox holds the component these very bytes
        // (the digest pins them) compiled to.
        if let Some(p) = Digest::from_hex(&entry.digest).and_then(|d| self.sandbox.loaded(&d)) {
            return Ok(p);
        }
        let path = self.blob_path(&entry.digest);
        let tampered = || RegistryError::Tampered {
            digest: entry.digest.clone(),
            path: path.display().to_string(),
        };
        let bytes = fs::read(&path).map_err(|_| tampered())?;
        if Digest::of(&bytes).hex() != entry.digest {
            return Err(tampered());
        }
        Ok(self
            .sandbox
            .load(&format!("plugin {}", entry.info.name), &bytes)?)
    }
}

/// Write `bytes` to `path` durably: temporary file, fsync, rename, fsync of
/// the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

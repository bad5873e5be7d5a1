//! Spooling: an upload is copied to durable local storage before anything
//! else happens, and every later step reads the local copy.
//!
//! A spool is written to `spool/tmp/<name>.partial` while its SHA-256 and
//! size are computed and a size cap is enforced, fsync'd, renamed to
//! `spool/<name>` and the directory fsync'd; only then may a job reference it
//! in the journal. The input stream is dropped (closed) as soon as the copy
//! is durable. Nothing is ever held whole in memory.
//!
//! Files are reached through [`SpoolFs`], so power-loss tests can drop every
//! write that was not synced.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::faults;
use crate::sandbox::Digest;

/// Bytes copied per read while spooling.
const COPY_CHUNK: usize = 256 << 10;

/// A spooled file opened for reading.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A file being written to the spool.
pub trait SpoolWrite: Write + Send {
    /// Make everything written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The file operations the spool needs.
pub trait SpoolFs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn create(&self, path: &Path) -> io::Result<Box<dyn SpoolWrite>>;
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>>;
    /// Read up to `len` bytes at `offset`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Remove a file; one that does not exist is no error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir` (empty if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Bytes an unprivileged writer may still use on the file system
    /// holding `dir`.
    fn available(&self, dir: &Path) -> io::Result<u64> {
        let _ = dir;
        Ok(u64::MAX)
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(File);

impl Write for RealFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl SpoolWrite for RealFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl SpoolFs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn SpoolWrite>> {
        let f = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        Ok(Box::new(File::open(path)?))
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        f.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    fn available(&self, dir: &Path) -> io::Result<u64> {
        let st = rustix::fs::statvfs(dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

/// A durable spooled file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spooled {
    /// File name inside the spool directory (generated, never from input).
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub digest: String,
}

/// Spooling errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The upload is larger than the cap.
    #[error(
        "the upload is larger than the {limit}-byte limit; split it into smaller files or raise the limit"
    )]
    TooLarge { limit: u64 },
    /// Reading the upload failed: the stream broke.
    #[error(
        "reading the upload failed after {bytes} bytes: {source}; nothing was imported, send the file again"
    )]
    Input { bytes: u64, source: io::Error },
    /// Local storage failed. A failed fsync is never retried: the outcome
    /// of earlier writes is unknown, so the spool is abandoned.
    #[error(
        "spool file {path}: {source}; check the disk (space, permissions) and run `sluice recover`"
    )]
    Storage { path: String, source: io::Error },
}

/// The spool directory of a data directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    fs: Arc<dyn SpoolFs>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The process that created a spool file, from its name.
pub fn creator_pid(name: &str) -> Option<u32> {
    name.split('-').nth(1)?.parse().ok()
}

/// A name no other spool file has: time, process, counter.
fn unique_name(suffix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{}-{}.{suffix}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Spool {
    /// The spool under `<data_dir>/spool`.
    pub fn new(data_dir: &Path, fs: Arc<dyn SpoolFs>) -> Self {
        Spool {
            dir: data_dir.join("spool"),
            fs,
        }
    }

    /// Path of a spooled file.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Copy `input` to a new durable spool file, at most `max_bytes` long.
    pub fn spool(&self, input: &mut dyn Read, max_bytes: u64) -> Result<Spooled, SpoolError> {
        let mut writer = self.writer("upload")?;
        // The digest is computed on a second thread while this one copies:
        // hashing is a quarter of a spool's time, and the copy leaves a core
        // idle. Buffers go round between the two threads.
        let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(2);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = Sha256::new();
                for (buf, n) in hash_rx {
                    hasher.update(&buf[..n]);
                    let _ = free_tx.send(buf);
                }
                hasher
            });
            let copied = (|| {
                loop {
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; COPY_CHUNK]);
                    let n = match input.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            return Err(SpoolError::Input {
                                bytes: writer.size,
                                source,
                            });
                        }
                    };
                    if writer.size + n as u64 > max_bytes {
                        return Err(SpoolError::TooLarge { limit: max_bytes });
                    }
                    writer.write_unhashed(&buf[..n])?;
                    faults::point("spool.mid-write");
                    // Fails only if the hashing thread panicked: the join
                    // below reports that.
                    let _ = to_hash.send((buf, n));
                }
            })();
            drop(to_hash);
            let hasher = hasher.join().expect("hashing does not panic");
            match copied {
                Ok(()) => writer.finish_with(hasher),
                Err(e) => {
                    writer.abandon();
                    Err(e)
                }
            }
        })
    }

    /// Like [`Spool::spool`] for an async stream; the copy runs on a
    /// blocking thread and the stream is dropped once the copy is durable.
    pub async fn spool_async<R>(
        self: Arc<Self>,
        input: R,
        max_bytes: u64,
    ) -> Result<Spooled, SpoolError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let mut bridge = tokio_util::io::SyncIoBridge::new(input);
            self.spool(&mut bridge, max_bytes)
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Storage {
                path: "spool".into(),
                source: io::Error::other(e.to_string()),
            })
        })
    }

    /// Start a new spool file, written through the returned writer.
    pub fn writer(&self, suffix: &str) -> Result<SpoolWriter, SpoolError> {
        let tmp_dir = self.tmp_dir();
        self.fs
            .create_dir_all(&tmp_dir)
            .map_err(storage(&tmp_dir))?;
        let file = unique_name(suffix);
        let tmp = tmp_dir.join(format!("{file}.partial"));
        let out = self.fs.create(&tmp).map_err(storage(&tmp))?;
        Ok(SpoolWriter {
            spool: self.clone(),
            file,
            tmp,
            out: Some(out),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Read a spooled file from the start.
    pub fn open(&self, file: &str) -> io::Result<Box<dyn ReadSeek>> {
        self.fs.open(&self.path(file))
    }

    /// Read `len` bytes of a spooled file at `offset` (fewer at its end).
    pub fn read_at(&self, file: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.fs.read_at(&self.path(file), offset, len)
    }

    /// Remove a spooled file, and its record stage if it has one, and make
    /// the removal durable.
    pub fn remove(&self, file: &str) -> io::Result<()> {
        self.fs.remove(&self.path(file))?;
        self.fs
            .remove(&self.path(&crate::stage::stage_name(file)))?;
        self.fs.sync_dir(&self.dir)
    }

    /// Bytes still free for writers on the spool's file system.
    pub(crate) fn available(&self) -> io::Result<u64> {
        self.fs.available(&self.dir)
    }

    /// Create (or truncate) `name` in the spool for scratch data that is
    /// never synced: a cache that readers check before trusting.
    pub(crate) fn create_scratch(&self, name: &str) -> io::Result<Box<dyn SpoolWrite>> {
        self.fs.create_dir_all(&self.dir)?;
        let path = self.path(name);
        self.fs.remove(&path)?;
        self.fs.create(&path)
    }

    /// Remove every temporary and spool file `keep` does not claim: debris
    /// of interrupted spools and of jobs that ended. Temporary files are
    /// offered to `keep` under their final name. Returns how many files were
    /// removed.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
        let mut removed_tmp = 0;
        for name in self.fs.list(&self.tmp_dir())? {
            if !keep(name.trim_end_matches(".partial")) {
                self.fs.remove(&self.tmp_dir().join(&name))?;
                removed_tmp += 1;
            }
        }
        if removed_tmp > 0 {
            self.fs.sync_dir(&self.tmp_dir())?;
        }
        let mut removed = 0;
        for name in self.fs.list(&self.dir)? {
            // A record stage goes with its spool file.
            if !keep(crate::stage::staged_file(&name).unwrap_or(&name)) {
                self.fs.remove(&self.path(&name))?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(removed_tmp + removed)
    }

    /// Files currently in the spool (not counting temporary ones).
    pub fn files(&self) -> io::Result<Vec<String>> {
        self.fs.list(&self.dir)
    }

    /// Temporary files currently in the spool.
    pub fn temporary_files(&self) -> io::Result<Vec<String>> {
        self.fs.list(&self.tmp_dir())
    }
}

/// Writes one spool file: hashing as it goes, durable only after
/// [`SpoolWriter::finish`].
pub struct SpoolWriter {
    spool: Spool,
    file: String,
    tmp: PathBuf,
    out: Option<Box<dyn SpoolWrite>>,
    hasher: Sha256,
    size: u64,
}

impl SpoolWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.write_unhashed(bytes)?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Append bytes that the caller hashes (see [`SpoolWriter::finish_with`]).
    fn write_unhashed(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let out = self.out.as_mut().expect("writer not finished");
        out.write_all(bytes).map_err(storage(&self.tmp))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Make the file durable under its final name: fsync, rename, fsync the
    /// directory. On error the temporary file is left for the sweep (a failed
    /// fsync leaves its state unknown, so it is not retried).
    pub fn finish(mut self) -> Result<Spooled, SpoolError> {
        let hasher = std::mem::take(&mut self.hasher);
        self.finish_with(hasher)
    }

    /// [`SpoolWriter::finish`], with the digest of everything written
    /// computed by the caller.
    fn finish_with(mut self, hasher: Sha256) -> Result<Spooled, SpoolError> {
        let mut out = self.out.take().expect("writer not finished");
        let fs = self.spool.fs.clone();
        out.flush().map_err(storage(&self.tmp))?;
        faults::point("spool.before-fsync");
        out.sync().map_err(storage(&self.tmp))?;
        drop(out);
        let dest = self.spool.path(&self.file);
        faults::point("spool.before-rename");
        fs.rename(&self.tmp, &dest).map_err(storage(&dest))?;
        faults::point("spool.before-dir-fsync");
        fs.sync_dir(&self.spool.dir)
            .map_err(storage(&self.spool.dir))?;
        let digest = Digest(hasher.finalize().into());
        Ok(Spooled {
            file: std::mem::take(&mut self.file),
            size: self.size,
            digest: digest.hex(),
        })
    }

    /// Give up: remove the temporary file.
    pub fn abandon(mut self) {
        self.out = None;
        let _ = self.spool.fs.remove(&self.tmp);
    }
}

/// Map an I/O error on `path` to a spool storage error.
fn storage(path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.display().to_string();
    move |source| SpoolError::Storage { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), Arc::new(RealFs));
        (dir, spool)
    }

    #[test]
    fn spooled_file_has_the_content_size_and_digest() {
        let (_d, spool) = spool();
        let content = b"a,b\n1,2\n".repeat(100_000);
        let s = spool.spool(&mut &content[..], u64::MAX).unwrap();
        assert_eq!(s.size, content.len() as u64);
        assert_eq!(s.digest, Digest::of(&content).hex());
        let mut back = Vec::new();
        spool.open(&s.file).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, content);
        assert!(spool.temporary_files().unwrap().is_empty());
        assert_eq!(spool.read_at(&s.file, 4, 4).unwrap(), b"1,2\n");
    }

    proptest::proptest! {
        /// Whatever the content and however the input is chunked, the
        /// spooled file is the content and its digest is the content's.
        #[test]
        fn spool_digest_equals_content(
            content in proptest::collection::vec(proptest::num::u8::ANY, 0..200_000),
            chunk in 1usize..70_000,
        ) {
            struct Chunked<'a>(&'a [u8], usize);
            impl Read for Chunked<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let n = self.0.len().min(self.1).min(buf.len());
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let (_d, spool) = spool();
            let s = spool.spool(&mut Chunked(&content, chunk), u64::MAX).unwrap();
            proptest::prop_assert_eq!(s.size, content.len() as u64);
            proptest::prop_assert_eq!(&s.digest, &Digest::of(&content).hex());
            let mut back = Vec::new();
            spool.open(&s.file).unwrap().read_to_end(&mut back).unwrap();
            proptest::prop_assert_eq!(back, content);
        }
    }

    #[test]
    fn the_size_cap_holds_while_streaming() {
        let (_d, spool) = spool();
        let mut endless = io::repeat(b'x');
        let err = spool.spool(&mut endless, 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { limit } if limit == 1 << 20));
        assert!(spool.files().unwrap().is_empty());
        assert!(spool.temporary_files().unwrap().is_empty());
    }

    #[test]
    fn a_broken_stream_leaves_nothing() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "peer went away",
                    ));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let (_d, spool) = spool();
        let err = spool.spool(&mut Broken(10), u64::MAX).unwrap_err();
        assert!(matches!(err, SpoolError::Input { bytes: 10, .. }), "{err}");
        assert!(err.to_string().contains("send the file again"));
        assert!(spool.temporary_files().unwrap().is_empty());
    }

    #[test]
    fn sweep_removes_debris_and_keeps_referenced_files() {
        let (_d, spool) = spool();
        let keep = spool.spool(&mut &b"keep"[..], 100).unwrap();
        let orphan = spool.spool(&mut &b"orphan"[..], 100).unwrap();
        let mut partial = spool.writer("upload").unwrap();
        partial.write(b"half").unwrap();
        std::mem::forget(partial); // as if the process died mid-write
        let keep_set = HashSet::from([keep.file.clone()]);
        let removed = spool.sweep(|n| keep_set.contains(n)).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(spool.files().unwrap(), vec![keep.file]);
        assert!(spool.temporary_files().unwrap().is_empty());
        assert!(!spool.path(&orphan.file).exists());
    }
}

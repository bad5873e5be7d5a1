//! Power-loss tests, in process: every write the journal, the store and the
//! spool make goes through a storage layer that keeps what was written apart
//! from what was synced. The power is cut after the k-th storage operation
//! (from then on every operation fails, as with a dead disk); "rebooting"
//! keeps only synced bytes and synced directory entries. Recovery must then
//! reach the same final state as an uninterrupted import, for every k.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::StorageBackend;
use sluice::engine::{Engine, ImportRequest, Storage};
use sluice::journal::{JobState, Journal};
use sluice::sink::embedded::EmbeddedStore;
use sluice::spool::{ReadSeek, SpoolFs, SpoolWrite};

use crate::common::{csv_rows, export, runtime, test_config};

/// Counts storage operations and cuts the power after `cut_after` of them.
#[derive(Debug)]
struct Power {
    ops: AtomicU64,
    cut_after: u64,
}

impl Power {
    fn new(cut_after: u64) -> Arc<Self> {
        Arc::new(Power {
            ops: AtomicU64::new(0),
            cut_after,
        })
    }

    fn tick(&self) -> io::Result<()> {
        if self.ops.fetch_add(1, Ordering::SeqCst) >= self.cut_after {
            Err(io::Error::other("power cut"))
        } else {
            Ok(())
        }
    }

    fn is_cut(&self) -> bool {
        self.ops.load(Ordering::SeqCst) > self.cut_after
    }
}

/// A redb file: written bytes, and the bytes that survived the last sync.
#[derive(Debug)]
struct LossyFile {
    power: Arc<Power>,
    live: Mutex<Vec<u8>>,
    durable: Arc<Mutex<Vec<u8>>>,
}

impl LossyFile {
    /// After a reboot: the live image starts as the durable one.
    fn boot(power: Arc<Power>, durable: Arc<Mutex<Vec<u8>>>) -> Self {
        let live = durable.lock().unwrap().clone();
        LossyFile {
            power,
            live: Mutex::new(live),
            durable,
        }
    }
}

impl StorageBackend for LossyFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.live.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let live = self.live.lock().unwrap();
        let start = offset as usize;
        let src = live
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.power.tick()?;
        self.live.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.power.tick()?;
        *self.durable.lock().unwrap() = self.live.lock().unwrap().clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.power.tick()?;
        let mut live = self.live.lock().unwrap();
        let end = offset as usize + data.len();
        if live.len() < end {
            live.resize(end, 0);
        }
        live[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// The spool's file system: file contents and directory entries, each with
/// a live and a durable version.
#[derive(Debug, Default, Clone)]
struct Disk {
    /// path → file id
    entries: HashMap<PathBuf, u64>,
    /// file id → content
    contents: HashMap<u64, Vec<u8>>,
}

#[derive(Debug)]
struct LossyFs {
    power: Arc<Power>,
    live: Arc<Mutex<Disk>>,
    durable: Arc<Mutex<Disk>>,
    next_id: AtomicU64,
}

impl LossyFs {
    fn boot(power: Arc<Power>, durable: Arc<Mutex<Disk>>) -> Self {
        let live = durable.lock().unwrap().clone();
        let next = live.contents.keys().max().copied().unwrap_or(0) + 1;
        LossyFs {
            power,
            live: Arc::new(Mutex::new(live)),
            durable,
            next_id: AtomicU64::new(next),
        }
    }
}

struct LossyWrite {
    power: Arc<Power>,
    id: u64,
    live: Arc<Mutex<Disk>>,
    durable: Arc<Mutex<Disk>>,
}

impl Write for LossyWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.power.tick()?;
        self.live
            .lock()
            .unwrap()
            .contents
            .entry(self.id)
            .or_default()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SpoolWrite for LossyWrite {
    fn sync(&mut self) -> io::Result<()> {
        self.power.tick()?;
        let content = self
            .live
            .lock()
            .unwrap()
            .contents
            .get(&self.id)
            .cloned()
            .unwrap_or_default();
        self.durable
            .lock()
            .unwrap()
            .contents
            .insert(self.id, content);
        Ok(())
    }
}

impl SpoolFs for LossyFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SpoolWrite>> {
        self.power.tick()?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut live = self.live.lock().unwrap();
        if live.entries.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        live.entries.insert(path.to_path_buf(), id);
        live.contents.insert(id, Vec::new());
        Ok(Box::new(LossyWrite {
            power: self.power.clone(),
            id,
            live: self.live.clone(),
            durable: self.durable.clone(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        let live = self.live.lock().unwrap();
        let id = live
            .entries
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        // A file whose entry is durable but whose content never was reads
        // as empty.
        let content = live.contents.get(id).cloned().unwrap_or_default();
        Ok(Box::new(io::Cursor::new(content)))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut r = self.open(path)?;
        io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
        let mut out = Vec::new();
        r.take(len as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut live = self.live.lock().unwrap();
        let id = live
            .entries
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        live.entries.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.power.tick()?;
        // Entries of `dir` become durable as they are now.
        let live = self.live.lock().unwrap();
        let mut durable = self.durable.lock().unwrap();
        durable.entries.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in &live.entries {
            if p.parent() == Some(dir) {
                durable.entries.insert(p.clone(), *id);
            }
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.power.tick()?;
        self.live.lock().unwrap().entries.remove(path);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let live = self.live.lock().unwrap();
        Ok(live
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
}

/// The durable state of one simulated machine.
struct Machine {
    journal: Arc<Mutex<Vec<u8>>>,
    store: Arc<Mutex<Vec<u8>>>,
    spool: Arc<Mutex<Disk>>,
}

impl Machine {
    /// A machine whose journal and store exist (creating a database file is
    /// made atomic by `Journal::open` and `EmbeddedStore::open` with a
    /// rename, which these in-memory files do not model).
    fn new(data_dir: &Path) -> Self {
        let m = Machine {
            journal: Default::default(),
            store: Default::default(),
            spool: Default::default(),
        };
        drop(m.boot(data_dir, u64::MAX));
        m
    }

    /// Boot an engine on the durable state, with power for `budget` more
    /// storage operations.
    fn boot(&self, data_dir: &Path, budget: u64) -> (Engine, Arc<Power>) {
        let (engine, power) = self.try_boot(data_dir, budget);
        (engine.expect("boots with power"), power)
    }

    /// Boot, or `None` if the power went out while opening the databases.
    fn try_boot(&self, data_dir: &Path, budget: u64) -> (Option<Engine>, Arc<Power>) {
        let power = Power::new(budget);
        let journal =
            Journal::open_with_backend(LossyFile::boot(power.clone(), self.journal.clone()));
        let store =
            EmbeddedStore::open_with_backend(LossyFile::boot(power.clone(), self.store.clone()));
        let (journal, store) = match (journal, store) {
            (Ok(j), Ok(s)) => (j, s),
            (j, s) if power.is_cut() => {
                drop((j, s));
                return (None, power);
            }
            (j, s) => panic!("cannot open: {:?} {:?}", j.err(), s.err()),
        };
        let storage = Storage {
            journal,
            store: Arc::new(store),
            spool_fs: Arc::new(LossyFs::boot(power.clone(), self.spool.clone())),
        };
        (
            Some(Engine::with_storage(data_dir, test_config(40), storage, None).unwrap()),
            power,
        )
    }
}

fn import(
    engine: &Engine,
    rt: &tokio::runtime::Runtime,
    input: &[u8],
) -> Result<sluice::journal::JobRecord, String> {
    rt.block_on(async {
        let req = ImportRequest {
            source: "rows.csv".into(),
            tenant: "acme".into(),
            key: Some("id".into()),
            ..Default::default()
        };
        let id = engine
            .submit(req, io::Cursor::new(input.to_vec()))
            .await
            .map_err(|e| e.to_string())?
            .job();
        engine.run(id).await.map_err(|e| e.to_string())
    })
}

#[test]
fn cutting_the_power_after_any_storage_operation_loses_and_duplicates_nothing() {
    let rt = runtime();
    let input = csv_rows(200, 13);
    let data_dir = tempfile::tempdir().unwrap();

    // The uninterrupted run, counting its storage operations.
    let reference = Machine::new(data_dir.path());
    let (engine, power) = reference.boot(data_dir.path(), u64::MAX);
    let job = import(&engine, &rt, &input).unwrap();
    assert_eq!(job.state, JobState::Completed);
    let expected = export(&engine);
    let total_ops = power.ops.load(Ordering::SeqCst);
    drop(engine);

    let mut cuts = 0;
    // Every storage operation of the import, one at a time.
    for k in 0..total_ops {
        let dir = tempfile::tempdir().unwrap();
        let machine = Machine::new(dir.path());
        let (engine, power) = machine.try_boot(dir.path(), k);
        if let Some(engine) = engine {
            let first = import(&engine, &rt, &input);
            assert!(power.is_cut() || first.is_ok(), "k={k}: {first:?}");
        }
        if power.is_cut() {
            cuts += 1;
        }
        // Reboot with power: recover, then the client retries (it never
        // saw an acknowledgement if the power went out first).
        let (engine, _) = machine.boot(dir.path(), u64::MAX);
        rt.block_on(engine.recover())
            .unwrap_or_else(|e| panic!("k={k}: recover: {e}"));
        let retried = import(&engine, &rt, &input).unwrap_or_else(|e| panic!("k={k}: retry: {e}"));
        assert_eq!(retried.state, JobState::Completed, "k={k}");
        assert_eq!(
            (
                retried.counts.scanned,
                retried.counts.rejected,
                retried.counts.applied
            ),
            (job.counts.scanned, job.counts.rejected, job.counts.applied),
            "k={k}"
        );
        let jobs = engine.journal().jobs().unwrap();
        assert_eq!(jobs.len(), 1, "k={k}: one job for one import");
        assert_eq!(export(&engine), expected, "k={k}: store differs");
        let left = crate::common::spool_files(&engine);
        assert!(left.is_empty(), "k={k}: spool debris {left:?}");
    }
    eprintln!("power cuts: {cuts} of {total_ops} storage operations cut and recovered");
    assert_eq!(cuts, total_ops);
}

/// CSV rows from a spec: each row is (id, valid?); invalid rows are ragged.
fn rows_from(spec: &[(u16, bool)]) -> Vec<u8> {
    let mut s = String::from("id,name,amount\n");
    for (id, ok) in spec {
        if *ok {
            s.push_str(&format!("{id},name {id},{}\n", u32::from(*id) * 3));
        } else {
            s.push_str(&format!("{id},broken\n"));
        }
    }
    s.into_bytes()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, .. Default::default() })]

    /// For random inputs with random invalid records and duplicate keys,
    /// an import interrupted by a power cut at a random storage operation,
    /// then recovered and retried, ends exactly like an uninterrupted one.
    #[test]
    fn resume_after_a_crash_equals_an_uninterrupted_run(
        spec in proptest::collection::vec((0u16..400, proptest::bool::weighted(0.85)), 1..250),
        cut_at in 0.0f64..1.0,
    ) {
        let rt = runtime();
        let input = rows_from(&spec);

        let dir = tempfile::tempdir().unwrap();
        let reference = Machine::new(dir.path());
        let (engine, power) = reference.boot(dir.path(), u64::MAX);
        let expected_job = import(&engine, &rt, &input).unwrap();
        let expected = export(&engine);
        drop(engine);
        // Somewhere among the uninterrupted run's storage operations.
        let cut = (cut_at * power.ops.load(Ordering::SeqCst) as f64) as u64;

        let dir = tempfile::tempdir().unwrap();
        let machine = Machine::new(dir.path());
        let (engine, power) = machine.try_boot(dir.path(), cut);
        if let Some(engine) = engine {
            let _ = import(&engine, &rt, &input);
        }
        proptest::prop_assert!(power.is_cut(), "the power was never cut at operation {}", cut);
        let (engine, _) = machine.boot(dir.path(), u64::MAX);
        rt.block_on(engine.recover()).unwrap();
        let job = import(&engine, &rt, &input).unwrap();
        proptest::prop_assert_eq!(&job.counts, &expected_job.counts);
        proptest::prop_assert_eq!(export(&engine), expected);
    }
}

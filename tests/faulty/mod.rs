//! Test support: a [`Storage`] that fails the operation a test picks.
//!
//! Used by the crash tests (`tests/wal.rs`) and the operations tests (`tests/ops.rs`), each
//! declaring it with `mod faulty;`; it lives beside them, not in the library, because
//! production never builds one, and it sees the log only through the public [`Storage`] trait.
//! It wraps any storage and counts each kind of write-side operation
//! ([`Op`]); a test arms a fault ("the 3rd fsync fails with `StorageFull`"), runs, and the
//! chosen operation returns that error *without reaching the inner storage*: a failed append
//! writes nothing, a failed rename leaves both names as they were. Everything else (a
//! successful append whose fsync later fails, say) really happened, so what is on disk after
//! a fault is exactly what a crash right before the failed operation would have left (minus
//! page-cache loss, which this does not model).
//!
//! To enumerate "fail at step k": run once with no fault, read [`FaultyStorage::count`], then
//! for each `k` in `1..=count` run again on a fresh directory with `fail(op, k, kind)`.
//! Operations are numbered from 1, per kind, since the storage was made (recovery's and the
//! log's alike, across every file it opened).

#![allow(dead_code, reason = "shared by several test crates, each using a part")]

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use livestock::wal::storage::{AppendFile, FileSync, Storage};

/// The operations that can be failed. `SyncDir` stays last: it sizes the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `Storage::create`.
    Create,
    /// `AppendFile::append`.
    Append,
    /// `AppendFile::sync` (the file's `fdatasync`).
    Sync,
    /// `Storage::truncate`.
    Truncate,
    Rename,
    Remove,
    /// `Storage::sync_dir`.
    SyncDir,
}

/// How many kinds of [`Op`] there are (the length of the counts array).
const OP_KINDS: usize = Op::SyncDir as usize + 1;

#[derive(Clone, Copy, Debug)]
struct Fault {
    op: Op,
    /// The 1-based count of `op` that fails.
    nth: u64,
    kind: io::ErrorKind,
}

#[derive(Default)]
struct Faults {
    counts: [u64; OP_KINDS],
    armed: Vec<Fault>,
    failed: u64,
}

impl Faults {
    /// Counts one `op` and says whether it fails.
    fn check(&mut self, op: Op, name: &str) -> io::Result<()> {
        self.counts[op as usize] += 1;
        let n = self.counts[op as usize];
        let hit = self.armed.iter().find(|f| f.op == op && f.nth == n);
        match hit {
            Some(fault) => {
                self.failed += 1;
                Err(io::Error::new(fault.kind, format!("injected fault: {op:?} #{n} on {name}")))
            }
            None => Ok(()),
        }
    }
}

/// Locks the fault table. A test that panicked while holding it has failed already; the
/// table itself is never left half updated, so the others may go on reading it.
fn lock(faults: &Mutex<Faults>) -> MutexGuard<'_, Faults> {
    faults.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A storage that fails chosen operations; see the module docs.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage { inner, faults: Arc::new(Mutex::new(Faults::default())) }
    }

    /// The `nth` (1-based, counted since creation) `op` fails with `kind`; the ones after it
    /// succeed again.
    pub fn fail(&self, op: Op, nth: u64, kind: io::ErrorKind) {
        lock(&self.faults).armed.push(Fault { op, nth, kind });
    }

    /// The next `op` (and only it) fails with `kind`.
    pub fn fail_next(&self, op: Op, kind: io::ErrorKind) {
        let mut faults = lock(&self.faults);
        let nth = faults.counts[op as usize] + 1;
        faults.armed.push(Fault { op, nth, kind });
    }

    /// How many `op`s were attempted so far (failed ones included).
    pub fn count(&self, op: Op) -> u64 {
        lock(&self.faults).counts[op as usize]
    }

    /// How many operations failed by injection so far.
    pub fn failures(&self) -> u64 {
        lock(&self.faults).failed
    }

    fn check(&self, op: Op, name: &str) -> io::Result<()> {
        lock(&self.faults).check(op, name)
    }

    fn wrap(&self, name: &str, inner: Box<dyn AppendFile>) -> Box<dyn AppendFile> {
        Box::new(FaultyFile { name: name.to_owned(), inner, faults: self.faults.clone() })
    }
}

struct FaultyFile {
    name: String,
    inner: Box<dyn AppendFile>,
    faults: Arc<Mutex<Faults>>,
}

impl AppendFile for FaultyFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        lock(&self.faults).check(Op::Append, &self.name)?;
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        lock(&self.faults).check(Op::Sync, &self.name)?;
        self.inner.sync()
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        Ok(Arc::new(FaultySync {
            name: self.name.clone(),
            inner: self.inner.sync_handle()?,
            faults: self.faults.clone(),
        }))
    }
}

/// A sync handle counts and fails as `Op::Sync`, like the file's own `sync`.
struct FaultySync {
    name: String,
    inner: Arc<dyn FileSync>,
    faults: Arc<Mutex<Faults>>,
}

impl FileSync for FaultySync {
    fn sync(&self) -> io::Result<()> {
        lock(&self.faults).check(Op::Sync, &self.name)?;
        self.inner.sync()
    }
}

impl Storage for FaultyStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.check(Op::Create, name)?;
        Ok(self.wrap(name, self.inner.create(name)?))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        Ok(self.wrap(name, self.inner.open_append(name)?))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.check(Op::Truncate, name)?;
        self.inner.truncate(name, len)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check(Op::Remove, name)?;
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.check(Op::SyncDir, "the directory")?;
        self.inner.sync_dir()
    }

    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}

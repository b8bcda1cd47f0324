//! `SimStorage`: an in-memory disk with a page cache, for the fault simulation.
//!
//! The model, which every failure is to be judged against:
//!
//! - **Files.** A file is an inode holding bytes, the first `synced` of which are on stable
//!   storage. `append` puts bytes in the cache only; `AppendFile::sync` makes all of the file's
//!   bytes durable; `truncate` cuts the file and syncs all of it (as `DirStorage` does:
//!   `set_len` then `sync_all`).
//! - **The directory.** Names map to inodes. Creations, renames and removals are seen by the
//!   process at once but are only *pending* until `sync_dir`, which makes them all durable. A
//!   file whose creation is not durable is gone after a power failure, with its data, even if
//!   the file itself was synced.
//! - **A process crash** (`kill -9`, or the exit that follows a poisoned log) loses nothing: the
//!   kernel's page cache survives it, still unsynced, and the next process reads it.
//!   [`SimStorage::restart_process`].
//! - **A power failure** loses what was not synced. [`SimStorage::power_loss`]:
//!   - pending directory operations: a prefix of them, in order, survives, the rest is undone
//!     (a journaling file system commits metadata in order);
//!   - each file's unsynced tail is, independently, dropped, kept whole, or torn: a prefix of
//!     it survives, followed by up to the rest of its length of zeros or random bytes (blocks
//!     allocated but never written, or stale contents);
//!   - what survives is durable from then on.
//!
//!   Not modelled: pages of one write reaching the disk out of order (a hole *followed by*
//!   valid data), and dirty pages the kernel drops after a failed fsync ("fsyncgate": here a
//!   later fsync of the file still persists them).
//! - **Faults**, drawn per operation from the disk's PRNG: `ENOSPC` (`StorageFull`) or `EIO` on
//!   append (after a short write: a random prefix of the bytes reaches the cache), `EIO` on
//!   fsync (a random prefix of the unsynced bytes may have been persisted anyway), and on
//!   create, rename, remove, directory fsync, truncate and read. A full disk stays full for a
//!   few appends and creations.
//! - **A crash in the middle of an operation**: [`SimStorage::arm_crash`] makes the n-th
//!   write-side operation from now the moment the machine dies: it does not happen (an append
//!   may leave a prefix in the cache) and every operation after it fails. The simulator then
//!   drops the node and calls `power_loss` or `restart_process`.
//! - **A corrupted sector**: [`SimStorage::corrupt`] flips one byte of a file's durable content.
//!
//! One file (past 600 lines) because it is one model: the page cache, the pending directory
//! operations, the faults and the crash points all act on the same inodes under one lock.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use livestock::wal::storage::{AppendFile, FileSync, Storage};

use super::rng::Rng;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// The faults the disk injects, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    AppendEnospc,
    AppendEio,
    FsyncEio,
    CreateEnospc,
    CreateEio,
    RenameEio,
    RemoveEio,
    DirFsyncEio,
    TruncateEio,
    ReadEio,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::AppendEnospc => "append_enospc",
            Fault::AppendEio => "append_eio",
            Fault::FsyncEio => "fsync_eio",
            Fault::CreateEnospc => "create_enospc",
            Fault::CreateEio => "create_eio",
            Fault::RenameEio => "rename_eio",
            Fault::RemoveEio => "remove_eio",
            Fault::DirFsyncEio => "dir_fsync_eio",
            Fault::TruncateEio => "truncate_eio",
            Fault::ReadEio => "read_eio",
        }
    }

    fn error(self) -> io::Error {
        let errno = match self {
            Fault::AppendEnospc | Fault::CreateEnospc => ENOSPC,
            _ => EIO,
        };
        let os = io::Error::from_raw_os_error(errno);
        io::Error::new(os.kind(), format!("injected {}: {os}", self.name()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Append,
    Sync,
    Create,
    Rename,
    Remove,
    SyncDir,
    Truncate,
    Read,
}

/// Why an operation did not happen.
enum Stop {
    /// The machine is down (a crash struck earlier in this action).
    Down,
    /// The crash strikes now.
    Crash,
    Fault(Fault),
}

fn down_error() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}

#[derive(Clone, Debug)]
enum DirOp {
    Create { name: String, inode: u64 },
    Rename { from: String, to: String },
    Remove { name: String },
}

fn apply(map: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Create { name, inode } => {
            map.insert(name.clone(), *inode);
        }
        DirOp::Rename { from, to } => {
            if let Some(inode) = map.remove(from) {
                map.insert(to.clone(), inode);
            }
        }
        DirOp::Remove { name } => {
            map.remove(name);
        }
    }
}

struct Inode {
    data: Vec<u8>,
    synced: usize,
}

/// A flipped byte: which file, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub file: String,
    pub offset: usize,
    pub len: usize,
}

/// What one power failure did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerLoss {
    pub dir_ops_undone: usize,
    pub dir_ops_kept: usize,
    pub tails_dropped: usize,
    pub tails_kept: usize,
    pub tails_torn: usize,
}

struct Disk {
    rng: Rng,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// The directory as the process sees it.
    names: BTreeMap<String, u64>,
    /// The directory as of the last `sync_dir`.
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
    fault_per_mille: u32,
    faults_paused: bool,
    /// A full disk: this many more appends and creations fail with ENOSPC.
    full_for: u32,
    crash_in: Option<u32>,
    down: bool,
    faults: BTreeMap<Fault, u64>,
    /// Offsets of flipped bytes, by inode, while they are in the file.
    flipped: BTreeMap<u64, BTreeSet<usize>>,
}

impl Disk {
    fn gate(&mut self, op: Op) -> Result<(), Stop> {
        if self.down {
            return Err(Stop::Down);
        }
        if op != Op::Read {
            if let Some(n) = self.crash_in.as_mut() {
                *n -= 1;
                if *n == 0 {
                    self.crash_in = None;
                    self.down = true;
                    return Err(Stop::Crash);
                }
            }
        }
        if self.faults_paused {
            return Ok(());
        }
        if self.full_for > 0 && matches!(op, Op::Append | Op::Create) {
            self.full_for -= 1;
            let fault = if op == Op::Append { Fault::AppendEnospc } else { Fault::CreateEnospc };
            return Err(self.inject(fault));
        }
        if self.fault_per_mille == 0 || !self.rng.chance(self.fault_per_mille) {
            return Ok(());
        }
        let full = self.rng.chance(500);
        let fault = match op {
            Op::Append if full => Fault::AppendEnospc,
            Op::Append => Fault::AppendEio,
            Op::Create if full => Fault::CreateEnospc,
            Op::Create => Fault::CreateEio,
            Op::Sync => Fault::FsyncEio,
            Op::Rename => Fault::RenameEio,
            Op::Remove => Fault::RemoveEio,
            Op::SyncDir => Fault::DirFsyncEio,
            Op::Truncate => Fault::TruncateEio,
            Op::Read => Fault::ReadEio,
        };
        if matches!(fault, Fault::AppendEnospc | Fault::CreateEnospc) {
            self.full_for = self.rng.range(0, 6) as u32;
        }
        Err(self.inject(fault))
    }

    fn inject(&mut self, fault: Fault) -> Stop {
        *self.faults.entry(fault).or_default() += 1;
        Stop::Fault(fault)
    }

    fn inode(&mut self, name: &str) -> io::Result<&mut Inode> {
        let id = *self.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(self.inodes.get_mut(&id).expect("a name points at an inode"))
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

fn stopped(stop: Stop) -> io::Error {
    match stop {
        Stop::Down | Stop::Crash => down_error(),
        Stop::Fault(fault) => fault.error(),
    }
}

/// The simulated data directory. Cloning shares the disk (it outlives every node).
#[derive(Clone)]
pub struct SimStorage {
    disk: Arc<Mutex<Disk>>,
}

impl SimStorage {
    /// An empty disk whose faults and crash outcomes are drawn from `rng`.
    pub fn new(rng: Rng, fault_per_mille: u32) -> SimStorage {
        let disk = Disk {
            rng,
            inodes: BTreeMap::new(),
            next_inode: 1,
            names: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending: Vec::new(),
            fault_per_mille,
            faults_paused: false,
            full_for: 0,
            crash_in: None,
            down: false,
            faults: BTreeMap::new(),
            flipped: BTreeMap::new(),
        };
        SimStorage { disk: Arc::new(Mutex::new(disk)) }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic elsewhere (a bug the simulation caught) must not hide the disk's state.
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The n-th write-side operation from now (1 = the next one) is when the machine dies.
    pub fn arm_crash(&self, n: u32) {
        assert!(n > 0);
        self.lock().crash_in = Some(n);
    }

    pub fn disarm_crash(&self) {
        self.lock().crash_in = None;
    }

    /// The machine dies now: every operation fails until `power_loss` or `restart_process`
    /// (the cluster simulation's kill of a node).
    #[allow(dead_code, reason = "the cluster simulation's; the single-node one crashes by arming")]
    pub fn halt(&self) {
        self.lock().down = true;
    }

    /// Changes how often faults strike (the cluster simulation turns a node's disk bad for a
    /// while).
    #[allow(dead_code, reason = "the cluster simulation's; the single-node one fixes the rate")]
    pub fn set_fault_rate(&self, per_mille: u32) {
        self.lock().fault_per_mille = per_mille;
    }

    /// Whether an armed crash struck: the machine is down until a restart.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Faults off (`true`) for the oracle's dry-run recovery and for a disk that was replaced.
    pub fn pause_faults(&self, paused: bool) {
        self.lock().faults_paused = paused;
    }

    /// Faults injected so far, by kind.
    pub fn faults(&self) -> BTreeMap<Fault, u64> {
        self.lock().faults.clone()
    }

    /// The process died; the machine did not: the page cache, unsynced data and pending
    /// directory operations included, is what the next process sees.
    pub fn restart_process(&self) {
        let mut disk = self.lock();
        disk.down = false;
        disk.crash_in = None;
        disk.full_for = 0;
    }

    /// The machine lost power: see the module docs for what survives.
    pub fn power_loss(&self) -> PowerLoss {
        let mut report = PowerLoss::default();
        let mut disk = self.lock();
        let disk = &mut *disk;
        disk.down = false;
        disk.crash_in = None;
        disk.full_for = 0;
        let kept = disk.rng.range(0, disk.pending.len() as u64) as usize;
        let mut map = disk.durable.clone();
        for op in &disk.pending[..kept] {
            apply(&mut map, op);
        }
        report.dir_ops_kept = kept;
        report.dir_ops_undone = disk.pending.len() - kept;
        disk.pending.clear();
        disk.durable = map.clone();
        disk.names = map;
        let live: BTreeSet<u64> = disk.names.values().copied().collect();
        disk.inodes.retain(|id, _| live.contains(id));
        disk.flipped.retain(|id, _| live.contains(id));
        for inode in disk.inodes.values_mut() {
            let tail = inode.data.len() - inode.synced;
            if tail > 0 {
                match disk.rng.below(3) {
                    0 => {
                        inode.data.truncate(inode.synced);
                        report.tails_dropped += 1;
                    }
                    1 => report.tails_kept += 1,
                    _ => {
                        let cut = disk.rng.below(tail as u64) as usize;
                        let garbage = disk.rng.range(0, (tail - cut) as u64) as usize;
                        inode.data.truncate(inode.synced + cut);
                        let zeros = disk.rng.chance(500);
                        for _ in 0..garbage {
                            let byte = if zeros { 0 } else { disk.rng.below(256) as u8 };
                            inode.data.push(byte);
                        }
                        report.tails_torn += 1;
                    }
                }
            }
            inode.synced = inode.data.len();
        }
        report
    }

    /// Flips one byte of one file's durable content (a corrupted sector), if any file has some.
    pub fn corrupt(&self) -> Option<Flip> {
        let mut disk = self.lock();
        let disk = &mut *disk;
        let candidates: Vec<(String, u64)> = disk
            .names
            .iter()
            .filter(|(_, id)| disk.inodes[*id].synced > 0)
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        let (file, id) = disk.rng.pick(&candidates)?.clone();
        let inode = disk.inodes.get_mut(&id).expect("a live inode");
        let offset = disk.rng.below(inode.synced as u64) as usize;
        let mask = disk.rng.range(1, 255) as u8;
        inode.data[offset] ^= mask;
        let len = inode.data.len();
        disk.flipped.entry(id).or_default().insert(offset);
        Some(Flip { file, offset, len })
    }

    /// Files that hold a flipped byte now (a corrupted sector, not cut off or deleted since).
    pub fn corrupted_files(&self) -> Vec<String> {
        let disk = self.lock();
        disk.names
            .iter()
            .filter(|(_, id)| disk.flipped.get(*id).is_some_and(|offsets| !offsets.is_empty()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Files the process sees that hold bytes not on stable storage (checkpoint temps aside),
    /// or whose name is not durable yet.
    pub fn unsynced_files(&self) -> Vec<String> {
        let disk = self.lock();
        disk.names
            .iter()
            .filter(|(name, id)| {
                !name.ends_with(".tmp")
                    && (disk.inodes[*id].synced < disk.inodes[*id].data.len()
                        || disk.durable.get(*name) != Some(*id))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Names, sizes and synced sizes, for traces.
    pub fn listing(&self) -> Vec<(String, usize, usize)> {
        let disk = self.lock();
        disk.names
            .iter()
            .map(|(name, id)| (name.clone(), disk.inodes[id].data.len(), disk.inodes[id].synced))
            .collect()
    }
}

struct SimFile {
    disk: Arc<Mutex<Disk>>,
    inode: u64,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AppendFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.lock();
        let disk = &mut *disk;
        match disk.gate(Op::Append) {
            Ok(()) => {
                let inode = disk.inodes.get_mut(&self.inode).expect("an open file's inode");
                inode.data.extend_from_slice(bytes);
                Ok(())
            }
            Err(Stop::Down) => Err(down_error()),
            Err(stop) => {
                // A short write: some of the bytes reached the cache before the error (or the
                // crash).
                let written = disk.rng.range(0, bytes.len() as u64) as usize;
                let inode = disk.inodes.get_mut(&self.inode).expect("an open file's inode");
                inode.data.extend_from_slice(&bytes[..written]);
                Err(stopped(stop))
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        FileSync::sync(&*self)
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        Ok(Arc::new(SimFile { disk: self.disk.clone(), inode: self.inode }))
    }
}

impl FileSync for SimFile {
    fn sync(&self) -> io::Result<()> {
        let mut disk = self.lock();
        let disk = &mut *disk;
        match disk.gate(Op::Sync) {
            Ok(()) => {
                let inode = disk.inodes.get_mut(&self.inode).expect("an open file's inode");
                inode.synced = inode.data.len();
                Ok(())
            }
            Err(Stop::Fault(fault)) => {
                // Some pages may have reached the disk before the error.
                let inode = disk.inodes.get(&self.inode).expect("an open file's inode");
                let (synced, len) = (inode.synced as u64, inode.data.len() as u64);
                let persisted =
                    if disk.rng.chance(500) { disk.rng.range(synced, len) } else { synced };
                disk.inodes.get_mut(&self.inode).expect("an open file's inode").synced =
                    persisted as usize;
                Err(fault.error())
            }
            Err(stop) => Err(stopped(stop)),
        }
    }
}

impl Storage for SimStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut disk = self.lock();
        disk.gate(Op::Read).map_err(stopped)?;
        Ok(disk.names.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut disk = self.lock();
        disk.gate(Op::Read).map_err(stopped)?;
        Ok(disk.inode(name)?.data.clone())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let mut disk = self.lock();
        disk.gate(Op::Create).map_err(stopped)?;
        if disk.names.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{name} exists")));
        }
        let inode = disk.next_inode;
        disk.next_inode += 1;
        disk.inodes.insert(inode, Inode { data: Vec::new(), synced: 0 });
        disk.names.insert(name.to_owned(), inode);
        disk.pending.push(DirOp::Create { name: name.to_owned(), inode });
        Ok(Box::new(SimFile { disk: self.disk.clone(), inode }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let mut disk = self.lock();
        disk.gate(Op::Read).map_err(stopped)?;
        let inode = *disk.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(Box::new(SimFile { disk: self.disk.clone(), inode }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut disk = self.lock();
        disk.gate(Op::Truncate).map_err(stopped)?;
        let id = *disk.names.get(name).ok_or_else(|| not_found(name))?;
        let inode = disk.inodes.get_mut(&id).expect("a name points at an inode");
        inode.data.resize(len as usize, 0);
        inode.synced = inode.data.len();
        if let Some(offsets) = disk.flipped.get_mut(&id) {
            offsets.retain(|offset| *offset < len as usize);
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut disk = self.lock();
        disk.gate(Op::Rename).map_err(stopped)?;
        let inode = disk.names.remove(from).ok_or_else(|| not_found(from))?;
        disk.names.insert(to.to_owned(), inode);
        disk.pending.push(DirOp::Rename { from: from.to_owned(), to: to.to_owned() });
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut disk = self.lock();
        disk.gate(Op::Remove).map_err(stopped)?;
        disk.names.remove(name).ok_or_else(|| not_found(name))?;
        disk.pending.push(DirOp::Remove { name: name.to_owned() });
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut disk = self.lock();
        disk.gate(Op::SyncDir).map_err(stopped)?;
        disk.durable = disk.names.clone();
        disk.pending.clear();
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(storage: &SimStorage, name: &str) -> Option<Vec<u8>> {
        storage.read(name).ok()
    }

    #[test]
    fn synced_bytes_and_synced_names_survive_a_power_loss() {
        for seed in 0..50 {
            let storage = SimStorage::new(Rng::new(seed), 0);
            let mut file = storage.create("a").unwrap();
            file.append(b"durable").unwrap();
            file.sync().unwrap();
            storage.sync_dir().unwrap();
            file.append(b"-maybe").unwrap();
            storage.power_loss();
            let bytes = read(&storage, "a").unwrap();
            assert!(bytes.starts_with(b"durable"), "seed {seed}: {bytes:?}");
            assert!(bytes.len() <= b"durable-maybe".len());
        }
    }

    #[test]
    fn an_unsynced_directory_entry_may_vanish_with_its_synced_data() {
        let outcomes: BTreeSet<bool> = (0..50)
            .map(|seed| {
                let storage = SimStorage::new(Rng::new(seed), 0);
                let mut file = storage.create("a").unwrap();
                file.append(b"x").unwrap();
                file.sync().unwrap();
                storage.power_loss();
                read(&storage, "a").is_some()
            })
            .collect();
        assert_eq!(outcomes, BTreeSet::from([false, true]));
    }

    #[test]
    fn pending_directory_operations_survive_as_a_prefix() {
        for seed in 0..100 {
            let storage = SimStorage::new(Rng::new(seed), 0);
            drop(storage.create("t").unwrap());
            storage.sync_dir().unwrap();
            storage.rename("t", "c").unwrap();
            storage.remove("c").unwrap();
            drop(storage.create("n").unwrap());
            storage.power_loss();
            let names: Vec<String> = storage.list().unwrap();
            let prefixes = [vec!["t"], vec!["c"], vec![], vec!["n"]];
            assert!(prefixes.iter().any(|p| *p == names), "seed {seed}: {names:?}");
        }
    }

    #[test]
    fn a_process_crash_loses_nothing_and_an_armed_crash_stops_everything() {
        let storage = SimStorage::new(Rng::new(7), 0);
        let mut file = storage.create("a").unwrap();
        file.append(b"cached").unwrap();
        storage.arm_crash(2);
        file.append(b"!").unwrap();
        assert!(file.sync().is_err());
        assert!(storage.is_down());
        assert!(storage.list().is_err());
        storage.restart_process();
        assert_eq!(read(&storage, "a").unwrap(), b"cached!");
    }

    #[test]
    fn faults_are_injected_and_counted() {
        let storage = SimStorage::new(Rng::new(3), 500);
        let mut failures = 0;
        for i in 0..100 {
            if let Ok(mut file) = storage.create(&format!("f{i}")) {
                if file.append(b"abc").is_err() {
                    failures += 1;
                }
            } else {
                failures += 1;
            }
        }
        assert!(failures > 10);
        assert_eq!(storage.faults().values().sum::<u64>(), failures);
    }
}

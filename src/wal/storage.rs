//! The file system, behind a trait: the real directory in production, a faulty or simulated
//! one in tests. Everything the log and the checkpoints do to disk goes through here, so a
//! test can fail any single step (a write, an fsync, a rename) and see what recovery makes of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file open for appending.
pub trait AppendFile: Send {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the appended bytes (and the length) are on stable storage when it returns.
    fn sync(&mut self) -> io::Result<()>;
    /// A second handle on the same file that only fsyncs, for another thread: relaxed
    /// durability fsyncs on a thread of its own while the writer goes on appending.
    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>>;
}

/// `fdatasync` of a file another handle appends to: covers every byte appended before the
/// call started.
pub trait FileSync: Send + Sync {
    fn sync(&self) -> io::Result<()>;
}

/// A flat directory of named files.
pub trait Storage: Send + Sync {
    /// File names, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// At most `len` bytes of `name` from `offset` on (fewer at the end of the file). The
    /// event stream reads the log a piece at a time with it, while the writer appends. The
    /// default reads the whole file (test storages); a real directory reads only the piece.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let bytes = self.read(name)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }
    /// The size of `name` in bytes (the default reads it whole).
    fn file_len(&self, name: &str) -> io::Result<u64> {
        Ok(self.read(name)?.len() as u64)
    }
    /// Creates `name` (which must not exist) for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>>;
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Where the files are, for messages.
    fn describe(&self, name: &str) -> String;
}

/// A real directory.
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Opens (creating if needed) a data directory.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(DirStorage { dir: dir.to_path_buf() })
    }

    /// Takes the directory's `LOCK` file exclusively (an advisory `flock`, released when the
    /// returned file is closed, including by a crash). Two servers on one data directory
    /// would interleave two logs; the second one is refused instead.
    pub fn lock_exclusive(&self) -> io::Result<File> {
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(self.path("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another livestock process", self.dir.display()),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct DirFile {
    file: File,
}

impl AppendFile for DirFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        // A duplicated descriptor shares the open file: its fdatasync covers our appends.
        Ok(Arc::new(DirFileSync(self.file.try_clone()?)))
    }
}

struct DirFileSync(File);

impl FileSync for DirFileSync {
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Storage for DirStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(self.path(name))?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let file = File::open(self.path(name))?;
        let mut bytes = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut bytes[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        bytes.truncate(filled);
        Ok(bytes)
    }

    fn file_len(&self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(name))?.len())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new().create_new(true).append(true).open(self.path(name))?;
        Ok(Box::new(DirFile { file }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new().append(true).open(self.path(name))?;
        Ok(Box::new(DirFile { file }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn describe(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

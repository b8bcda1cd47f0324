//! The newest raft snapshot on disk, written atomically.
//!
//! # File layout (integers little-endian)
//! ```text
//! offset size  field
//!      0    8  magic      "LVSTKSN3" ("LVSTKSNP": a body from before waitlists, still read)
//!      8    4  meta_len   bytes of the postcard-encoded `SnapshotMeta`
//!     12    8  data_len   bytes of the snapshot body
//!     20    4  crc        CRC32C of meta and body
//!     24    m  meta
//!   24+m    n  data
//! ```
//! Name: `snapshot.bin`, written as `snapshot.tmp`, fsynced, renamed, directory fsynced: a
//! crash leaves the old snapshot or the new one, never a mix (and perhaps a `snapshot.tmp`,
//! removed by the next write). A snapshot that fails its
//! checksum is an error, not an empty state: the log before it may have been purged.

use std::io;

use crate::cluster::types::SnapshotMeta;
use crate::wal::Storage;

const MAGIC: &[u8; 8] = b"LVSTKSN3";
/// Files written before the snapshot carried waitlists: read, never written.
const LEGACY_MAGIC: &[u8; 8] = b"LVSTKSNP";

/// How the body of a snapshot file is laid out, as its magic says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLayout {
    Current,
    /// The allocator's snapshot ends before its waitlists (`LegacySnapshot`).
    BeforeWaitlists,
}
const HEADER_BYTES: usize = 24;
const NAME: &str = "snapshot.bin";
const TEMP_NAME: &str = "snapshot.tmp";

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{NAME}: {what}"))
}

/// The file's bytes for a snapshot: what `write` puts on disk, and what a backup is
/// (`GET /v1/cluster/backup`).
pub fn encode(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta_bytes = postcard::to_stdvec(meta).map_err(|e| io::Error::other(e.to_string()))?;
    let meta_len = u32::try_from(meta_bytes.len()).map_err(|_| invalid("meta too long".into()))?;
    let mut crc = crc32c::crc32c(&meta_bytes);
    crc = crc32c::crc32c_append(crc, data);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + meta_bytes.len() + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&meta_len.to_le_bytes());
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&meta_bytes);
    bytes.extend_from_slice(data);
    Ok(bytes)
}

pub fn write(storage: &dyn Storage, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let bytes = encode(meta, data)?;
    // A write that failed or was cut short by a crash leaves its temporary behind; without
    // this, every later snapshot would fail on it and stop raft (found by tests/sim_cluster).
    match storage.remove(TEMP_NAME) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = storage.create(TEMP_NAME)?;
    file.append(&bytes)?;
    file.sync()?;
    drop(file);
    storage.rename(TEMP_NAME, NAME)?;
    storage.sync_dir()
}

/// The snapshot on disk, if there is one.
pub fn read(storage: &dyn Storage) -> io::Result<Option<(SnapshotMeta, Vec<u8>, BodyLayout)>> {
    if !storage.list()?.iter().any(|n| n == NAME) {
        return Ok(None);
    }
    decode(&storage.read(NAME)?).map(Some)
}

/// A snapshot from the file's bytes (`snapshot.bin`, or a backup), checked whole.
pub fn decode(bytes: &[u8]) -> io::Result<(SnapshotMeta, Vec<u8>, BodyLayout)> {
    let layout = match bytes.get(..8) {
        Some(magic) if magic == MAGIC => BodyLayout::Current,
        Some(magic) if magic == LEGACY_MAGIC => BodyLayout::BeforeWaitlists,
        _ => return Err(invalid("not a snapshot file".into())),
    };
    if bytes.len() < HEADER_BYTES {
        return Err(invalid("not a snapshot file".into()));
    }
    let word = |at: usize, n: usize| -> u64 {
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(buf)
    };
    let meta_len = usize::try_from(word(8, 4)).map_err(|_| invalid("meta length".into()))?;
    let data_len = usize::try_from(word(12, 8)).map_err(|_| invalid("data length".into()))?;
    let crc = u32::try_from(word(20, 4)).map_err(|_| invalid("checksum".into()))?;
    let end = HEADER_BYTES.checked_add(meta_len).and_then(|n| n.checked_add(data_len));
    if end != Some(bytes.len()) {
        return Err(invalid(format!("{} bytes, header says otherwise", bytes.len())));
    }
    let (meta_bytes, data) = bytes[HEADER_BYTES..].split_at(meta_len);
    if crc32c::crc32c_append(crc32c::crc32c(meta_bytes), data) != crc {
        return Err(invalid("checksum mismatch".into()));
    }
    let meta = postcard::from_bytes(meta_bytes).map_err(|e| invalid(e.to_string()))?;
    Ok((meta, data.to_vec(), layout))
}

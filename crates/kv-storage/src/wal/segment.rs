//! Segment files: naming, the 64-byte header with its synced mark, and the
//! file written in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};
use crate::vfs::{self, LogFile, Vfs};
use crate::wal::record::u64_at;

/// Size of the header of the segments this build writes (format 2).
pub(crate) const SEGMENT_HEADER: usize = 64;
/// Size of a format-1 segment's header (no synced mark).
const HEADER_V1: usize = 32;
const MAGIC: &[u8; 8] = b"KVWALSEG";
const FORMAT: u32 = 2;
/// Where format 2 keeps the synced mark: segment id, offset, checksum.
const MARK: usize = 32;
const MARK_LEN: usize = 24;
/// First allocation of a new segment file; it doubles as it fills.
const FIRST_ALLOCATION: u64 = 64 << 10;

/// File name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("wal-{id:020}.log")
}

/// The id in a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

/// The header bytes of segment `id` (the synced mark left empty).
pub(crate) fn header_bytes(id: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A segment header that passed its checks.
pub(crate) struct Header {
    /// The segment id it names.
    pub(crate) id: u64,
    /// Where the records start.
    pub(crate) records_start: usize,
    /// The synced mark (format 2): the log was durable up to this segment
    /// and offset when the mark was written.
    pub(crate) synced: Option<(u64, u64)>,
}

/// Checks a segment header; returns what it says or why it is bad.
pub(crate) fn check_header(b: &[u8]) -> Result<Header, String> {
    if b.len() < HEADER_V1 {
        return Err(format!("segment header cut short ({} bytes)", b.len()));
    }
    if &b[..8] != MAGIC {
        return Err("not a log segment (bad magic number)".into());
    }
    if xxhash_rust::xxh3::xxh3_64(&b[..24]) != u64_at(b, 24) {
        return Err("segment header checksum mismatch".into());
    }
    let mut f = [0; 4];
    f.copy_from_slice(&b[8..12]);
    let id = u64_at(b, 16);
    match u32::from_le_bytes(f) {
        1 => Ok(Header {
            id,
            records_start: HEADER_V1,
            synced: None,
        }),
        2 if b.len() < SEGMENT_HEADER => {
            Err(format!("segment header cut short ({} bytes)", b.len()))
        }
        2 => Ok(Header {
            id,
            records_start: SEGMENT_HEADER,
            synced: read_mark(&b[MARK..MARK + MARK_LEN]),
        }),
        format => Err(format!(
            "segment format {format} is not supported (this build reads formats 1 and {FORMAT})"
        )),
    }
}

/// Where the records of a segment start, judging by its format field.
pub(crate) fn records_start(b: &[u8]) -> usize {
    match b.get(8..12) {
        Some([1, 0, 0, 0]) => HEADER_V1,
        _ => SEGMENT_HEADER,
    }
}

fn mark_bytes(id: u64, offset: u64) -> [u8; MARK_LEN] {
    let mut m = [0u8; MARK_LEN];
    m[..8].copy_from_slice(&id.to_le_bytes());
    m[8..16].copy_from_slice(&offset.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&m[..16]);
    m[16..].copy_from_slice(&sum.to_le_bytes());
    m
}

fn read_mark(m: &[u8]) -> Option<(u64, u64)> {
    (xxhash_rust::xxh3::xxh3_64(&m[..16]) == u64_at(m, 16)).then(|| (u64_at(m, 0), u64_at(m, 8)))
}

/// A segment open for appending. The file is allocated in growing steps up
/// to its capacity; bytes are only ever written below the allocated length.
pub(crate) struct Segment {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    file: Box<dyn LogFile>,
    capacity: u64,
    allocated: AtomicU64,
    /// Bytes of this segment known to be on stable storage.
    pub(crate) synced: AtomicU64,
}

impl Segment {
    /// Creates segment `id` in `dir` with room for `capacity` bytes, writes
    /// its header and makes the new file durable (file and directory fsync).
    /// If any step fails the file is removed again, so that a later attempt
    /// (once the disk has room, say) can create it afresh.
    pub(crate) fn create(vfs: &dyn Vfs, dir: &Path, id: u64, capacity: u64) -> Result<Segment> {
        let path = dir.join(segment_name(id));
        let capacity = capacity.max(FIRST_ALLOCATION);
        let file = vfs
            .create_log(&path, capacity)
            .ctx("create log segment", &path)?;
        let seg = Segment {
            id,
            path,
            file,
            capacity,
            allocated: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        };
        match seg.initialize(vfs, dir) {
            Ok(()) => Ok(seg),
            Err(e) => {
                // Best effort: if even this fails, recovery treats a file
                // with no valid header and nothing after it as empty.
                let _ = vfs.remove(&seg.path);
                let _ = vfs.sync_dir(dir);
                Err(e)
            }
        }
    }

    /// Allocates the first step, writes the header, and syncs the file and
    /// the directory.
    fn initialize(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        let first = FIRST_ALLOCATION.min(self.capacity);
        self.file
            .allocate(first)
            .ctx("allocate log segment", &self.path)?;
        self.allocated.store(first, Ordering::Release);
        self.write_at(0, &header_bytes(self.id));
        self.file.sync_all().ctx("fsync log segment", &self.path)?;
        vfs::sync_dir(vfs, dir)
    }

    /// Records in the header that the log is durable up to `offset` of this
    /// segment. Called after a flush that covered it; the mark itself
    /// becomes durable with the next flush (until then an older mark, or
    /// none, understates what is durable, which is safe). Only the flush
    /// leader calls this, and appends never touch the header.
    pub(crate) fn write_synced_mark(&self, offset: u64) {
        self.file
            .write_at(MARK as u64, &mark_bytes(self.id, offset));
    }

    /// Whether `len` more bytes fit after `offset`.
    pub(crate) fn fits(&self, offset: u64, len: u64) -> bool {
        offset + len <= self.capacity
    }

    /// Makes sure the file holds bytes up to `end`, growing it if needed.
    /// Only the log's writer calls this, under the log lock.
    pub(crate) fn reserve(&self, end: u64) -> Result<()> {
        let allocated = self.allocated.load(Ordering::Acquire);
        if end <= allocated {
            return Ok(());
        }
        let target = end.max(allocated * 2).min(self.capacity);
        self.file
            .allocate(target)
            .ctx("grow log segment", &self.path)?;
        self.allocated.store(target, Ordering::Release);
        Ok(())
    }

    /// Copies `bytes` into the segment at `offset`. The caller has reserved
    /// the space and is the only writer (it holds the log's lock).
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) {
        assert!(offset + bytes.len() as u64 <= self.allocated.load(Ordering::Acquire));
        self.file.write_at(offset, bytes);
    }

    /// Makes bytes `from..to` durable, and the header with them (so that
    /// the synced mark written after the previous flush becomes durable).
    pub(crate) fn sync_range(&self, from: u64, to: u64) -> Result<()> {
        if to > from {
            self.file
                .sync_range(from, to)
                .ctx("fsync log segment", &self.path)?;
        }
        let _ = self.synced.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }
}

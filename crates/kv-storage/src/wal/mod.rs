//! The write-ahead log: appends, rotation, and group commit.
//!
//! Writers copy encoded records into the current segment's memory map under
//! one short lock; the bytes are then in the page cache and survive the death
//! of the process. Making them survive a power cut is a separate step,
//! [`Log::wait_durable`]: the first waiter becomes the syncer and flushes
//! everything appended so far, the others wait on a condition variable and
//! are all released by that one flush (group commit).

mod group;
pub(crate) mod record;
pub(crate) mod segment;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::options::SnapshotTrigger;
use crate::vfs::{SharedVfs, Vfs};
use group::SyncState;
use segment::{Segment, SEGMENT_HEADER};

/// What an append tells its caller.
pub(crate) struct Appended {
    /// Log position after the record; pass it to [`Log::wait_durable`].
    pub(crate) end: u64,
    /// Whether the snapshot trigger has fired.
    pub(crate) snapshot_due: bool,
}

struct Writer {
    seg: Arc<Segment>,
    offset: u64,
    /// Bytes appended since open: a position that only grows.
    pos: u64,
    /// Records appended since open.
    records: u64,
    /// Rotated-out segments not yet fully synced, with their final length.
    unsynced: Vec<(Arc<Segment>, u64)>,
    ops_since_snapshot: u64,
    bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
    poisoned: Option<String>,
}
/// The open log of a store.
pub(crate) struct Log {
    vfs: SharedVfs,
    dir: PathBuf,
    segment_bytes: u64,
    trigger: SnapshotTrigger,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    /// Log position known to be on stable storage.
    durable: AtomicU64,
    /// Writers between `writer_started` and the end of `wait_durable`.
    in_flight: AtomicUsize,
}

impl Log {
    /// Starts a fresh segment `id` in `dir` and appends from there.
    /// `since_snapshot` is the records and bytes of log that recovery
    /// replayed: they count toward the snapshot trigger, so that restarts do
    /// not postpone compaction forever.
    pub(crate) fn create(
        vfs: SharedVfs,
        dir: PathBuf,
        id: u64,
        segment_bytes: u64,
        trigger: SnapshotTrigger,
        last_snapshot_bytes: u64,
        since_snapshot: (u64, u64),
    ) -> Result<Log> {
        let seg = Segment::create(&*vfs, &dir, id, segment_bytes)?;
        Ok(Log {
            vfs,
            dir,
            segment_bytes,
            trigger,
            writer: Mutex::new(Writer {
                seg: Arc::new(seg),
                offset: SEGMENT_HEADER as u64,
                pos: 0,
                records: 0,
                unsynced: Vec::new(),
                ops_since_snapshot: since_snapshot.0,
                bytes_since_snapshot: since_snapshot.1,
                last_snapshot_bytes,
                poisoned: None,
            }),
            sync: Mutex::new(SyncState::default()),
            durable: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Appends one encoded record.
    pub(crate) fn append(&self, rec: &[u8]) -> Result<Appended> {
        let mut w = self.writer.lock();
        if let Some(why) = &w.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let len = rec.len() as u64;
        if !w.seg.fits(w.offset, len) {
            self.rotate_locked(&mut w, len)?;
        }
        w.seg.reserve(w.offset + len)?;
        w.seg.write_at(w.offset, rec);
        w.offset += len;
        w.pos += len;
        w.records += 1;
        w.ops_since_snapshot += 1;
        w.bytes_since_snapshot += len;
        Ok(Appended {
            end: w.pos,
            snapshot_due: self.snapshot_due(&w),
        })
    }

    /// Whether the snapshot trigger has fired (for instance by the log
    /// replayed at open).
    pub(crate) fn snapshot_due_now(&self) -> bool {
        self.snapshot_due(&self.writer.lock())
    }

    fn snapshot_due(&self, w: &Writer) -> bool {
        match self.trigger {
            SnapshotTrigger::Operations(n) => w.ops_since_snapshot >= n.max(1),
            SnapshotTrigger::LogGrowth { percent, min_bytes } => {
                w.bytes_since_snapshot >= min_bytes
                    && w.bytes_since_snapshot.saturating_mul(100)
                        >= w.last_snapshot_bytes.saturating_mul(percent)
            }
            SnapshotTrigger::Manual => false,
        }
    }

    fn rotate_locked(&self, w: &mut Writer, need: u64) -> Result<()> {
        let capacity = self.segment_bytes.max(SEGMENT_HEADER as u64 + need);
        let seg = Segment::create(&*self.vfs, &self.dir, w.seg.id + 1, capacity)?;
        let old = std::mem::replace(&mut w.seg, Arc::new(seg));
        w.unsynced.push((old, w.offset));
        w.offset = SEGMENT_HEADER as u64;
        Ok(())
    }

    /// Starts a new segment for a snapshot and returns its id: every record
    /// appended from now on lies in it or later ones.
    pub(crate) fn rotate_for_snapshot(&self) -> Result<u64> {
        let mut w = self.writer.lock();
        if let Some(why) = &w.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        self.rotate_locked(&mut w, 0)?;
        w.ops_since_snapshot = 0;
        w.bytes_since_snapshot = 0;
        Ok(w.seg.id)
    }

    /// Records the size of the snapshot just written (for the growth trigger).
    pub(crate) fn snapshot_written(&self, bytes: u64) {
        self.writer.lock().last_snapshot_bytes = bytes;
    }

    /// Current end position of the log.
    pub(crate) fn position(&self) -> u64 {
        self.writer.lock().pos
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The file system the log lives on.
    pub(crate) fn vfs(&self) -> &dyn Vfs {
        &*self.vfs
    }
}

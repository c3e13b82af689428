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
#[cfg(test)]
mod spare_tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, IoContext, Result};
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
    /// Whether the current segment is three quarters full and its
    /// successor should now be made ready off the write path
    /// ([`Log::prepare_spare`]). Set once per segment.
    pub(crate) spare_due: bool,
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
    /// The next segment, created and synced ahead of need by a background
    /// thread ([`Log::prepare_spare`]), so that a rotation under the writer
    /// lock only swaps it in. Creating a segment costs a file and a
    /// directory fsync (4-9 ms on the benchmark machine), which every
    /// writer waited for under the writer lock, holding its shard lock.
    spare: Mutex<Option<Segment>>,
    /// The id of the segment appended to (`Writer::seg.id`), readable
    /// without the writer lock; changes under both locks.
    current: AtomicU64,
    /// Whether a spare was asked for since the last rotation.
    spare_asked: AtomicBool,
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
            spare: Mutex::new(None),
            current: AtomicU64::new(id),
            spare_asked: AtomicBool::new(false),
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
        // Three quarters: 16 MiB of a 64 MiB segment is over 0.1 s of
        // writes at a million 100-byte SETs a second, time enough to create
        // and sync a file; and a small store that restarts before filling
        // most of a segment leaves no spare behind at each restart.
        let spare_due = w.offset.saturating_mul(4) >= self.segment_bytes.saturating_mul(3)
            && !self.spare_asked.swap(true, Ordering::Relaxed);
        Ok(Appended {
            end: w.pos,
            snapshot_due: self.snapshot_due(&w),
            spare_due,
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
        let id = w.seg.id + 1;
        // Waits only if the spare is being created right now: no longer
        // than creating the segment here would take.
        let mut spare = self.spare.lock();
        let seg = match spare.take() {
            Some(s) if s.id == id && s.fits(SEGMENT_HEADER as u64, need) => s,
            other => {
                if let Some(s) = other {
                    // Too small for this record: make way for one that fits.
                    // If its file stays, so does the spare: a segment created
                    // here would find the file there and fail, now and at
                    // every later rotation.
                    let removed = self.vfs.remove(&s.path);
                    if let Err(e) = removed.ctx("remove log segment", &s.path) {
                        *spare = Some(s);
                        return Err(e);
                    }
                }
                let capacity = self.segment_bytes.max(SEGMENT_HEADER as u64 + need);
                Segment::create(&*self.vfs, &self.dir, id, capacity)?
            }
        };
        let old = std::mem::replace(&mut w.seg, Arc::new(seg));
        w.unsynced.push((old, w.offset));
        w.offset = SEGMENT_HEADER as u64;
        self.current.store(id, Ordering::Release);
        self.spare_asked.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Creates the segment the next rotation will append to, unless it
    /// exists: a background thread calls this when an append reports
    /// [`Appended::spare_due`] and before a snapshot rotates the log. The
    /// spare is a segment as a rotation makes it (header written, file
    /// and directory synced), only made earlier; recovery reads it as an
    /// empty segment if the process stops before using it.
    pub(crate) fn prepare_spare(&self) -> Result<()> {
        let mut spare = self.spare.lock();
        if spare.is_some() {
            return Ok(());
        }
        // No rotation can happen meanwhile: it needs the spare's lock.
        let id = self.current.load(Ordering::Acquire) + 1;
        *spare = Some(Segment::create(
            &*self.vfs,
            &self.dir,
            id,
            self.segment_bytes,
        )?);
        Ok(())
    }

    /// Starts a new segment for a snapshot and returns its id: every record
    /// appended from now on lies in it or later ones. The segment is made
    /// ready first ([`Log::prepare_spare`]); if a rotation for a full
    /// segment takes it meanwhile (a snapshot is due about when a segment
    /// fills), another is made, a few times, before creating one under the
    /// writer lock.
    pub(crate) fn rotate_for_snapshot(&self) -> Result<u64> {
        let mut attempts = 0;
        loop {
            // A failure to make it is met again, and reported, below.
            let ready = attempts < 3 && self.prepare_spare().is_ok();
            attempts += 1;
            let mut w = self.writer.lock();
            if let Some(why) = &w.poisoned {
                return Err(Error::Poisoned(why.clone()));
            }
            if !ready || self.spare.lock().is_some() {
                self.rotate_locked(&mut w, 0)?;
                w.ops_since_snapshot = 0;
                w.bytes_since_snapshot = 0;
                return Ok(w.seg.id);
            }
        }
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

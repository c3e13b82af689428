//! Opening a store (directory, lock, recovery) and collecting the files
//! a new snapshot made obsolete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::durable::Commit;
use crate::error::{Error, IoContext, Result};
use crate::map::ShardedMap;
use crate::options::Options;
use crate::recovery::{self, RecoveryReport};
use crate::snapshot;
use crate::testing::PlantedBug;
use crate::vfs::{self, DirLock, Kind, NoDirSync, SharedVfs, Vfs};
use crate::wal::segment::parse_segment_name;
use crate::wal::Log;

use super::background::start_workers;
use super::{Background, Inner, Store};

impl Store {
    /// Opens (or creates) a store, recovering whatever its directory holds.
    ///
    /// Fails with a clear [`Error`] if the directory is unusable, locked by
    /// another process, or holds a log damaged in the middle (see
    /// [`RecoveryMode`](crate::RecoveryMode)). A torn tail is truncated.
    pub fn open(opts: Options) -> Result<Store> {
        let map = ShardedMap::new(opts.shards);
        let clock = opts.clock.clone();
        let (log, lock, report) = match &opts.dir {
            None => (None, None, RecoveryReport::default()),
            Some(dir) => {
                let (log, lock, report) = open_dir(dir, &opts, &map, clock.now_ms())?;
                (Some(log), Some(lock), report)
            }
        };
        let inner = Arc::new(Inner {
            map,
            log,
            durability: opts.durability,
            planted: opts.planted,
            node_id: opts.node_id,
            tombstone_grace: opts.tombstone_grace,
            clock,
            bg: Mutex::new(Background::default()),
            bg_changed: Condvar::new(),
            bg_idle: Condvar::new(),
            snapshot_lock: Mutex::new(()),
            commit: Mutex::new(Commit::default()),
            commit_changed: Condvar::new(),
            _lock: lock,
        });
        let workers = start_workers(&inner, &opts);
        // A log replayed past the trigger is compacted now, in the
        // background, rather than after yet more writes.
        if inner.log.as_ref().is_some_and(Log::snapshot_due_now) {
            inner.request_snapshot();
        }
        Ok(Store {
            inner,
            workers,
            report,
        })
    }
}

/// Checks the directory, takes its lock, recovers, and starts a new segment.
fn open_dir(
    dir: &Path,
    opts: &Options,
    map: &ShardedMap,
    now_ms: u64,
) -> Result<(Log, DirLock, RecoveryReport)> {
    let vfs: SharedVfs = match opts.planted {
        Some(PlantedBug::SkipDirSync) => Arc::new(NoDirSync(opts.vfs.clone())),
        _ => opts.vfs.clone(),
    };
    match vfs.kind(dir) {
        Ok(Kind::Dir) => {}
        Ok(Kind::File) => return Err(Error::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.create => {
            vfs.create_dir_all(dir).ctx("create data directory", dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                vfs::sync_dir(&*vfs, parent)?;
            }
        }
        Err(e) => return Err(e).ctx("open data directory", dir),
    }
    let lock = vfs::lock_dir(&*vfs, dir)?;
    let rec = recovery::recover(&*vfs, dir, map, opts.recovery_mode, now_ms)?;
    // The log since the last snapshot counts toward the trigger across
    // restarts (unless the test switch puts back the old bug).
    let since_snapshot = match opts.planted {
        Some(PlantedBug::LogCountersFromZero) => (0, 0),
        _ => (rec.report.records_replayed, rec.report.log_bytes_replayed),
    };
    let log = Log::create(
        vfs,
        dir.to_path_buf(),
        rec.next_segment,
        opts.segment_bytes,
        opts.snapshot_trigger,
        rec.snapshot_bytes,
        since_snapshot,
    )?;
    Ok((log, lock, rec.report))
}

/// Keeps the snapshot `newest` just written, a fallback for it and the log
/// segments that fallback needs; deletes the rest. The fallback is the newest
/// older snapshot that passes its checksums now: one found damaged is set
/// aside (`.bad`) instead, and if none passes, every segment is kept. So
/// that damage to any one snapshot file never leaves the store without a
/// complete history.
pub(super) fn remove_obsolete(vfs: &dyn Vfs, dir: &Path, newest: u64) -> Result<()> {
    let (snaps, segs) = list_files(vfs, dir)?;
    let mut changed = false;
    let mut fallback = None;
    for (id, path) in snaps.iter().rev().filter(|(id, _)| *id < newest) {
        if snapshot::verify(vfs, path).is_ok() {
            fallback = Some(*id);
            break;
        }
        snapshot::set_aside(vfs, path)?;
        changed = true;
    }
    if let Some(keep_from) = fallback {
        let doomed = snaps.iter().chain(&segs).filter(|(id, _)| *id < keep_from);
        for (_, path) in doomed {
            vfs.remove(path).ctx("remove obsolete file", path)?;
            changed = true;
        }
    }
    if changed {
        vfs::sync_dir(vfs, dir)?;
    }
    Ok(())
}

/// Files of one kind with their ids, sorted by id.
type IdFiles = Vec<(u64, PathBuf)>;

/// Snapshot files and log segments in `dir`.
fn list_files(vfs: &dyn Vfs, dir: &Path) -> Result<(IdFiles, IdFiles)> {
    let mut snaps = Vec::new();
    let mut segs = Vec::new();
    for (name, _) in vfs.list(dir).ctx("read data directory", dir)? {
        if let Some(id) = snapshot::parse_snapshot_name(&name) {
            snaps.push((id, dir.join(name)));
        } else if let Some(id) = parse_segment_name(&name) {
            segs.push((id, dir.join(name)));
        }
    }
    snaps.sort();
    segs.sort();
    Ok((snaps, segs))
}

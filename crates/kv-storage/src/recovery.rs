//! Rebuilding the map on open: newest valid snapshot, then the log after it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::map::{hash_key, Entry, ShardedMap};
use crate::options::RecoveryMode;
use crate::snapshot;
use crate::vfs::{self, FileBytes, Kind, Vfs};
use crate::wal::record::{self, Invalid};
use crate::wal::segment;

/// A part of the log that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub file: PathBuf,
    /// Offset of the first byte dropped.
    pub offset: u64,
    /// How many bytes were dropped from that file.
    pub bytes_dropped: u64,
    /// What was wrong at `offset`.
    pub reason: String,
    /// `false` for a torn tail: nothing valid followed (a write cut short by
    /// a crash), or the damage lay beyond the last position the log had
    /// synced (a power cut may leave unsynced bytes with holes in them).
    /// `true` for damage in synced data followed by valid records, dropped
    /// because [`RecoveryMode::TruncateAtCorruption`] was chosen.
    pub corruption: bool,
}

/// What [`Store::open`](crate::Store::open) found and loaded.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<PathBuf>,
    /// Entries (tombstones included) read from the snapshot.
    pub snapshot_entries: u64,
    /// Snapshots that could not be used, newest first, with the reason.
    pub rejected_snapshots: Vec<(PathBuf, String)>,
    /// Where the rejected snapshots were moved (`snap-….snap.bad`), so
    /// that no later open or compaction counts them as a generation. They
    /// are kept for inspection and may be deleted.
    pub set_aside: Vec<PathBuf>,
    /// Log segments read.
    pub segments: u64,
    /// Log records replayed.
    pub records_replayed: u64,
    /// Bytes of the log records replayed (the log written since the
    /// snapshot, which counts toward the next snapshot's trigger).
    pub log_bytes_replayed: u64,
    /// Bytes of snapshot and log read.
    pub bytes_read: u64,
    /// Live keys after recovery.
    pub keys: u64,
    /// Wall time spent.
    pub elapsed: Duration,
    /// Parts of the log that were cut off.
    pub truncations: Vec<Truncation>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} key{} in {:.3}s: {} from snapshot {}, {} log record{} from {} segment{}, {} bytes read",
            self.keys,
            if self.keys == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            self.snapshot_entries,
            self.snapshot
                .as_ref()
                .and_then(|p| p.file_name())
                .map_or("(none)".into(), |n| n.to_string_lossy()),
            self.records_replayed,
            if self.records_replayed == 1 { "" } else { "s" },
            self.segments,
            if self.segments == 1 { "" } else { "s" },
            self.bytes_read,
        )?;
        for (p, why) in &self.rejected_snapshots {
            write!(f, "; skipped snapshot {}: {why}", p.display())?;
        }
        for p in &self.set_aside {
            write!(f, "; kept damaged snapshot as {}", p.display())?;
        }
        for t in &self.truncations {
            let kind = if t.corruption {
                "corruption"
            } else {
                "torn tail"
            };
            write!(
                f,
                "; {kind}: dropped {} bytes of {} from offset {} ({})",
                t.bytes_dropped,
                t.file.display(),
                t.offset,
                t.reason
            )?;
        }
        Ok(())
    }
}

/// The result of recovery: the report, and where the new log starts.
pub(crate) struct Recovered {
    pub(crate) report: RecoveryReport,
    pub(crate) next_segment: u64,
    pub(crate) snapshot_bytes: u64,
}

struct DirListing {
    segments: BTreeMap<u64, PathBuf>,
    snapshots: BTreeMap<u64, PathBuf>,
}

/// Lists segment and snapshot files and removes leftover temporary files.
fn list(vfs: &dyn Vfs, dir: &Path) -> Result<DirListing> {
    let mut l = DirListing {
        segments: BTreeMap::new(),
        snapshots: BTreeMap::new(),
    };
    for (name, kind) in vfs.list(dir).ctx("read data directory", dir)? {
        let path = dir.join(&name);
        if let Some(id) = segment::parse_segment_name(&name) {
            l.segments.insert(id, path);
        } else if let Some(id) = snapshot::parse_snapshot_name(&name) {
            l.snapshots.insert(id, path);
        } else if name.starts_with("snap-") && name.ends_with(".tmp") && kind == Kind::File {
            vfs.remove(&path).ctx("remove temporary file", &path)?;
        }
    }
    Ok(l)
}

/// Rebuilds `map` from the files in `dir`.
pub(crate) fn recover(
    vfs: &dyn Vfs,
    dir: &Path,
    map: &ShardedMap,
    mode: RecoveryMode,
    now_ms: u64,
) -> Result<Recovered> {
    let start = Instant::now();
    let listing = list(vfs, dir)?;
    let mut report = RecoveryReport::default();
    let (replay_from, snapshot_bytes) = load_snapshot(vfs, dir, &listing, map, &mut report)?;
    let replay: Vec<(u64, PathBuf)> = listing
        .segments
        .range(replay_from..)
        .map(|(id, p)| (*id, p.clone()))
        .collect();
    check_contiguous(dir, replay_from, &replay, &listing)?;
    let cut_at = replay_segments(vfs, &replay, map, mode, &mut report)?;
    set_aside_rejected(vfs, dir, &mut report)?;
    // Values that expired while the store was closed become tombstones
    // now (kept like any tombstone until a snapshot may purge them).
    map.expire_all_due(now_ms, usize::MAX);
    report.keys = map.len(now_ms) as u64;
    report.elapsed = start.elapsed();
    // A truncation deletes the segments after the damaged one: the new log
    // continues right after it, so that the ids stay contiguous.
    let last = cut_at.unwrap_or_else(|| listing.segments.keys().next_back().copied().unwrap_or(0));
    Ok(Recovered {
        report,
        next_segment: last.max(replay_from.saturating_sub(1)) + 1,
        snapshot_bytes,
    })
}

/// Loads the newest snapshot that is whole; returns the first segment to
/// replay and the snapshot's size.
fn load_snapshot(
    vfs: &dyn Vfs,
    dir: &Path,
    l: &DirListing,
    map: &ShardedMap,
    report: &mut RecoveryReport,
) -> Result<(u64, u64)> {
    for path in l.snapshots.values().rev() {
        match snapshot::load(vfs, path, map) {
            Ok(s) => {
                report.snapshot = Some(s.path);
                report.snapshot_entries = s.entries;
                report.bytes_read += s.bytes;
                for i in 0..map.shard_count() {
                    map.write_shard(i).observe_timestamp(s.max_timestamp);
                }
                return Ok((s.replay_from, s.bytes));
            }
            Err(why) => {
                clear(map);
                report.rejected_snapshots.push((path.clone(), why));
            }
        }
    }
    // No snapshot: the log must reach back to the store's first segment.
    let first = l.segments.keys().next().copied().unwrap_or(1);
    if first != 1 {
        if !report.rejected_snapshots.is_empty() {
            let reason = report
                .rejected_snapshots
                .iter()
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::NoUsableSnapshot {
                dir: dir.to_path_buf(),
                reason,
            });
        }
        return Err(Error::MissingSegment {
            dir: dir.to_path_buf(),
            id: 1,
            found: l.segments.keys().copied().collect(),
        });
    }
    Ok((1, 0))
}

/// Once recovery has succeeded without them, moves the rejected snapshots
/// out of the way: a later compaction must never keep one of them as the
/// fallback generation instead of a good snapshot or the log.
fn set_aside_rejected(vfs: &dyn Vfs, dir: &Path, report: &mut RecoveryReport) -> Result<()> {
    for (path, _) in &report.rejected_snapshots {
        if vfs.kind(path).is_ok() {
            report.set_aside.push(snapshot::set_aside(vfs, path)?);
        }
    }
    if !report.set_aside.is_empty() {
        vfs::sync_dir(vfs, dir)?;
    }
    Ok(())
}

fn clear(map: &ShardedMap) {
    for i in 0..map.shard_count() {
        map.write_shard(i).clear();
    }
}

fn check_contiguous(
    dir: &Path,
    from: u64,
    replay: &[(u64, PathBuf)],
    l: &DirListing,
) -> Result<()> {
    for (expect, (id, _)) in (from..).zip(replay) {
        if *id != expect {
            return Err(Error::MissingSegment {
                dir: dir.to_path_buf(),
                id: expect,
                found: l.segments.keys().copied().collect(),
            });
        }
    }
    Ok(())
}

/// A segment's bytes.
fn read_segment(vfs: &dyn Vfs, path: &Path) -> Result<FileBytes> {
    vfs.read(path).ctx("read log segment", path)
}

/// Where a segment's valid records end.
enum SegmentEnd {
    /// Records end cleanly (end of file or the zeroed preallocated tail).
    Clean,
    /// Damage at this offset.
    Damaged { offset: usize, reason: String },
}

/// Replays the segments in order; returns the id of the segment cut at
/// damage, if any (the segments after it are deleted).
fn replay_segments(
    vfs: &dyn Vfs,
    replay: &[(u64, PathBuf)],
    map: &ShardedMap,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
) -> Result<Option<u64>> {
    for (i, (id, path)) in replay.iter().enumerate() {
        let seg = read_segment(vfs, path)?;
        let b: &[u8] = &seg;
        report.segments += 1;
        report.bytes_read += b.len() as u64;
        let end = replay_one(*id, b, map, report);
        let SegmentEnd::Damaged { offset, reason } = end else {
            continue;
        };
        let later = &replay[i + 1..];
        let valid_after = record::any_valid_record(&b[(offset + 1).min(b.len())..])
            || later.iter().any(|(_, p)| segment_has_records(vfs, p));
        let synced = synced_mark(vfs, b, later);
        let unsynced = format_2(b) && (*id, offset as u64) >= synced;
        let corruption = valid_after && !unsynced;
        if corruption && mode == RecoveryMode::Strict {
            return Err(Error::CorruptLog {
                file: path.clone(),
                offset: offset as u64,
                reason,
                records_before: report.records_replayed,
            });
        }
        let reason = if valid_after && unsynced {
            format!(
                "{reason}; the log was synced only up to offset {} of segment {}, so this \
                 is the torn end of unsynced writes",
                synced.1, synced.0
            )
        } else {
            reason
        };
        report.truncations.push(Truncation {
            file: path.clone(),
            offset: offset as u64,
            bytes_dropped: (b.len() - offset) as u64,
            reason,
            corruption,
        });
        drop(seg);
        cut(vfs, path, offset as u64, later)?;
        return Ok(Some(*id));
    }
    Ok(None)
}

/// Replays one segment's records into the map.
fn replay_one(id: u64, b: &[u8], map: &ShardedMap, report: &mut RecoveryReport) -> SegmentEnd {
    let mut at = match segment::check_header(b) {
        Ok(h) if h.id == id => h.records_start,
        Ok(h) => {
            return SegmentEnd::Damaged {
                offset: 0,
                reason: format!("segment header names segment {}, file name says {id}", h.id),
            }
        }
        // A crash while creating the segment leaves a short or zeroed header.
        Err(_) if b.iter().all(|&x| x == 0) => return SegmentEnd::Clean,
        Err(reason) => return SegmentEnd::Damaged { offset: 0, reason },
    };
    while at < b.len() {
        match record::decode(&b[at..]) {
            Ok((rec, n)) => {
                apply(map, &rec);
                report.records_replayed += 1;
                report.log_bytes_replayed += n as u64;
                at += n;
            }
            Err(Invalid::Zeroed) if all_zero_or_invalid(&b[at..]) => return SegmentEnd::Clean,
            Err(why) => {
                return SegmentEnd::Damaged {
                    offset: at,
                    reason: why.to_string(),
                }
            }
        }
    }
    SegmentEnd::Clean
}

fn all_zero_or_invalid(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0) || !record::any_valid_record(b)
}

fn apply(map: &ShardedMap, rec: &record::Record<'_>) {
    let h = hash_key(rec.key);
    let mut shard = map.write(h);
    let entry = Entry::new(rec.key, rec.value, rec.version, rec.expires);
    shard.insert_if_newer(h, entry);
}

fn segment_has_records(vfs: &dyn Vfs, path: &Path) -> bool {
    read_segment(vfs, path).is_ok_and(|b| {
        let start = segment::records_start(&b);
        b.len() > start && record::any_valid_record(&b[start..])
    })
}

/// Whether `b` is a segment of format 2 or later (one that carries a
/// synced mark).
fn format_2(b: &[u8]) -> bool {
    segment::check_header(b).is_ok_and(|h| h.records_start == segment::SEGMENT_HEADER)
}

/// The newest synced mark in segment `b` and the `later` ones: the log was
/// durable up to that segment and offset. `(0, 0)` if there is none.
fn synced_mark(vfs: &dyn Vfs, b: &[u8], later: &[(u64, PathBuf)]) -> (u64, u64) {
    let mark = |b: &[u8]| segment::check_header(b).ok().and_then(|h| h.synced);
    let later = later
        .iter()
        .filter_map(|(_, p)| read_segment(vfs, p).ok().and_then(|b| mark(&b)));
    mark(b).into_iter().chain(later).max().unwrap_or((0, 0))
}

/// Cuts `path` at `offset` and deletes the segments after it.
fn cut(vfs: &dyn Vfs, path: &Path, offset: u64, later: &[(u64, PathBuf)]) -> Result<()> {
    vfs.truncate(path, offset)
        .ctx("truncate log segment", path)?;
    for (_, p) in later {
        vfs.remove(p).ctx("remove log segment", p)?;
    }
    vfs::sync_dir(vfs, &vfs::parent(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of a kind reads as one ("recovered 1 key", not "1 keys").
    #[test]
    fn the_report_says_one_in_the_singular() {
        let r = RecoveryReport {
            keys: 1,
            records_replayed: 1,
            segments: 1,
            ..Default::default()
        };
        let s = r.to_string();
        assert!(s.starts_with("recovered 1 key in "), "{s}");
        assert!(s.contains(", 1 log record from 1 segment, "), "{s}");
    }
}

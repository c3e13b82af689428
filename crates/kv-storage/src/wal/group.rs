//! Group commit: writers that wait for durability share one flush. The
//! first waiter leads it, after giving announced writers a moment to
//! append; the others sleep until a flush covers their position.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::segment::Segment;
use super::Log;
use crate::error::{Error, Result};
use crate::histogram::Histogram;

pub(super) struct SyncState {
    syncing: bool,
    /// Threads parked until a flush covers their position.
    sleepers: Vec<(u64, std::thread::Thread)>,
    /// How long the last flush took.
    last_flush: Duration,
    /// Flushes done since open.
    flushes: u64,
    /// Records known durable (of `Writer::records`).
    flushed_records: u64,
    /// Flush durations, in µs.
    latency: Histogram,
    /// Records made durable by each flush that carried any.
    groups: Histogram,
}

/// Buckets of the flush latency histogram: 1 µs to about 1 s.
const LATENCY_BUCKETS: usize = 21;
/// Buckets of the group size histogram: 1 to 4096 records.
const GROUP_BUCKETS: usize = 13;

impl Default for SyncState {
    fn default() -> SyncState {
        SyncState {
            syncing: false,
            sleepers: Vec::new(),
            last_flush: Duration::ZERO,
            flushes: 0,
            flushed_records: 0,
            latency: Histogram::new(LATENCY_BUCKETS),
            groups: Histogram::new(GROUP_BUCKETS),
        }
    }
}

/// What the log's flushes did since open, for monitoring.
#[derive(Clone, Debug)]
pub(crate) struct FlushFigures {
    pub(crate) flushes: u64,
    pub(crate) latency_micros: Histogram,
    pub(crate) group_records: Histogram,
}

impl Log {
    /// Announces a writer that is about to append and then wait for
    /// durability. A syncer about to flush gives announced writers a moment
    /// to append, so that they share its flush. Every call is followed by
    /// exactly one [`Log::wait_durable`] or [`Log::writer_gave_up`].
    pub(crate) fn writer_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends what [`Log::writer_started`] began, for a writer that wrote
    /// nothing.
    pub(crate) fn writer_gave_up(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Blocks until every record up to position `pos` is on stable storage.
    /// Concurrent callers share one flush. Ends what
    /// [`Log::writer_started`] began.
    pub(crate) fn wait_durable(&self, pos: u64) -> Result<()> {
        let result = self.wait_for(pos);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn wait_for(&self, pos: u64) -> Result<()> {
        loop {
            if self.durable.load(Ordering::Acquire) >= pos {
                return Ok(());
            }
            let mut s = self.sync.lock();
            if self.durable.load(Ordering::Acquire) >= pos {
                return Ok(());
            }
            if !s.syncing {
                s.syncing = true;
                self.gather(&mut s);
                drop(s);
                self.lead_flush()?;
                continue;
            }
            // Sleep until the running flush ends. Woken waiters whose
            // position is covered return without touching the lock, so a
            // flush releases its whole group at once.
            s.sleepers.push((pos, std::thread::current()));
            drop(s);
            std::thread::park();
        }
    }

    /// Runs one flush as the group's leader and wakes the sleepers.
    fn lead_flush(&self) -> Result<()> {
        let started = Instant::now();
        let flushed = self.flush_appended();
        let mut s = self.sync.lock();
        s.syncing = false;
        s.last_flush = started.elapsed();
        s.flushes += 1;
        let micros = u64::try_from(s.last_flush.as_micros()).unwrap_or(u64::MAX);
        s.latency.observe(micros);
        if let Ok((p, records)) = flushed {
            self.durable.fetch_max(p, Ordering::AcqRel);
            if records > s.flushed_records {
                let group = records - s.flushed_records;
                s.flushed_records = records;
                s.groups.observe(group);
            }
        }
        let sleepers = std::mem::take(&mut s.sleepers);
        drop(s);
        for (_, t) in sleepers {
            t.unpark();
        }
        flushed.map(|_| ())
    }

    /// What the flushes did since open.
    pub(crate) fn flush_figures(&self) -> FlushFigures {
        let s = self.sync.lock();
        FlushFigures {
            flushes: s.flushes,
            latency_micros: s.latency.clone(),
            group_records: s.groups.clone(),
        }
    }

    /// Before a flush: until every announced writer waits for a position
    /// not yet durable (it has appended its record), give them a moment, at
    /// most the last flush's duration, so that one flush covers them all.
    fn gather(&self, s: &mut MutexGuard<'_, SyncState>) {
        let limit = (s.last_flush).min(Duration::from_micros(500));
        let start = Instant::now();
        while start.elapsed() < limit {
            let durable = self.durable.load(Ordering::Acquire);
            let pending = 1 + s.sleepers.iter().filter(|(p, _)| *p > durable).count();
            if pending >= self.in_flight.load(Ordering::Acquire) {
                return;
            }
            MutexGuard::unlocked(s, std::thread::yield_now);
        }
    }

    /// Flushes everything appended so far; returns the position and the
    /// count of records covered.
    fn flush_appended(&self) -> Result<(u64, u64)> {
        let (old, seg, offset, pos, records) = {
            let mut w = self.writer.lock();
            if let Some(why) = &w.poisoned {
                return Err(Error::Poisoned(why.clone()));
            }
            (
                std::mem::take(&mut w.unsynced),
                w.seg.clone(),
                w.offset,
                w.pos,
                w.records,
            )
        };
        let result = old
            .iter()
            .try_for_each(|(s, end)| s.sync_range(synced_of(s), *end))
            .and_then(|()| seg.sync_range(synced_of(&seg), offset));
        if result.is_ok() {
            seg.write_synced_mark(offset);
        }
        if let Err(e) = &result {
            // After a failed fsync the kernel may have dropped the dirty
            // pages: we can no longer say what is on disk.
            self.writer.lock().poisoned = Some(e.to_string());
        }
        result.map(|()| (pos, records))
    }

    /// Flushes everything appended so far and waits for it.
    pub(crate) fn sync_now(&self) -> Result<()> {
        self.writer_started();
        let pos = self.position();
        self.wait_durable(pos)
    }

    /// Whether every record up to `pos` is on stable storage: `Ok(false)`
    /// while it may still become so, an error once a failed flush means
    /// it never will.
    pub(crate) fn is_durable(&self, pos: u64) -> Result<bool> {
        if self.durable.load(Ordering::Acquire) >= pos {
            return Ok(true);
        }
        match &self.writer.lock().poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(false),
        }
    }

    /// Threads parked until a flush covers their position.
    pub(crate) fn waiters(&self) -> usize {
        self.sync.lock().sleepers.len()
    }
}

fn synced_of(s: &Segment) -> u64 {
    s.synced.load(Ordering::Acquire)
}

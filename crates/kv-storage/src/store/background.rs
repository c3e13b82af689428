//! Background work: the threads that expire keys, flush the log every
//! second, commit deferred writes and write snapshots.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::options::{Durability, Options};
use crate::snapshot;
use crate::testing::PlantedBug;
use crate::wal::Log;

use super::open::remove_obsolete;
use super::{Inner, Store};

/// Most expired values the background expiry turns into tombstones under
/// one hold of a shard's write lock.
const EXPIRE_BATCH: usize = 256;

impl Store {
    /// Runs one round of the `everysec` flush now, as if its interval had
    /// passed (for tests that control time).
    #[doc(hidden)]
    pub fn fsync_tick(&self) -> Result<()> {
        self.inner.fsync_round()
    }

    /// Runs the background expiry now, over every due value, as if its
    /// interval had passed (for tests that control time); returns how many
    /// values it turned into tombstones.
    #[doc(hidden)]
    pub fn expire_tick(&self) -> usize {
        self.inner.expire_round()
    }

    /// Threads waiting for a flush that is under way to cover their write
    /// (for tests that must know a writer is blocked on durability).
    #[doc(hidden)]
    pub fn durability_waiters(&self) -> usize {
        self.inner.log.as_ref().map_or(0, Log::waiters)
    }

    /// Blocks until no background snapshot (or spare segment) is requested
    /// or running (for
    /// tests that must see the files a snapshot leaves).
    #[doc(hidden)]
    pub fn wait_background_idle(&self) {
        let mut bg = self.inner.bg.lock();
        while !bg.shutdown && (bg.snapshot_wanted || bg.spare_wanted || bg.snapshot_loop_busy) {
            self.inner.bg_idle.wait(&mut bg);
        }
    }
}

pub(super) fn start_workers(inner: &Arc<Inner>, opts: &Options) -> Vec<JoinHandle<()>> {
    let mut workers = Vec::new();
    let (me, every) = (inner.clone(), opts.expire_interval);
    workers.push(spawn("kv-expire", move || me.expire_loop(every)));
    if inner.log.is_none() {
        return workers;
    }
    if opts.durability == Durability::EverySec {
        let (me, every) = (inner.clone(), opts.fsync_interval);
        workers.push(spawn("kv-fsync", move || me.fsync_loop(every)));
    }
    if opts.durability == Durability::Always {
        let me = inner.clone();
        workers.push(spawn("kv-commit", move || me.commit_loop()));
    }
    let me = inner.clone();
    workers.push(spawn("kv-snapshot", move || me.snapshot_loop()));
    workers
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

impl Inner {
    /// The committing thread of `always`: runs the flushes asked for by
    /// [`Store::request_durable`], then calls the listeners.
    fn commit_loop(&self) {
        let Some(log) = &self.log else {
            return;
        };
        let mut c = self.commit.lock();
        loop {
            while !c.shutdown && c.wanted <= c.served {
                self.commit_changed.wait(&mut c);
            }
            if c.shutdown {
                return;
            }
            let want = c.wanted;
            drop(c);
            log.writer_started();
            if let Err(e) = log.wait_durable(want) {
                self.bg.lock().last_error = Some(e.to_string());
            }
            c = self.commit.lock();
            c.served = want;
            let listeners = c.listeners.clone();
            drop(c);
            for wake in &listeners {
                wake();
            }
            c = self.commit.lock();
        }
    }

    /// The background expiry: every `every`, turn the values whose expiry
    /// has passed into tombstones, a batch per shard lock at a time.
    fn expire_loop(&self, every: Duration) {
        let mut bg = self.bg.lock();
        let mut due = std::time::Instant::now() + every;
        while !bg.shutdown {
            // Other notifications (snapshot requests, shutdown) share this
            // condition variable: sweep on our own schedule, not on theirs.
            self.bg_changed.wait_until(&mut bg, due);
            if bg.shutdown {
                break;
            }
            if std::time::Instant::now() < due {
                continue;
            }
            drop(bg);
            self.expire_round();
            due = std::time::Instant::now() + every;
            bg = self.bg.lock();
        }
    }

    fn expire_round(&self) -> usize {
        self.map.expire_all_due(self.now_ms(), EXPIRE_BATCH)
    }

    /// Asks the snapshot thread to create the log's next segment now, off
    /// the write path.
    pub(super) fn request_spare(&self) {
        let mut bg = self.bg.lock();
        if !bg.spare_wanted {
            bg.spare_wanted = true;
            self.bg_changed.notify_all();
        }
    }

    pub(super) fn request_snapshot(&self) {
        let mut bg = self.bg.lock();
        if !bg.snapshot_wanted && !bg.snapshot_running {
            bg.snapshot_wanted = true;
            self.bg_changed.notify_all();
        }
    }

    fn fsync_loop(&self, every: Duration) {
        let mut bg = self.bg.lock();
        while !bg.shutdown {
            self.bg_changed.wait_for(&mut bg, every);
            if bg.shutdown {
                break;
            }
            drop(bg);
            let result = self.fsync_round();
            bg = self.bg.lock();
            if let Err(e) = result {
                bg.last_error = Some(e.to_string());
            }
        }
    }

    /// What the `everysec` thread does once per interval.
    fn fsync_round(&self) -> Result<()> {
        if self.planted == Some(PlantedBug::NoFsyncEverySec) {
            return Ok(());
        }
        self.log.as_ref().map_or(Ok(()), Log::sync_now)
    }

    fn snapshot_loop(&self) {
        let mut bg = self.bg.lock();
        loop {
            while !bg.shutdown && !bg.snapshot_wanted && !bg.spare_wanted {
                self.bg_changed.wait(&mut bg);
            }
            if bg.shutdown {
                return;
            }
            let (snapshot, spare) = (bg.snapshot_wanted, bg.spare_wanted);
            bg.snapshot_wanted = false;
            bg.spare_wanted = false;
            bg.snapshot_loop_busy = true;
            drop(bg);
            if spare {
                self.prepare_spare();
            }
            let result = if snapshot { self.snapshot() } else { Ok(()) };
            bg = self.bg.lock();
            bg.snapshot_loop_busy = false;
            if let Err(e) = result {
                bg.last_error = Some(format!("snapshot failed: {e}"));
            }
            self.bg_idle.notify_all();
        }
    }

    pub(super) fn snapshot(&self) -> Result<()> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let _one_at_a_time = self.snapshot_lock.lock();
        self.bg.lock().snapshot_running = true;
        let started = Instant::now();
        let result = self.write_snapshot(log);
        let mut bg = self.bg.lock();
        bg.snapshot_running = false;
        let written = result?;
        bg.snapshots_taken += 1;
        bg.last_snapshot_entries = written.entries;
        bg.last_snapshot_bytes = written.bytes;
        bg.last_snapshot_duration = started.elapsed();
        bg.tombstones_purged += written.purged;
        Ok(())
    }

    /// Creates the log's next segment ahead of need. A failure (a full
    /// disk, say) is not reported here: the rotation then creates the
    /// segment itself, as it did before spares, and reports it.
    fn prepare_spare(&self) {
        if let Some(log) = &self.log {
            let _ = log.prepare_spare();
        }
    }

    fn write_snapshot(&self, log: &Log) -> Result<snapshot::Written> {
        let id = log.rotate_for_snapshot()?;
        let grace = self.tombstone_grace.as_micros() as u64;
        let purge_before = self.clock.now_micros().saturating_sub(grace);
        let written = snapshot::write(log.vfs(), log.dir(), &self.map, id, purge_before)?;
        log.snapshot_written(written.bytes);
        remove_obsolete(log.vfs(), log.dir(), id)?;
        Ok(written)
    }
}

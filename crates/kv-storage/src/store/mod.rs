//! [`Store`]: the engine's public face.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::clock::SharedClock;
use crate::durable::Commit;
use crate::error::{Error, Result};
use crate::histogram::Histogram;
use crate::map::{hash_key, ShardedMap};
use crate::options::Durability;
use crate::recovery::RecoveryReport;
use crate::testing::PlantedBug;
use crate::version::Version;
use crate::vfs::DirLock;
use crate::wal::Log;

mod background;
mod open;
mod stream;
mod versioned;
mod write;

use write::Planned;

/// A key-value store: a sharded in-memory map made durable by a write-ahead
/// log and snapshots. All methods take `&self` and are safe to call from
/// many threads; share a store with `Arc<Store>`.
///
/// Dropping the store stops its background threads and flushes the log, as
/// [`Store::close`] does, but ignores errors.
pub struct Store {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
    report: RecoveryReport,
}

#[derive(Default)]
struct Background {
    shutdown: bool,
    snapshot_wanted: bool,
    /// An append found the log's current segment three quarters full: the snapshot
    /// thread creates the next one ahead of need (`Log::prepare_spare`).
    spare_wanted: bool,
    snapshot_running: bool,
    /// The snapshot thread is between taking a request and finishing it.
    snapshot_loop_busy: bool,
    last_error: Option<String>,
    snapshots_taken: u64,
    last_snapshot_entries: u64,
    last_snapshot_bytes: u64,
    last_snapshot_duration: Duration,
    tombstones_purged: u64,
}

struct Inner {
    map: ShardedMap,
    log: Option<Log>,
    durability: Durability,
    planted: Option<PlantedBug>,
    node_id: u32,
    tombstone_grace: Duration,
    clock: SharedClock,
    bg: Mutex<Background>,
    bg_changed: Condvar,
    /// Signalled when the snapshot thread finishes a snapshot.
    bg_idle: Condvar,
    snapshot_lock: Mutex<()>,
    /// Flushes asked for by deferred writers, for the committing thread.
    commit: Mutex<Commit>,
    commit_changed: Condvar,
    _lock: Option<DirLock>,
}

pub use kv_types::StreamCursor;

/// Figures describing a store, for monitoring.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Live keys.
    pub keys: u64,
    /// Live keys that carry an expiry (Redis's `expires=` in `INFO keyspace`).
    pub expiring_keys: u64,
    /// The mean time those keys have left, in ms (Redis's `avg_ttl=`; 0
    /// when none has an expiry).
    pub avg_ttl_ms: u64,
    /// Approximate bytes of memory held by keys, values and table slots.
    pub memory_bytes: u64,
    /// The durability policy, or `None` for an in-memory store.
    pub durability: Option<Durability>,
    /// Bytes appended to the log since open.
    pub log_bytes: u64,
    /// Snapshots written since open.
    pub snapshots_taken: u64,
    /// Flushes of the log to stable storage since open (with group commit,
    /// fewer than durable writes).
    pub log_flushes: u64,
    /// Durations of the log's flushes since open, in µs.
    pub log_flush_micros: Histogram,
    /// Records made durable by each flush of the log (the group-commit
    /// sizes), for the flushes that carried any.
    pub group_commit_records: Histogram,
    /// Entries (tombstones included) in the last snapshot written.
    pub last_snapshot_entries: u64,
    /// Bytes of the last snapshot written.
    pub last_snapshot_bytes: u64,
    /// How long writing the last snapshot took.
    pub last_snapshot_duration: Duration,
    /// Tombstones dropped by snapshots since open.
    pub tombstones_purged: u64,
    /// Whether a snapshot is being written now, or was asked for and is
    /// about to be.
    pub snapshot_running: bool,
    /// The last error of a background task (snapshot or fsync), if any.
    pub last_background_error: Option<String>,
}

/// An expiry `d` after `now_ms` (ms since the Unix epoch), as stored: never
/// 0, which means "none".
fn expiry_after(now_ms: u64, d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ms).max(1)
}

/// The stored form of an expiry given in ms since the Unix epoch (0 means
/// none, so the instant 0 becomes 1: long past either way).
fn stored_expiry(at: Option<u64>) -> u64 {
    at.map_or(0, |t| t.max(1))
}

impl Store {
    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The value of `key`, or `None` if it is absent, deleted or expired.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_with(key, |v| v.map(<[u8]>::to_vec))
    }

    /// Calls `f` with the value of `key` (`None` if absent, deleted or
    /// expired) while
    /// holding its shard's read lock, so that the value need not be copied.
    /// Keep `f` short: writers to the shard wait for it.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let h = hash_key(key);
        let shard = self.inner.map.read(h);
        f(shard
            .find(h, key)
            .and_then(|e| e.value_now(|| self.inner.now_ms())))
    }

    /// Deletes every key (each leaves a tombstone); returns how many held a
    /// value.
    pub fn delete_all(&self) -> Result<u64> {
        let mut n = 0;
        for i in 0..self.inner.map.shard_count() {
            let keys: Vec<Vec<u8>> = {
                let now = self.inner.now_ms();
                let shard = self.inner.map.read_shard(i);
                let live = shard.iter().filter(|e| e.live_at(now));
                live.map(|e| e.key().to_vec()).collect()
            };
            for k in keys {
                n += u64::from(self.delete(&k)?);
            }
        }
        Ok(n)
    }

    /// Whether `key` holds a value (not deleted, not expired).
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get_with(key, |v| v.is_some())
    }

    /// Sets `key` to `value` with no expiry (removing any it had); returns
    /// the version given to the write. When this returns, the write
    /// survives the death of the process (and, under
    /// [`Durability::Always`], a power cut).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Version> {
        self.put_expiring(key, value, 0)
    }

    /// Sets `key` to `value`, expiring `ttl` from now (by the store's
    /// clock): from then on it reads as absent. Returns the version given
    /// to the write. The expiry is written with the value, so it survives
    /// restarts and replicates with it.
    pub fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<Version> {
        let at = expiry_after(self.inner.now_ms(), ttl);
        self.put_expiring(key, value, at)
    }

    /// Sets `key` to `value` expiring at `expires_at` (ms since the Unix
    /// epoch; `None`: never, a time already past: absent from now on) in
    /// one write, as Redis's `SET key value PXAT t` does. Returns the
    /// version given to the write.
    pub fn put_expiring_at(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Result<Version> {
        self.put_expiring(key, value, stored_expiry(expires_at))
    }

    /// The time by this store's clock, in ms since the Unix epoch (what
    /// expiry times are compared with).
    pub fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    fn put_expiring(&self, key: &[u8], value: &[u8], expires: u64) -> Result<Version> {
        let written = self.inner.write(key, |_, _| {
            Some(Planned::local(Some(value.into()), expires))
        })?;
        written.ok_or(Error::Closed)
    }

    /// Deletes `key`, leaving a tombstone; returns whether it held a value
    /// (an expired value counts as none, and is left as it is).
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let written = self.inner.write(key, |cur, now| {
            cur.filter(|e| e.live_at(now))?;
            Some(Planned::local(None, 0))
        })?;
        Ok(written.is_some())
    }

    /// Reads and writes `key` in one step that no other write to it can
    /// come between: `f` sees the key's live value and expiry (`None` if
    /// it holds no value, or an expired one) and decides the [`Change`];
    /// its second result is handed back. This is how INCR, APPEND or SET
    /// NX are made atomic without a lock of their own.
    ///
    /// `f` runs under the key's shard lock: keep it short, and never call
    /// the store from it (that would deadlock). The change is logged under
    /// the lock; waiting for durability, under [`Durability::Always`],
    /// happens after the lock is released (sharing an fsync with other
    /// writers), and this returns only once the change, or for
    /// [`Change::Keep`] the version `f` saw, is durable. A
    /// [`Change::Delete`] of a key holding no value writes nothing.
    ///
    /// ```
    /// # fn main() -> Result<(), kv_storage::Error> {
    /// use kv_storage::{Change, Options, Store};
    /// let store = Store::open(Options::in_memory())?;
    /// let bump = |cur: Option<kv_storage::Live<'_>>| {
    ///     let n: u64 = cur.map_or(0, |c| String::from_utf8_lossy(c.value).parse().unwrap_or(0));
    ///     (Change::put((n + 1).to_string().into_bytes(), None), n + 1)
    /// };
    /// assert_eq!(store.update(b"hits", bump)?, 1);
    /// assert_eq!(store.update(b"hits", bump)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn update<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Live<'_>>) -> (Change, R),
    ) -> Result<R> {
        let mut result = None;
        self.inner.write(key, |cur, now| {
            let live = cur.filter(|e| e.live_at(now)).map(|e| Live {
                value: e.value().unwrap_or_default(),
                expires_at: (e.expires() != 0).then_some(e.expires()),
            });
            let held = live.is_some();
            let (change, r) = f(live);
            result = Some(r);
            match change {
                Change::Keep => None,
                Change::Delete if !held => None,
                Change::Delete => Some(Planned::local(None, 0)),
                Change::Put { value, expires_at } => Some(Planned::local(
                    Some(value.into()),
                    stored_expiry(expires_at),
                )),
            }
        })?;
        result.ok_or(Error::Closed)
    }

    /// Makes `key` expire `ttl` from now; returns whether it held a value.
    /// Like every change of an expiry, this is a new write (a new version
    /// with the same value).
    pub fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool> {
        let at = expiry_after(self.inner.now_ms(), ttl);
        self.rewrite_expiry(key, at, |_| true)
    }

    /// Makes `key` expire at `unix_ms` (ms since the Unix epoch; a time
    /// already past makes it absent now); returns whether it held a value.
    pub fn expire_at(&self, key: &[u8], unix_ms: u64) -> Result<bool> {
        self.rewrite_expiry(key, stored_expiry(Some(unix_ms)), |_| true)
    }

    /// Removes the expiry of `key`; returns whether it held a value that
    /// had one (as Redis's `PERSIST`).
    pub fn persist(&self, key: &[u8]) -> Result<bool> {
        self.rewrite_expiry(key, 0, |old| old != 0)
    }

    /// The time `key` has left: `None` if it holds no value, `Some(None)` if
    /// it never expires, `Some(Some(d))` if it expires in `d` (never zero).
    pub fn ttl(&self, key: &[u8]) -> Option<Option<Duration>> {
        let h = hash_key(key);
        let now = self.inner.now_ms();
        let shard = self.inner.map.read(h);
        let e = shard.find(h, key).filter(|e| e.live_at(now))?;
        Some((e.expires() != 0).then(|| Duration::from_millis(e.expires() - now)))
    }

    /// Rewrites the live value of `key` with expiry `expires` (0: none) as a
    /// new version, if `want` accepts its current expiry. Returns whether
    /// it wrote.
    fn rewrite_expiry(&self, key: &[u8], expires: u64, want: impl Fn(u64) -> bool) -> Result<bool> {
        let written = self.inner.write(key, |cur, now| {
            let e = cur.filter(|e| e.live_at(now) && want(e.expires()))?;
            let value = e.value().unwrap_or_default().to_vec();
            Some(Planned::local(Some(value.into()), expires))
        })?;
        Ok(written.is_some())
    }

    /// Every live key starting with `prefix`, with its value, sorted by key
    /// (one pass over the store; [`Store::list_page`] lists a page at a
    /// time).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let now = self.inner.now_ms();
        let mut found = Vec::new();
        for i in 0..self.inner.map.shard_count() {
            let shard = self.inner.map.read_shard(i);
            found.extend(
                shard
                    .iter()
                    .filter(|e| e.key().starts_with(prefix))
                    .filter_map(|e| e.value_at(now).map(|v| (e.key().to_vec(), v.to_vec()))),
            );
        }
        found.sort_unstable();
        found
    }

    /// Every live key starting with `prefix` for which `keep` holds, in no
    /// particular order (as Redis's `KEYS`). Copies the matching keys only,
    /// never a value, and holds one shard's read lock at a time.
    pub fn keys_matching(&self, prefix: &[u8], keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let now = self.inner.now_ms();
        let mut found = Vec::new();
        for i in 0..self.inner.map.shard_count() {
            let shard = self.inner.map.read_shard(i);
            found.extend(
                shard
                    .iter()
                    .filter(|e| e.key().starts_with(prefix) && e.live_at(now) && keep(e.key()))
                    .map(|e| e.key().to_vec()),
            );
        }
        found
    }

    /// Number of shards of the in-memory map.
    pub fn shard_count(&self) -> usize {
        self.inner.map.shard_count()
    }

    /// Number of live keys (expired ones not counted).
    pub fn len(&self) -> usize {
        self.inner.map.len(self.inner.now_ms())
    }

    /// Whether the store holds no live key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every write so far durable on stable storage, whatever the
    /// durability policy. A no-op for an in-memory store.
    pub fn flush(&self) -> Result<()> {
        match &self.inner.log {
            Some(log) => log.sync_now(),
            None => Ok(()),
        }
    }

    /// Writes a snapshot now and deletes the log it makes unnecessary.
    /// A no-op for an in-memory store.
    pub fn snapshot(&self) -> Result<()> {
        self.inner.snapshot()
    }

    /// Figures for monitoring.
    pub fn stats(&self) -> Stats {
        let flushes = self.inner.log.as_ref().map(Log::flush_figures);
        let now = self.inner.now_ms();
        let (expiring_keys, avg_ttl_ms) = self.inner.map.expiring(now);
        let bg = self.inner.bg.lock();
        Stats {
            keys: self.inner.map.len(now) as u64,
            expiring_keys: expiring_keys as u64,
            avg_ttl_ms,
            memory_bytes: self.inner.map.bytes() as u64,
            durability: self.inner.log.as_ref().map(|_| self.inner.durability),
            log_bytes: self.inner.log.as_ref().map_or(0, Log::position),
            snapshots_taken: bg.snapshots_taken,
            log_flushes: flushes.as_ref().map_or(0, |f| f.flushes),
            log_flush_micros: flushes
                .as_ref()
                .map_or_else(Histogram::default, |f| f.latency_micros.clone()),
            group_commit_records: flushes.map_or_else(Histogram::default, |f| f.group_records),
            last_snapshot_entries: bg.last_snapshot_entries,
            last_snapshot_bytes: bg.last_snapshot_bytes,
            last_snapshot_duration: bg.last_snapshot_duration,
            tombstones_purged: bg.tombstones_purged,
            snapshot_running: bg.snapshot_running || bg.snapshot_wanted,
            last_background_error: bg.last_error.clone(),
        }
    }

    /// Stops the background threads and flushes the log to stable storage.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.inner.bg.lock().shutdown = true;
        self.inner.commit.lock().shutdown = true;
        self.inner.commit_changed.notify_all();
        self.inner.bg_changed.notify_all();
        self.inner.bg_idle.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.len())
            .field("dir", &self.inner.log.as_ref().map(Log::dir))
            .finish()
    }
}

/// A key's live value and expiry, as [`Store::update`] shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live<'a> {
    /// The value.
    pub value: &'a [u8],
    /// When it expires, in ms since the Unix epoch (`None`: never).
    pub expires_at: Option<u64>,
}

/// What [`Store::update`] does with a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write nothing.
    Keep,
    /// Store `value`, expiring at `expires_at` (ms since the Unix epoch;
    /// `None`: never; a time already past: absent from now on).
    Put {
        /// The new value.
        value: Vec<u8>,
        /// Its expiry.
        expires_at: Option<u64>,
    },
    /// Delete the key, leaving a tombstone.
    Delete,
}

impl Change {
    /// [`Change::Put`] of `value` expiring at `expires_at`.
    pub fn put(value: Vec<u8>, expires_at: Option<u64>) -> Change {
        Change::Put { value, expires_at }
    }
}

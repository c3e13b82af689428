//! [`Store`]: the engine's public face.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::clock::SharedClock;
use crate::durable::{self, Commit, Deferred, DurableListener, Ticket};
use crate::error::{Error, IoContext, Result};
use crate::histogram::Histogram;
use crate::map::{hash_key, Entry, ShardedMap, MAX_KEY};
use crate::options::{Durability, Options};
use crate::recovery::{self, RecoveryReport};
use crate::snapshot;
use crate::testing::PlantedBug;
use crate::version::{Version, Versioned};
use crate::vfs::{self, DirLock, Kind, NoDirSync, SharedVfs, Vfs};
use crate::wal::record;
use crate::wal::segment::parse_segment_name;
use crate::wal::Log;

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

/// Most expired values the background expiry turns into tombstones under
/// one hold of a shard's write lock.
const EXPIRE_BATCH: usize = 256;

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

thread_local! {
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

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

    /// Drops, from memory, every tombstone whose version timestamp is below
    /// `before` (the snapshot path does the same under
    /// [`Options::tombstone_grace`](crate::Options::tombstone_grace)); a
    /// tombstone left by an expiry also needs its expiry (in µs) below
    /// `before`. Returns how many were dropped. Only safe once no replica
    /// can still hold the values they deleted.
    pub fn purge_tombstones(&self, before: u64) -> usize {
        let mut n = 0;
        for i in 0..self.inner.map.shard_count() {
            let mut shard = self.inner.map.write_shard(i);
            let dead: Vec<(u64, Vec<u8>)> = shard
                .iter()
                .filter(|e| e.purgeable(before))
                .map(|e| (hash_key(e.key()), e.key().to_vec()))
                .collect();
            for (h, key) in dead {
                n += usize::from(shard.remove(h, &key).is_some());
            }
        }
        n
    }

    /// Forgets every entry, value or tombstone, whose position (see
    /// [`Store::key_position`]) lies in one of the inclusive `ranges`,
    /// leaving no tombstone behind; then, if any was forgotten, writes a
    /// snapshot so that the log cannot bring them back at the next open.
    /// Returns how many were forgotten. For a replica dropping the ranges
    /// it no longer owns: only safe once other replicas hold them.
    pub fn drop_ranges(&self, ranges: &[(u64, u64)]) -> Result<usize> {
        let ranges = ranges.to_vec();
        self.drop_ranges_while(|| &ranges)
    }

    /// [`Store::drop_ranges`] for ranges that may shrink while it runs
    /// (on a thread of its own, while the ring changes): `ranges` is
    /// called once per shard, and the guard it returns is held while that
    /// shard is cleaned. So a caller that shrinks the ranges under the
    /// guard's lock (a range given back to this node) and only then writes
    /// to them never has those writes forgotten: a shard cleaned before
    /// held only the old entries, a shard cleaned after sees the ranges
    /// shrunk.
    pub fn drop_ranges_while<G>(&self, ranges: impl Fn() -> G) -> Result<usize>
    where
        G: std::ops::Deref<Target = Vec<(u64, u64)>>,
    {
        let mut n = 0;
        for i in 0..self.inner.map.shard_count() {
            let ranges = ranges();
            let inside = |p: u64| ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi);
            let mut shard = self.inner.map.write_shard(i);
            let doomed: Vec<(u64, Vec<u8>)> = shard
                .iter()
                .map(|e| (hash_key(e.key()), e.key()))
                .filter(|(h, _)| inside(*h))
                .map(|(h, k)| (h, k.to_vec()))
                .collect();
            for (h, key) in doomed {
                n += usize::from(shard.remove(h, &key).is_some());
            }
        }
        if n > 0 {
            self.snapshot()?;
        }
        Ok(n)
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

    /// The greatest version timestamp the store has seen (tombstones and
    /// purged tombstones included).
    pub fn max_timestamp(&self) -> u64 {
        (0..self.inner.map.shard_count())
            .map(|i| self.inner.map.read_shard(i).clock)
            .max()
            .unwrap_or(0)
    }

    /// Starts keeping, up to date on every write, an order-independent hash
    /// of each range of key hashes (xxh3-64 of the key, which is also the
    /// key's position on a `kv-ring` ring): range `i` is
    /// `(bounds[i-1], bounds[i]]`, range 0 also takes everything above the
    /// last bound. `bounds` must be sorted. Replaces any earlier ranges and
    /// computes the hashes afresh (one pass over the data); empty `bounds`
    /// stops tracking. Anti-entropy compares these hashes between replicas
    /// without reading the data.
    pub fn track_ranges(&self, bounds: &[u64]) {
        let bounds: Arc<[u64]> = bounds.into();
        for i in 0..self.inner.map.shard_count() {
            self.inner.map.write_shard(i).track(bounds.clone());
        }
    }

    /// The hash of each tracked range (see [`Store::track_ranges`]): the
    /// XOR over its keys, tombstones included, of a hash of the key and
    /// its version.
    pub fn range_hashes(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for i in 0..self.inner.map.shard_count() {
            let shard = self.inner.map.read_shard(i);
            let h = shard.range_hashes();
            if out.len() < h.len() {
                out.resize(h.len(), 0);
            }
            for (o, x) in out.iter_mut().zip(h) {
                *o ^= x;
            }
        }
        out
    }

    /// The tracked range holding a key (see [`Store::track_ranges`]).
    pub fn range_of_key(bounds: &[u64], key: &[u8]) -> usize {
        crate::map::range_of(bounds, hash_key(key))
    }

    /// The in-memory map (for the range walks of [`crate::ranges`]).
    pub(crate) fn map(&self) -> &ShardedMap {
        &self.inner.map
    }

    /// The store's clock, in ms since the Unix epoch.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.inner.now_ms()
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

    /// Applies a replicated write if `version` is newer than the key's
    /// current version (tombstones included). `value` `None` writes a
    /// tombstone. Returns whether the write was applied. Under
    /// [`Durability::Always`] either answer is given only once the version
    /// the key then holds is durable, so `Ok(false)` ("a newer version is
    /// here") is as safe to report as `Ok(true)`.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>, version: Version) -> Result<bool> {
        self.apply_with_expiry(key, value, version, None)
    }

    /// [`Store::apply`] for a write that carries an expiry (ms since the
    /// Unix epoch, as in [`Versioned::expires_at`]; ignored for a
    /// tombstone). A write whose expiry has already passed is still stored
    /// if newer: it reads as absent, and it shadows every older version,
    /// so a replica that was behind never brings an expired key back.
    pub fn apply_with_expiry(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        expires_at: Option<u64>,
    ) -> Result<bool> {
        let written = self.inner.write(key, |cur, _| {
            cur.is_none_or(|c| c.version() < version).then(|| Planned {
                value: value.map(Cow::Borrowed),
                expires: stored_expiry(expires_at),
                stamp: Stamp::Given(version),
            })
        })?;
        Ok(written.is_some())
    }

    /// The key's current version, value and expiry, tombstones included
    /// (an expired value reads as a tombstone with its expiry).
    pub fn get_versioned(&self, key: &[u8]) -> Option<Versioned> {
        let h = hash_key(key);
        let now = self.inner.now_ms();
        let shard = self.inner.map.read(h);
        shard.find(h, key).map(|e| e.to_versioned(now))
    }

    /// Every entry with its version, tombstones included, in no particular
    /// order. Copies one shard at a time, so it holds no lock while the
    /// caller works and sees each shard as it was when reached.
    pub fn iter_versioned(&self) -> impl Iterator<Item = (Vec<u8>, Versioned)> + '_ {
        (0..self.inner.map.shard_count()).flat_map(move |i| {
            let now = self.inner.now_ms();
            let shard = self.inner.map.read_shard(i);
            shard
                .iter()
                .map(|e| (e.key().to_vec(), e.to_versioned(now)))
                .collect::<Vec<_>>()
        })
    }

    /// One page of a resumable walk over the store (tombstones included),
    /// for streaming a part of it to another node: the entries at or after
    /// `from` whose key `want` accepts, at least one and about `max_bytes`
    /// of keys and values, and the cursor to continue from (`None`: the
    /// walk is over). The walk goes shard by shard in key-hash order, so a
    /// cursor stays valid across writes and restarts: keys written after
    /// the walk passed them are not sent (the caller replicates those
    /// itself), every other key is sent once.
    pub fn stream_page(
        &self,
        from: StreamCursor,
        max_bytes: usize,
        want: impl Fn(&[u8]) -> bool,
    ) -> (Vec<(Vec<u8>, Versioned)>, Option<StreamCursor>) {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let shards = self.inner.map.shard_count();
        let mut cursor = from;
        let now = self.inner.now_ms();
        while (cursor.shard as usize) < shards {
            let mut found: Vec<(u64, &Entry)> = Vec::new();
            let shard = self.inner.map.read_shard(cursor.shard as usize);
            for e in shard.iter() {
                let h = hash_key(e.key());
                if h >= cursor.hash && want(e.key()) {
                    found.push((h, e));
                }
            }
            found.sort_unstable_by_key(|(h, _)| *h);
            let mut last = None;
            for (h, e) in found {
                // Entries of one hash go together so the cursor never
                // splits them.
                if bytes >= max_bytes && last != Some(h) {
                    let next = StreamCursor {
                        shard: cursor.shard,
                        hash: h,
                    };
                    return (out, Some(next));
                }
                bytes += e.key().len() + e.value().map_or(0, <[u8]>::len) + 16;
                out.push((e.key().to_vec(), e.to_versioned(now)));
                last = Some(h);
            }
            drop(shard);
            cursor = StreamCursor {
                shard: cursor.shard + 1,
                hash: 0,
            };
            if bytes >= max_bytes && (cursor.shard as usize) < shards {
                return (out, Some(cursor));
            }
        }
        (out, None)
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

    /// Blocks until no background snapshot is requested or running (for
    /// tests that must see the files a snapshot leaves).
    #[doc(hidden)]
    pub fn wait_background_idle(&self) {
        let mut bg = self.inner.bg.lock();
        while !bg.shutdown && (bg.snapshot_wanted || bg.snapshot_loop_busy) {
            self.inner.bg_idle.wait(&mut bg);
        }
    }

    /// Runs `f`, in which writes to this store on this thread do not wait
    /// for their fsync under [`Durability::Always`]: each is applied (and
    /// readable by everyone) and logged, and returns at once. The
    /// [`Deferred`] result carries the [`Ticket`] they need before `f`'s
    /// result may be reported as durable: ask for the flush with
    /// [`Store::request_durable`], learn of it with [`Store::on_durable`],
    /// check with [`Store::is_durable`]. Under other policies, or for an
    /// in-memory store, `f` runs as it would anyway and the ticket is
    /// `None`. Writes to other stores inside `f` block as usual.
    pub fn deferring<R>(&self, f: impl FnOnce() -> R) -> Deferred<R> {
        if self.inner.blocking_log().is_none() {
            return Deferred {
                value: f(),
                ticket: None,
            };
        }
        let (value, needed) = durable::scope(self.inner.id(), f);
        let ticket = (needed > 0).then_some(Ticket(needed));
        Deferred { value, ticket }
    }

    /// Whether the writes a ticket was given for are on stable storage:
    /// `Ok(false)` while they may still be, an error (the store is then
    /// read-only, see [`Error::Poisoned`]) once a failed fsync means they
    /// never will be. Never blocks on the disk.
    pub fn is_durable(&self, ticket: Ticket) -> Result<bool> {
        self.inner
            .log
            .as_ref()
            .map_or(Ok(true), |l| l.is_durable(ticket.0))
    }

    /// Asks the store's committing thread to make the log durable up to
    /// `ticket`, and returns at once. Writes deferred until then share the
    /// flush (group commit), with each other and with blocking writers.
    /// Listeners given to [`Store::on_durable`] are called once the flush
    /// is done or has failed.
    pub fn request_durable(&self, ticket: Ticket) {
        let mut c = self.inner.commit.lock();
        if ticket.0 > c.wanted {
            c.wanted = ticket.0;
            self.inner.commit_changed.notify_one();
        }
    }

    /// Calls `wake` after every flush run for [`Store::request_durable`]
    /// (it ran on the store's committing thread; keep it short).
    pub fn on_durable(&self, wake: DurableListener) {
        self.inner.commit.lock().listeners.push(wake);
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

fn start_workers(inner: &Arc<Inner>, opts: &Options) -> Vec<JoinHandle<()>> {
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

/// Where a write's version comes from.
enum Stamp {
    /// The next local version (the store's clock, above the shard's).
    Local,
    /// A version given by the caller (a replicated write).
    Given(Version),
}

/// What one write stores, decided under the key's shard lock.
struct Planned<'v> {
    /// The value; `None` writes a tombstone.
    value: Option<Cow<'v, [u8]>>,
    /// The stored expiry (0: none).
    expires: u64,
    stamp: Stamp,
}

impl<'v> Planned<'v> {
    fn local(value: Option<Cow<'v, [u8]>>, expires: u64) -> Planned<'v> {
        Planned {
            value,
            expires,
            stamp: Stamp::Local,
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// This store's identity for the deferring scope of [`crate::durable`].
    fn id(&self) -> usize {
        self as *const Inner as usize
    }

    /// The log, when its writers wait for their fsync (`always`).
    fn blocking_log(&self) -> Option<&Log> {
        self.log
            .as_ref()
            .filter(|_| self.durability == Durability::Always)
            .filter(|_| self.planted != Some(PlantedBug::NoFsyncAlways))
    }

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

    /// The write path shared by put, delete, update and apply. `pick` sees
    /// the key's current entry and the time, and returns what to write, or
    /// `None` to write nothing; it runs under the shard lock.
    fn write<'v>(
        &self,
        key: &[u8],
        pick: impl FnOnce(Option<&Entry>, u64) -> Option<Planned<'v>>,
    ) -> Result<Option<Version>> {
        let durable_log = self.blocking_log();
        if durable_log.is_some() && durable::deferred(self.id()) {
            // The caller holds the acknowledgement until the position is
            // durable (Store::deferring).
            let result = self.write_logged(key, pick);
            if let Ok((_, end)) = &result {
                durable::need(self.id(), *end);
            }
            return result.map(|(version, _)| version);
        }
        if let Some(log) = durable_log {
            log.writer_started();
        }
        let result = self.write_logged(key, pick);
        if let Some(log) = durable_log {
            // A write that found the key already holding a version answers
            // from that version, so it waits for that version's durability
            // as a write waits for its own.
            match &result {
                Ok((_, end)) if *end > 0 => log.wait_durable(*end)?,
                _ => log.writer_gave_up(),
            }
        }
        result.map(|(version, _)| version)
    }

    /// Checks, logs and applies one write under its shard lock; returns the
    /// version written (if any) and the log position to wait for: the end
    /// of the new record, or, when nothing is written but the key holds a
    /// version, the end of the log (which covers that version's record).
    fn write_logged<'v>(
        &self,
        key: &[u8],
        pick: impl FnOnce(Option<&Entry>, u64) -> Option<Planned<'v>>,
    ) -> Result<(Option<Version>, u64)> {
        let h = hash_key(key);
        let now = self.now_ms();
        let mut shard = self.map.write(h);
        let cur = shard.find(h, key);
        let held = cur.is_some();
        let Some(plan) = pick(cur, now) else {
            let held = match (&self.log, held) {
                (Some(log), true) => log.position(),
                _ => 0,
            };
            return Ok((None, held));
        };
        let value = plan.value.as_deref();
        let expires = if value.is_some() { plan.expires } else { 0 };
        check_size(key, value, expires)?;
        let version = match plan.stamp {
            Stamp::Local => shard.next_version(self.clock.now_micros(), self.node_id),
            Stamp::Given(v) => v,
        };
        let appended = match &self.log {
            Some(log) => Some(append(log, key, value, version, expires)?),
            None => None,
        };
        shard.insert(h, Entry::new(key, value, version, expires));
        drop(shard);
        let mut end = 0;
        if let Some(a) = appended {
            if a.snapshot_due {
                self.request_snapshot();
            }
            end = a.end;
        }
        Ok((Some(version), end))
    }

    fn request_snapshot(&self) {
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
            while !bg.shutdown && !bg.snapshot_wanted {
                self.bg_changed.wait(&mut bg);
            }
            if bg.shutdown {
                return;
            }
            bg.snapshot_wanted = false;
            bg.snapshot_loop_busy = true;
            drop(bg);
            let result = self.snapshot();
            bg = self.bg.lock();
            bg.snapshot_loop_busy = false;
            if let Err(e) = result {
                bg.last_error = Some(format!("snapshot failed: {e}"));
            }
            self.bg_idle.notify_all();
        }
    }

    fn snapshot(&self) -> Result<()> {
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

/// Keeps the snapshot `newest` just written, a fallback for it and the log
/// segments that fallback needs; deletes the rest. The fallback is the newest
/// older snapshot that passes its checksums now: one found damaged is set
/// aside (`.bad`) instead, and if none passes, every segment is kept. So
/// that damage to any one snapshot file never leaves the store without a
/// complete history.
fn remove_obsolete(vfs: &dyn Vfs, dir: &Path, newest: u64) -> Result<()> {
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

fn check_size(key: &[u8], value: Option<&[u8]>, expires: u64) -> Result<()> {
    let total = record::encoded_len(key, value, expires);
    if key.len() > MAX_KEY || total > record::MAX_PAYLOAD {
        return Err(Error::TooLarge {
            key_len: key.len(),
            value_len: value.map_or(0, <[u8]>::len),
            limit: record::MAX_PAYLOAD,
        });
    }
    Ok(())
}

fn append(
    log: &Log,
    key: &[u8],
    value: Option<&[u8]>,
    version: Version,
    expires: u64,
) -> Result<crate::wal::Appended> {
    ENCODE_BUF.with_borrow_mut(|buf| {
        buf.clear();
        record::encode(buf, key, value, version, expires);
        let result = log.append(buf);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        result
    })
}

//! Listings in key-hash order, a page at a time: `SCAN` cursors and the
//! paged `LIST`.
//!
//! Every shard keeps the hashes of its entries in order
//! (`Shard::positions`), so a walk merges the shards' ordered hashes and
//! reads only the entries it returns, plus those a filter passes over: a
//! page costs O(shards + examined · log shards), whatever the store's size
//! and however its keys are spread over the shards. A
//! walk holds one shard's lock at a time, so that a page waiting on one
//! busy shard (locks are fair: a reader waits behind a waiting writer)
//! does not hold up the writers of the others.
//!
//! The order is (hash, key): ascending xxh3-64 hash of the key, which is
//! also the key's position on a `kv-ring` ring, then the key's bytes for
//! the rare keys that share a hash. A walk that resumes after a position
//! returns every key that was present for the whole walk, once, however
//! the store changes between pages: positions never move.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::Ordering;

use parking_lot::{RwLockReadGuard, RwLockWriteGuard};

use crate::map::{hash_key, Entry, Shard, ShardedMap};
use crate::store::Store;
use crate::version::Versioned;
use kv_types::ListPage;

/// Most entries one page examines per key asked for: a page with a
/// filter that few keys pass stops after this many and says where to go
/// on, so that its cost stays bounded.
const EXAMINE_PER_KEY: usize = 100;

/// Most entries one page examines, whatever the page size asked for
/// (above it, only the page size itself).
const EXAMINE_CAP: usize = 100_000;

/// A shard's write lock held by a test (see [`Store::hold_shard`]);
/// dropping it lets the shard go.
#[doc(hidden)]
pub struct ShardHold<'a> {
    _guard: RwLockWriteGuard<'a, Shard>,
}

/// What a visitor wants after seeing an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Go on with the next entry.
    Go,
    /// Stop once the entries of the current hash are done.
    Stop,
}

/// How many entries a page of `limit` keys may examine.
fn examine_budget(limit: usize) -> usize {
    limit
        .saturating_mul(EXAMINE_PER_KEY)
        .min(EXAMINE_CAP.max(limit))
}

impl Store {
    /// Visits, in (hash, key) order, the entries (tombstones included)
    /// from hash `from` on, skipping those at or before `after` (a key
    /// whose hash is `from`), until `visit` says stop; `want` is about how
    /// many entries the caller expects to visit. Returns the last position
    /// visited if it stopped (the entries sharing its hash were all
    /// visited), `None` if it reached the end.
    ///
    /// Holds one shard's read lock at a time, so that a walk waiting on a
    /// busy shard holds up no writer of another. Each shard's positions
    /// are read ahead in batches (`Cursor`), under that shard's lock
    /// alone, and merged in order; a shard's next batch starts right after
    /// its last position, so no position of a shard is passed over, and a
    /// key present for the whole walk is visited. Only a shard whose batch
    /// ran out is read again, so a page holds at most one batch per shard
    /// and reads O(shards + visited) positions however the keys are spread.
    pub(crate) fn walk_from(
        &self,
        from: u64,
        after: Option<&[u8]>,
        want: usize,
        mut visit: impl FnMut(u64, &Entry) -> Flow,
    ) -> Option<(u64, Vec<u8>)> {
        let map = self.map();
        let first = (want.saturating_mul(2).div_ceil(map.shard_count())).saturating_add(2);
        let mut cursors: Vec<Cursor> = (0..map.shard_count())
            .map(|i| Cursor::new(map, i, from, first))
            .collect();
        let mut heads: BinaryHeap<Reverse<(u64, usize)>> = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.head().map(|h| Reverse((h, i))))
            .collect();
        let mut held: Option<(usize, RwLockReadGuard<'_, Shard>)> = None;
        let mut examined = 0u64;
        let stopped = loop {
            let Some(Reverse((h, i))) = heads.pop() else {
                break None;
            };
            let shard = match held.take() {
                Some((j, guard)) if j == i => guard,
                other => {
                    // Let the last shard go before taking the next.
                    drop(other);
                    map.list_locks.fetch_add(1, Ordering::Relaxed);
                    map.read_shard(i)
                }
            };
            let skip = (h == from).then_some(after).flatten();
            if let Some(last) = visit_group(&shard, h, skip, &mut examined, &mut visit) {
                break Some((h, last));
            }
            let cursor = &mut cursors[i];
            cursor.pending.pop_front();
            if cursor.pending.is_empty() && !cursor.done {
                // Reading this shard's next batch takes its lock again:
                // let go of the one held, so only one is ever held.
                drop(shard);
                match h.checked_add(1) {
                    Some(next) => cursor.refill(map, next),
                    None => cursor.done = true,
                }
            } else {
                held = Some((i, shard));
            }
            if let Some(next) = cursors[i].head() {
                heads.push(Reverse((next, i)));
            }
        };
        drop(held);
        map.list_reads.fetch_add(examined, Ordering::Relaxed);
        stopped
    }

    /// Entries examined by listing pages ([`Store::scan_cursor`],
    /// [`Store::list_page`]) since the store was opened (for tests that
    /// check a page's cost).
    #[doc(hidden)]
    pub fn list_entries_examined(&self) -> u64 {
        self.map().list_reads.load(Ordering::Relaxed)
    }

    /// Shard locks listings have asked for since the store was opened
    /// (for tests that must know a walk has reached a shard).
    #[doc(hidden)]
    pub fn list_shard_locks(&self) -> u64 {
        self.map().list_locks.load(Ordering::Relaxed)
    }

    /// Positions read ahead by listings since the store was opened (for
    /// tests that check a page's cost however the keys are spread).
    #[doc(hidden)]
    pub fn list_positions_read(&self) -> u64 {
        self.map().list_positions.load(Ordering::Relaxed)
    }

    /// The index of the map shard that holds `key` (for tests).
    #[doc(hidden)]
    pub fn shard_of_key(&self, key: &[u8]) -> usize {
        self.map().shard_of(hash_key(key))
    }

    /// Takes shard `index`'s write lock and keeps it until the returned
    /// hold is dropped (for tests that stall one shard).
    #[doc(hidden)]
    pub fn hold_shard(&self, index: usize) -> ShardHold<'_> {
        ShardHold {
            _guard: self.map().write_shard(index),
        }
    }

    /// One step of a cursor walk over the live keys, as Redis's `SCAN`
    /// does: start with cursor 0, pass back the cursor returned, stop when
    /// it is 0. A key present for the whole walk is returned exactly once,
    /// whatever is written meanwhile. Returns about `count` keys (more
    /// only if keys share a hash, fewer if many deleted or expired keys lie
    /// in the way) and the next cursor.
    ///
    /// The cursor is a key hash (a ring position): the walk goes in
    /// ascending hash order and a step resumes at the hash after the last
    /// one it returned, so a step costs O(count), not O(store).
    pub fn scan_cursor(&self, cursor: u64, count: usize) -> (Vec<Vec<u8>>, u64) {
        let count = count.max(1);
        let budget = examine_budget(count);
        let now = self.clock_ms();
        let mut keys = Vec::with_capacity(count.min(4096));
        let mut examined = 0usize;
        let stopped = self.walk_from(cursor, None, count, |_, e| {
            examined += 1;
            if e.live_at(now) {
                keys.push(e.key().to_vec());
            }
            if keys.len() >= count || examined >= budget {
                Flow::Stop
            } else {
                Flow::Go
            }
        });
        let next = stopped.and_then(|(h, _)| h.checked_add(1)).unwrap_or(0);
        (keys, next)
    }

    /// One page of a listing in (hash, key) order (the hash is
    /// [`Store::key_position`]): up to `limit` live keys starting with `prefix`
    /// and after `after` in that order, with their values. Pass the page's
    /// [`ListPage::next`] as `after` to get the next one. A page examines
    /// at most about 100 entries per key asked for (a filter that few keys
    /// pass may make it short), so its cost does not grow with the store.
    pub fn list_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> ListPage<Vec<u8>> {
        let now = self.clock_ms();
        self.page_of(prefix, 0, after, limit, |e| {
            e.value_at(now).map(<[u8]>::to_vec)
        })
    }

    /// Like [`Store::list_page`] but with versions and tombstones included
    /// (for merging listings from several replicas); an expired value is
    /// listed as a tombstone with its expiry. Values are left out: a live
    /// entry's value is listed as empty (`Some` of nothing), so that a page
    /// of large values costs no copy of them.
    ///
    /// The page starts at hash `from` (a `SCAN` cursor; 0 for all) and
    /// after `after`, whichever comes later.
    pub fn list_page_versioned(
        &self,
        prefix: &[u8],
        from: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> ListPage<Versioned> {
        let now = self.clock_ms();
        self.page_of(prefix, from, after, limit, |e| {
            Some(Versioned {
                version: e.version(),
                value: e.value_at(now).map(|_| Vec::new()),
                expires_at: (e.expires() != 0).then_some(e.expires()),
            })
        })
    }

    /// Up to `limit` entries starting with `prefix`, at hash `from` or
    /// later and after `after`, for which `pick` gives something, in
    /// (hash, key) order.
    fn page_of<T>(
        &self,
        prefix: &[u8],
        from: u64,
        after: Option<&[u8]>,
        limit: usize,
        pick: impl Fn(&Entry) -> Option<T>,
    ) -> ListPage<T> {
        let limit = limit.max(1);
        let budget = examine_budget(limit);
        let after_at = after.map(|a| (hash_key(a), a));
        let start = after_at.map_or(from, |(h, _)| h.max(from));
        // `after` only matters at its own hash: past it, every key is after.
        let skip = after_at.filter(|(h, _)| *h == start).map(|(_, a)| a);
        let mut entries = Vec::new();
        let mut examined = 0usize;
        let stopped = self.walk_from(start, skip, limit, |_, e| {
            examined += 1;
            if e.key().starts_with(prefix) {
                if let Some(item) = pick(e) {
                    entries.push((e.key().to_vec(), item));
                }
            }
            if entries.len() >= limit || examined >= budget {
                Flow::Stop
            } else {
                Flow::Go
            }
        });
        ListPage {
            entries,
            next: stopped.map(|(_, key)| key),
        }
    }
}

/// Most positions a walk reads ahead from one shard at a time.
const READ_AHEAD_CAP: usize = 4096;

/// A walk's read-ahead of one shard's positions, in ascending order.
struct Cursor {
    /// The shard.
    shard: usize,
    /// Positions read and not yet visited.
    pending: VecDeque<u64>,
    /// Whether the shard had no position past the last one read.
    done: bool,
    /// How many positions the next read takes (doubling, capped).
    batch: usize,
}

impl Cursor {
    /// A cursor on shard `shard`, with its first `batch` positions from
    /// `from` on already read.
    fn new(map: &ShardedMap, shard: usize, from: u64, batch: usize) -> Cursor {
        let mut c = Cursor {
            shard,
            pending: VecDeque::new(),
            done: false,
            batch: batch.clamp(1, READ_AHEAD_CAP),
        };
        c.refill(map, from);
        c
    }

    /// Reads the shard's next batch of positions from `from` on, under
    /// its read lock alone.
    fn refill(&mut self, map: &ShardedMap, from: u64) {
        map.list_locks.fetch_add(1, Ordering::Relaxed);
        let shard = map.read_shard(self.shard);
        let mut it = shard.positions.range(from..);
        let before = self.pending.len();
        self.pending.extend(it.by_ref().take(self.batch));
        map.list_positions
            .fetch_add((self.pending.len() - before) as u64, Ordering::Relaxed);
        self.done = it.next().is_none();
        self.batch = self.batch.saturating_mul(2).min(READ_AHEAD_CAP);
    }

    /// The next position to visit.
    fn head(&self) -> Option<u64> {
        self.pending.front().copied()
    }
}

/// Visits the entries of `shard` at hash `h` in key order, past `skip`
/// if given, counting them in `examined`. Returns the group's last key if
/// `visit` said stop.
fn visit_group(
    shard: &Shard,
    h: u64,
    skip: Option<&[u8]>,
    examined: &mut u64,
    visit: &mut impl FnMut(u64, &Entry) -> Flow,
) -> Option<Vec<u8>> {
    let group = entries_at(shard, h);
    let mut flow = Flow::Go;
    for e in group.iter().filter(|e| skip.is_none_or(|a| e.key() > a)) {
        *examined += 1;
        if visit(h, e) == Flow::Stop {
            flow = Flow::Stop;
        }
    }
    (flow == Flow::Stop).then(|| group.last().map_or_else(Vec::new, |e| e.key().to_vec()))
}

/// The entries of `shard` at hash `h`, sorted by key.
fn entries_at(shard: &Shard, h: u64) -> Vec<&Entry> {
    let mut group: Vec<&Entry> = shard.at_hash(h).collect();
    if group.len() > 1 {
        group.sort_unstable_by(|a, b| a.key().cmp(b.key()));
    }
    group
}

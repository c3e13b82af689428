//! The sharded concurrent map that holds the data in memory.
//!
//! A key's 64-bit xxh3 hash is computed once: bits 32.. pick the shard, and
//! the whole hash is handed to the shard's `hashbrown::HashTable`, whose
//! bucket index uses the low bits and whose control bytes use the top seven,
//! so neither overlaps the shard bits. Each entry is a 24-byte slot with
//! key, value and expiry in one allocation (see [`crate::entry`]).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::positions::Positions;
use crate::version::{Version, Versioned};

pub(crate) use crate::entry::{Entry, MAX_KEY};

/// What the map reads from an entry besides its layout (see
/// [`crate::entry`] for the layout).
impl Entry {
    /// Whether the entry holds a value at time `now_ms` (not a tombstone,
    /// not expired). A value expires when the clock reaches its expiry.
    pub(crate) fn live_at(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && (!self.has_expiry() || now_ms < self.expires())
    }

    /// The value at time `now_ms`: `None` for a tombstone or an expired
    /// value.
    pub(crate) fn value_at(&self, now_ms: u64) -> Option<&[u8]> {
        self.value().filter(|_| self.live_at(now_ms))
    }

    /// Like [`Entry::value_at`], but reads the clock (`now_ms`) only for a
    /// value that has an expiry. A clock read costs a fence that stops the
    /// processor from overlapping one lookup's cache misses with the next
    /// one's, so reads of keys without an expiry skip it.
    pub(crate) fn value_now(&self, now_ms: impl FnOnce() -> u64) -> Option<&[u8]> {
        if !self.has_expiry() {
            self.value()
        } else {
            self.value_at(now_ms())
        }
    }

    /// The entry as the versioned API shows it at time `now_ms`: an expired
    /// value is a tombstone at the same version.
    pub(crate) fn to_versioned(&self, now_ms: u64) -> Versioned {
        Versioned {
            version: self.version(),
            value: self.value_at(now_ms).map(<[u8]>::to_vec),
            expires_at: self.has_expiry().then(|| self.expires()),
        }
    }

    /// Whether a tombstone may be purged at `before` (a version timestamp,
    /// µs): its delete, and the expiry that ended it if any, lie before it.
    pub(crate) fn purgeable(&self, before: u64) -> bool {
        self.is_tombstone()
            && self.version().timestamp < before
            && self.expires().saturating_mul(1000) < before
    }

    /// Heap and table bytes this entry costs, roughly.
    fn footprint(&self) -> usize {
        self.heap_len() + std::mem::size_of::<Entry>() + 1
    }
}

/// Memory one key hash costs in [`Shard::positions`], roughly (runs
/// between half and wholly full: about 12 bytes a random hash).
const POSITION_BYTES: usize = 12;

/// One shard: a hash table plus counters kept up to date under its lock.
#[derive(Default)]
pub(crate) struct Shard {
    table: HashTable<Entry>,
    live: usize,
    bytes: usize,
    /// The greatest timestamp ever stored in this shard, purged tombstones
    /// included: new local versions are stamped above it, so a key's versions
    /// only grow even if the wall clock steps back.
    pub(crate) clock: u64,
    /// Upper bounds of the tracked ranges of key hashes (see
    /// [`crate::Store::track_ranges`]); empty: none tracked.
    bounds: Arc<[u64]>,
    /// Per tracked range, the XOR of [`entry_hash`] over this shard's
    /// entries in it.
    range_hashes: Vec<u64>,
    /// The key hashes (ring positions) of this shard's entries,
    /// tombstones included, in order (two keys may share one): listings
    /// and range walks in hash order find their keys without a pass over
    /// the shard (see [`crate::listing`] and [`crate::ranges`]). A set of
    /// hashes costs about 12 bytes a key (see [`crate::positions`]); the
    /// entries at a hash are found through the table.
    pub(crate) positions: Positions,
    /// The live entries that carry an expiry, ordered by expiry: the active
    /// expiry takes due keys from the front. We keep this time-ordered
    /// index rather than sample random keys as Redis does: a `HashTable`
    /// offers no cheap random access, an index finds every due key with
    /// work proportional to the keys that are due (never a scan of the
    /// shard), counts expired-but-not-yet-removed keys for an exact `len`,
    /// and makes the sweep deterministic for tests. It costs a copy of the
    /// key and O(log n) per write of a key with an expiry, and nothing for
    /// keys without one.
    expiring: BTreeSet<(u64, Box<[u8]>)>,
    /// The sum of the expiries in `expiring` (for the mean time to live).
    expiring_sum: u128,
}

/// The hash of one entry (key hash and version) that range hashes XOR
/// together: equal sets of (key, version) give equal range hashes.
pub(crate) fn entry_hash(key_hash: u64, version: Version) -> u64 {
    let mut z = key_hash
        ^ version.timestamp.rotate_left(17)
        ^ u64::from(version.node).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the expiry index of a shard holds for an entry: a live value with
/// an expiry.
fn index_item(e: &Entry) -> Option<(u64, Box<[u8]>)> {
    (!e.is_tombstone() && e.has_expiry()).then(|| (e.expires(), Box::from(e.key())))
}

/// The tracked range holding key hash `h` (defined in `kv-types`, shared
/// with the replication layer).
pub(crate) use kv_types::range_of;

impl Shard {
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.table.find(hash, |e| e.key() == key)
    }

    /// Stores `entry` (whose key hashes to `hash`), replacing any previous
    /// state of the key. The caller has already checked versions.
    pub(crate) fn insert(&mut self, hash: u64, entry: Entry) {
        use hashbrown::hash_table::Entry as Slot;
        self.account(hash, &entry, true);
        self.clock = self.clock.max(entry.version().timestamp);
        let indexed = index_item(&entry);
        let slot = self
            .table
            .entry(hash, |e| e.key() == entry.key(), |e| hash_key(e.key()));
        match slot {
            Slot::Occupied(mut o) => {
                let old = std::mem::replace(o.get_mut(), entry);
                self.account(hash, &old, false);
                // Unindex the old state before indexing the new one: both
                // may have the same expiry.
                if let Some(item) = index_item(&old) {
                    self.unindex(&item);
                }
            }
            Slot::Vacant(v) => {
                v.insert(entry);
                if self.positions.insert(hash) {
                    self.bytes += POSITION_BYTES;
                }
            }
        }
        if let Some(item) = indexed {
            self.index(item);
        }
    }

    /// Inserts `entry` only if it is newer than what the shard holds.
    /// Returns whether it was stored.
    pub(crate) fn insert_if_newer(&mut self, hash: u64, entry: Entry) -> bool {
        if let Some(cur) = self.find(hash, entry.key()) {
            if cur.version() >= entry.version() {
                return false;
            }
        }
        self.insert(hash, entry);
        true
    }

    /// Removes the key's entry outright (used to purge tombstones).
    pub(crate) fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Entry> {
        let found = self.table.find_entry(hash, |e| e.key() == key).ok()?;
        let (old, _) = found.remove();
        self.account(hash, &old, false);
        if self.at_hash(hash).next().is_none() && self.positions.remove(hash) {
            self.bytes -= POSITION_BYTES;
        }
        if let Some(item) = index_item(&old) {
            self.unindex(&item);
        }
        Some(old)
    }

    /// Adds a value with an expiry to the expiry index.
    fn index(&mut self, item: (u64, Box<[u8]>)) {
        let t = item.0;
        if self.expiring.insert(item) {
            self.expiring_sum += u128::from(t);
        }
    }

    /// Takes an item out of the expiry index.
    fn unindex(&mut self, item: &(u64, Box<[u8]>)) {
        if self.expiring.remove(item) {
            self.expiring_sum -= u128::from(item.0);
        }
    }

    fn account(&mut self, hash: u64, e: &Entry, add: bool) {
        if !self.bounds.is_empty() {
            let r = range_of(&self.bounds, hash);
            self.range_hashes[r] ^= entry_hash(hash, e.version());
        }
        let live = usize::from(!e.is_tombstone());
        if add {
            self.live += live;
            self.bytes += e.footprint();
        } else {
            self.live -= live;
            self.bytes -= e.footprint();
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    /// The entries whose key hashes to exactly `hash`.
    pub(crate) fn at_hash(&self, hash: u64) -> impl Iterator<Item = &Entry> {
        self.table
            .iter_hash(hash)
            .filter(move |e| hash_key(e.key()) == hash)
    }

    /// The tracked ranges' upper bounds (empty: none tracked).
    pub(crate) fn bounds(&self) -> &Arc<[u64]> {
        &self.bounds
    }

    /// Number of live keys that have not expired at `now_ms`.
    pub(crate) fn live_at(&self, now_ms: u64) -> usize {
        self.live - self.expired_count(now_ms)
    }

    /// Number of values expired at `now_ms` but not yet turned into
    /// tombstones (work proportional to that number).
    fn expired_count(&self, now_ms: u64) -> usize {
        self.expired(now_ms).count()
    }

    /// The values of the expiry index expired at `now_ms` (at its front).
    fn expired(&self, now_ms: u64) -> impl Iterator<Item = &(u64, Box<[u8]>)> {
        self.expiring.iter().take_while(move |(t, _)| *t <= now_ms)
    }

    /// The live values with an expiry not passed at `now_ms`: how many, and
    /// the sum of the ms each has left (work proportional to the values
    /// expired but not yet turned into tombstones).
    pub(crate) fn expiring_at(&self, now_ms: u64) -> (usize, u128) {
        let (mut count, mut sum) = (self.expiring.len(), self.expiring_sum);
        for (t, _) in self.expired(now_ms) {
            count -= 1;
            sum -= u128::from(*t);
        }
        (count, sum - count as u128 * u128::from(now_ms))
    }

    /// Turns up to `limit` values expired at `now_ms` into tombstones of
    /// the same version (no log record: the log and snapshots hold the
    /// expiry, so recovery reaches the same state; and every replica turns
    /// the same write into the same tombstone, with no new version to
    /// reconcile). Returns how many were turned and whether due ones remain.
    pub(crate) fn expire_due(&mut self, now_ms: u64, limit: usize) -> (usize, bool) {
        let due: Vec<(u64, Box<[u8]>)> = self
            .expiring
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        let more = due.len() > limit;
        let mut n = 0;
        for (t, key) in due.into_iter().take(limit) {
            let h = hash_key(&key);
            let version = match self.find(h, &key) {
                Some(e) if !e.is_tombstone() && e.expires() == t => e.version(),
                _ => {
                    // Cannot happen: the index follows the table.
                    self.unindex(&(t, key));
                    continue;
                }
            };
            self.insert(h, Entry::new(&key, None, version, t));
            n += 1;
        }
        (n, more)
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |e| hash_key(e.key()));
    }

    /// The version for a new local write: the wall clock, or just above the
    /// newest timestamp this shard has seen if the clock lags behind it.
    pub(crate) fn next_version(&mut self, now_micros: u64, node: u32) -> Version {
        self.clock = now_micros.max(self.clock + 1);
        Version::new(self.clock, node)
    }

    /// Empties the shard, forgetting its clock too (tracked ranges stay
    /// tracked).
    pub(crate) fn clear(&mut self) {
        let bounds = std::mem::take(&mut self.bounds);
        *self = Shard::default();
        self.track(bounds);
    }

    /// Tracks hashes of these ranges from now on, computing them afresh.
    pub(crate) fn track(&mut self, bounds: Arc<[u64]>) {
        let mut hashes = vec![0u64; bounds.len()];
        if !bounds.is_empty() {
            for e in self.table.iter() {
                let h = hash_key(e.key());
                hashes[range_of(&bounds, h)] ^= entry_hash(h, e.version());
            }
        }
        self.bounds = bounds;
        self.range_hashes = hashes;
    }

    /// The tracked ranges' hashes over this shard.
    pub(crate) fn range_hashes(&self) -> &[u64] {
        &self.range_hashes
    }

    /// Moves [`Shard::clock`] up to at least `ts`.
    pub(crate) fn observe_timestamp(&mut self, ts: u64) {
        self.clock = self.clock.max(ts);
    }
}

/// Keeps each shard on its own cache lines so that locks of neighbouring
/// shards do not share one.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// The whole map: a power-of-two number of shards.
pub(crate) struct ShardedMap {
    shards: Box<[Padded]>,
    mask: usize,
    /// Entries read by range walks since open (see [`crate::ranges`]).
    pub(crate) range_reads: AtomicU64,
    /// Entries examined by listings since open (see [`crate::listing`]).
    pub(crate) list_reads: AtomicU64,
    /// Shard locks listings have asked for since open (for tests that
    /// must know how far a walk got before it blocked).
    pub(crate) list_locks: AtomicU64,
    /// Positions read ahead by listings (for tests).
    pub(crate) list_positions: AtomicU64,
}

/// The hash used for both shard choice and table position.
#[inline]
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl ShardedMap {
    /// A map of `shards` shards (a power of two).
    pub(crate) fn new(shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        ShardedMap {
            shards: (0..shards)
                .map(|_| Padded(RwLock::new(Shard::default())))
                .collect(),
            mask: shards - 1,
            range_reads: AtomicU64::new(0),
            list_reads: AtomicU64::new(0),
            list_locks: AtomicU64::new(0),
            list_positions: AtomicU64::new(0),
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    pub(crate) fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.mask
    }

    #[inline]
    pub(crate) fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard> {
        self.shards[self.shard_of(hash)].0.read()
    }

    #[inline]
    pub(crate) fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shards[self.shard_of(hash)].0.write()
    }

    pub(crate) fn read_shard(&self, index: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[index].0.read()
    }

    pub(crate) fn write_shard(&self, index: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[index].0.write()
    }

    /// Number of live keys not expired at `now_ms`.
    pub(crate) fn len(&self, now_ms: u64) -> usize {
        self.shards.iter().map(|s| s.0.read().live_at(now_ms)).sum()
    }

    /// Turns every value expired at `now_ms` into a tombstone, holding each
    /// shard's lock for at most `batch` of them at a time. Returns how many.
    pub(crate) fn expire_all_due(&self, now_ms: u64, batch: usize) -> usize {
        let mut total = 0;
        for s in self.shards.iter() {
            loop {
                let (n, more) = s.0.write().expire_due(now_ms, batch.max(1));
                total += n;
                if !more {
                    break;
                }
            }
        }
        total
    }

    /// The live keys with an expiry that has not passed at `now_ms`: how
    /// many, and the mean ms they have left (0 if none).
    pub(crate) fn expiring(&self, now_ms: u64) -> (usize, u64) {
        let (count, sum) = self
            .shards
            .iter()
            .map(|s| s.0.read().expiring_at(now_ms))
            .fold((0, 0), |(c, s), (c1, s1)| (c + c1, s + s1));
        let mean = if count == 0 { 0 } else { sum / count as u128 };
        (count, u64::try_from(mean).unwrap_or(u64::MAX))
    }

    /// Approximate bytes held by keys, values and table slots.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().bytes).sum()
    }
}

//! The storage port: the store operations the replication layer calls.
//!
//! `kv-replication` reads and writes a replica's data through
//! [`ReplicaStore`] only, so that it depends on these types and not on the
//! engine. `kv-storage` implements it for its `Store`; a test may
//! implement it with a map. Every method has the meaning of the
//! `kv_storage::Store` method of the same name.

use std::fmt;
use std::ops::Deref;

use crate::{ListPage, RangePage, StreamCursor, Version, Versioned};

/// A storage failure, as the replication layer sees it: the store's own
/// error, turned into its message. The replication layer only reports it
/// (a write with no ack, a cleanup tried again later), so the message is
/// all it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error with this message (the store's error, displayed).
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// The ranges a [`ReplicaStore::drop_ranges_while`] is to forget, read
/// once per shard: a guard (a lock's, say) held while that shard is
/// cleaned.
pub struct RangesGuard<'a>(Box<dyn Deref<Target = Vec<(u64, u64)>> + 'a>);

impl<'a> RangesGuard<'a> {
    /// Wraps `guard`, held until this is dropped.
    pub fn new(guard: impl Deref<Target = Vec<(u64, u64)>> + 'a) -> RangesGuard<'a> {
        RangesGuard(Box::new(guard))
    }
}

impl Deref for RangesGuard<'_> {
    type Target = Vec<(u64, u64)>;

    fn deref(&self) -> &Vec<(u64, u64)> {
        &self.0
    }
}

/// How far a store's log must be on stable storage before writes made
/// in a [`ReplicaStore::deferring`] scope are durable (a position in the
/// store's log). The greater of two tickets covers the smaller.
///
/// A reply that reports such a write must be held until
/// [`ReplicaStore::is_durable`] says its ticket is durable.
#[must_use = "a deferred write is not durable: hold what reports it until the ticket is"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurableTicket(pub u64);

/// The store operations of a replica: what `kv-replication` asks of the
/// local store. Callable from any thread (`Sync`); each method is one
/// operation of the store, atomic per key.
///
/// Durability: a method that writes returns once its write is as durable
/// as the store's durability policy promises for any write (under an
/// fsync-always policy, on stable storage; otherwise surviving the death
/// of the process), unless its own documentation says more, or it runs
/// inside [`ReplicaStore::deferring`]. A store without persistence has
/// nothing to make durable.
pub trait ReplicaStore: Sync {
    /// The key's current version, value and expiry, tombstones included
    /// (an expired value reads as a tombstone with its expiry).
    fn get_versioned(&self, key: &[u8]) -> Option<Versioned>;

    /// Whether `key` holds a value (not deleted, not expired).
    fn contains_key(&self, key: &[u8]) -> bool;

    /// Applies a replicated write if `version` is newer than the key's
    /// current version (tombstones included); `value` `None` writes a
    /// tombstone, `expires_at` (ms since the Unix epoch) is the value's
    /// expiry. Returns whether the write was applied. Either answer is
    /// given only once the version the key then holds is as durable as
    /// the policy promises, so `Ok(false)` ("a newer version is here") is
    /// as safe to report as `Ok(true)`.
    fn apply_with_expiry(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        expires_at: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// The greatest version timestamp the store has seen (tombstones and
    /// purged tombstones included).
    fn max_timestamp(&self) -> u64;

    /// One page of up to `limit` keys starting with `prefix`, in (hash,
    /// key) order, from hash `from` and after key `after`, whichever comes
    /// later; with versions and tombstones, values left out (a live
    /// entry's value is listed as empty).
    fn list_page_versioned(
        &self,
        prefix: &[u8],
        from: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> ListPage<Versioned>;

    /// The next page, of about `max_bytes`, of a walk over the entries
    /// (tombstones included) whose key `want` accepts, from `from`;
    /// returns the page and where to go on (`None`: the walk is done).
    fn stream_page(
        &self,
        from: StreamCursor,
        max_bytes: usize,
        want: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<(Vec<u8>, Versioned)>, Option<StreamCursor>);

    /// Number of shards a [`StreamCursor`] walks through.
    fn shard_count(&self) -> usize;

    /// Starts keeping a hash of each range of key positions split at
    /// `bounds` (sorted; see [`crate::range_of`]), replacing any earlier
    /// ranges; empty `bounds` stops tracking. Writes nothing durable.
    fn track_ranges(&self, bounds: &[u64]);

    /// The hash of each tracked range: the XOR over its keys, tombstones
    /// included, of a hash of the key and its version.
    fn range_hashes(&self) -> Vec<u64>;

    /// One page of a walk over tracked range `range`: its entries with a
    /// position in `[from, until]`, up to about `max_keys` entries and
    /// `max_bytes` bytes of keys, in ascending position order. Empty if
    /// no ranges are tracked or `range` is not one of them.
    fn range_page(
        &self,
        range: usize,
        from: u64,
        until: u64,
        max_keys: usize,
        max_bytes: usize,
    ) -> RangePage;

    /// Forgets every entry, value or tombstone, whose position lies in
    /// one of the inclusive `ranges`, leaving no tombstone behind, and
    /// returns how many it forgot. When it returns, the forgetting is
    /// durable (a snapshot is written if anything was forgotten, so that
    /// the log cannot bring the entries back).
    fn drop_ranges(&self, ranges: &[(u64, u64)]) -> Result<usize, StoreError>;

    /// [`ReplicaStore::drop_ranges`] for ranges that may shrink while it
    /// runs: `ranges` is called once per shard, and the guard it returns
    /// is held while that shard is cleaned.
    fn drop_ranges_while<'a>(
        &self,
        ranges: &'a dyn Fn() -> RangesGuard<'a>,
    ) -> Result<usize, StoreError>;

    /// Writes a snapshot now (and deletes the log it makes unnecessary);
    /// durable when it returns.
    fn snapshot(&self) -> Result<(), StoreError>;

    /// Makes every write so far durable on stable storage, whatever the
    /// durability policy.
    fn flush(&self) -> Result<(), StoreError>;

    /// Runs `f`, in which this store's writes on this thread do not wait
    /// for stable storage: each is applied (readable) and returns at once,
    /// and the ticket returned (`None`: nothing to wait for, as under a
    /// policy that does not fsync every write, or with no persistence)
    /// says how far the store must be durable before anything that
    /// reports those writes is let go. The default runs `f` as it is:
    /// its writes are durable when they return.
    fn deferring(&self, f: &mut dyn FnMut()) -> Option<DurableTicket> {
        f();
        None
    }

    /// Whether the writes `ticket` was given for are durable: `Ok(false)`
    /// while they may yet be, an error once they never will be (a failed
    /// fsync). Never blocks on the disk.
    fn is_durable(&self, ticket: DurableTicket) -> Result<bool, StoreError> {
        let _ = ticket;
        Ok(true)
    }

    /// Asks the store to make itself durable up to `ticket` (one flush for
    /// every ticket asked for so far: a group commit), and returns at once.
    fn request_durable(&self, ticket: DurableTicket) {
        let _ = ticket;
    }
}

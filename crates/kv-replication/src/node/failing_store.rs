//! Test support: a storage port whose writes can fail after they took
//! effect, as a write whose fsync failed after it reached the map does,
//! and whose deferred writes become durable only when a test says so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use kv_storage::Store;
use kv_types::{DurableTicket, ReplicaStore};

/// A store whose next versioned write is applied (readable) but then
/// reported failed, as a write whose fsync failed after it reached the
/// map would be. Writes in its [`ReplicaStore::deferring`] scope each
/// take the next ticket, durable once [`FailsAfterApplying::make_durable`]
/// says so.
pub(super) struct FailsAfterApplying {
    /// The store that does the work.
    pub(super) inner: Store,
    /// Whether the next versioned write reports a failure.
    pub(super) fail_next: AtomicBool,
    /// Whether writes in a deferring scope wait for a ticket.
    pub(super) defer: AtomicBool,
    /// The last ticket handed out.
    issued: AtomicU64,
    /// Tickets up to this one are durable.
    durable: AtomicU64,
    /// Whether a deferring scope wrote.
    wrote: AtomicBool,
    /// Tickets are the inner store's own (a store with a log), not ones
    /// made durable by [`FailsAfterApplying::make_durable`].
    real_tickets: bool,
    /// A newer version that another thread writes, deferred, right after
    /// the next write this store refuses (as an event loop serving a
    /// peer's copy may), and the ticket that write got.
    pub(super) race: Mutex<(Option<kv_types::Version>, Option<DurableTicket>)>,
}

impl FailsAfterApplying {
    /// Over an in-memory store, deferring writes if `defer`.
    pub(super) fn new(defer: bool) -> FailsAfterApplying {
        let inner = Store::open(kv_storage::Options::in_memory()).expect("in-memory store");
        FailsAfterApplying::over(inner, defer, false)
    }

    /// Over `inner`, deferring writes if `defer`, with `inner`'s own
    /// tickets if `real_tickets`.
    pub(super) fn over(inner: Store, defer: bool, real_tickets: bool) -> FailsAfterApplying {
        FailsAfterApplying {
            inner,
            fail_next: AtomicBool::new(false),
            defer: AtomicBool::new(defer),
            issued: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            wrote: AtomicBool::new(false),
            real_tickets,
            race: Mutex::new((None, None)),
        }
    }

    /// The race set up in `race`, if this refused write runs it.
    fn run_race(&self, key: &[u8], refused: bool) {
        let mut race = self.race.lock().expect("race");
        let Some(newer) = race.0.take().filter(|_| refused) else {
            return;
        };
        let inner = &self.inner;
        race.1 = std::thread::scope(|t| {
            let other = t.spawn(|| {
                let mut write = || {
                    let _ = ReplicaStore::apply_with_expiry(inner, key, Some(b"v2"), newer, None);
                };
                ReplicaStore::deferring(inner, &mut write)
            });
            other.join().ok().flatten()
        });
    }

    /// Every ticket handed out so far is durable.
    pub(super) fn make_durable(&self) {
        let issued = self.issued.load(Ordering::SeqCst);
        self.durable.store(issued, Ordering::SeqCst);
    }
}

impl ReplicaStore for FailsAfterApplying {
    fn get_versioned(&self, key: &[u8]) -> Option<kv_types::Versioned> {
        self.inner.get_versioned(key)
    }
    fn contains_key(&self, key: &[u8]) -> bool {
        self.inner.contains_key(key)
    }
    fn apply_with_expiry(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: kv_types::Version,
        expires_at: Option<u64>,
    ) -> Result<bool, kv_types::StoreError> {
        let applied = ReplicaStore::apply_with_expiry(&self.inner, key, value, version, expires_at);
        self.run_race(key, applied == Ok(false));
        self.wrote.store(true, Ordering::SeqCst);
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(kv_types::StoreError::new("fsync failed"));
        }
        applied
    }
    fn max_timestamp(&self) -> u64 {
        self.inner.max_timestamp()
    }
    fn list_page_versioned(
        &self,
        prefix: &[u8],
        from: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> kv_types::ListPage<kv_types::Versioned> {
        ReplicaStore::list_page_versioned(&self.inner, prefix, from, after, limit)
    }
    fn stream_page(
        &self,
        from: kv_types::StreamCursor,
        max_bytes: usize,
        want: &dyn Fn(&[u8]) -> bool,
    ) -> (
        Vec<(Vec<u8>, kv_types::Versioned)>,
        Option<kv_types::StreamCursor>,
    ) {
        ReplicaStore::stream_page(&self.inner, from, max_bytes, want)
    }
    fn shard_count(&self) -> usize {
        ReplicaStore::shard_count(&self.inner)
    }
    fn track_ranges(&self, bounds: &[u64]) {
        ReplicaStore::track_ranges(&self.inner, bounds)
    }
    fn range_hashes(&self) -> Vec<u64> {
        ReplicaStore::range_hashes(&self.inner)
    }
    fn range_page(
        &self,
        range: usize,
        from: u64,
        until: u64,
        max_keys: usize,
        max_bytes: usize,
    ) -> kv_types::RangePage {
        ReplicaStore::range_page(&self.inner, range, from, until, max_keys, max_bytes)
    }
    fn drop_ranges(&self, ranges: &[(u64, u64)]) -> Result<usize, kv_types::StoreError> {
        ReplicaStore::drop_ranges(&self.inner, ranges)
    }
    fn drop_ranges_while<'a>(
        &self,
        ranges: &'a dyn Fn() -> kv_types::RangesGuard<'a>,
    ) -> Result<usize, kv_types::StoreError> {
        ReplicaStore::drop_ranges_while(&self.inner, ranges)
    }
    fn snapshot(&self) -> Result<(), kv_types::StoreError> {
        ReplicaStore::snapshot(&self.inner)
    }
    fn flush(&self) -> Result<(), kv_types::StoreError> {
        ReplicaStore::flush(&self.inner)
    }
    fn deferring(&self, f: &mut dyn FnMut()) -> Option<DurableTicket> {
        if self.real_tickets {
            return ReplicaStore::deferring(&self.inner, f);
        }
        self.wrote.store(false, Ordering::SeqCst);
        f();
        let wrote = self.wrote.swap(false, Ordering::SeqCst);
        (wrote && self.defer.load(Ordering::SeqCst))
            .then(|| DurableTicket(self.issued.fetch_add(1, Ordering::SeqCst) + 1))
    }
    fn is_durable(&self, ticket: DurableTicket) -> Result<bool, kv_types::StoreError> {
        if self.real_tickets {
            return ReplicaStore::is_durable(&self.inner, ticket);
        }
        Ok(ticket.0 <= self.durable.load(Ordering::SeqCst))
    }
}

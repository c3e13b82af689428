//! Streaming a store to another node page by page, and the range hashes
//! anti-entropy compares.

use std::sync::Arc;

use crate::map::{hash_key, Entry, ShardedMap};
use crate::version::Versioned;

use super::{Store, StreamCursor};

impl Store {
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
                bytes += e.key().len() + e.value().map_or(0, <[u8]>::len) + crate::ENTRY_OVERHEAD;
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
}

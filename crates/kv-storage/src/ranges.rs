//! Walking the keys of one tracked range, a page at a time.
//!
//! [`Store::track_ranges`] splits the space of key hashes (a key's position
//! on a `kv-ring` ring) into ranges. While ranges are tracked, each shard
//! keeps its entries' hashes in order, so the keys of one range, or of one
//! window of hashes inside it, are found with work proportional to the
//! keys found, not to the size of the store. Anti-entropy uses this to
//! compare only the ranges that differ between two replicas, in pages of
//! bounded size.
//!
//! A walk goes through a range in ascending key-hash order. A page covers
//! a window `[from, covered_to]` of hashes completely: every entry of the
//! range with a hash in it is in the page (as of the moment its shard was
//! read), so two replicas can compare the same window entry by entry.

use std::collections::BinaryHeap;
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;

use crate::map::{hash_key, Shard};
use crate::store::Store;
use kv_types::{RangeKey, RangePage};

/// The hash windows that make up range `range` of `bounds`, in ascending
/// order: range `i` is `(bounds[i-1], bounds[i]]`, range 0 also takes what
/// lies above the last bound; with no bounds, range 0 is everything.
fn windows(bounds: &[u64], range: usize) -> Vec<RangeInclusive<u64>> {
    match (range, bounds.len()) {
        (_, 0) => vec![0..=u64::MAX],
        (0, m) => {
            let mut w = vec![0..=bounds[0]];
            if let Some(above) = bounds[m - 1].checked_add(1) {
                w.push(above..=u64::MAX);
            }
            w
        }
        (i, m) if i < m => match bounds[i - 1].checked_add(1) {
            Some(lo) if lo <= bounds[i] => vec![lo..=bounds[i]],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `windows` clipped to `[from, until]`.
fn clip(windows: &[RangeInclusive<u64>], from: u64, until: u64) -> Vec<RangeInclusive<u64>> {
    windows
        .iter()
        .map(|w| (*w.start()).max(from)..=(*w.end()).min(until))
        .filter(|w| w.start() <= w.end())
        .collect()
}

/// The positions of `shard` in `windows`, ascending.
fn positions<'a>(
    shard: &'a Shard,
    windows: &'a [RangeInclusive<u64>],
) -> impl Iterator<Item = u64> + 'a {
    windows
        .iter()
        .flat_map(move |w| shard.positions.range(w.clone()))
}

impl Store {
    /// A key's position: the hash that places it in a tracked range and
    /// on a `kv-ring` ring.
    pub fn key_position(key: &[u8]) -> u64 {
        hash_key(key)
    }

    /// One page of a walk over tracked range `range` (see
    /// [`Store::track_ranges`]): its entries with a hash in
    /// `[from, until]`, at least the first hash's entries, then up to
    /// about `max_keys` entries and `max_bytes` bytes of keys, in
    /// ascending hash order. The work is proportional to the entries
    /// returned (and to the number of shards), never to the store's size.
    /// Empty if no ranges are tracked, or `range` is not one of them.
    pub fn range_page(
        &self,
        range: usize,
        from: u64,
        until: u64,
        max_keys: usize,
        max_bytes: usize,
    ) -> RangePage {
        let map = self.map();
        let bounds = map.read_shard(0).bounds().clone();
        if bounds.is_empty() || range >= bounds.len() || from > until {
            return RangePage {
                entries: Vec::new(),
                covered_to: until,
            };
        }
        let windows = clip(&windows(&bounds, range), from, until);
        let end = self.page_end(&windows, max_keys.max(1)).unwrap_or(until);
        let windows = clip(&windows, from, end);
        let now = self.clock_ms();
        let mut entries = Vec::new();
        for i in 0..map.shard_count() {
            let shard = map.read_shard(i);
            if shard.bounds() != &bounds {
                continue; // ranges changed meanwhile: the page is moot
            }
            for h in positions(&shard, &windows) {
                entries.extend(shard.at_hash(h).map(|e| RangeKey {
                    key: e.key().to_vec(),
                    position: h,
                    version: e.version(),
                    tombstone: e.value_at(now).is_none(),
                }));
            }
        }
        entries.sort_unstable_by(|a, b| (a.position, &a.key).cmp(&(b.position, &b.key)));
        let covered_to = cut_at_bytes(&mut entries, max_bytes).unwrap_or(end);
        map.range_reads
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        RangePage {
            entries,
            covered_to,
        }
    }

    /// The hash at which a page of `max_keys` entries in `windows` ends,
    /// or `None` if the windows hold fewer: a bounded heap of the smallest
    /// positions, fed shard by shard, each shard read in order only while
    /// it can still improve the heap.
    fn page_end(&self, windows: &[RangeInclusive<u64>], max_keys: usize) -> Option<u64> {
        let map = self.map();
        let mut best: BinaryHeap<u64> = BinaryHeap::with_capacity(max_keys + 1);
        for i in 0..map.shard_count() {
            let shard = map.read_shard(i);
            for h in positions(&shard, windows) {
                if best.len() >= max_keys && best.peek().is_some_and(|top| h >= *top) {
                    break;
                }
                // Keys sharing a hash (rare) count once here: the page
                // takes them all anyway.
                best.push(h);
                while best.len() > max_keys {
                    best.pop();
                }
            }
        }
        (best.len() >= max_keys)
            .then(|| best.peek().copied())
            .flatten()
    }

    /// Entries returned by [`Store::range_page`] since the store was
    /// opened: how much of the store range walks have touched.
    pub fn range_keys_read(&self) -> u64 {
        self.map().range_reads.load(Ordering::Relaxed)
    }
}

/// Cuts sorted `entries` after the first hash at which their keys reach
/// `max_bytes` (never inside one hash, never before the first), and
/// returns the last hash kept if anything was cut.
fn cut_at_bytes(entries: &mut Vec<RangeKey>, max_bytes: usize) -> Option<u64> {
    let mut bytes = 0usize;
    let mut i = 0;
    while i < entries.len() {
        let h = entries[i].position;
        if bytes >= max_bytes && i > 0 {
            entries.truncate(i);
            return Some(entries[i - 1].position);
        }
        while i < entries.len() && entries[i].position == h {
            bytes += entries[i].key.len() + crate::ENTRY_OVERHEAD;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_around_like_a_ring() {
        let b = [10, 20, u64::MAX - 1];
        assert_eq!(windows(&b, 0), vec![0..=10, u64::MAX..=u64::MAX]);
        assert_eq!(windows(&b, 1), vec![11..=20]);
        assert_eq!(windows(&[10, 10], 1), Vec::<RangeInclusive<u64>>::new());
        assert_eq!(windows(&[u64::MAX], 0), vec![0..=u64::MAX]);
        assert_eq!(clip(&windows(&b, 0), 5, u64::MAX - 1), vec![5..=10]);
    }
}

//! Which ranges of the ring a node owns, and the cleanup of the others.
//!
//! A node keeps data only for the ranges it is a replica of in the read
//! ring or the write ring (see [`crate::rebalance`]). Once a rebalance that
//! moved a range away from it has ended (the new owners have it), it
//! forgets its copy, so an old copy of a range (which may hold values
//! whose deletes were purged since) never comes back to life when the
//! range comes back. The cleanup is idempotent and runs again at every
//! start, so a crash between a rebalance's end and the cleanup leaves
//! nothing behind. A driver may run it on another thread
//! ([`CleanupJob`]). (Forgetting, at the start of a rebalance, the old
//! copies of the ranges a node gains is only a planted bug:
//! [`crate::Planted::forget_gained`].)

use kv_ring::Ring;
use kv_types::{RangesGuard, ReplicaStore, StoreError};

/// The inclusive position intervals, sorted and merged, of the ranges for
/// which `me` is among the first `n` replicas of `ring`.
pub(crate) fn owned(ring: &Ring, n: usize, me: &str) -> Vec<(u64, u64)> {
    if !ring.contains(me) {
        return Vec::new();
    }
    let tokens = ring.token_positions();
    let mut out = Vec::new();
    for (k, &end) in tokens.iter().enumerate() {
        let start = if k == 0 {
            tokens[tokens.len() - 1]
        } else {
            tokens[k - 1]
        };
        if ring.preference_list_at(end, n).contains(&me) {
            out.extend(intervals(start, end, tokens.len() == 1));
        }
    }
    merge(out)
}

/// The ring range `(start, end]` as inclusive intervals (the whole ring
/// when there is one token).
fn intervals(start: u64, end: u64, whole: bool) -> Vec<(u64, u64)> {
    if whole {
        return vec![(0, u64::MAX)];
    }
    if start < end {
        return vec![(start + 1, end)];
    }
    let mut v = vec![(0, end)];
    if start < u64::MAX {
        v.push((start + 1, u64::MAX));
    }
    v
}

/// `ranges` sorted, with overlapping and adjacent intervals merged.
pub(crate) fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The positions not in the sorted, merged `ranges`.
pub(crate) fn complement(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = Some(0u64);
    for &(lo, hi) in ranges {
        if let Some(from) = next {
            if lo > from {
                out.push((from, lo - 1));
            }
        }
        next = hi.checked_add(1);
    }
    if let Some(from) = next {
        out.push((from, u64::MAX));
    }
    out
}

/// The positions of the sorted, merged `ranges` that are not in the
/// sorted, merged `minus`.
pub(crate) fn subtract(ranges: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let keep = complement(minus);
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < ranges.len() && j < keep.len() {
        let lo = ranges[i].0.max(keep[j].0);
        let hi = ranges[i].1.min(keep[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if ranges[i].1 < keep[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// A cleanup run off the thread that drives the node (see
/// [`crate::Config::offload_cleanup`]): the ranges to forget, which the
/// node shrinks, while the job runs, by every range a ring change gives
/// back to it, before anything is written there under the new ring (see
/// [`ReplicaStore::drop_ranges_while`]). So a range that comes back
/// during the drop keeps the writes made after it came back.
#[derive(Debug)]
pub struct CleanupJob {
    /// What is still to be forgotten (sorted, merged intervals).
    doomed: std::sync::RwLock<Vec<(u64, u64)>>,
    /// A snapshot owed by an earlier cleanup whose snapshot failed, with
    /// nothing to forget.
    snapshot_only: bool,
}

impl PartialEq for CleanupJob {
    /// The same job (jobs are compared by identity).
    fn eq(&self, other: &CleanupJob) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for CleanupJob {}

impl CleanupJob {
    pub(crate) fn new(doomed: Vec<(u64, u64)>, snapshot_only: bool) -> CleanupJob {
        CleanupJob {
            doomed: std::sync::RwLock::new(doomed),
            snapshot_only,
        }
    }

    /// Runs the job against `store`: how many entries it forgot.
    pub fn run(&self, store: &dyn ReplicaStore) -> Result<usize, StoreError> {
        if self.snapshot_only {
            return store.snapshot().map(|()| 0);
        }
        store.drop_ranges_while(&|| {
            RangesGuard::new(self.doomed.read().unwrap_or_else(|e| e.into_inner()))
        })
    }

    /// The ranges `owned` (sorted, merged) are this node's again: they
    /// are not forgotten. Returns once no shard is being cleaned with the
    /// old ranges.
    pub(crate) fn keep(&self, owned: &[(u64, u64)]) {
        let mut doomed = self.doomed.write().unwrap_or_else(|e| e.into_inner());
        *doomed = subtract(&doomed, owned);
    }

    /// Whether this is the retry of a snapshot, with nothing to forget.
    pub(crate) fn snapshot_only(&self) -> bool {
        self.snapshot_only
    }

    /// What is still to be forgotten.
    pub fn doomed(&self) -> Vec<(u64, u64)> {
        self.doomed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_ring::key_position;
    use proptest::prelude::*;

    fn within(ranges: &[(u64, u64)], p: u64) -> bool {
        ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi)
    }

    proptest! {
        /// A key is in a node's owned ranges exactly when the node is in
        /// its preference list; the complement holds every other key.
        #[test]
        fn owned_ranges_are_the_preference_lists(
            nodes in 1usize..6,
            n in 1usize..4,
            keys in proptest::collection::vec(any::<u64>(), 1..200),
        ) {
            let ids: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
            let ring = Ring::with_nodes(8, &ids);
            let mine = owned(&ring, n, "n0");
            let rest = complement(&mine);
            for k in keys {
                let key = k.to_le_bytes();
                let p = key_position(&key);
                let replica = ring.preference_list(&key, n).contains(&"n0");
                prop_assert_eq!(within(&mine, p), replica);
                prop_assert_eq!(within(&rest, p), !replica);
            }
        }
    }

    #[test]
    fn subtract_keeps_what_is_not_taken_away() {
        assert_eq!(
            subtract(&[(0, 9), (20, 29)], &[(5, 22)]),
            vec![(0, 4), (23, 29)]
        );
        assert_eq!(subtract(&[(0, u64::MAX)], &[]), vec![(0, u64::MAX)]);
        assert_eq!(subtract(&[(3, 4)], &[(0, u64::MAX)]), vec![]);
        assert_eq!(subtract(&[(3, 4), (8, 9)], &[(4, 8)]), vec![(3, 3), (9, 9)]);
    }

    #[test]
    fn complement_and_merge_cover_the_edges() {
        assert_eq!(complement(&[]), vec![(0, u64::MAX)]);
        assert_eq!(complement(&[(0, u64::MAX)]), vec![]);
        assert_eq!(complement(&[(0, 5), (9, u64::MAX)]), vec![(6, 8)]);
        assert_eq!(merge(vec![(6, 8), (0, 5), (9, 9)]), vec![(0, 9)]);
        assert!(owned(&Ring::with_nodes(4, ["a"]), 3, "b").is_empty());
        assert_eq!(
            owned(&Ring::with_nodes(1, ["a"]), 3, "a"),
            vec![(0, u64::MAX)]
        );
    }
}

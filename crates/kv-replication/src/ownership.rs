//! Which ranges of the ring a node owns, and the cleanup of the others.
//!
//! A node keeps data only for the ranges it is a replica of in the read
//! ring or the write ring (see [`crate::rebalance`]). Once a rebalance that
//! moved a range away from it has ended (the new owners have it), it
//! forgets its copy; and when it first learns of a rebalance in which it
//! gains a range, it forgets whatever it still holds of that range (a copy
//! kept from before, which may hold values whose deletes were purged since)
//! and takes the range only from the stream. So an old copy of a range
//! never comes back to life when the range comes back. Both steps are
//! idempotent, and the first runs again at every start, so a crash between
//! a rebalance's end and the cleanup leaves nothing behind.

use kv_ring::Ring;

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

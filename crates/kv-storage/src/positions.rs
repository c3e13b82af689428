//! An ordered set of key hashes, denser than a `BTreeSet<u64>`.
//!
//! Each shard keeps the hashes (ring positions) of its keys in order, for
//! listings and range walks. A `BTreeSet<u64>` costs about 16.5 bytes a
//! hash (nodes of 11 keys, about two thirds full, plus the inner nodes).
//! This set keeps sorted runs of up to [`CHUNK`] hashes, each in its own
//! vector, in a vector ordered by their first hash: a run is split in two
//! halves when full, so runs are between half and wholly full, about 12
//! bytes a hash with random hashes. Finding a hash is two binary searches;
//! an insert or a remove moves at most [`CHUNK`] hashes of one run.

use std::ops::{Bound, RangeBounds};

/// Most hashes of one run (2 KiB).
const CHUNK: usize = 256;

/// An ordered set of `u64`.
#[derive(Default)]
pub(crate) struct Positions {
    /// Sorted, non-empty runs; every hash of a run is below every hash of
    /// the next.
    runs: Vec<Vec<u64>>,
}

impl Positions {
    /// The run that holds `h` or would: the last one whose first hash is
    /// at most `h` (the first run if none is).
    fn run_of(&self, h: u64) -> usize {
        self.runs.partition_point(|r| r[0] <= h).saturating_sub(1)
    }

    /// Adds `h`; returns whether it was not there yet.
    pub(crate) fn insert(&mut self, h: u64) -> bool {
        if self.runs.is_empty() {
            self.runs.push(vec![h]);
            return true;
        }
        let i = self.run_of(h);
        let run = &mut self.runs[i];
        let Err(at) = run.binary_search(&h) else {
            return false;
        };
        if run.len() < CHUNK {
            run.insert(at, h);
        } else {
            let mut right = Vec::with_capacity(CHUNK);
            right.extend_from_slice(&run[CHUNK / 2..]);
            run.truncate(CHUNK / 2);
            if at <= CHUNK / 2 {
                run.insert(at, h);
            } else {
                right.insert(at - CHUNK / 2, h);
            }
            self.runs.insert(i + 1, right);
        }
        true
    }

    /// Takes `h` out; returns whether it was there.
    pub(crate) fn remove(&mut self, h: u64) -> bool {
        if self.runs.is_empty() {
            return false;
        }
        let i = self.run_of(h);
        let run = &mut self.runs[i];
        let Ok(at) = run.binary_search(&h) else {
            return false;
        };
        run.remove(at);
        let left = run.len();
        // A run that has lost most of its hashes gives memory back.
        if run.capacity() >= 4 * left.max(4) {
            run.shrink_to(2 * left);
        }
        if left == 0 {
            self.runs.remove(i);
        } else if self
            .runs
            .get(i + 1)
            .is_some_and(|next| left + next.len() <= CHUNK / 2)
        {
            // Two thin neighbours become one run, so that deletes do not
            // leave many nearly empty runs behind.
            let next = self.runs.remove(i + 1);
            self.runs[i].extend_from_slice(&next);
        } else if i > 0 && self.runs[i - 1].len() + left <= CHUNK / 2 {
            // The same with the run before (deletes in ascending order
            // thin each run after its neighbour before was looked at).
            let run = self.runs.remove(i);
            self.runs[i - 1].extend_from_slice(&run);
        }
        true
    }

    /// Number of hashes.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }

    /// The hashes in `range`, ascending.
    pub(crate) fn range(&self, range: impl RangeBounds<u64>) -> impl Iterator<Item = u64> + '_ {
        let (i, at) = match range.start_bound() {
            Bound::Unbounded => (0, 0),
            Bound::Included(&s) => self.seek(s, |x| x < s),
            Bound::Excluded(&s) => self.seek(s, |x| x <= s),
        };
        let end = range.end_bound().cloned();
        self.runs
            .get(i..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(move |(n, r)| &r[if n == 0 { at } else { 0 }..])
            .copied()
            .take_while(move |&h| match end {
                Bound::Unbounded => true,
                Bound::Included(e) => h <= e,
                Bound::Excluded(e) => h < e,
            })
    }

    /// The run and offset of the first hash not `before` the start `s`.
    fn seek(&self, s: u64, before: impl Fn(u64) -> bool) -> (usize, usize) {
        if self.runs.is_empty() {
            return (0, 0);
        }
        let i = self.run_of(s);
        (i, self.runs[i].partition_point(|&x| before(x)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ops::Bound::{self, Excluded, Included, Unbounded};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small space of hashes makes repeats and removals of present
        // hashes common; big runs of inserts make splits happen.
        let h = prop_oneof![0..2_000u64, any::<u64>()];
        prop_oneof![
            3 => h.clone().prop_map(Op::Insert),
            1 => h.prop_map(Op::Remove),
        ]
    }

    fn bound() -> impl Strategy<Value = Bound<u64>> {
        prop_oneof![
            Just(Unbounded),
            (0..2_100u64).prop_map(Included),
            (0..2_100u64).prop_map(Excluded),
            any::<u64>().prop_map(Included),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_btree_set(
            ops in proptest::collection::vec(op(), 0..3_000),
            ranges in proptest::collection::vec((bound(), bound()), 1..8),
        ) {
            let mut set = Positions::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(h) => prop_assert_eq!(set.insert(h), model.insert(h)),
                    Op::Remove(h) => prop_assert_eq!(set.remove(h), model.remove(&h)),
                }
                prop_assert_eq!(set.len(), model.len());
            }
            for r in set.runs.windows(2) {
                prop_assert!(r[0].last() < r[1].first());
            }
            for r in &set.runs {
                prop_assert!(!r.is_empty() && r.len() <= CHUNK);
            }
            for (s, e) in ranges {
                let valid = match (s, e) {
                    (Included(a) | Excluded(a), Included(b) | Excluded(b)) => {
                        a < b || (a == b && matches!((s, e), (Included(_), Included(_))))
                    }
                    _ => true,
                };
                if valid {
                    let got: Vec<u64> = set.range((s, e)).collect();
                    let want: Vec<u64> = model.range((s, e)).copied().collect();
                    prop_assert_eq!(got, want, "range {:?}..{:?}", s, e);
                }
            }
        }
    }

    #[test]
    fn random_hashes_cost_about_12_bytes_each() {
        let mut set = Positions::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            set.insert(x);
        }
        let bytes: usize = set.runs.iter().map(|r| r.capacity() * 8).sum();
        let per_hash = bytes as f64 / set.len() as f64;
        assert!((8.0..13.0).contains(&per_hash), "{per_hash} bytes a hash");
    }

    /// Removals that leave one hash in each run (deletes in hash order,
    /// as a SCAN walks) must not leave the set at about 2 KiB a hash: a
    /// remove merges thin runs with the run before as well as after, and
    /// a run that lost most of its hashes shrinks (review of slim).
    #[test]
    fn thinned_runs_do_not_cost_kilobytes_a_hash() {
        let mut set = Positions::default();
        for h in 0..100_000u64 {
            set.insert(h * 1_000);
        }
        // Thin each run, first to last, down to its first hash.
        let firsts: Vec<u64> = set.runs.iter().map(|r| r[0]).collect();
        for run in set.runs.iter().map(|r| r[1..].to_vec()).collect::<Vec<_>>() {
            for h in run {
                assert!(set.remove(h));
            }
        }
        assert_eq!(set.range(..).collect::<Vec<_>>(), firsts);
        let bytes: usize = set
            .runs
            .iter()
            .map(|r| r.capacity() * 8 + 24)
            .sum::<usize>()
            + set.runs.capacity() * 24;
        let per_hash = bytes as f64 / set.len() as f64;
        assert!(
            per_hash < 40.0,
            "{per_hash} bytes a hash over {} runs of {} hashes",
            set.runs.len(),
            set.len()
        );
    }

    /// Every bound at, just before and just after each run's first and
    /// last hash, and at 0 and u64::MAX, against a `BTreeSet`.
    #[test]
    fn ranges_at_run_boundaries() {
        let mut set = Positions::default();
        let mut model = BTreeSet::new();
        for h in (0..3_000u64)
            .map(|i| i * 3 + 1)
            .chain([0, u64::MAX, u64::MAX - 1])
        {
            set.insert(h);
            model.insert(h);
        }
        for h in (0..3_000u64).filter(|i| i % 7 == 0).map(|i| i * 3 + 1) {
            set.remove(h);
            model.remove(&h);
        }
        let mut points = vec![0, 1, u64::MAX, u64::MAX - 1, u64::MAX - 2];
        for r in &set.runs {
            for p in [r[0], r[r.len() - 1]] {
                points.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
            }
        }
        let bounds = |p: u64| [Included(p), Excluded(p)];
        for &a in &points {
            for s in bounds(a).into_iter().chain([Unbounded]) {
                for &b in &points {
                    for e in bounds(b).into_iter().chain([Unbounded]) {
                        let valid = match (s, e) {
                            (Included(x), Included(y)) => x <= y,
                            (Included(x) | Excluded(x), Included(y) | Excluded(y)) => x < y,
                            _ => true,
                        };
                        if valid {
                            let got: Vec<u64> = set.range((s, e)).collect();
                            let want: Vec<u64> = model.range((s, e)).copied().collect();
                            assert_eq!(got, want, "{s:?}..{e:?}");
                        } else {
                            assert_eq!(set.range((s, e)).count(), 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_set() {
        let mut set = Positions::default();
        assert!(!set.remove(3));
        assert_eq!(set.range(..).count(), 0);
        assert_eq!(set.range(5..).count(), 0);
        assert!(set.insert(3));
        assert!(set.remove(3));
        assert_eq!(set.len(), 0);
        assert_eq!(set.range(0..=u64::MAX).count(), 0);
    }
}

//! Distributions kept for monitoring: counts in power-of-two buckets.

/// Observations in power-of-two buckets, with their count and sum, for
/// monitoring (a Prometheus histogram is built from one directly).
///
/// Bucket `i` counts observations greater than `2^(i-1)` and at most
/// `2^i` (bucket 0 holds 0 and 1); what is greater than the last bound is
/// in [`Histogram::count`] only.
///
/// ```
/// use kv_storage::Histogram;
///
/// let mut h = Histogram::new(4);
/// for v in [1, 3, 3, 100] {
///     h.observe(v);
/// }
/// assert_eq!(h.counts, vec![1, 0, 2, 0]);
/// assert_eq!((h.count, h.sum), (4, 107));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket; `counts[i]` are those in `(2^(i-1), 2^i]`.
    pub counts: Vec<u64>,
    /// All observations, those above the last bound included.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram with `buckets` buckets, bounds `1, 2, 4, …,
    /// 2^(buckets-1)`.
    pub fn new(buckets: usize) -> Histogram {
        Histogram {
            counts: vec![0; buckets],
            count: 0,
            sum: 0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, v: u64) {
        let i = if v <= 1 {
            0
        } else {
            (64 - (v - 1).leading_zeros()) as usize
        };
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// The upper bound of bucket `i`.
    pub fn bound(i: usize) -> u64 {
        1u64.checked_shl(i as u32).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn each_value_lands_in_the_bucket_of_its_bound() {
        for v in 0..5000u64 {
            let mut h = Histogram::new(13);
            h.observe(v);
            match h.counts.iter().position(|&c| c == 1) {
                Some(i) => {
                    assert!(v <= Histogram::bound(i), "{v} above bucket {i}");
                    assert!(i == 0 || v > Histogram::bound(i - 1), "{v} fits below {i}");
                }
                None => assert!(v > Histogram::bound(12), "{v} counted nowhere"),
            }
        }
    }
}

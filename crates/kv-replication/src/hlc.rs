//! A hybrid logical clock: timestamps close to physical time that never go
//! backwards and always exceed every timestamp observed. Nothing in it
//! wraps: a clock that reaches `u64::MAX` issues no more timestamps.

/// The clock. Timestamps are in microseconds-since-epoch units; when
/// physical time lags what has been seen or issued, the clock counts on by
/// one per timestamp.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that issues only timestamps above `floor`.
    pub fn starting_above(floor: u64) -> Hlc {
        Hlc { last: floor }
    }

    /// A fresh timestamp for a local event at time `now_ms`, above every
    /// one issued or observed; `None` once the clock is at `u64::MAX` (it
    /// cannot go higher, and a repeated timestamp would not be unique).
    pub fn tick(&mut self, now_ms: u64) -> Option<u64> {
        let next = self.last.checked_add(1)?;
        self.last = now_ms.saturating_mul(1000).max(next);
        Some(self.last)
    }

    /// Takes note of a timestamp from elsewhere.
    pub fn observe(&mut self, ts: u64) {
        self.last = self.last.max(ts);
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// Whether timestamp `ts` (µs) is more than `max_offset_ms` ahead of the
/// wall clock `now_ms`: such a timestamp comes from a clock too far off,
/// or a forged message, and must be neither stored nor observed.
pub fn too_far_ahead(ts: u64, now_ms: u64, max_offset_ms: u64) -> bool {
    ts > now_ms.saturating_add(max_offset_ms).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::{too_far_ahead, Hlc};

    #[test]
    fn monotonic_and_above_observed() {
        let mut c = Hlc::default();
        let a = c.tick(10);
        let b = c.tick(10);
        assert!(b > a);
        c.observe(1_000_000_000);
        assert!(c.tick(11) > Some(1_000_000_000));
        let mut d = Hlc::starting_above(c.last());
        assert!(d.tick(0) > Some(c.last()));
    }

    /// Nothing wraps: near the top the clock stops issuing timestamps
    /// instead of going back to zero or repeating one.
    #[test]
    fn saturates_instead_of_wrapping() {
        let mut c = Hlc::default();
        c.observe(u64::MAX - 1);
        assert_eq!(c.tick(5), Some(u64::MAX));
        assert_eq!(c.tick(5), None);
        assert_eq!(c.last(), u64::MAX);
        let mut far = Hlc::default();
        assert_eq!(far.tick(u64::MAX), Some(u64::MAX));
        assert_eq!(far.tick(u64::MAX), None);
        assert!(too_far_ahead(u64::MAX - 1, 1_000, 500));
        assert!(!too_far_ahead(1_400_000, 1_000, 500));
        assert!(too_far_ahead(1_500_001, 1_000, 500));
        assert!(!too_far_ahead(u64::MAX, u64::MAX, 500));
    }
}

//! A hybrid logical clock: timestamps close to physical time that never go
//! backwards and always exceed every timestamp observed.

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

    /// A fresh timestamp for a local event at time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        self.last = now_ms.saturating_mul(1000).max(self.last + 1);
        self.last
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

#[cfg(test)]
mod tests {
    use super::Hlc;

    #[test]
    fn monotonic_and_above_observed() {
        let mut c = Hlc::default();
        let a = c.tick(10);
        let b = c.tick(10);
        assert!(b > a);
        c.observe(1_000_000_000);
        assert!(c.tick(11) > 1_000_000_000);
        let mut d = Hlc::starting_above(c.last());
        assert!(d.tick(0) > c.last());
    }
}

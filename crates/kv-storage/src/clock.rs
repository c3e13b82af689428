//! Where the store reads the time: the system clock, or a simulated one
//! that a test moves by hand ([`crate::testing::SimClock`]).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub(crate) trait Clock: Send + Sync + Debug {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        self.now_micros() / 1000
    }
}

/// A clock shared by a store and its options.
pub(crate) type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

/// A clock that stands still until told to move. Clones share the time.
#[derive(Clone, Debug)]
pub struct SimClock {
    micros: Arc<AtomicU64>,
}

impl SimClock {
    /// A clock reading `unix_ms` milliseconds since the Unix epoch.
    pub fn at_ms(unix_ms: u64) -> Self {
        SimClock {
            micros: Arc::new(AtomicU64::new(unix_ms.saturating_mul(1000))),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(us))
            });
    }

    /// The time, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.micros.load(Ordering::SeqCst) / 1000
    }
}

impl Clock for SimClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

//! Failed AUTHs counted per source address, so that opening new
//! connections does not buy new guesses (each connection gets only
//! [`crate::resp_cmd::MAX_AUTH_FAILURES`]).
//!
//! Each source (an IPv4 address, or the /64 network of an IPv6 address)
//! has a bucket of [`BURST`] failures, refilled at one per
//! [`REFILL_EVERY`]. A failed AUTH takes one; while a source's bucket is
//! empty, AUTH attempts from it fail without being checked (nothing
//! waits). A source whose bucket is full again is forgotten; at most
//! [`MAX_SOURCES`] sources are tracked at once.
//!
//! Many clients can share one address (behind a NAT, say), a guesser
//! among them. So that the guesser does not lock the others out, a
//! source from which an AUTH succeeded in the last [`TRUSTED_FOR`] is not
//! held back by its bucket. Every connection from it is still held by its
//! own limits (the retry delay, and closing after
//! [`crate::resp_cmd::MAX_AUTH_FAILURES`]): a success elsewhere does not
//! reset them. The price: a guesser who shares an address with a client
//! that logs in is held only by those per-connection limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failed AUTHs a source may make at once.
pub const BURST: u32 = 30;
/// One more failed AUTH is allowed per this much time.
pub const REFILL_EVERY: Duration = Duration::from_secs(1);
/// How long after a successful AUTH from a source the source is not held
/// back by its bucket.
pub const TRUSTED_FOR: Duration = Duration::from_secs(10 * 60);
/// Most sources tracked; past it, the ones whose bucket is full again are
/// forgotten (at most once a second), and if none is, a new source is not
/// tracked: it is held only by the per-connection limit (failing open
/// rather than locking every new client out).
pub const MAX_SOURCES: usize = 65_536;

/// A source's bucket: failures it may still make, as of `at`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let gained =
            now.saturating_duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        (self.left + gained).min(f64::from(BURST))
    }
}

/// Failed AUTHs per source address (shared by every event loop).
#[derive(Debug, Default)]
pub struct SourceLimiter {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<IpAddr, Bucket>,
    /// When an AUTH from each source last succeeded (see [`TRUSTED_FOR`]).
    trusted: HashMap<IpAddr, Instant>,
    /// When full buckets were last forgotten.
    pruned_at: Option<Instant>,
}

/// The key a source is counted under: an IPv6 address's /64 network (one
/// host usually holds all of it), an IPv4 address itself.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl SourceLimiter {
    /// Whether an AUTH from `ip` may be checked now: its bucket is not
    /// empty, or an AUTH from it succeeded in the last [`TRUSTED_FOR`].
    pub fn may_try(&self, ip: IpAddr, now: Instant) -> bool {
        let inner = self.inner.lock();
        let trusted = inner
            .trusted
            .get(&source_key(ip))
            .is_some_and(|t| now.saturating_duration_since(*t) < TRUSTED_FOR);
        trusted
            || inner
                .buckets
                .get(&source_key(ip))
                .is_none_or(|b| b.refilled(now) >= 1.0)
    }

    /// Counts a successful AUTH from `ip`: for [`TRUSTED_FOR`], the source
    /// is not held back by its bucket. At most [`MAX_SOURCES`] sources are
    /// remembered (past it, the ones whose trust ran out are forgotten;
    /// if none has, this one is not remembered).
    pub fn succeeded(&self, ip: IpAddr, now: Instant) {
        let mut inner = self.inner.lock();
        let trusted = &mut inner.trusted;
        if trusted.len() >= MAX_SOURCES && !trusted.contains_key(&source_key(ip)) {
            trusted.retain(|_, t| now.saturating_duration_since(*t) < TRUSTED_FOR);
            if trusted.len() >= MAX_SOURCES {
                return;
            }
        }
        trusted.insert(source_key(ip), now);
    }

    /// Counts a failed AUTH from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut inner = self.inner.lock();
        let Inner {
            buckets, pruned_at, ..
        } = &mut *inner;
        let known = buckets.contains_key(&source_key(ip));
        let prune_due = pruned_at.is_none_or(|t| now.saturating_duration_since(t) >= REFILL_EVERY);
        if !known && buckets.len() >= MAX_SOURCES && prune_due {
            buckets.retain(|_, b| b.refilled(now) < f64::from(BURST));
            *pruned_at = Some(now);
        }
        if !known && buckets.len() >= MAX_SOURCES {
            return;
        }
        let b = buckets.entry(source_key(ip)).or_insert(Bucket {
            left: f64::from(BURST),
            at: now,
        });
        *b = Bucket {
            left: (b.refilled(now) - 1.0).max(0.0),
            at: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_source_gets_a_burst_then_one_per_refill() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(l.may_try(ip("10.0.0.1"), t0));
            l.failed(ip("10.0.0.1"), t0);
        }
        assert!(!l.may_try(ip("10.0.0.1"), t0));
        assert!(l.may_try(ip("10.0.0.2"), t0), "another source is not held");
        assert!(!l.may_try(ip("10.0.0.1"), t0 + REFILL_EVERY / 2));
        assert!(l.may_try(ip("10.0.0.1"), t0 + REFILL_EVERY));
    }

    #[test]
    fn a_source_that_logged_in_recently_is_not_held_back() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        l.succeeded(ip("10.0.0.1"), t0);
        for _ in 0..BURST * 2 {
            l.failed(ip("10.0.0.1"), t0);
        }
        assert!(l.may_try(ip("10.0.0.1"), t0));
        assert!(l.may_try(ip("10.0.0.1"), t0 + TRUSTED_FOR / 2));
        let late = t0 + TRUSTED_FOR;
        for _ in 0..BURST {
            l.failed(ip("10.0.0.1"), late);
        }
        assert!(
            !l.may_try(ip("10.0.0.1"), late),
            "the trust runs out; the bucket holds again"
        );
        for _ in 0..BURST {
            l.failed(ip("10.0.0.2"), t0);
        }
        assert!(!l.may_try(ip("10.0.0.2"), t0), "another source is held");
    }

    #[test]
    fn an_ipv6_network_counts_as_one_source() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        for i in 0..BURST {
            l.failed(ip(&format!("2001:db8::{:x}", i + 1)), t0);
        }
        assert!(!l.may_try(ip("2001:db8::ffff"), t0));
        assert!(l.may_try(ip("2001:db8:0:1::1"), t0));
        for _ in 0..BURST {
            l.failed(ip("::ffff:10.0.0.9"), t0);
        }
        assert!(!l.may_try(ip("10.0.0.9"), t0), "v4-mapped is the v4 source");
    }
}

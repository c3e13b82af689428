//! A hybrid logical clock: timestamps close to physical time that never go
//! backwards and always exceed every timestamp observed. Nothing in it
//! wraps: a clock that reaches `u64::MAX` issues no more timestamps.
//!
//! Two units meet here: clocks and offsets are read in milliseconds
//! ([`Millis`]), versions are stamped in microseconds ([`Micros`]). The
//! functions that take both take them as these types, so that one cannot
//! be passed for the other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A wall-clock reading (since the Unix epoch) or a span of time, in
/// milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

/// A version's timestamp (since the Unix epoch), in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub u64);

impl Millis {
    /// The same time in microseconds (`u64::MAX` at most: nothing wraps).
    pub fn to_micros(self) -> Micros {
        Micros(self.0.saturating_mul(1000))
    }

    /// `self + other`, at most `u64::MAX` ms.
    pub fn saturating_add(self, other: Millis) -> Millis {
        Millis(self.0.saturating_add(other.0))
    }
}

/// The clock. Timestamps are in microseconds-since-epoch units; when
/// physical time lags what has been seen or issued, the clock counts on by
/// one per timestamp.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: Micros,
}

impl Hlc {
    /// A clock that issues only timestamps above `floor`.
    pub fn starting_above(floor: Micros) -> Hlc {
        Hlc { last: floor }
    }

    /// A fresh timestamp for a local event at time `now`, above every
    /// one issued or observed; `None` once the clock is at `u64::MAX` (it
    /// cannot go higher, and a repeated timestamp would not be unique).
    pub fn tick(&mut self, now: Millis) -> Option<Micros> {
        self.tick_capped(now, Micros(u64::MAX))
    }

    /// [`Hlc::tick`] with the physical part held at or below `cap`:
    /// a wall clock read beyond `cap` (one stepped hours ahead of the
    /// cluster's time) counts for no more than `cap`, so that the clock
    /// counts on by one from where it is instead of leaping to it. `None`
    /// only once the clock cannot go higher.
    pub fn tick_capped(&mut self, now: Millis, cap: Micros) -> Option<Micros> {
        let next = Micros(self.last.0.checked_add(1)?);
        self.last = now.to_micros().min(cap).max(next);
        Some(self.last)
    }

    /// Takes note of a timestamp from elsewhere.
    pub fn observe(&mut self, ts: Micros) {
        self.last = self.last.max(ts);
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Micros {
        self.last
    }
}

/// What the peers' clocks read, from their gossip: an estimate of the
/// cluster's time that a step of this node's own clock does not move.
#[derive(Clone, Debug, Default)]
pub struct PeerClocks {
    /// Per peer: its clock (ms) in its last gossip, and this node's clock
    /// when that gossip came.
    heard: BTreeMap<String, (u64, u64)>,
}

impl PeerClocks {
    /// Peer `peer`'s clock read `clock` (ms) in a gossip that came when
    /// this node's clock read `now`.
    pub fn note(&mut self, peer: &str, clock: u64, now: u64) {
        self.heard.insert(peer.to_string(), (clock, now));
    }

    /// Forgets the peers for which `keep` is false (no longer members).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.heard.retain(|id, _| keep(id));
    }

    /// After this node's clock went back by `by` ms: the times readings
    /// were heard are moved back as much, so that their ages (and which of
    /// them are stale, see [`PeerClocks::trusted_now`]) stay as they were.
    pub fn clock_went_back(&mut self, by: u64) {
        for (_, at) in self.heard.values_mut() {
            *at = at.saturating_sub(by);
        }
    }

    /// The cluster's time (ms) as far as this node can trust it when its
    /// own clock reads `now`: the median of `now` and of each peer's last
    /// reading, moved on by the time this node's clock says passed since,
    /// but by `slack` at most (a clock stepped hours ahead must not move
    /// the estimate with it). One clock stepped hours ahead or back, this
    /// node's or a peer's, is never the median of three. Of an even count
    /// the lower middle value is taken: a clock stepped back then costs
    /// writes that lose (an error the client sees), while the upper one
    /// would let this node's own clock stepped ahead stamp versions its
    /// peers refuse.
    ///
    /// A reading heard more than `stale` ms before the newest one is left
    /// out: a peer that went down would otherwise count as a clock falling
    /// further behind every hour. Staleness is measured between readings,
    /// not against `now`, so that this node's own clock stepping ahead
    /// does not make every reading look stale at once. `None` if no peer
    /// was heard from.
    pub fn trusted_now(&self, now: u64, slack: u64, stale: u64) -> Option<u64> {
        let newest = self.heard.values().map(|&(_, at)| at).max()?;
        let fresh = self
            .heard
            .values()
            .filter(|&&(_, at)| at.saturating_add(stale) >= newest)
            .map(|&(clock, at)| clock.saturating_add(now.saturating_sub(at).min(slack)));
        // Called for every write: a cluster's few peers fit on the stack.
        let mut small = [0u64; 16];
        let mut large = Vec::new();
        let clocks: &mut [u64] = if self.heard.len() < small.len() {
            let mut n = 0;
            for c in fresh {
                small[n] = c;
                n += 1;
            }
            small[n] = now;
            &mut small[..=n]
        } else {
            large.extend(fresh);
            large.push(now);
            &mut large
        };
        clocks.sort_unstable();
        Some(clocks[(clocks.len() - 1) / 2])
    }
}

/// The cluster's time ([`PeerClocks::trusted_now`]) as the thread that
/// drives the node last computed it, published for other threads (a
/// server's event loops checking replicated writes against the maximum
/// clock offset), so that they judge timestamps against the same clock as
/// the node, not against their own wall clock, which may have been
/// stepped.
///
/// A reading moves on by the wall-clock time passed since it was
/// published, but by `slack` ms at most, as the node's own estimate does:
/// a wall clock stepped ahead between two publications moves it no
/// further, one stepped back not at all. A reader that catches the two
/// halves of a publication apart is off by at most `slack` too.
#[derive(Debug, Default)]
pub struct SharedClock {
    /// The cluster's time at the last publication (ms; 0: none known,
    /// the wall clock is used).
    cluster: AtomicU64,
    /// The wall clock at the last publication (ms).
    at: AtomicU64,
    /// How far a reading moves on at most (ms).
    slack: u64,
}

impl SharedClock {
    /// A clock with nothing published yet (it reads the wall clock), whose
    /// readings move on by `slack` ms at most.
    pub fn new(slack: u64) -> SharedClock {
        SharedClock {
            slack,
            ..SharedClock::default()
        }
    }

    /// The node's thread, whose wall clock reads `now`, publishes the
    /// cluster's time (`None`: no peer heard from, the wall clock stands).
    pub fn publish(&self, now: u64, cluster: Option<u64>) {
        match cluster {
            Some(c) => {
                self.at.store(now, Ordering::Release);
                self.cluster.store(c.max(1), Ordering::Release);
            }
            None => self.cluster.store(0, Ordering::Release),
        }
    }

    /// The cluster's time (ms) when this thread's wall clock reads `wall`.
    pub fn now(&self, wall: u64) -> u64 {
        let cluster = self.cluster.load(Ordering::Acquire);
        if cluster == 0 {
            return wall;
        }
        let at = self.at.load(Ordering::Acquire);
        cluster.saturating_add(wall.saturating_sub(at).min(self.slack))
    }
}

/// Whether timestamp `ts` is more than `max_offset` ahead of the clock
/// reading `now`: such a timestamp comes from a clock too far off, or a
/// forged message, and must be neither stored nor observed.
pub fn too_far_ahead(ts: Micros, now: Millis, max_offset: Millis) -> bool {
    ts > now.saturating_add(max_offset).to_micros()
}

#[cfg(test)]
mod tests {
    use super::{too_far_ahead, Hlc, Micros, Millis, PeerClocks, SharedClock};

    #[test]
    fn monotonic_and_above_observed() {
        let mut c = Hlc::default();
        let a = c.tick(Millis(10));
        let b = c.tick(Millis(10));
        assert!(b > a);
        c.observe(Micros(1_000_000_000));
        assert!(c.tick(Millis(11)) > Some(Micros(1_000_000_000)));
        let mut d = Hlc::starting_above(c.last());
        assert!(d.tick(Millis(0)) > Some(c.last()));
    }

    /// Nothing wraps: near the top the clock stops issuing timestamps
    /// instead of going back to zero or repeating one.
    #[test]
    fn saturates_instead_of_wrapping() {
        let mut c = Hlc::default();
        c.observe(Micros(u64::MAX - 1));
        assert_eq!(c.tick(Millis(5)), Some(Micros(u64::MAX)));
        assert_eq!(c.tick(Millis(5)), None);
        assert_eq!(c.last(), Micros(u64::MAX));
        let mut far = Hlc::default();
        assert_eq!(far.tick(Millis(u64::MAX)), Some(Micros(u64::MAX)));
        assert_eq!(far.tick(Millis(u64::MAX)), None);
        let far_ahead = |ts, now| too_far_ahead(Micros(ts), Millis(now), Millis(500));
        assert!(far_ahead(u64::MAX - 1, 1_000));
        assert!(!far_ahead(1_400_000, 1_000));
        assert!(!far_ahead(1_500_000, 1_000));
        assert!(far_ahead(1_500_001, 1_000));
        assert!(!far_ahead(u64::MAX, u64::MAX));
    }

    /// A wall clock read beyond the cap (stepped hours ahead) does not
    /// move the clock past it: it counts on by one from there.
    #[test]
    fn a_capped_tick_never_leaps_past_the_cap() {
        let mut c = Hlc::default();
        let mut tick = |now, cap| c.tick_capped(Millis(now), Micros(cap)).map(|t| t.0);
        assert_eq!(tick(1_000, 5_000_000), Some(1_000_000));
        // Stepped two hours ahead: held at the cap, then counting on.
        let hours = 1_000 + 2 * 3600 * 1000;
        assert_eq!(tick(hours, 1_500_000), Some(1_500_000));
        assert_eq!(tick(hours, 1_500_000), Some(1_500_001));
        // The cap moves on with the cluster's time; the clock follows.
        assert_eq!(tick(hours, 1_600_000), Some(1_600_000));
        // Stepped back: counts on by one, never backwards.
        assert_eq!(tick(500, 1_700_000), Some(1_600_001));
        assert_eq!(tick(u64::MAX, u64::MAX), Some(u64::MAX));
        assert_eq!(tick(u64::MAX, u64::MAX), None);
    }

    /// The trusted time follows the median clock: neither this node's
    /// clock stepped hours ahead nor a peer's stepped back moves it far,
    /// and a peer's reading ages by at most the slack.
    #[test]
    fn trusted_time_ignores_one_stepped_clock() {
        let hours = 2 * 3600 * 1000;
        let t = 10_000_000;
        let mut p = PeerClocks::default();
        assert_eq!(p.trusted_now(t, 250, 3000), None);
        p.note("a", t, t);
        p.note("b", t + 100, t);
        assert_eq!(p.trusted_now(t + 50, 250, 3000), Some(t + 50));
        // This node stepped hours ahead just after hearing them: their
        // readings age by the slack at most.
        assert_eq!(p.trusted_now(t + hours, 250, 3000), Some(t + 350));
        // This node stepped back: its peers' readings stand.
        assert_eq!(p.trusted_now(t - hours, 250, 3000), Some(t));
        // A peer stepped back.
        p.note("b", t + 100 - hours, t + 100);
        assert_eq!(p.trusted_now(t + 100, 250, 3000), Some(t + 100));
        p.retain(|id| id == "a");
        assert_eq!(p.trusted_now(t + 100, 250, 3000), Some(t + 100));
    }

    /// A peer not heard from for longer than the staleness bound (down)
    /// is left out, measured from the newest reading: two down peers must
    /// not hold the cluster's time back, and this node's clock stepping
    /// ahead or back must not make every reading stale at once.
    #[test]
    fn readings_of_peers_gone_quiet_are_left_out() {
        let hours = 2 * 3600 * 1000;
        let t = 10_000_000;
        let mut p = PeerClocks::default();
        p.note("a", t, t);
        p.note("b", t, t);
        p.note("c", t + 10_000, t + 10_000);
        p.note("d", t + 10_000, t + 10_000);
        // a and b went quiet 10 s ago: with them, the lower median of
        // [t+250, t+250, t+10000, t+10000, own] would be t+250.
        assert_eq!(p.trusted_now(t + 10_000, 250, 3000), Some(t + 10_000));
        // This node stepped hours ahead: c and d still count (they are the
        // newest), and hold the time back.
        assert_eq!(
            p.trusted_now(t + 10_000 + hours, 250, 3000),
            Some(t + 10_250)
        );
        // This node stepped back: the readings keep their ages, so a and b
        // stay out and the live peers' clocks decide.
        let back = t + 10_000 - hours;
        p.clock_went_back(hours);
        p.note("c", t + 10_100, back + 100);
        p.note("d", t + 10_100, back + 100);
        assert_eq!(p.trusted_now(back + 100, 250, 3000), Some(t + 10_100));
    }

    /// The published cluster time moves on with the wall clock, by the
    /// slack at most, and not back: a wall clock stepped an hour either way
    /// after a publication reads within the slack of the cluster's time.
    #[test]
    fn a_published_cluster_time_ignores_a_stepped_wall_clock() {
        let t = 1_700_000_000_000;
        let hour = 3600 * 1000;
        let c = SharedClock::new(250);
        assert_eq!(c.now(t), t, "nothing published: the wall clock");
        c.publish(t, Some(t - 40));
        assert_eq!(c.now(t + 100), t + 60);
        assert_eq!(c.now(t + hour), t - 40 + 250, "stepped ahead");
        assert_eq!(c.now(t - hour), t - 40, "stepped back");
        c.publish(t + hour, Some(t + 10));
        assert_eq!(c.now(t + hour + 5), t + 15);
        c.publish(t, None);
        assert_eq!(c.now(t + hour), t + hour, "no peer: the wall clock");
    }
}

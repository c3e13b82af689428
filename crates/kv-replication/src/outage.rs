//! A node that comes back after a long outage must not serve its old data.
//!
//! Deleted keys keep a tombstone for a grace period, then every node purges
//! it. A node that was away for longer than that missed the delete *and*
//! can no longer learn of it: its old copy of the value looks like a write
//! the others lost, and read repair and anti-entropy would bring it back
//! everywhere. So a node records the last time it was in contact with its
//! cluster ([`Contact`]), and when it starts again after more than most of
//! the grace period ([`limit`]) it sets its old data aside and rejoins as a
//! new generation, rebuilding its ranges from the live replicas
//! ([`on_restart`]). Its first contact after a restart checks the same
//! thing against the peer's clock as well, trusted up to the maximum clock
//! offset ahead ([`stale_at_first_contact`]).

/// Share of the tombstone grace after which a node out of contact no
/// longer trusts its data: three quarters, so that clock offsets, the
/// interval between records of the last contact and purges a little early
/// all stay inside the margin.
pub fn limit(grace: u64) -> u64 {
    grace - grace / 4
}

/// How far a node's clock may be behind its last recorded contact (ms)
/// and still be trusted: the record may hold a peer's clock up to the
/// maximum offset ahead, and NTP steps clocks back by small amounts.
pub const CLOCK_STEP_BACK: u64 = 60_000;

/// What a node restarting on its old data must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the data as it is (the outage was short, there is no data, or
    /// the node is not a cluster member).
    Resume,
    /// Set the data aside and rejoin as a new generation; says why.
    RejoinFresh(String),
}

/// The verdict for a cluster member restarting at `now` (ms, wall clock)
/// whose last recorded contact with its cluster was `last_contact`
/// (`None`: no record), with tombstone grace `grace` (ms; 0: never
/// purged, no check). `holds_data`: whether its data directory holds any
/// data (a node without data has nothing to bring back).
pub fn on_restart(last_contact: Option<u64>, now: u64, grace: u64, holds_data: bool) -> Verdict {
    if grace == 0 || !holds_data {
        return Verdict::Resume;
    }
    let Some(last) = last_contact else {
        return Verdict::RejoinFresh(format!(
            "it has data but no record of its last contact with the cluster, so it cannot tell \
             whether it was away longer than the tombstone grace ({})",
            human(grace)
        ));
    };
    if now.saturating_add(CLOCK_STEP_BACK) < last {
        return Verdict::RejoinFresh(format!(
            "its clock ({now}) is behind its last recorded contact with the cluster ({last}), so \
             it cannot tell how long it was away (tombstone grace {})",
            human(grace)
        ));
    }
    let away = now.saturating_sub(last);
    if away > limit(grace) {
        return Verdict::RejoinFresh(format!(
            "it was out of contact with its cluster for {}, longer than the tombstone grace \
             ({}) allows (deletes made meanwhile may be purged everywhere, and its old copies \
             would bring them back)",
            human(away),
            human(grace)
        ));
    }
    Verdict::Resume
}

/// [`on_restart`] with the grace of `cfg` (no check if the planted bug
/// [`crate::Planted::no_grace_check`] is on).
pub fn restart_verdict(
    cfg: &crate::Config,
    last_contact: Option<u64>,
    now: u64,
    holds_data: bool,
) -> Verdict {
    if cfg.planted.no_grace_check {
        return Verdict::Resume;
    }
    on_restart(last_contact, now, cfg.tombstone_grace, holds_data)
}

/// Whether a node restarted with data, whose last recorded contact was
/// `last_contact`, must give its data up when it first hears a peer at
/// its own time `now`, the peer's clock reading `peer_clock`: the later
/// of the two counts, so that a clock set back while the node was down
/// cannot hide a long outage. Returns why, if so.
pub fn stale_at_first_contact(
    last_contact: u64,
    now: u64,
    peer_clock: u64,
    grace: u64,
    max_offset: u64,
) -> Option<String> {
    if grace == 0 {
        return None;
    }
    // A peer's clock counts only up to the maximum offset ahead of ours:
    // one peer far ahead (or a forger) must not make nodes give up data.
    let seen = now.max(peer_clock.min(now.saturating_add(max_offset)));
    let away = seen.saturating_sub(last_contact);
    (away > limit(grace)).then(|| {
        format!(
            "its first peer's clock says it was out of contact with its cluster for {}, longer \
             than the tombstone grace ({}) allows (its own clock said {})",
            human(away),
            human(grace),
            human(now.saturating_sub(last_contact))
        )
    })
}

/// The last time (ms, wall clock) a node was in contact with its cluster,
/// and when that was last handed out to be recorded.
#[derive(Clone, Debug, Default)]
pub struct Contact {
    /// The latest contact: the greatest wall time observed at a contact
    /// (this node's clock and the peer's), so it never goes backwards.
    last: u64,
    /// The value last handed out for recording (0: none yet).
    recorded: u64,
}

impl Contact {
    /// Starts from a recorded value (`None`: nothing recorded).
    pub fn new(recorded: Option<u64>) -> Contact {
        let r = recorded.unwrap_or(0);
        Contact {
            last: r,
            recorded: r,
        }
    }

    /// A contact at this node's time `now`, the peer's clock reading
    /// `peer_clock` (trusted up to `max_ahead` ms past `now`: further would
    /// only make a later outage look shorter). Returns the value to record
    /// if it is due: the first contact, then at most once per `every` ms.
    pub fn heard(&mut self, now: u64, peer_clock: u64, max_ahead: u64, every: u64) -> Option<u64> {
        let seen = now.max(peer_clock.min(now.saturating_add(max_ahead)));
        self.last = self.last.max(seen);
        let due = self.recorded == 0 || self.last >= self.recorded.saturating_add(every);
        if due {
            self.recorded = self.last;
            return Some(self.last);
        }
        None
    }

    /// The latest contact (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// `ms` in the largest unit that fits, for log lines.
fn human(ms: u64) -> String {
    match ms {
        ms if ms >= 3_600_000 => format!("{:.1} h", ms as f64 / 3_600_000.0),
        ms if ms >= 60_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms if ms >= 1_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        ms => format!("{ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn restarts_after_most_of_the_grace_rejoin_fresh() {
        let grace = 4 * H;
        assert_eq!(
            on_restart(Some(10 * H), 12 * H, grace, true),
            Verdict::Resume
        );
        assert!(matches!(
            on_restart(Some(10 * H), 14 * H, grace, true),
            Verdict::RejoinFresh(why) if why.contains("4.0 h")
        ));
        // Nothing to bring back, or no grace at all: resume.
        assert_eq!(on_restart(Some(0), 14 * H, grace, false), Verdict::Resume);
        assert_eq!(on_restart(None, 14 * H, 0, true), Verdict::Resume);
        // Cannot tell: conservative.
        assert!(matches!(
            on_restart(None, 1, grace, true),
            Verdict::RejoinFresh(_)
        ));
        assert!(matches!(
            on_restart(Some(10 * H), 9 * H, grace, true),
            Verdict::RejoinFresh(why) if why.contains("behind")
        ));
        // A small step back (a record holding a peer's clock a little
        // ahead, an NTP correction) is tolerated.
        assert_eq!(
            on_restart(Some(10 * H), 10 * H - CLOCK_STEP_BACK, grace, true),
            Verdict::Resume
        );
    }

    #[test]
    fn the_first_peer_counts_only_within_the_maximum_offset() {
        let grace = 4 * H;
        let offset = 500;
        // Own clock says one hour; a peer five hours ahead is not trusted
        // (one peer far ahead, or a forger, must not make nodes give their
        // data up).
        assert!(stale_at_first_contact(10 * H, 11 * H, 15 * H, grace, offset).is_none());
        assert!(stale_at_first_contact(10 * H, 11 * H, 11 * H, grace, offset).is_none());
        // Own clock already past the limit: stale, whatever the peer says.
        assert!(stale_at_first_contact(10 * H, 14 * H, 14 * H, grace, offset).is_some());
        // Just under the limit by its own clock, over it within the offset.
        let edge = 10 * H + limit(grace);
        assert!(stale_at_first_contact(10 * H, edge, edge + 400, grace, offset).is_some());
    }

    #[test]
    fn the_contact_only_moves_forward_and_is_recorded_now_and_then() {
        let mut c = Contact::new(None);
        assert_eq!(c.heard(1000, 900, 500, 5000), Some(1000), "first contact");
        assert_eq!(c.heard(2000, 2000, 500, 5000), None, "not due yet");
        // A clock set back does not move it back.
        assert_eq!(c.heard(500, 400, 500, 5000), None);
        assert_eq!(c.last(), 2000);
        // A peer far ahead counts only up to the maximum offset.
        assert_eq!(c.heard(6000, 1_000_000, 500, 5000), Some(6500));
    }
}

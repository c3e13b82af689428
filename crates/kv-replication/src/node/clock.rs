//! The node's clock: stamping versions, the trusted cluster time, peers' clocks
//! and the bounds on how far ahead a timestamp may be.

use super::*;

/// How far ahead of the clock the persisted floor is set (µs): the floor is
/// saved once per this much clock progress (capped by half the maximum
/// clock offset, see [`Node::floor_lead`]).
const FLOOR_LEAD: u64 = 2_000_000;

/// Why a write could not be stamped.
pub(super) enum NoStamp {
    /// The clock cannot go any higher.
    Exhausted,
    /// The clock is at the floor last reported saved: the write waits for
    /// the next ([`Node::floor_saved`]).
    FloorPending,
}

/// A write waiting for a clock floor to be saved before it is stamped.
pub(super) struct FloorWaiting {
    pub(super) deadline: u64,
    pub(super) client: u64,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) expires_at: Option<u64>,
    pub(super) tries: u32,
    pub(super) newer: Option<Ver>,
}

impl Node {
    /// A fresh version, or why there is none: the clock cannot go any
    /// higher, or (with [`Config::offload_floor`]) it is at the clock
    /// floor last reported saved. Its physical part is held within half
    /// the maximum clock offset of the cluster's time
    /// ([`Node::trusted_now`]): a wall clock stepped hours ahead must not
    /// stamp versions that every peer refuses (they would stay on this
    /// node alone, and shadow later writes).
    ///
    /// After a restart the clock starts above the floor saved last, so a
    /// version at or above it must not leave the node (sent, or applied
    /// to its store) before a higher floor is saved: the node could stamp
    /// it again, with another value. Without the offload the new floor
    /// goes out in an [`Output::Persist`] ahead of the messages that carry
    /// the version, and counts as saved at once. With it, the next floor
    /// is asked for ([`Output::SaveFloor`]) once the clock comes within
    /// half a lead of the last one asked for, and versions are stamped
    /// only below the floor reported saved ([`Node::floor_saved`]).
    pub(super) fn stamp(&mut self, now: u64) -> Result<Ver, NoStamp> {
        let cap = match (self.trusted_now(now), self.clock_bound()) {
            (Some(t), Some(max)) => t.saturating_add(max / 2).saturating_mul(1000),
            _ => u64::MAX,
        };
        let lead = self.floor_lead();
        let ts = if self.cfg.offload_floor {
            // Where the clock is: its last timestamp, or the physical
            // time if that is later.
            let at = now.saturating_mul(1000).min(cap).max(self.hlc.last().0);
            if at.saturating_add(lead / 2) >= self.floor_asked {
                self.ask_floor(at.saturating_add(lead));
            }
            let limit = self.floor.saturating_sub(1);
            if self.hlc.last() == Micros(u64::MAX) {
                return Err(NoStamp::Exhausted);
            }
            // Writes already waiting go first.
            if self.hlc.last() >= Micros(limit) || !self.floor_waiting.is_empty() {
                return Err(NoStamp::FloorPending);
            }
            // Above the clock's last, so at most `limit`.
            let ts = self.hlc.tick_capped(Millis(now), Micros(cap.min(limit)));
            ts.ok_or(NoStamp::Exhausted)?.0
        } else {
            let ts = self.hlc.tick_capped(Millis(now), Micros(cap));
            let ts = ts.ok_or(NoStamp::Exhausted)?.0;
            if ts >= self.floor {
                self.floor = ts.saturating_add(lead);
                self.persist();
            }
            ts
        };
        Ok(Ver {
            ts,
            node: self.number,
        })
    }

    /// How far ahead of the clock a floor is set (µs): a floor is saved
    /// once per this much clock progress. Within the maximum clock
    /// offset, so that a node restarted at once does not start above what
    /// its peers accept.
    pub(super) fn floor_lead(&self) -> u64 {
        self.clock_bound()
            .map_or(FLOOR_LEAD, |m| FLOOR_LEAD.min(m.saturating_mul(500)).max(1))
    }

    /// Asks the driver to save clock floor `floor` (unless one as high
    /// was asked for).
    pub(super) fn ask_floor(&mut self, floor: u64) {
        if floor > self.floor_asked {
            self.floor_asked = floor;
            self.out.push_back(Output::SaveFloor(floor));
        }
    }

    /// The driver saved clock floor `floor` durably (asked for with
    /// [`Output::SaveFloor`]): the node may stamp versions below it, and
    /// the writes that waited for it are stamped and sent now, in the
    /// order they came.
    pub fn floor_saved(&mut self, now: u64, floor: u64) {
        self.last_now = self.last_now.max(now);
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        for w in std::mem::take(&mut self.floor_waiting) {
            let value = (w.value, w.expires_at);
            self.send_write(now, w.deadline, w.client, w.key, value, w.tries, w.newer);
        }
    }

    /// Answers the writes that waited for a floor until their deadline
    /// (the floor was never reported saved): no replica was asked.
    pub(super) fn expire_floor_waiting(&mut self, now: u64) {
        while self
            .floor_waiting
            .front()
            .is_some_and(|w| w.deadline <= now)
        {
            let Some(w) = self.floor_waiting.pop_front() else {
                break;
            };
            let reply = ClientReply::Unavailable {
                answered: 0,
                needed: 1,
                replicas: 0,
            };
            self.reply(w.client, reply);
        }
    }

    /// The cluster's time (ms) as this node can trust it, if it heard from
    /// peers: the median of its clock and theirs (see
    /// [`crate::hlc::PeerClocks::trusted_now`]). `None` without peers or a
    /// maximum clock offset.
    fn trusted_now(&self, now: u64) -> Option<u64> {
        if self.cfg.planted.wall_clock_stamps {
            return None;
        }
        let max = self.clock_bound()?;
        self.peer_clocks
            .trusted_now(now, max / 2, self.cfg.down_after)
    }

    /// The cluster's time (ms) as this node trusts it when its clock reads
    /// `now` (the clock it checks timestamps against), if it heard from
    /// peers; for a driver to publish with
    /// [`crate::hlc::SharedClock::publish`] to threads that check
    /// timestamps for it.
    pub fn cluster_time(&self, now: u64) -> Option<u64> {
        self.trusted_now(now)
    }

    /// How far, at most, the cluster's time moves on by this node's clock
    /// between two peers' readings (ms): the slack of a
    /// [`crate::hlc::SharedClock`] published from [`Node::cluster_time`].
    pub fn cluster_time_slack(&self) -> u64 {
        self.clock_bound().map_or(u64::MAX, |m| m / 2)
    }

    /// Whether this node, as a replica of a write it coordinates, must
    /// refuse version `ts` as its peers would: more than the maximum clock
    /// offset ahead of the cluster's time (logged).
    pub(super) fn own_copy_too_far_ahead(&mut self, now: u64, ts: u64) -> bool {
        let Some(clock) = self.trusted_now(now) else {
            return false; // no peer to refuse it either
        };
        // What `too_far_ahead` decides, without copying this node's id
        // for every write that is within bounds.
        let far = |max| crate::hlc::too_far_ahead(Micros(ts), Millis(clock), Millis(max));
        if (self.clock_bound()).is_none_or(|max| !far(max)) {
            return false;
        }
        let me = self.cfg.id.clone();
        self.too_far_ahead(now, &me, ts, Refused::OwnWrite)
    }

    /// Takes note of a timestamp seen elsewhere (unless the planted bug
    /// says not to). Callers check it with [`Node::too_far_ahead`] first.
    pub(super) fn observe(&mut self, ts: u64) {
        if !self.cfg.planted.no_hlc_observe {
            self.hlc.observe(Micros(ts));
        }
    }

    /// Compares this node's clock `now` with a peer's (sent in its
    /// gossip). A node whose clock is more than the maximum clock offset
    /// ahead of most peers it hears from stops coordinating (its versions
    /// would be refused everywhere), and says so in the log.
    pub(super) fn note_peer_clock(&mut self, now: u64, from: &str, clock: u64) {
        let Some(max) = self.clock_bound() else {
            return;
        };
        if from == self.cfg.id {
            return;
        }
        let ahead = now > clock.saturating_add(max);
        self.ahead_of.insert(from.to_string(), ahead);
        self.peer_clocks.note(from, clock, now);
        let members = self.members.current();
        self.ahead_of.retain(|id, _| members.contains(id));
        self.peer_clocks
            .retain(|id| members.iter().any(|m| m == id));
        let n = self.ahead_of.len();
        let ahead_count = self.ahead_of.values().filter(|a| **a).count();
        let now_ahead = ahead_count * 2 > n;
        if now_ahead != self.clock_ahead {
            self.clock_ahead = now_ahead;
            self.log(if now_ahead {
                Event::ClockAhead {
                    max_offset_ms: max,
                    ahead_of: ahead_count,
                    peers: n,
                    from: from.to_string(),
                    their_clock_ms: clock,
                    our_clock_ms: now,
                }
            } else {
                Event::ClockBack
            });
        }
    }

    /// Node numbers make versions unique, so two nodes of a cluster must
    /// never share one: the first node heard with a number keeps it, and
    /// any other node gossiping the same number is refused (all its
    /// messages ignored) and logged.
    pub(super) fn check_number(&mut self, from: &str, number: u32) {
        if self.duplicates.contains(from) {
            return;
        }
        match self.numbers.get(&number) {
            Some(holder) if holder != from => {
                let holder = holder.clone();
                self.duplicates.insert(from.to_string());
                self.log(Event::DuplicateNumber {
                    from: from.to_string(),
                    number,
                    holder,
                });
            }
            Some(_) => {}
            None => {
                self.numbers.retain(|_, id| id != from);
                self.numbers.insert(number, from.to_string());
            }
        }
    }

    /// Nodes refused because their version number is another node's.
    pub fn refused_duplicates(&self) -> Vec<NodeId> {
        self.duplicates.iter().cloned().collect()
    }

    /// Whether this node stopped coordinating because its clock is too far
    /// ahead of its peers'.
    pub fn clock_too_far_ahead(&self) -> bool {
        self.clock_ahead
    }

    /// The maximum clock offset in force (`None`: none, a planted bug).
    pub(super) fn clock_bound(&self) -> Option<u64> {
        (!self.cfg.planted.no_clock_bound).then_some(self.cfg.max_clock_offset)
    }

    /// The clock (ms) timestamps are checked against when this node's
    /// clock reads `now`: the cluster's time as this node trusts it (see
    /// [`Node::trusted_now`]), or `now` before it heard from a peer. A
    /// node whose clock was stepped hours back must not refuse every
    /// version its peers stamp (it would refuse, and so never learn, that
    /// its writes lost); one stepped hours ahead must not take versions
    /// hours ahead of its peers.
    pub(super) fn check_clock(&self, now: u64) -> u64 {
        self.trusted_now(now).unwrap_or(now)
    }

    /// Whether `ts` from `from` is beyond the maximum clock offset ahead of
    /// this node's [`Node::check_clock`] at `now`: if so it is logged (at
    /// most once a second) and must be refused.
    pub(super) fn too_far_ahead(&mut self, now: u64, from: &str, ts: u64, what: Refused) -> bool {
        let Some(max) = self.clock_bound() else {
            return false;
        };
        let clock = self.check_clock(now);
        if !crate::hlc::too_far_ahead(Micros(ts), Millis(clock), Millis(max)) {
            return false;
        }
        self.refused_far += 1;
        if self
            .last_far_log
            .is_none_or(|t| now >= t.saturating_add(1000))
        {
            self.last_far_log = Some(now);
            self.log(Event::RefusedFarAhead {
                what,
                from: from.to_string(),
                ts,
                ahead_ms: (ts / 1000).saturating_sub(clock),
                max_offset_ms: max,
                refused: self.refused_far,
            });
        }
        true
    }

    /// Takes note of a version timestamp seen elsewhere (for example by a
    /// driver that served a replica request with [`arrive`]), so
    /// that later writes this node coordinates are newer.
    /// A timestamp more than the maximum clock offset ahead of `now` is
    /// refused.
    pub fn observe_timestamp(&mut self, now: u64, ts: u64) {
        if !self.too_far_ahead(now, "a driver", ts, Refused::Timestamp) {
            self.observe(ts);
        }
    }

    /// This node's clock went back (stepped, as NTP steps a clock) to
    /// `now`, before times it already saw: its timers restart from `now`,
    /// so that gossip, anti-entropy and deadlines do not wait until the
    /// clock is back where it was (hours, perhaps). A write or read still
    /// pending gets at most a request timeout from now.
    pub(super) fn clock_went_back(&mut self, now: u64) {
        self.peer_clocks
            .clock_went_back(self.last_now.saturating_sub(now));
        // A hint made while the clock was ahead must not outlive its
        // window (it could bring back a value whose delete was purged).
        for h in self.hints.values_mut() {
            h.created = h.created.min(now);
        }
        self.last_now = now;
        self.last_gossip = self.last_gossip.min(now);
        self.last_anti_entropy = self.last_anti_entropy.min(now);
        let latest = now.saturating_add(self.cfg.request_timeout);
        for p in self.pending.values_mut() {
            p.deadline = p.deadline.min(latest);
        }
        for w in &mut self.floor_waiting {
            w.deadline = w.deadline.min(latest);
        }
        self.converged_since = self.converged_since.map(|t| t.min(now));
        if let Some(st) = self.stream.as_mut() {
            st.started = st.started.map(|t| t.min(now));
            st.last_log = st.last_log.min(now);
            st.last_save = st.last_save.min(now);
            for src in st.sources.values_mut() {
                src.asked_at = src.asked_at.map(|t| t.min(now));
            }
        }
    }
}

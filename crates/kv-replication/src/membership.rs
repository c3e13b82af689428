//! Membership by gossip: who is in the cluster, and who seems alive.
//!
//! Each member bumps its own heartbeat every gossip round and sends what it
//! knows of everyone to a few others. A member whose heartbeat has not
//! moved for `suspect_after` is suspect, after `down_after` down. Those two
//! are local judgements, never gossiped; "left" is gossiped and sticky
//! until the member comes back with a higher incarnation.

use std::collections::BTreeMap;

use crate::msg::{Digest, NodeId};

/// How a member looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// Not heard from for a while; still asked, but expected to fail.
    Suspect,
    /// Not heard from for long: not asked.
    Down,
    /// Announced it is leaving (decommissioning).
    Leaving,
    /// Gone from the cluster and from the ring.
    Left,
}

impl MemberState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    heartbeat: u64,
    left: bool,
    /// Local time the heartbeat last moved.
    heard: u64,
}

/// The membership table of one node.
#[derive(Clone, Debug)]
pub struct Membership {
    me: NodeId,
    members: BTreeMap<NodeId, Member>,
    suspect_after: u64,
    down_after: u64,
}

impl Membership {
    /// A table holding only `me`.
    pub fn new(me: &str, now: u64, suspect_after: u64, down_after: u64) -> Self {
        let mut members = BTreeMap::new();
        members.insert(
            me.to_string(),
            Member {
                incarnation: 0,
                heartbeat: 0,
                left: false,
                heard: now,
            },
        );
        Membership {
            me: me.to_string(),
            members,
            suspect_after,
            down_after,
        }
    }

    /// Restores a table saved with [`Membership::digests`]. Others count
    /// as just heard from; `me` comes back with a higher incarnation (and
    /// rejoins if the table said it had left).
    pub fn restore(&mut self, digests: &[Digest], now: u64) {
        for d in digests {
            let m = Member {
                incarnation: d.incarnation,
                heartbeat: d.heartbeat,
                left: d.left,
                heard: now,
            };
            self.members.insert(d.id.clone(), m);
        }
        let me = self.members.entry(self.me.clone()).or_insert(Member {
            incarnation: 0,
            heartbeat: 0,
            left: false,
            heard: now,
        });
        me.incarnation += 1;
        me.left = false;
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Bumps this node's heartbeat (once per gossip round).
    pub fn beat(&mut self, now: u64) {
        if let Some(m) = self.members.get_mut(&self.me) {
            m.heartbeat += 1;
            m.heard = now;
        }
    }

    /// What this node knows, for gossip.
    pub fn digests(&self) -> Vec<Digest> {
        self.members
            .iter()
            .map(|(id, m)| Digest {
                id: id.clone(),
                incarnation: m.incarnation,
                heartbeat: m.heartbeat,
                left: m.left,
            })
            .collect()
    }

    /// Merges gossip. Returns whether anything changed, and whether the
    /// sender seems to know less than we do (so we should answer).
    pub fn merge(&mut self, digests: &[Digest], now: u64) -> (bool, bool) {
        let mut changed = false;
        for d in digests {
            changed |= self.merge_one(d, now);
        }
        // Heartbeats spread by the regular rounds; answer only news about
        // who is a member (someone unknown to the sender, a newer
        // incarnation, a departure).
        let theirs: BTreeMap<&str, (u64, bool)> = digests
            .iter()
            .map(|d| (d.id.as_str(), (d.incarnation, d.left)))
            .collect();
        let behind = self.members.iter().any(|(id, m)| {
            theirs
                .get(id.as_str())
                .is_none_or(|&(inc, left)| (inc, left) < (m.incarnation, m.left))
        });
        (changed, behind)
    }

    fn merge_one(&mut self, d: &Digest, now: u64) -> bool {
        match self.members.get_mut(&d.id) {
            None => {
                self.members.insert(
                    d.id.clone(),
                    Member {
                        incarnation: d.incarnation,
                        heartbeat: d.heartbeat,
                        left: d.left,
                        heard: now,
                    },
                );
                true
            }
            Some(m) => {
                let newer = (d.incarnation, d.heartbeat) > (m.incarnation, m.heartbeat);
                let left_news = d.left && !m.left && d.incarnation >= m.incarnation;
                if !newer && !left_news {
                    return false;
                }
                if newer && d.id != self.me {
                    m.heard = now;
                }
                if d.incarnation > m.incarnation {
                    m.left = d.left;
                } else {
                    m.left |= d.left;
                }
                m.incarnation = m.incarnation.max(d.incarnation);
                m.heartbeat = m.heartbeat.max(d.heartbeat);
                true
            }
        }
    }

    /// Marks `id` as having left (decommissioned). Returns false if unknown.
    pub fn mark_left(&mut self, id: &str) -> bool {
        match self.members.get_mut(id) {
            Some(m) => {
                m.incarnation += 1;
                m.left = true;
                true
            }
            None => false,
        }
    }

    /// The state of `id` at time `now`, if it is known.
    pub fn state(&self, id: &str, now: u64) -> Option<MemberState> {
        let m = self.members.get(id)?;
        Some(if m.left {
            MemberState::Left
        } else if id == self.me {
            MemberState::Alive
        } else {
            let quiet = now.saturating_sub(m.heard);
            if quiet > self.down_after {
                MemberState::Down
            } else if quiet > self.suspect_after {
                MemberState::Suspect
            } else {
                MemberState::Alive
            }
        })
    }

    /// Whether `id` is worth asking (alive or suspect).
    pub fn is_up(&self, id: &str, now: u64) -> bool {
        matches!(
            self.state(id, now),
            Some(MemberState::Alive | MemberState::Suspect)
        )
    }

    /// Members that have not left, sorted: the ring's nodes.
    pub fn ring_members(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| !m.left)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every known member with its state.
    pub fn all(&self, now: u64) -> Vec<(NodeId, MemberState)> {
        self.members
            .keys()
            .filter_map(|id| Some((id.clone(), self.state(id, now)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_spreads_and_silence_means_down() {
        let mut a = Membership::new("a", 0, 100, 300);
        let mut b = Membership::new("b", 0, 100, 300);
        b.beat(10);
        let (changed, behind) = a.merge(&b.digests(), 10);
        assert!(changed && behind, "a learns b and b lacks a");
        assert_eq!(a.ring_members(), ["a", "b"]);
        assert_eq!(a.state("b", 50), Some(MemberState::Alive));
        assert_eq!(a.state("b", 200), Some(MemberState::Suspect));
        assert_eq!(a.state("b", 500), Some(MemberState::Down));
        b.beat(510);
        a.merge(&b.digests(), 510);
        assert_eq!(a.state("b", 520), Some(MemberState::Alive));
    }

    #[test]
    fn left_is_sticky_until_a_new_incarnation() {
        let mut a = Membership::new("a", 0, 100, 300);
        let mut b = Membership::new("b", 0, 100, 300);
        a.merge(&b.digests(), 0);
        b.merge(&a.digests(), 0);
        assert!(a.mark_left("b"));
        b.merge(&a.digests(), 1);
        assert_eq!(b.state("b", 1), Some(MemberState::Left));
        assert_eq!(b.ring_members(), ["a"]);
        // b restarts and rejoins with a higher incarnation.
        let mut b2 = Membership::new("b", 2, 100, 300);
        b2.restore(&b.digests(), 2);
        a.merge(&b2.digests(), 3);
        assert_eq!(a.state("b", 3), Some(MemberState::Alive));
    }
}

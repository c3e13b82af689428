//! Membership by gossip: who is in the cluster, what part each member
//! plays in the ring, and who seems alive.
//!
//! Each member bumps its own heartbeat every gossip round and sends what it
//! knows of everyone to a few others. A member whose heartbeat has not
//! moved for `suspect_after` is suspect, after `down_after` down. Those two
//! are local judgements, never gossiped. A member's [`Status`] only moves
//! forward (waiting, joining, normal, leaving, left), so gossip merges it by
//! taking the later one; a new generation (the address started again on an
//! empty data directory) starts over.

use std::collections::BTreeMap;

use crate::msg::{Digest, NodeId, Status};

/// What separates a node's id from the generation in the id of its
/// ghost (see [`ghost_id`]).
const GHOST_MARK: &str = "#generation-";

/// The id under which the old generation of `id` stays in the table once
/// a new generation of the address appears (started again on an empty
/// data directory, or rejoining fresh after a long outage): a member that
/// is never up, leaving, so that its ranges are rebuilt on their new
/// owners from the other replicas (as a REMOVE does) before the new
/// generation may join. Ids containing the mark are never real addresses.
pub fn ghost_id(id: &str, generation: u64) -> NodeId {
    format!("{id}{GHOST_MARK}{generation}")
}

/// The ring id of a table made of `digests` (see [`Membership::ring_id`]).
pub fn ring_id_of<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> u64 {
    let mut read: Vec<&str> = Vec::new();
    let mut write: Vec<&str> = Vec::new();
    for d in digests {
        match d.status {
            Status::Normal => {
                read.push(&d.id);
                write.push(&d.id);
            }
            Status::Leaving => read.push(&d.id),
            Status::Joining => write.push(&d.id),
            Status::Waiting | Status::Left => {}
        }
    }
    ring_id(&read, &write)
}

/// The ring id of a read ring and a write ring given by their members:
/// a hash of both member lists (sorted), never 0.
pub fn ring_id<S: AsRef<str> + Ord>(read: &[S], write: &[S]) -> u64 {
    let mut text = String::new();
    for (tag, list) in [("r", read), ("w", write)] {
        let mut ids: Vec<&str> = list.iter().map(AsRef::as_ref).collect();
        ids.sort_unstable();
        text.push_str(tag);
        for id in ids {
            text.push_str(&id.len().to_string());
            text.push(':');
            text.push_str(id);
        }
    }
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()) | 1
}

/// Whether `id` is the ghost of an old generation ([`ghost_id`]).
pub fn is_ghost(id: &str) -> bool {
    id.contains(GHOST_MARK)
}

/// How a member looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// Not heard from for a while; still asked, but expected to fail.
    Suspect,
    /// Not heard from for long: not asked.
    Down,
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
            MemberState::Left => "left",
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    d: Digest,
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
    /// [`Membership::ring_id`], kept up to date by every change of an id
    /// or a status (a request to a replica carries it, its own included:
    /// hashing the table for each was a third of a microsecond).
    ring: u64,
}

impl Membership {
    /// A table holding only `me`, with `status`, in its first generation
    /// `generation` (any number that grows between starts on an empty
    /// data directory, such as the time).
    pub fn new(
        me: &str,
        now: u64,
        status: Status,
        generation: u64,
        suspect_after: u64,
        down_after: u64,
    ) -> Self {
        let mut members = BTreeMap::new();
        let d = Digest {
            id: me.to_string(),
            generation,
            incarnation: 0,
            heartbeat: 0,
            status,
            view: 0,
            synced: 0,
        };
        members.insert(me.to_string(), Member { d, heard: now });
        let ring = ring_id_of(members.values().map(|m| &m.d));
        Membership {
            me: me.to_string(),
            members,
            suspect_after,
            down_after,
            ring,
        }
    }

    /// Recomputes the ring id after ids or statuses changed.
    fn rehash(&mut self) {
        self.ring = ring_id_of(self.members.values().map(|m| &m.d));
    }

    /// Restores a table saved with [`Membership::digests`]. Others count
    /// as just heard from; `me` comes back with a higher incarnation and
    /// the status it had (a node that left stays out).
    pub fn restore(&mut self, digests: &[Digest], now: u64) {
        for d in digests {
            self.members.insert(
                d.id.clone(),
                Member {
                    d: d.clone(),
                    heard: now,
                },
            );
        }
        if let Some(me) = self.members.get_mut(&self.me) {
            me.d.incarnation += 1;
        }
        self.rehash();
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    fn my(&mut self) -> &mut Digest {
        let me = self.me.clone();
        &mut self
            .members
            .get_mut(&me)
            .unwrap_or_else(|| unreachable!("a table always holds its own node"))
            .d
    }

    /// Bumps this node's heartbeat (once per gossip round).
    pub fn beat(&mut self, now: u64) {
        let me = self.me.clone();
        if let Some(m) = self.members.get_mut(&me) {
            m.d.heartbeat += 1;
            m.heard = now;
        }
    }

    /// Publishes this node's view of the ring and the rebalance it has
    /// finished receiving (carried by the next gossip).
    pub fn set_mine(&mut self, view: u64, synced: u64) {
        let my = self.my();
        my.view = view;
        my.synced = synced;
    }

    /// What this node knows, for gossip.
    pub fn digests(&self) -> Vec<Digest> {
        self.members.values().map(|m| m.d.clone()).collect()
    }

    /// The ring id of this table: a hash of the members of the read ring
    /// (normal and leaving) and of the write ring (joining and normal),
    /// the part of the table that decides which nodes replicate a key.
    /// Two tables with the same id place every key on the same replicas.
    /// Messages that read or write carry it, and a replica serves them
    /// only if its own is the same (equality, not an order: two tables
    /// may each know a change the other lacks, and neither is "newer").
    pub fn ring_id(&self) -> u64 {
        debug_assert_eq!(self.ring, ring_id_of(self.members.values().map(|m| &m.d)));
        self.ring
    }

    /// The ids of every member in the table (this node, ghosts and those
    /// that left included), without copying their digests.
    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.members.keys()
    }

    /// What this node knows of `id`.
    pub fn digest(&self, id: &str) -> Option<&Digest> {
        self.members.get(id).map(|m| &m.d)
    }

    /// Merges gossip. Returns whether anything changed, and whether the
    /// sender seems to know less than we do (so we should answer).
    pub fn merge(&mut self, digests: &[Digest], now: u64) -> (bool, bool) {
        let mut changed = false;
        for d in digests {
            changed |= self.merge_one(d, now);
        }
        if changed {
            self.rehash();
        }
        // Heartbeats spread by the regular rounds; answer only news about
        // who is a member (someone unknown to the sender, a newer
        // generation or incarnation, a later status).
        let theirs: BTreeMap<&str, (u64, u64, Status)> = digests
            .iter()
            .map(|d| (d.id.as_str(), (d.generation, d.incarnation, d.status)))
            .collect();
        let behind = self.members.iter().any(|(id, m)| {
            theirs.get(id.as_str()).is_none_or(|&(g, inc, st)| {
                (g, inc) < (m.d.generation, m.d.incarnation)
                    || (g == m.d.generation && st < m.d.status)
            })
        });
        (changed, behind)
    }

    fn merge_one(&mut self, d: &Digest, now: u64) -> bool {
        let Some(m) = self.members.get_mut(&d.id) else {
            let m = Member {
                d: d.clone(),
                heard: now,
            };
            self.members.insert(d.id.clone(), m);
            return true;
        };
        if d.generation != m.d.generation {
            if d.generation < m.d.generation || d.id == self.me {
                return false;
            }
            let old = std::mem::replace(&mut m.d, d.clone());
            m.heard = now;
            if matches!(old.status, Status::Normal | Status::Leaving) {
                // The old generation held ranges: they are rebuilt from
                // the other replicas, as for a removed node.
                let ghost = ghost_id(&old.id, old.generation);
                self.members.entry(ghost.clone()).or_insert(Member {
                    d: Digest {
                        id: ghost,
                        status: Status::Leaving,
                        view: 0,
                        synced: 0,
                        ..old
                    },
                    heard: 0,
                });
            }
            return true;
        }
        let mut changed = false;
        if (d.incarnation, d.heartbeat) > (m.d.incarnation, m.d.heartbeat) {
            if d.id != self.me {
                m.heard = now;
                m.d.view = d.view;
                m.d.synced = d.synced;
            }
            m.d.incarnation = m.d.incarnation.max(d.incarnation);
            m.d.heartbeat = m.d.heartbeat.max(d.heartbeat);
            changed = true;
        }
        if d.status > m.d.status {
            m.d.status = d.status;
            changed = true;
        }
        changed
    }

    /// Moves `id` forward to `status`. Returns false if it is unknown or
    /// already there or beyond.
    pub fn set_status(&mut self, id: &str, status: Status) -> bool {
        match self.members.get_mut(id) {
            Some(m) if m.d.status < status => {
                m.d.status = status;
                self.rehash();
                true
            }
            _ => false,
        }
    }

    /// The status of `id`, if it is known.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.members.get(id).map(|m| m.d.status)
    }

    /// The state of `id` at time `now`, if it is known.
    pub fn state(&self, id: &str, now: u64) -> Option<MemberState> {
        let m = self.members.get(id)?;
        Some(if m.d.status == Status::Left {
            MemberState::Left
        } else if id == self.me {
            MemberState::Alive
        } else if is_ghost(id) {
            MemberState::Down
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

    /// Members with one of these statuses, sorted.
    pub fn with_status(&self, statuses: &[Status]) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| statuses.contains(&m.d.status))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Members that have not left, sorted.
    pub fn current(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.d.status != Status::Left)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many members have not left.
    pub fn current_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.d.status != Status::Left)
            .count()
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

    fn table(me: &str, status: Status) -> Membership {
        Membership::new(me, 0, status, 1, 100, 300)
    }

    #[test]
    fn gossip_spreads_and_silence_means_down() {
        let mut a = table("a", Status::Normal);
        let mut b = table("b", Status::Waiting);
        b.beat(10);
        let (changed, behind) = a.merge(&b.digests(), 10);
        assert!(changed && behind, "a learns b and b lacks a");
        assert_eq!(a.current(), ["a", "b"]);
        assert_eq!(a.status("b"), Some(Status::Waiting));
        assert_eq!(a.state("b", 50), Some(MemberState::Alive));
        assert_eq!(a.state("b", 200), Some(MemberState::Suspect));
        assert_eq!(a.state("b", 500), Some(MemberState::Down));
        b.beat(510);
        a.merge(&b.digests(), 510);
        assert_eq!(a.state("b", 520), Some(MemberState::Alive));
    }

    #[test]
    fn status_only_moves_forward_and_left_is_sticky() {
        let mut a = table("a", Status::Normal);
        let mut b = table("b", Status::Normal);
        a.merge(&b.digests(), 0);
        b.merge(&a.digests(), 0);
        assert!(a.set_status("b", Status::Leaving));
        assert!(!a.set_status("b", Status::Normal), "no way back");
        b.merge(&a.digests(), 1);
        assert_eq!(b.status("b"), Some(Status::Leaving));
        assert!(a.set_status("b", Status::Left));
        b.merge(&a.digests(), 2);
        assert_eq!(b.state("b", 2), Some(MemberState::Left));
        assert_eq!(b.current(), ["a"]);
        // b restarts from its saved table, with a higher incarnation: it
        // stays out.
        let mut b2 = table("b", Status::Normal);
        b2.restore(&b.digests(), 3);
        a.merge(&b2.digests(), 3);
        assert_eq!(a.state("b", 3), Some(MemberState::Left));
        // Started again on an empty data directory: a new generation.
        let mut b3 = Membership::new("b", 4, Status::Waiting, 2, 100, 300);
        b3.beat(4);
        a.merge(&b3.digests(), 4);
        assert_eq!(a.status("b"), Some(Status::Waiting));
        assert_eq!(a.current(), ["a", "b"]);
    }
}

//! Joining, leaving and removing members, gossip, invitations, and the contact
//! check of a node restarted after an outage.

use super::*;

impl Node {
    /// Hands back the last contact recorded from [`Output::Contact`]
    /// before a restart; `holds_data`: whether the store holds data. A
    /// member restarted with data then serves none of it to peers until
    /// its first contact has checked, against the peer's clock too, that
    /// it was not away longer than the tombstone grace allows (else it
    /// asks, with [`Output::RejoinFresh`], to start again afresh).
    pub fn restore_contact(&mut self, last: Option<u64>, holds_data: bool) {
        self.contact = crate::outage::Contact::new(last);
        self.contact_check = holds_data
            && last.is_some()
            && !self.heard_peer
            && self.cfg.tombstone_grace > 0
            && !self.cfg.planted.no_grace_check;
    }

    /// Why this node gave up its data, if it did ([`Output::RejoinFresh`]).
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Whether this node still waits for its first contact to check how
    /// long it was away before it serves its data to peers.
    pub fn awaiting_contact_check(&self) -> bool {
        self.contact_check
    }

    /// A gossip from peer `from`, whose clock reads `clock`: a contact with
    /// the cluster. The first after a restart checks the outage's length.
    /// Returns false if this node must give up its data.
    pub(super) fn contact_from(&mut self, now: u64, from: &str, clock: u64) -> bool {
        if from == self.cfg.id {
            return true;
        }
        if self.contact_check {
            self.contact_check = false;
            let grace = self.cfg.tombstone_grace;
            let last = self.contact.last();
            let max_offset = self.cfg.max_clock_offset;
            if let Some(why) =
                crate::outage::stale_at_first_contact(last, now, clock, grace, max_offset)
            {
                self.log(Event::RejoiningFresh { why: why.clone() });
                self.stale = Some(why.clone());
                self.out.push_back(Output::RejoinFresh(why));
                return false;
            }
        }
        // Well inside the grace, however short it is configured.
        let every = match self.cfg.tombstone_grace {
            0 => self.cfg.contact_record_interval,
            g => self.cfg.contact_record_interval.min(g / 8),
        }
        .max(1);
        let ahead = self.cfg.max_clock_offset;
        if let Some(t) = self.contact.heard(now, clock, ahead, every) {
            self.out.push_back(Output::Contact(t));
        }
        true
    }

    /// Members with their state, status and ring share.
    pub fn view(&self, now: u64) -> Vec<MemberInfo> {
        let shares = self.read_ring.shares(1);
        self.members
            .all(now)
            .into_iter()
            .filter(|(id, state)| !(crate::membership::is_ghost(id) && *state == MemberState::Left))
            .map(|(id, state)| MemberInfo {
                share: shares.get(&id).copied().unwrap_or(0.0),
                status: self.members.status(&id).unwrap_or(Status::Left),
                id,
                state,
            })
            .collect()
    }

    /// Whether this node has been removed from the cluster.
    pub fn has_left(&self, now: u64) -> bool {
        self.members.state(&self.cfg.id, now) == Some(MemberState::Left)
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        self.members.status(&self.cfg.id).unwrap_or(Status::Left)
    }

    /// Contacts `seed` (host:port) to join its cluster, and keeps
    /// contacting it every gossip round until some member answers. Until
    /// then the node refuses client operations rather than act as a
    /// cluster of one. A node that is alone becomes a member waiting for
    /// its turn to receive its ranges; one already in a cluster only uses
    /// `seed` to find it again.
    pub fn join(&mut self, now: u64, seed: &str) {
        if seed == self.cfg.id {
            return;
        }
        if self.members.current().len() <= 1 && self.status() == Status::Normal {
            self.members = Membership::new(
                &self.cfg.id,
                now,
                Status::Waiting,
                now,
                self.cfg.suspect_after,
                self.cfg.down_after,
            );
            self.heard_peer = true;
            self.recompute_rings();
            self.persist();
        }
        if !self.seeds.iter().any(|s| s == seed) {
            self.seeds.push(seed.to_string());
        }
        self.contact_seeds(now);
    }

    fn contact_seeds(&mut self, now: u64) {
        self.members.beat(now);
        let members = self.members.digests();
        for seed in self.seeds.clone() {
            self.send(
                &seed,
                PeerMsg::Gossip {
                    members: members.clone(),
                    clock: now,
                    number: self.number,
                },
            );
        }
    }

    /// Whether the node waits to hear from the cluster it was told to join
    /// (or, restarted, from any peer, so that it does not coordinate with
    /// an outdated view of the ring).
    pub fn is_joining(&self) -> bool {
        let alone = self.members.current_count() <= 1;
        let newcomer = matches!(self.status(), Status::Waiting | Status::Joining);
        (alone && (newcomer || !self.seeds.is_empty())) || !self.heard_peer || self.stale.is_some()
    }

    /// Decommissions `node`, which must be up: it stops taking new writes,
    /// its ranges stream to their new owners, and it leaves the ring once
    /// they hold them. Refused while another node joins or leaves.
    /// Returns what happened, or why not.
    pub fn leave(&mut self, now: u64, node: &str) -> Result<String, AdminError> {
        let status = self.check_member(node)?;
        if !self.members.is_up(node, now) {
            return Err(AdminError::Down { node: node.into() });
        }
        if status != Status::Normal {
            return Err(AdminError::NotNormal {
                node: node.into(),
                status,
            });
        }
        if let Some(busy) = self.busy() {
            return Err(busy);
        }
        if self.read_ring.nodes().len() <= 1 {
            return Err(AdminError::OnlyHolder { node: node.into() });
        }
        self.change_status(node, Status::Leaving);
        Ok(format!(
            "{node} is leaving: its ranges stream to their new owners (CLUSTER shows progress)"
        ))
    }

    /// Removes `node`, which must be down, for good: its ranges are
    /// rebuilt on their new owners from the surviving replicas. Allowed
    /// during another rebalance (a dead node may be what holds it up).
    pub fn remove(&mut self, now: u64, node: &str) -> Result<String, AdminError> {
        let status = self.check_member(node)?;
        if node == self.cfg.id {
            return Err(AdminError::IsSelf { node: node.into() });
        }
        if self.members.is_up(node, now) {
            // Right after a crash it still looks up: say how long until
            // failure detection marks it down.
            return Err(AdminError::NotYetDown {
                node: node.into(),
                down_after_ms: self.cfg.down_after,
            });
        }
        match status {
            // It holds no range yet: it simply goes.
            Status::Waiting | Status::Joining => {
                self.change_status(node, Status::Left);
                Ok(format!("{node} removed (it held no ranges yet)"))
            }
            Status::Normal => {
                if self.read_ring.nodes().len() <= 1 {
                    return Err(AdminError::OnlyHolder { node: node.into() });
                }
                self.change_status(node, Status::Leaving);
                Ok(format!(
                    "{node} is being removed: its ranges are rebuilt from the other replicas (CLUSTER shows progress)"
                ))
            }
            Status::Leaving | Status::Left => Ok(format!("{node} is already {}", status.name())),
        }
    }

    fn check_member(&self, node: &str) -> Result<Status, AdminError> {
        match self.members.status(node) {
            None => Err(AdminError::NotMember { node: node.into() }),
            Some(Status::Left) => Err(AdminError::AlreadyLeft { node: node.into() }),
            Some(s) => Ok(s),
        }
    }

    /// Why another join or leave cannot start now, if it cannot.
    pub(super) fn busy(&self) -> Option<AdminError> {
        let moving = self
            .members
            .with_status(&[Status::Joining, Status::Leaving]);
        (self.transition.is_some() || !moving.is_empty()).then_some(AdminError::Busy { moving })
    }

    pub(super) fn change_status(&mut self, node: &str, status: Status) {
        if self.members.set_status(node, status) {
            self.log(Event::StatusChanged {
                id: node.to_string(),
                status,
            });
            self.recompute_rings();
            self.persist();
            self.tell_everyone();
        }
    }

    /// Gossips to every member at once (news that should not wait for the
    /// random rounds).
    pub(super) fn tell_everyone(&mut self) {
        let members = self.members.digests();
        for peer in self.members.current() {
            if peer != self.cfg.id && !crate::membership::is_ghost(&peer) {
                let msg = PeerMsg::Gossip {
                    members: members.clone(),
                    clock: self.last_now,
                    number: self.number,
                };
                self.send(&peer, msg);
            }
        }
    }

    pub(super) fn on_invite(&mut self, now: u64, from: &str) {
        if self.members.current().len() <= 1 && self.status() == Status::Normal {
            self.log(Event::Invited {
                by: from.to_string(),
            });
            self.join(now, from);
        } else {
            self.log(Event::InviteIgnored {
                by: from.to_string(),
            });
        }
    }

    /// Asks the node at `addr` to join this node's cluster (it does if it
    /// is alone).
    pub fn invite(&mut self, addr: &str) {
        if addr != self.cfg.id {
            self.send(addr, PeerMsg::Invite);
        }
    }

    pub(super) fn on_gossip(&mut self, now: u64, from: &str, digests: &[Digest]) {
        let statuses = |m: &Membership| {
            m.digests()
                .into_iter()
                .map(|d| (d.id, d.status))
                .collect::<Vec<_>>()
        };
        let before = statuses(&self.members);
        let (changed, behind) = self.members.merge(digests, now);
        if from != self.cfg.id {
            self.heard_peer = true;
        }
        if changed && statuses(&self.members) != before {
            self.recompute_rings();
            self.persist();
        }
        if behind && from != self.cfg.id {
            self.members.beat(now);
            let members = self.members.digests();
            self.send(
                from,
                PeerMsg::Gossip {
                    members,
                    clock: now,
                    number: self.number,
                },
            );
        }
    }

    pub(super) fn gossip_round(&mut self, now: u64) {
        self.members.beat(now);
        let others: Vec<NodeId> = self
            .members
            .all(now)
            .into_iter()
            .filter(|(id, s)| {
                *id != self.cfg.id && *s != MemberState::Left && !crate::membership::is_ghost(id)
            })
            .filter(|(id, _)| self.members.status(id) != Some(Status::Left))
            .map(|(id, _)| id)
            .collect();
        if others.is_empty() {
            return self.contact_seeds(now);
        }
        let members = self.members.digests();
        let fanout = others.len().min(2);
        let first = (self.random() % others.len() as u64) as usize;
        for k in 0..fanout {
            let to = others[(first + k) % others.len()].clone();
            self.send(
                &to,
                PeerMsg::Gossip {
                    members: members.clone(),
                    clock: now,
                    number: self.number,
                },
            );
        }
    }
}

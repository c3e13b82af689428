//! Recomputing the rings on membership changes, fencing stale-ring requests,
//! and retrying operations after a ring change.

use super::rebalancing::wire;
use super::*;

/// How many refusals for a differing ring an operation is carried on
/// after at once (see `Node::on_ring_differs`).
const MAX_RING_RETRIES: u32 = 8;

impl Node {
    /// Rebuilds the rings from the members' statuses; a new rebalance
    /// gets its plan.
    pub(super) fn recompute_rings(&mut self) {
        let before = self.transition;
        self.recompute_rings_quietly();
        if self.transition == before {
            return;
        }
        let joining = self.members.with_status(&[Status::Joining]);
        let leaving = self.members.with_status(&[Status::Leaving]);
        if self.transition.is_none() {
            self.stats.rebalances_done += 1;
            self.log(Event::RebalanceOver {
                ring: self.read_ring.nodes().to_vec(),
            });
            return;
        }
        let receives = (self.synced != self.transition).then_some(self.plan.gains.len());
        self.log(Event::RebalanceStarted {
            joining,
            leaving,
            receives,
        });
    }

    /// [`Node::recompute_rings`] without the log line: the caller says
    /// what happened.
    pub(super) fn recompute_rings_quietly(&mut self) {
        let read = self.members.with_status(&[Status::Normal, Status::Leaving]);
        let write = self.members.with_status(&[Status::Joining, Status::Normal]);
        // A rebalance's id: the ring id of its two rings (odd, never the
        // 0 that stands for none on the wire).
        let transition = (read != write).then(|| crate::membership::ring_id(&read, &write));
        if self.read_ring.nodes() != read.as_slice() {
            self.read_ring = Ring::with_nodes(self.cfg.vnodes, &read);
            self.settled_since = None;
            self.cleanup_due = true;
            self.regroup_due = true;
        }
        if self.write_ring.nodes() != write.as_slice() {
            self.write_ring = Ring::with_nodes(self.cfg.vnodes, &write);
            self.settled_since = None;
            self.cleanup_due = true;
            self.regroup_due = true;
        }
        if transition != self.transition {
            self.cleanup_due = true;
            self.regroup_due = true;
            self.transition = transition;
            self.converged_since = None;
            self.stream = None;
            self.plan = rebalance::Plan::default();
            if let Some(transition) = transition {
                let (nr, nw) = (self.n_of(&self.read_ring), self.n_of(&self.write_ring));
                let r = self.cfg.read_quorum;
                self.plan = rebalance::plan(
                    &self.cfg.id,
                    &self.read_ring,
                    nr,
                    &self.write_ring,
                    nw,
                    |n| quorum_of(r, n),
                );
                if self.plan.gains.is_empty() || !self.cfg.stream_ranges {
                    self.synced = Some(transition);
                }
                if self.synced != Some(transition) && self.cfg.planted.forget_gained {
                    let gained = self
                        .plan
                        .gains
                        .iter()
                        .flat_map(|g| g.ranges.iter().copied());
                    self.forget_gained.extend(gained);
                }
            }
        }
        if let Some(job) = self
            .cleanup_job
            .as_ref()
            .filter(|_| !self.cfg.planted.no_cleanup_keep)
        {
            // Ranges given back to this node are not forgotten: the job
            // waits for the shard it is cleaning, and cleans the others
            // without them, before anything is written there.
            job.keep(&self.owned_ranges());
        }
        self.members
            .set_mine(wire(self.transition), wire(self.synced));
    }

    /// A request from `from` whose coordinator's ring id is `ring`: the
    /// request, to serve, if this node's ring is the same; else `None`,
    /// and the coordinator is told this node's members (so that it merges
    /// them, tells this node what it knew that this node lacked, and asks
    /// again once both agree).
    ///
    /// A write refused so is still stored here if this node is one of the
    /// key's replicas under its own rings (not counted: the coordinator
    /// sends it again under the merged ring). The coordinator may have
    /// finished the write with the other replicas' answers, and then never
    /// sends it again: without this, the copy here would be missing. Its
    /// timestamp is not observed: a refused message does not move the
    /// clock.
    pub(super) fn fence(
        &mut self,
        now: u64,
        from: &str,
        ring: u64,
        request: PeerMsg,
        store: &dyn ReplicaStore,
    ) -> Option<PeerMsg> {
        if ring == self.members.ring_id() || self.cfg.planted.no_ring_fence {
            return Some(request);
        }
        // This node's own page of a listing asked under the old ring: a
        // listing is not restarted, and counts pages asked under an old
        // ring as they are ([`Node::on_list_reply`]), so its own store
        // answers it (refused, the listing would wait for its deadline).
        if from == self.cfg.id && matches!(request, PeerMsg::ListPage { .. }) && self.serves_peers()
        {
            if let Some(reply) = serve_replica(store, &request) {
                self.send(from, reply);
            }
            return None;
        }
        let mut ack = None;
        if let PeerMsg::Replicate { key, version, .. } = &request {
            let mine = union(&self.groups(key, true)).contains(&self.cfg.id);
            if mine
                && !self.contact_check
                && self.stale.is_none()
                && !self.too_far_ahead(now, from, version.ts, Refused::Write)
            {
                ack = serve_replica(store, &request).map(Box::new);
            }
        }
        let op = match &request {
            PeerMsg::Replicate { op, .. } | PeerMsg::Read { op, .. } => *op,
            PeerMsg::ListPage { op, .. } => *op,
            _ => return Some(request),
        };
        let members = self.members.digests();
        self.send(from, PeerMsg::RingDiffers { op, members, ack });
        None
    }

    /// A replica refused operation `op` because its ring differs from this
    /// node's: merge what it knows (if this node knew something it lacked,
    /// [`Node::on_gossip`] sends it this node's table, so that both then
    /// hold the merge of the two tables), and carry the operation on under
    /// the merged ring (never answering from the old one). This converges:
    /// after the merge this node's table holds the replica's, so their
    /// rings differ only by news this node has just sent it, and the
    /// request asked again follows that gossip on the same link. Each
    /// refusal costs one round trip, and the operation's deadline bounds
    /// how many it may take while news keeps coming.
    pub(super) fn on_ring_differs(
        &mut self,
        now: u64,
        from: &str,
        op: u64,
        members: &[Digest],
        ack: Option<Box<PeerMsg>>,
    ) {
        self.on_gossip(now, from, members);
        // The refusing replica is asked again (once per refusal: the others
        // keep their sends), also when this node's ring did not change (it
        // was the replica that lacked news, sent to it just now).
        if let Some(Pending {
            work: Work::Write { sent, .. },
            ..
        }) = self.pending.get_mut(&op)
        {
            sent.remove(from);
        }
        // The merge may have moved the key: the write's groups become the
        // current ones before the carried answer is counted, so that it
        // can only complete on a quorum of the key's owners now (not of
        // the groups it was first sent to).
        let groups = match self.pending.get(&op).map(|p| &p.work) {
            Some(Work::Write { key, .. }) => Some(self.groups(key, true)),
            _ => None,
        };
        if let (Some(groups), Some(p)) = (groups, self.pending.get_mut(&op)) {
            p.groups = groups;
        }
        // A write the replica stored all the same: its answer counts.
        if let Some(PeerMsg::ReplicateAck { existed, newer, .. }) = ack.as_deref() {
            let far = newer.is_some_and(|v| self.too_far_ahead(now, from, v.ts, Refused::WriteAck));
            if !far {
                self.on_write_ack(now, op, from, *existed, *newer);
            } else if let Some(Pending {
                work: Work::Write { maybe_stored, .. },
                ..
            }) = self.pending.get_mut(&op)
            {
                // An answer not believed: the write may be stored there,
                // so it is never re-stamped.
                *maybe_stored = true;
            }
        }
        // Carried on at once a few times (one round trip each normally
        // converges); past that, rings that stay different (a table
        // restored from an old backup, say) would make every operation
        // bounce at network speed: a write is carried on at each tick
        // instead ([`Node::retry_refused`]), until the rings agree or its
        // deadline passes; a read waits for its other replicas.
        let refusals = self.ring_refusals.entry(op).or_insert(0);
        *refusals += 1;
        if *refusals <= MAX_RING_RETRIES {
            self.retry_op(now, op);
        }
    }

    /// Each tick: carries on the writes refused for a different ring
    /// more often than they are carried on at once. (The refusals already
    /// took the replica out of the write's sends and set its groups to
    /// the current ones, so no regroup would ever ask that replica again.)
    pub(super) fn retry_refused(&mut self, now: u64) {
        // Writes only: a read restarted keeps no answers, so restarting
        // it at every tick could keep it from ever completing; past the
        // limit it waits for the other replicas instead.
        let writes = |op: &u64| {
            self.pending
                .get(op)
                .is_some_and(|p| matches!(p.work, Work::Write { .. }))
        };
        let ops: Vec<u64> = (self.ring_refusals.iter())
            .filter(|&(op, n)| *n > MAX_RING_RETRIES && writes(op))
            .map(|(op, _)| *op)
            .collect();
        for op in ops {
            self.retry_op(now, op);
        }
    }

    /// Carries pending operation `op` on under the current rings: a read
    /// starts again (with its deadline); a write keeps its version (so
    /// that it never takes effect twice) and is sent to every replica of
    /// its new groups that has not answered.
    fn retry_op(&mut self, now: u64, op: u64) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        match &p.work {
            Work::Read { key, tries, .. } => {
                let (key, tries, client, deadline) = (key.clone(), *tries, p.client, p.deadline);
                self.pending.remove(&op);
                let refusals = self.ring_refusals.remove(&op);
                let next = self.next_op;
                self.send_read(now, deadline, client, key, tries);
                // The read starts again as a new operation: it keeps its
                // count of refusals, so that a replica whose ring stays
                // different stops restarting it after a few (it then
                // waits for the other replicas' answers or its deadline).
                if let Some(n) = refusals.filter(|_| self.pending.contains_key(&next)) {
                    self.ring_refusals.insert(next, n);
                }
            }
            Work::Write { .. } => self.dispatch_write(now, op),
            Work::List { .. } => {} // not restarted: the client asks again
        }
    }

    /// After the rings changed: every pending read or write whose replica
    /// groups changed starts again under the new ones.
    pub(super) fn regroup_pending(&mut self, now: u64) {
        if !std::mem::take(&mut self.regroup_due) || self.cfg.planted.no_ring_fence {
            return;
        }
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.work {
                Work::Read { key, .. } => p.groups != self.groups(key, false),
                Work::Write { key, .. } => p.groups != self.groups(key, true),
                Work::List { .. } => false,
            })
            .map(|(op, _)| *op)
            .collect();
        for op in stale {
            self.retry_op(now, op);
        }
    }
}

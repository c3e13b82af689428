//! The coordinator's read path (quorum reads, read repair) and listings.

use super::*;

/// One node's page of a listing: entries, and whether it had more.
/// One node's page of a listing: its entries and where it stopped (see
/// [`PeerMsg::ListReply`]).
pub(super) type Page = (Vec<(Vec<u8>, Stamped)>, Option<Vec<u8>>);

/// Rounds of queries a read makes at most when its repair keeps finding
/// newer versions.
pub(super) const READ_TRIES: u32 = 3;

impl Node {
    pub(super) fn start_read(&mut self, now: u64, client: u64, key: Vec<u8>) {
        let deadline = now + self.cfg.request_timeout;
        self.send_read(now, deadline, client, key, 1);
    }

    /// Sends round `tries` of a read's queries (a retry keeps the first
    /// round's deadline).
    pub(super) fn send_read(
        &mut self,
        now: u64,
        deadline: u64,
        client: u64,
        key: Vec<u8>,
        tries: u32,
    ) {
        let groups = self.groups(&key, false);
        let replicas = union(&groups);
        let work = Work::Read {
            key: key.clone(),
            best: None,
            seen: Vec::new(),
            holders: None,
            tries,
        };
        let op = self.new_op(now, client, groups, work);
        if let Some(p) = self.pending.get_mut(&op) {
            p.deadline = deadline;
        }
        for node in replicas {
            if crate::membership::is_ghost(&node) {
                continue; // never up, never answers: its ranges are rebuilt
            }
            // Its own copy too, through the driver ([`Output::Local`]).
            let msg = PeerMsg::Read {
                op,
                key: key.clone(),
            };
            self.send_to(node, msg);
        }
    }

    pub(super) fn start_list(
        &mut self,
        now: u64,
        client: u64,
        (prefix, from, after): (Vec<u8>, u64, Option<Vec<u8>>),
        limit: u32,
    ) {
        let limit = limit.clamp(1, MAX_LIST_PAGE);
        let mut nodes: Vec<NodeId> = self.read_ring.nodes().to_vec();
        for n in self.write_ring.nodes() {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        nodes.retain(|n| self.members.is_up(n, now));
        let work = Work::List {
            limit,
            pages: Vec::new(),
            ring: self.ring_id(),
        };
        // Each key's replicas among the nodes that answer must overlap its
        // last write quorum: with at most W - 1 nodes silent, at least
        // N - W + 1 of its replicas answer, and that overlaps W.
        let (_, w, _) = self.quorums();
        let needed = nodes.len().saturating_sub(w - 1).max(1);
        let op = self.new_op(now, client, vec![(nodes.clone(), needed)], work);
        for node in nodes {
            let msg = PeerMsg::ListPage {
                op,
                prefix: prefix.clone(),
                from,
                after: after.clone(),
                limit,
            };
            self.send_to(node, msg);
        }
    }

    pub(super) fn on_read_reply(&mut self, op: u64, from: &str, state: Option<Stamped>) {
        let Some(p) = self.answer(op, from) else {
            return;
        };
        if let Work::Read {
            best,
            seen,
            holders,
            ..
        } = &mut p.work
        {
            if holders.is_some() {
                // Repair of `best` has begun: a later answer must not
                // change what this read returns.
                return;
            }
            seen.push((from.to_string(), state.as_ref().map(|s| s.version)));
            if let Some(s) = state {
                if best.as_ref().is_none_or(|b| s.version > b.version) {
                    *best = Some(s);
                }
            }
        }
        if met(&p.groups, &p.answered) {
            self.conclude_read(op);
        }
    }

    /// A read has its quorum. If fewer than W of the replicas that answered
    /// hold the newest version, write it back to the stale ones and answer
    /// only once W hold it (blocking read repair: two quorum reads in a row
    /// never go backwards). Otherwise answer now and repair stale replicas
    /// in the background.
    fn conclude_read(&mut self, op: u64) {
        let (wq, read_repair) = (self.cfg.write_quorum, self.cfg.read_repair);
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        let Work::Read {
            key,
            best,
            seen,
            holders,
            ..
        } = &mut p.work
        else {
            return;
        };
        if holders.is_some() {
            return; // already repairing
        }
        let Some(newest_version) = best.as_ref().map(|b| b.version) else {
            return self.finish(op);
        };
        let is_fresh = |v: &Option<Ver>| *v == Some(newest_version);
        if !read_repair || seen.iter().all(|(_, v)| is_fresh(v)) {
            return self.finish(op);
        }
        let stale: Vec<NodeId> = seen
            .iter()
            .filter(|(_, v)| !is_fresh(v))
            .map(|(n, _)| n.clone())
            .collect();
        let fresh: BTreeSet<NodeId> = seen
            .iter()
            .filter(|(_, v)| is_fresh(v))
            .map(|(n, _)| n.clone())
            .collect();
        let blocking = !met_write(&p.groups, &fresh, wq);
        if blocking {
            *holders = Some(fresh);
        }
        let key = key.clone();
        let Some(newest) = best.clone() else {
            return self.finish(op);
        };
        let repair_op = if blocking { op } else { 0 };
        for node in stale {
            self.repair(repair_op, &node, &key, &newest);
        }
        if !blocking {
            self.finish(op);
        }
    }

    /// Writes `newest` to a stale replica (acks count toward `op`, 0: none).
    pub(super) fn repair(&mut self, op: u64, node: &str, key: &[u8], newest: &Stamped) {
        self.stats.read_repairs += 1;
        // To this node too, through the driver ([`Output::Local`]).
        let msg = PeerMsg::Replicate {
            op,
            key: key.to_vec(),
            value: newest.value.clone(),
            version: newest.version,
            expires_at: newest.expires_at,
        };
        self.send(node, msg);
    }

    /// Whether `node` is a replica of `key` in the read ring or, during
    /// a rebalance, in the write ring.
    fn owns(&self, node: &str, key: &[u8]) -> bool {
        let holds = |ring: &Ring| ring.preference_list(key, self.n_of(ring)).contains(&node);
        holds(&self.read_ring) || (self.transition.is_some() && holds(&self.write_ring))
    }

    pub(super) fn on_list_reply(
        &mut self,
        op: u64,
        from: &str,
        entries: Vec<(Vec<u8>, Stamped)>,
        next: Option<Vec<u8>>,
    ) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        // Only what `from` holds of keys it owns (in the read or the write
        // ring) counts: between the end of a rebalance and its cleanup it
        // still holds ranges it gave away, whose deletes the owners may
        // since have purged. Judged by the rings the pages were asked for
        // under: after a ring change the old owners' answers are what the
        // listing has (the new owners were not asked), so they count.
        let asked_under = match &p.work {
            Work::List { ring, .. } => Some(*ring),
            _ => None,
        };
        let mut entries = entries;
        if asked_under == Some(self.ring_id()) {
            entries.retain(|(k, _)| self.owns(from, k));
        }
        let Some(p) = self.answer(op, from) else {
            return;
        };
        if let Work::List { pages, .. } = &mut p.work {
            pages.push((entries, next));
        }
        if met(&p.groups, &p.answered) {
            self.finish(op);
        }
    }
}

//! The coordinator's own replica, reached through the same messages as
//! its peers ([`Output::Local`]): what the node does when its own copy is
//! refused, the decision a write's answers lead to, and
//! [`Node::serve_own`] for drivers that need not hold replies.

use super::*;

impl Node {
    /// Serves `msg`, an [`Output::Local`] of this node, at once: as a
    /// peer's request through [`crate::arrive`]'s checks, its writes
    /// durable before the answer is handed back (the store's own policy,
    /// on this thread), then the answer (or the refused message) handed
    /// to [`Node::handle_message`] from this node itself. For drivers and
    /// tests that need not hold replies; a server holds them for one
    /// group commit per pass instead.
    pub fn serve_own(&mut self, now: u64, msg: PeerMsg, store: &dyn ReplicaStore) {
        let me = self.cfg.id.clone();
        let view = self.replica_view(now);
        match front::arrive_as(store, &view, msg, false) {
            front::Arrival::Served {
                reply, observed, ..
            } => {
                if let Some(ts) = observed {
                    self.observe_timestamp(now, ts);
                }
                self.handle_message(now, &me, reply, store);
            }
            front::Arrival::ToNode(msg) => self.handle_message(now, &me, msg, store),
        }
    }

    /// [`Node::poll_output`], serving each message to itself on the way
    /// with [`Node::serve_own`] (at `now`): the next output that is not
    /// one. For drivers and tests that need not hold replies.
    pub fn poll_serving(&mut self, now: u64, store: &dyn ReplicaStore) -> Option<Output> {
        loop {
            match self.out.pop_front()? {
                Output::Local(msg) => self.serve_own(now, msg, store),
                other => return Some(other),
            }
        }
    }

    /// A request `msg` from `from` that this node refused without an
    /// answer (not serving yet, or too far ahead of the cluster's time).
    /// A peer's waits for its coordinator's deadline; this node's own
    /// copy of a write was stored nowhere, as one refused before it was
    /// sent ([`Node::dispatch_write`]): it no longer counts as sent or
    /// waited for, so the write decides on its other answers and may be
    /// stamped again. (A read this node refused itself waits for its
    /// other replicas, as for a peer's refusal.)
    pub(super) fn own_request_refused(&mut self, now: u64, from: &str, msg: &PeerMsg) {
        let PeerMsg::Replicate { op, version, .. } = msg else {
            return;
        };
        if from != self.cfg.id {
            return;
        }
        let Some(Pending {
            work:
                Work::Write {
                    version: mine,
                    sent,
                    asked,
                    ..
                },
            ..
        }) = self.pending.get_mut(op)
        else {
            return;
        };
        if mine != version {
            return; // a copy of another try
        }
        sent.remove(from);
        asked.remove(from);
        self.decide_write(now, *op);
    }

    /// Write `op` after an answer (or a refusal of its own copy): done
    /// once W replicas of each group stored it; otherwise, once every
    /// replica it waits for answered and one holds a newer version,
    /// stamped again if none stored it (and none may have), or failed as
    /// a conflict.
    pub(super) fn decide_write(&mut self, now: u64, op: u64) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        let Work::Write {
            newer: seen_newer,
            stored,
            asked,
            tries,
            maybe_stored,
            ..
        } = &p.work
        else {
            return;
        };
        if met(&p.groups, stored) {
            // W replicas held nothing newer when it landed, so no write
            // acknowledged before this one began is newer (quorums
            // intersect): an OK is true, even if another replica
            // reported a newer, concurrent write.
            return self.finish(op);
        }
        let all_answered = asked.iter().all(|r| p.answered.contains(r));
        let (Some(n), true) = (*seen_newer, all_answered) else {
            return;
        };
        if stored.is_empty() && !*maybe_stored {
            // No replica stored this version, so no read can have seen
            // it: stamp it again above what they hold.
            return self.restamp(now, op, n);
        }
        // Some replicas stored it, so a read may have returned it: writing
        // the value again under a new version could make it appear twice
        // around a newer write (not linearizable). It sits below the newer
        // write, which replaces it, and the client hears that the write did
        // not win. The clock takes note, so that a retry stamps above it.
        let (tries, client) = (*tries, p.client);
        self.pending.remove(&op);
        self.observe(n.ts);
        self.reply(client, ClientReply::Conflict { newer: n, tries });
    }
}

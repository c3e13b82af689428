//! The node's own replica, reached through the same messages as its
//! peers': each [`kv_replication::Output::Local`] is served through
//! [`kv_replication::arrive`], as an event loop serves a peer's request,
//! and its answer goes back to the node from the node itself. A write's
//! answer is held until the store reports it durable (`--fsync always`):
//! the thread asks for one flush per pass covering every answer held (a
//! group commit, shared with the event loops' writes) and never waits
//! for an fsync itself; the store's flushing thread wakes it when done.

use std::collections::VecDeque;

use kv_replication::node::ReplicaView;
use kv_replication::{Arrival, DurableTicket, PeerMsg};

use super::thread::ClusterThread;

/// Answers to the node's own copies of writes, held until durable.
#[derive(Default)]
pub(super) struct OwnHeld {
    /// In ticket order (the tickets of one thread only grow).
    held: VecDeque<(DurableTicket, PeerMsg)>,
    /// The furthest ticket a flush was asked for.
    asked: Option<DurableTicket>,
}

impl ClusterThread {
    /// Serves `msg`, the node's message to itself, as a peer's is served
    /// where it arrives; the answer goes to the node at once, or once
    /// durable ([`ClusterThread::settle_own`]); a refused message goes to
    /// the node, which refuses it for itself.
    pub(super) fn serve_own(&mut self, now: u64, msg: PeerMsg) {
        let store = &self.shared.store;
        let me = &self.handle.id;
        // The node's view as its event loops see it: its ring and whether
        // it serves read now, the cluster's time as published this pass
        // (what `serve_peer` checks a peer's write against).
        let view = ReplicaView {
            ring: self.node.ring_id(),
            serving: self.node.serves_peers(),
            clock_ms: self.handle.clock.now(now),
            max_offset_ms: self.shared.config.max_clock_offset_ms,
            planted: Default::default(),
        };
        match kv_replication::arrive(store, &view, msg) {
            Arrival::Served {
                reply,
                observed,
                durable,
            } => {
                if let Some(ts) = observed {
                    self.node.observe_timestamp(now, ts);
                }
                match durable {
                    None => self.node.handle_message(now, me, reply, store),
                    Some(ticket) => self.own.held.push_back((ticket, reply)),
                }
            }
            Arrival::ToNode(msg) => self.node.handle_message(now, me, msg, store),
        }
    }

    /// Hands the node the held answers whose writes are now durable. One
    /// whose fsync failed is dropped: the write is not acknowledged by
    /// this replica (the store is read-only from then on).
    pub(super) fn settle_own(&mut self, now: u64) {
        let mut failed = 0;
        while let Some((ticket, _)) = self.own.held.front() {
            let durable = self.shared.store.is_durable((*ticket).into());
            if matches!(durable, Ok(false)) {
                break;
            }
            let Some((_, reply)) = self.own.held.pop_front() else {
                break;
            };
            match durable {
                Ok(_) => self
                    .node
                    .handle_message(now, &self.handle.id, reply, &self.shared.store),
                Err(_) => failed += 1,
            }
        }
        if failed > 0 {
            log::warn!(
                "{failed} write{} of this node's own copies failed to become durable: not acknowledged",
                if failed == 1 { "" } else { "s" }
            );
        }
    }

    /// At the end of a pass: one flush for every answer held (the store's
    /// flushing thread runs it and wakes this thread).
    pub(super) fn request_own_durable(&mut self) {
        let Some((latest, _)) = self.own.held.back() else {
            return;
        };
        if self.own.asked < Some(*latest) {
            self.own.asked = Some(*latest);
            self.shared.store.request_durable((*latest).into());
        }
    }
}

//! A message from a peer (or from this node to itself), once the driver
//! has handed it to the node: refused, fenced by the ring, or dispatched
//! to the coordinator, membership, rebalancing or anti-entropy code.

use super::*;

impl Node {
    /// [`Node::handle_message`]'s work, between its cleanups and regroup.
    pub(super) fn on_message(
        &mut self,
        now: u64,
        from: &str,
        msg: PeerMsg,
        store: &dyn ReplicaStore,
    ) {
        self.last_now = self.last_now.max(now);
        if let PeerMsg::Gossip { number, .. } = &msg {
            self.check_number(from, *number);
        }
        if self.duplicates.contains(from) || self.stale.is_some() {
            return; // refused: its versions could tie with another node's
        }
        if let PeerMsg::Gossip { clock, .. } = &msg {
            if !self.contact_from(now, from, *clock) {
                return;
            }
        }
        // A replica request: served as the drivers serve it where it
        // arrives (with what this node knows now); what that refuses is
        // refused below, and logged.
        // Served durably here: the node cannot hold a reply for a ticket.
        // Its own requests are not served again: its driver served them
        // with this node's view, and what it refused (or failed to store)
        // is refused below.
        let arrival = if front::is_request(&msg) && from != self.cfg.id {
            front::arrive_as(store, &self.own_view(now), msg, false)
        } else {
            front::Arrival::ToNode(msg)
        };
        let msg = match arrival {
            front::Arrival::Served {
                reply, observed, ..
            } => {
                if let Some(ts) = observed {
                    self.observe(ts);
                }
                return self.send(from, reply);
            }
            front::Arrival::ToNode(msg) => msg,
        };
        let msg = match msg {
            // The old envelope: its sum says nothing of the ring.
            PeerMsg::InRing { request, .. } => match self.fence(now, from, 0, *request, store) {
                Some(request) => request,
                None => return,
            },
            PeerMsg::OnRing { ring, request } => {
                match self.fence(now, from, ring, *request, store) {
                    Some(request) => request,
                    None => return,
                }
            }
            other => other,
        };
        if self.contact_check
            && matches!(
                msg,
                PeerMsg::Read { .. }
                    | PeerMsg::Replicate { .. }
                    | PeerMsg::ListPage { .. }
                    | PeerMsg::StreamReq { .. }
                    | PeerMsg::AeDigest { .. }
                    | PeerMsg::AeKeys { .. }
                    | PeerMsg::AePull { .. }
            )
        {
            // Nothing of the old data leaves before the check (its own
            // copy of a write, refused, is stored nowhere).
            return self.own_request_refused(now, from, &msg);
        }
        // Its own store's answers are what it holds: not checked.
        let theirs = from != self.cfg.id;
        let far = match &msg {
            PeerMsg::Replicate { version, .. } => Some((version.ts, Refused::Write)),
            PeerMsg::ReadReply { state: Some(s), .. } if theirs => {
                Some((s.version.ts, Refused::ReadReply))
            }
            PeerMsg::ReplicateAck { newer: Some(v), .. } if theirs => {
                Some((v.ts, Refused::WriteAck))
            }
            _ => None,
        };
        if let Some((ts, what)) = far {
            if self.too_far_ahead(now, from, ts, what) {
                // Neither stored, observed nor counted.
                return self.own_request_refused(now, from, &msg);
            }
        }
        match msg {
            PeerMsg::Gossip {
                members,
                clock,
                number: _,
            } => {
                self.note_peer_clock(now, from, clock);
                self.on_gossip(now, from, &members)
            }
            // Served by `arrive` above, unless the store failed (no answer).
            PeerMsg::Replicate { .. }
            | PeerMsg::Read { .. }
            | PeerMsg::ListPage { .. }
            | PeerMsg::StreamReq { .. } => {}
            PeerMsg::StreamPage {
                transition,
                cursor,
                entries,
                keys,
                bytes,
                next,
                progress,
            } => {
                let page = StreamPageInfo {
                    transition,
                    cursor,
                    keys,
                    bytes,
                    next,
                    progress,
                };
                self.on_stream_page(now, from, page, &entries, store)
            }
            PeerMsg::Invite => self.on_invite(now, from),
            PeerMsg::ReplicateAck { op, existed, newer } => {
                self.on_write_ack(now, op, from, existed, newer)
            }
            PeerMsg::ReadReply { op, state } => {
                if let Some(s) = &state {
                    self.observe(s.version.ts);
                }
                self.on_read_reply(op, from, state);
            }
            PeerMsg::ListReply { op, entries, next } => self.on_list_reply(op, from, entries, next),
            PeerMsg::RingDiffers { op, members, ack } => {
                self.on_ring_differs(now, from, op, &members, ack)
            }
            // Nested envelopes: not sent by any node.
            PeerMsg::InRing { .. } | PeerMsg::OnRing { .. } => {}
            msg @ (PeerMsg::AeDigest { .. }
            | PeerMsg::AeKeys { .. }
            | PeerMsg::AePull { .. }
            | PeerMsg::AeValues { .. }) => {
                self.dispatch_ae(now, AeWork::Message(from.to_string(), msg), store)
            }
        }
    }
}

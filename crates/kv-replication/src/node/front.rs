//! The one entry point for a message arriving from a peer ([`arrive`]):
//! a replica request is served there, from the store, where it arrives
//! (a server's event loop, the simulator's delivery); anything else, and
//! any request it refuses, goes to the node. No I/O, threads or clocks:
//! what it must know of the node comes in a [`ReplicaView`].

use super::*;

/// What the serving side knows of its node when a message arrives: built
/// by [`Node::replica_view`], or by a driver from what the node's thread
/// published (a server's `ClusterHandle`).
#[derive(Clone, Copy, Debug)]
pub struct ReplicaView {
    /// The node's ring id: a request from a coordinator on another ring
    /// is not served (the node refuses it with [`PeerMsg::RingDiffers`]).
    pub ring: u64,
    /// Whether the node serves its data to peers: false before a node
    /// restarted on its data has checked how long it was away, and once
    /// it gave its data up.
    pub serving: bool,
    /// The clock (ms) a write's timestamp is checked against: the
    /// cluster's time as the node trusts it.
    pub clock_ms: u64,
    /// The maximum clock offset (ms): a write further ahead of
    /// `clock_ms` is not served (the node logs and refuses it).
    pub max_offset_ms: u64,
    /// The node's planted bugs (none in production).
    #[doc(hidden)]
    pub planted: Planted,
}

/// What became of a message from a peer ([`arrive`]).
#[derive(Debug)]
pub enum Arrival {
    /// A replica request served from the store: `reply` goes back on the
    /// link it came from (or, for a node's own copy, to
    /// [`Node::handle_message`] with the node's own id as the sender), and
    /// `observed`, the timestamp of a write it stored, is for the node's
    /// clock to observe ([`Node::observe_timestamp`]).
    ///
    /// Persist before reply: when `durable` is `Some`, the write the reply
    /// reports is applied but not yet durable, and the reply must be held
    /// until [`ReplicaStore::is_durable`] says the ticket is (ask for it
    /// with [`ReplicaStore::request_durable`], one flush for every reply
    /// held in a pass). If the store reports that the ticket never will be
    /// durable, the reply is dropped: the write is not acknowledged.
    Served {
        /// The answer to send back once `durable` is.
        reply: PeerMsg,
        /// A timestamp the node's clock must observe.
        observed: Option<u64>,
        /// What the store must make durable before `reply` may go.
        durable: Option<DurableTicket>,
    },
    /// For the node: hand it to [`Node::handle_message`].
    ToNode(PeerMsg),
}

/// A message `msg` arrives from a peer at a node seen as `view`: a replica
/// request (`Replicate`, `Read`, `ListPage`, `StreamReq`, bare or in a
/// [`PeerMsg::OnRing`] envelope of this ring) is served from `store` if
/// the node serves its data, the request's ring is the node's, and a
/// write is not too far ahead of the cluster's time. Everything else
/// goes to the node, which answers the rest and refuses (and logs) what
/// this refused, as it sees fit with what it knows then.
///
/// A write is served in the store's [`ReplicaStore::deferring`] scope: it
/// does not wait for an fsync on the caller's thread, and the ticket it
/// needs comes back in [`Arrival::Served`].
pub fn arrive(store: &dyn ReplicaStore, view: &ReplicaView, msg: PeerMsg) -> Arrival {
    arrive_as(store, view, msg, true)
}

/// [`arrive`], its writes deferred (`defer`) or durable when served (the
/// node's own slow path, which cannot hold a reply: `durable` is then
/// `None`).
pub(super) fn arrive_as(
    store: &dyn ReplicaStore,
    view: &ReplicaView,
    msg: PeerMsg,
    defer: bool,
) -> Arrival {
    let mut served = None;
    let durable = if defer {
        store.deferring(&mut || served = serve(store, view, &msg))
    } else {
        served = serve(store, view, &msg);
        None
    };
    match served {
        Some((reply, observed)) => Arrival::Served {
            reply,
            observed,
            durable,
        },
        None => Arrival::ToNode(msg),
    }
}

/// Whether [`arrive`] may serve `msg`: a replica request, in its ring
/// envelope or not (anything else always goes to the node). The node asks
/// before it builds its view, which costs a reading of the cluster's
/// time that the answers and gossip a coordinator gets need not pay
/// (0.3 µs a request on the coordinator, `benches/cluster_vs_single.sh`).
pub(super) fn is_request(msg: &PeerMsg) -> bool {
    matches!(
        msg,
        PeerMsg::OnRing { .. }
            | PeerMsg::InRing { .. }
            | PeerMsg::Replicate { .. }
            | PeerMsg::Read { .. }
            | PeerMsg::ListPage { .. }
            | PeerMsg::StreamReq { .. }
    )
}

/// [`arrive`]'s answer to `msg`, if it serves it.
fn serve(
    store: &dyn ReplicaStore,
    view: &ReplicaView,
    msg: &PeerMsg,
) -> Option<(PeerMsg, Option<u64>)> {
    // Before a restarted node checked how long it was away, none of its
    // data leaves and it acknowledges no write (it may yet give its data
    // up).
    if !view.serving {
        return None;
    }
    let request = match msg {
        PeerMsg::OnRing { ring, request } if *ring == view.ring => request.as_ref(),
        PeerMsg::OnRing { request, .. } | PeerMsg::InRing { request, .. }
            if view.planted.no_ring_fence =>
        {
            request.as_ref()
        }
        // Another ring, or the old envelope, whose sum says nothing of the
        // ring: the node refuses it.
        PeerMsg::OnRing { .. } | PeerMsg::InRing { .. } => return None,
        other => other,
    };
    let write_ts = match request {
        PeerMsg::Replicate { version, .. } => Some(version.ts),
        _ => None,
    };
    if let Some(ts) = write_ts.filter(|_| !view.planted.no_clock_bound) {
        let (clock, max) = (Millis(view.clock_ms), Millis(view.max_offset_ms));
        if crate::hlc::too_far_ahead(Micros(ts), clock, max) {
            return None;
        }
    }
    if let (PeerMsg::Replicate { op, .. }, true) = (request, view.planted.front_acks_unstored) {
        let ack = PeerMsg::ReplicateAck {
            op: *op,
            existed: false,
            newer: None,
        };
        return Some((ack, write_ts));
    }
    // A write answered moves the clock (a store failure answers nothing;
    // one refused here is neither stored nor observed).
    let reply = serve_replica(store, request)?;
    Some((reply, write_ts))
}

impl Node {
    /// What a driver serving this node's replica requests with [`arrive`]
    /// must know of it when its clock reads `now`.
    pub fn replica_view(&self, now: u64) -> ReplicaView {
        ReplicaView {
            ring: self.members.ring_id(),
            serving: self.serves_peers(),
            clock_ms: self.check_clock(now),
            max_offset_ms: self.cfg.max_clock_offset,
            planted: self.cfg.planted,
        }
    }

    /// Whether this node serves its data to peers: not before a restarted
    /// node checked how long it was away, nor once it gave its data up.
    pub fn serves_peers(&self) -> bool {
        !self.contact_check && self.stale.is_none()
    }

    /// The view the node serves a request with itself (in
    /// [`Node::handle_message`]): a bug planted in drivers' views only is
    /// not in it.
    pub(super) fn own_view(&self, now: u64) -> ReplicaView {
        let mut view = self.replica_view(now);
        view.planted.front_acks_unstored = false;
        view
    }
}

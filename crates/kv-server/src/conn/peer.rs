//! Peer accept: the handshake that proves a connection is a peer's, and
//! the peer messages it then carries (replica requests served here).

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use kv_proto::native::{self, ErrorKind, Request, Response};
use kv_replication::node::ReplicaView;
use kv_replication::{Arrival, DurableTicket, PeerMsg};

use super::{Conn, HalfClose};
use crate::admission;
use crate::cluster::ToCluster;
use crate::durable::Wire;
use crate::state::Shared;

impl<S: Read + Write + HalfClose> Conn<S> {
    /// Refuses a peer handshake step: logs why, answers, closes.
    fn refuse_peer(&mut self, shared: &Shared, id: u64, who: &str, why: &str) {
        log::warn!("refused peer {who:?}: {why}");
        let r = Response::error(ErrorKind::AuthFailed, format!("refused as a peer: {why}"));
        native::encode_frame(self.out.now(), id, &r);
        self.protocol_error(shared);
    }

    /// Step 1 of the handshake (see `docs/security.md`): the dialer says
    /// who it is and sends its nonce; this side answers with its own nonce
    /// and its MAC over both, proving it knows the secret.
    pub(super) fn peer_hello(
        &mut self,
        shared: &Shared,
        id: u64,
        version: u16,
        from: String,
        nonce: native::Nonce,
    ) {
        let Some(secret) = crate::state::cluster_secret(&shared.config) else {
            return self.refuse_peer(
                shared,
                id,
                &from,
                "this node accepts no peers (started without --cluster-secret)",
            );
        };
        if version != native::PEER_PROTOCOL_VERSION {
            let why = crate::peer_version::mismatch(shared, &from, version);
            return self.refuse_peer(shared, id, &from, &why);
        }
        if shared.config.tls_cluster && !self.stream.peer_certified() {
            let why =
                "--tls-cluster: peers connect over TLS with a certificate the cluster's CA signed";
            return self.refuse_peer(shared, id, &from, why);
        }
        if shared.config.tls_cluster && !self.stream.certified_for(&from) {
            let why =
                "--tls-cluster: its certificate is not valid for the host of the id it claims";
            return self.refuse_peer(shared, id, &from, why);
        }
        if let Some(proven) = &self.peer {
            let why = format!("this connection already proved it is {proven}");
            return self.refuse_peer(shared, id, &from, &why);
        }
        if self.handshake.is_some() {
            return self.refuse_peer(shared, id, &from, "a second PeerHello on one connection");
        }
        if self.preamble_flags & native::FLAG_PEER_EXPIRY == 0 {
            let why = "it runs an older kv whose peer messages carry no key expiry; upgrade every node of the cluster";
            return self.refuse_peer(shared, id, &from, why);
        }
        let (Some(cluster), Some(mine)) = (shared.cluster.get(), crate::state::handshake_nonce())
        else {
            return self.refuse_peer(shared, id, &from, "cluster support is not running");
        };
        let me = cluster.id.clone();
        let mac = native::peer_mac(
            secret,
            native::PeerRole::Listener,
            &nonce,
            &mine,
            &from,
            &me,
        );
        let challenge = Response::PeerChallenge {
            id: me,
            nonce: mine,
            mac,
        };
        native::encode_frame(self.out.now(), id, &challenge);
        self.handshake = Some((from, nonce, mine));
    }

    /// Step 3: the dialer's MAC over both nonces. Only if it is right is
    /// the connection a peer's, and then only as the id it proved.
    pub(super) fn peer_proof(&mut self, shared: &Shared, id: u64, mac: &native::Mac) {
        let (Some((from, theirs, mine)), Some(secret), Some(cluster)) = (
            self.handshake.take(),
            crate::state::cluster_secret(&shared.config),
            shared.cluster.get(),
        ) else {
            return self.refuse_peer(shared, id, "?", "PeerProof without a PeerHello first");
        };
        let ok = native::verify_peer_mac(
            secret,
            native::PeerRole::Dialer,
            &theirs,
            &mine,
            &from,
            &cluster.id,
            mac,
        );
        if !ok {
            return self.refuse_peer(shared, id, &from, "wrong cluster secret");
        }
        if !admission::to_peer(shared, &mut self.admission) {
            let why = "too many peer connections (--max-peers)";
            return self.refuse_peer(shared, id, &from, why);
        }
        // Before any of its messages: answers to it must not be dropped.
        cluster.send(ToCluster::PeerUp(from.clone()));
        // A peer link is no client: CLIENT LIST does not show it, and
        // CLIENT KILL cannot cut it.
        if let Some(c) = self.session.client.take() {
            shared.clients.remove(c.id);
        }
        self.peer = Some(from);
    }

    /// The proven peer of this connection and the cluster handle; `None`
    /// (refused, and the connection closes) before the handshake is done.
    fn proven_peer<'s>(
        &mut self,
        shared: &'s Shared,
    ) -> Option<(String, &'s crate::cluster::ClusterHandle)> {
        if let (Some(from), Some(cluster)) = (self.peer.clone(), shared.cluster.get()) {
            return Some((from, cluster));
        }
        log::warn!("refused a peer message on a connection that did not prove the cluster secret");
        let r = Response::error(
            ErrorKind::AuthRequired,
            "peer messages need a completed peer handshake first",
        );
        native::encode_frame(self.out.now(), 0, &r);
        self.protocol_error(shared);
        None
    }

    pub(super) fn peer_message(&mut self, shared: &Shared, payload: &[u8]) {
        let Some((from, cluster)) = self.proven_peer(shared) else {
            return;
        };
        match postcard::from_bytes::<PeerMsg>(payload) {
            Ok(msg) => {
                if let Some((reply, durable)) = serve_peer(shared, cluster, &from, msg) {
                    match postcard::to_allocvec(&reply) {
                        Ok(payload) => {
                            let mut frame = Vec::new();
                            native::encode_frame(&mut frame, 0, &Request::Peer { payload });
                            self.answer_peer(frame, durable);
                        }
                        Err(e) => log::warn!("cannot encode a reply to {from}: {e}"),
                    }
                }
            }
            Err(e) => {
                log::warn!("malformed message from peer {from}: {e}");
                self.protocol_error(shared);
            }
        }
    }

    /// A batch of peer messages ([`crate::peer_batch`]): each is handled
    /// as a single one would be, and the replies served here go back in
    /// one batch frame (one frame each to a peer that takes no batches).
    pub(super) fn peer_batch(&mut self, shared: &Shared, payload: &[u8]) {
        let Some((from, cluster)) = self.proven_peer(shared) else {
            return;
        };
        let batched = self.preamble_flags & native::FLAG_PEER_BATCH != 0;
        let cap = crate::peer_batch::cap(&shared.config);
        let mut replies = Vec::new();
        // The batch's answers, in frames, and the furthest durability
        // ticket of the writes they report: they go out together once it
        // is durable.
        let (mut frames, mut durable) = (Vec::new(), None);
        for msg in crate::peer_batch::Messages::new(payload) {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    log::warn!("malformed message from peer {from}: {e}");
                    self.protocol_error(shared);
                    break;
                }
            };
            let Some((reply, ticket)) = serve_peer(shared, cluster, &from, msg) else {
                continue;
            };
            durable = durable.max(ticket);
            let encoded = if batched {
                crate::peer_batch::push_capped(&mut frames, &mut replies, &reply, cap)
            } else {
                postcard::to_allocvec(&reply)
                    .map(|payload| native::encode_frame(&mut frames, 0, &Request::Peer { payload }))
            };
            if let Err(e) = encoded {
                log::warn!("cannot encode a reply to {from}: {e}");
            }
        }
        crate::peer_batch::seal(&mut frames, &mut replies);
        self.answer_peer(frames, durable);
    }

    /// Sends `frames`, answers to a peer's replica requests, now; or, if
    /// the writes they report need an fsync first (`--fsync always`),
    /// holds them in their place in the reply order until `durable` is
    /// durable, as a client's write reply is held (the loop asks for one
    /// flush per pass; a failed fsync drops them: the writes are not
    /// acknowledged).
    fn answer_peer(&mut self, frames: Vec<u8>, durable: Option<DurableTicket>) {
        if frames.is_empty() {
            return;
        }
        match durable {
            None => self.out.now().extend_from_slice(&frames),
            Some(ticket) => {
                let seq = self.out.later(None, 1);
                self.parked.park(seq, ticket.into(), frames, Wire::Peer);
            }
        }
    }
}

/// One message from peer `from`: a replica request is answered here (the
/// reply returned, to go back on this connection once the ticket, if
/// any, is durable); anything else, and every message before a restarted
/// node checked how long it was away, goes to the cluster thread. A thin
/// adapter over [`kv_replication::arrive`], the entry point the simulator
/// and the cluster thread (for the node's own copies) drive too.
fn serve_peer(
    shared: &Shared,
    cluster: &crate::cluster::ClusterHandle,
    from: &str,
    msg: PeerMsg,
) -> Option<(PeerMsg, Option<DurableTicket>)> {
    // Replica requests are answered here, on this connection; only
    // coordination goes through the cluster thread. The ring's read lock
    // is held until the request is applied (see `ClusterHandle::ring`).
    let arrival = {
        let ring = cluster.ring.read();
        let view = ReplicaView {
            ring: *ring,
            // Before a restarted node checked how long it was away, none
            // of its data leaves and it acknowledges no write (it may yet
            // give its data up): the node answers nothing.
            serving: cluster.checked.load(Ordering::Acquire),
            // The cluster's time, as the node checks timestamps (not this
            // host's wall clock, which may have been stepped).
            clock_ms: cluster.clock.now(crate::cluster::now_ms()),
            max_offset_ms: shared.config.max_clock_offset_ms,
            planted: Default::default(),
        };
        kv_replication::arrive(&shared.store, &view, msg)
    };
    match arrival {
        Arrival::Served {
            reply,
            observed,
            durable,
        } => {
            // Only a write served here moves the clock (a refused one does
            // not; one too far ahead is not served, and the node logs it).
            if let Some(ts) = observed {
                cluster.observed.fetch_max(ts, Ordering::AcqRel);
            }
            Some((reply, durable))
        }
        Arrival::ToNode(msg) => {
            cluster.send(ToCluster::Peer {
                from: from.to_string(),
                msg,
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::cluster::Route;
    use clap::Parser;
    use kv_replication::{Digest, Stamped, Status, Ver};
    use proptest::prelude::*;

    /// A socket that has `input` to read, then would block; keeps what is
    /// written.
    struct Mock {
        input: Vec<u8>,
        pos: usize,
        output: Vec<u8>,
    }

    impl Read for Mock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.input.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Mock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HalfClose for Mock {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn ver() -> impl Strategy<Value = Ver> {
        (any::<u64>(), any::<u32>()).prop_map(|(ts, node)| Ver { ts, node })
    }

    fn peer_msg() -> impl Strategy<Value = PeerMsg> {
        let key = prop_oneof![Just(b"k".to_vec()), bytes(4)];
        prop_oneof![
            (
                any::<u64>(),
                key.clone(),
                proptest::option::of(bytes(8)),
                ver()
            )
                .prop_map(|(op, key, value, version)| PeerMsg::Replicate {
                    op,
                    key,
                    value,
                    version,
                    expires_at: None,
                }),
            (any::<u64>(), key.clone()).prop_map(|(op, key)| PeerMsg::Read { op, key }),
            (any::<u64>(), bytes(2), any::<u32>()).prop_map(|(op, prefix, limit)| {
                PeerMsg::ListPage {
                    op,
                    prefix,
                    from: 0,
                    after: None,
                    limit,
                }
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(transition, max_bytes)| {
                PeerMsg::StreamReq {
                    transition,
                    ranges: vec![(0, u64::MAX)],
                    cursor: (0, 0),
                    max_bytes,
                }
            }),
            (key.clone(), proptest::option::of(bytes(8)), ver()).prop_map(|(k, value, version)| {
                PeerMsg::StreamPage {
                    transition: 1,
                    cursor: (0, 0),
                    entries: vec![(
                        k,
                        Stamped {
                            version,
                            value,
                            expires_at: None,
                        },
                    )],
                    keys: 1,
                    bytes: 1,
                    next: None,
                    progress: 0,
                }
            }),
            ("[a-z0-9.:]{1,12}", any::<u64>(), any::<u32>()).prop_map(|(id, clock, number)| {
                PeerMsg::Gossip {
                    members: vec![Digest::new(&id, Status::Left)],
                    clock,
                    number,
                }
            }),
            proptest::collection::vec(key, 0..3).prop_map(|keys| PeerMsg::AePull { keys }),
            Just(PeerMsg::Invite),
        ]
    }

    /// One frame an attacker may send: a hello, a proof, a peer message,
    /// or a peer frame of arbitrary bytes.
    fn attack_frame() -> impl Strategy<Value = Request> {
        prop_oneof![
            ("[a-z0-9.:]{0,12}", any::<[u8; 32]>()).prop_map(|(from, nonce)| Request::PeerHello {
                version: native::PEER_PROTOCOL_VERSION,
                from,
                nonce
            }),
            any::<[u8; 32]>().prop_map(|mac| Request::PeerProof { mac }),
            peer_msg().prop_map(|m| Request::Peer {
                payload: postcard::to_allocvec(&m).expect("encode"),
            }),
            bytes(16).prop_map(|payload| Request::Peer { payload }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever peer frames a connection that never proved the
        /// secret sends (with or without --requirepass), the store does
        /// not change, no peer message is answered and nothing reaches
        /// the cluster.
        #[test]
        fn unauthenticated_peer_messages_change_nothing(
            frames in proptest::collection::vec(attack_frame(), 1..12),
            password in any::<bool>(),
        ) {
            let mut args = vec!["kv-server", "--no-persistence", "--cluster-secret", "the-secret"];
            if password {
                args.extend_from_slice(&["--requirepass", "pw"]);
            }
            let config = crate::config::Config::parse_from(args);
            let store = kv_storage::Store::open(kv_storage::Options::in_memory()).expect("store");
            store.put(b"k", b"v1").expect("put");
            let shared = Shared::new(store, config);
            let (handle, rx, _poll) =
                crate::cluster::ClusterHandle::detached("127.0.0.1:1").expect("handle");
            let _ = shared.cluster.set(std::sync::Arc::new(handle));

            let mut input = native::preamble().to_vec();
            for f in &frames {
                native::encode_frame(&mut input, 1, f);
            }
            let mock = Mock { input, pos: 0, output: Vec::new() };
            let route = Route { worker: 0, token: 0, conn: 1, seq: 0 };
            let mut conn = Conn::new(mock, !password, route);
            conn.on_readable(&shared).expect("read");
            conn.flush().expect("flush");
            if let Some(c) = shared.cluster.get() {
                c.flush();
            }

            prop_assert_eq!(shared.store.len(), 1);
            prop_assert_eq!(shared.store.get(b"k"), Some(b"v1".to_vec()));
            let sent: Vec<ToCluster> = rx.try_iter().collect();
            prop_assert!(sent.is_empty(), "{} messages reached the cluster", sent.len());
            let out = &conn.stream.output;
            let mut at = native::PREAMBLE_LEN;
            while at < out.len() {
                let len = native::frame_len(&out[at..], usize::MAX).expect("len").expect("prefix");
                let frame = &out[at..at + native::LENGTH_PREFIX + len];
                let is_response =
                    matches!(native::decode_frame::<Response>(frame, usize::MAX), Ok(Some(_)));
                prop_assert!(is_response, "a frame that is no response: a peer answer");
                at += native::LENGTH_PREFIX + len;
            }
        }
    }

    /// The fast replica path judges a write's timestamp against the
    /// cluster's time the cluster thread published, not this host's wall
    /// clock: with the wall clock stepped an hour ahead of the cluster, a
    /// write stamped an hour ahead is not stored here but handed to the
    /// cluster thread (which refuses and logs it), as the node would.
    #[test]
    fn the_fast_replica_path_checks_timestamps_against_the_cluster_time() {
        let config = crate::config::Config::parse_from(["kv-server", "--no-persistence"]);
        let store = kv_storage::Store::open(kv_storage::Options::in_memory()).expect("store");
        let shared = Shared::new(store, config);
        let (handle, rx, _poll) =
            crate::cluster::ClusterHandle::detached("127.0.0.1:1").expect("handle");
        let wall = crate::cluster::now_ms();
        let hour = 3600 * 1000;
        // The cluster's time is an hour behind this host's wall clock.
        handle.clock.publish(wall, Some(wall - hour));
        let write = |key: &[u8], ms: u64| PeerMsg::Replicate {
            op: 1,
            key: key.to_vec(),
            value: Some(b"v".to_vec()),
            version: Ver {
                ts: ms * 1000,
                node: 7,
            },
            expires_at: None,
        };
        let far = serve_peer(&shared, &handle, "127.0.0.2:1", write(b"far", wall));
        assert_eq!(
            far, None,
            "a write an hour ahead of the cluster is not served here"
        );
        assert_eq!(shared.store.get(b"far"), None);
        handle.flush();
        assert_eq!(rx.try_iter().count(), 1, "it goes to the cluster thread");
        let near = serve_peer(&shared, &handle, "127.0.0.2:1", write(b"near", wall - hour));
        assert!(
            matches!(near, Some((PeerMsg::ReplicateAck { .. }, None))),
            "{near:?}"
        );
        assert_eq!(shared.store.get(b"near"), Some(b"v".to_vec()));
    }
}

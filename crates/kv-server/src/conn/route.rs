//! Routing of a connection's commands: parsing each RESP command or
//! native frame, and sending it to the cluster or running it here.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use kv_proto::native::{self, ErrorKind, ProtoError, Request, Response};
use kv_proto::resp::{self, Limits};
use kv_replication::ClientOp;

use super::order::Touch;
use super::{
    Conn, HalfClose, Proto, Timed, MAX_CLIENTS_REACHED, MAX_IN_FLIGHT, UNAUTHENTICATED_MAX_ARGS,
    UNAUTHENTICATED_MAX_BULK, UNAUTHENTICATED_MAX_FRAME,
};
use crate::cluster::{Admin, NativeKind, ReplyTo, Route, ToCluster};
use crate::durable::Wire;
use crate::metrics::Protocol;
use crate::native_cmd;
use crate::resp_cmd::{self, After, Session};
use crate::resp_tx;
use crate::state::Shared;

impl<S: Read + Write + HalfClose> Conn<S> {
    /// Runs a command in the event loop with its writes deferred: its
    /// reply goes out in order now, or, if its writes need an fsync
    /// (`--fsync always`), is held until they are durable.
    fn run_local<R>(
        &mut self,
        shared: &Shared,
        wire: Wire,
        run: impl FnOnce(&mut Session, &mut Vec<u8>) -> R,
    ) -> R {
        let out = self.out.now();
        let start = out.len();
        let session = &mut self.session;
        let done = shared.store.deferring(|| run(session, out));
        if let Some(ticket) = done.ticket {
            let bytes = out.split_off(start);
            let seq = self.out.later(None, 1);
            self.parked.park(seq, ticket, bytes, wire);
        }
        done.value
    }

    /// Hands an operator command to the cluster; its reply comes later.
    fn admin(&mut self, shared: &Shared, id: u64, cmd: Admin) {
        let refusal = if !self.session.authenticated {
            Some(Response::error(
                ErrorKind::AuthRequired,
                "authenticate first (AUTH password)",
            ))
        } else if shared.cluster.get().is_none() {
            // A single server (crate::standalone): it has no secret.
            Some(Response::error(
                ErrorKind::Refused,
                crate::standalone::NO_PEERS,
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            return native::encode_frame(self.out.now(), id, &r);
        }
        self.send_to_cluster(shared, (None, 1), |route| ToCluster::Admin {
            route,
            id,
            cmd,
        });
    }

    /// Hands a client operation to the cluster, its reply to come later;
    /// false (nothing sent) if it must wait for an earlier command of
    /// this connection on its key (see `order.rs`).
    fn forward(
        &mut self,
        shared: &Shared,
        timed: impl FnOnce() -> Option<Timed>,
        op: ClientOp,
        reply: ReplyTo,
    ) -> bool {
        let touch = op_key(&op).map_or(Touch::All, Touch::key);
        self.send_in_order(shared, (timed, 1), touch, |route| ToCluster::Client {
            route,
            op,
            reply,
        })
    }

    /// [`Conn::send_to_cluster`] for a command touching `touch`, unless it
    /// must wait for an earlier command of this connection (false).
    fn send_in_order(
        &mut self,
        shared: &Shared,
        (timed, weight): (impl FnOnce() -> Option<Timed>, usize),
        touch: Touch,
        work: impl FnOnce(Route) -> ToCluster,
    ) -> bool {
        if self.in_flight.must_wait(&touch) {
            return false;
        }
        if let Some(seq) = self.send_to_cluster(shared, (timed(), weight), work) {
            self.in_flight.sent(seq, touch);
        }
        true
    }

    /// Sends the cluster thread work whose reply takes the next place in
    /// this connection's reply order; its sequence number.
    fn send_to_cluster(
        &mut self,
        shared: &Shared,
        (timed, weight): (Option<Timed>, usize),
        work: impl FnOnce(Route) -> ToCluster,
    ) -> Option<u64> {
        let cluster = shared.cluster.get()?;
        shared.count_command();
        let seq = self.out.later(timed, weight);
        cluster.send(work(Route { seq, ..self.route }));
        Some(seq)
    }

    /// One RESP command at `rbuf[at..]`: `Some(bytes used)`, or `None` if
    /// incomplete or fatal.
    pub(super) fn resp_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
        let limits = if self.session.authenticated {
            Limits {
                max_bulk: shared.config.max_request_bytes(),
                ..Limits::default()
            }
        } else {
            // As Redis: before AUTH, a command is small (AUTH, HELLO, QUIT),
            // so a stranger cannot make the server buffer much.
            Limits {
                max_bulk: UNAUTHENTICATED_MAX_BULK,
                max_array: UNAUTHENTICATED_MAX_ARGS,
                max_inline: UNAUTHENTICATED_MAX_BULK,
                ..Limits::default()
            }
        };
        let rbuf = std::mem::take(&mut self.rbuf);
        let result = match self.parser.parse(&rbuf[at..], &limits) {
            Ok(None) => None,
            // A command held back for an earlier one is parsed again
            // once that one is answered (the parser keeps nothing of a
            // whole command).
            Ok(Some((args, used))) => self.resp_command(shared, &args).then_some(used),
            Err(e) => {
                resp_cmd::error(self.out.now(), &format!("ERR {e}"));
                self.protocol_error(shared);
                None
            }
        };
        self.rbuf = rbuf;
        result
    }

    /// Runs or routes one RESP command; false if it must wait for an
    /// earlier command of this connection (it stays in the read buffer).
    fn resp_command(&mut self, shared: &Shared, args: &[Cow<'_, [u8]>]) -> bool {
        let clustered = shared.cluster.get().is_some_and(|c| c.is_clustered());
        // A transaction begun before this node joined a cluster goes on
        // queueing; EXEC then refuses it.
        if clustered && self.session.authenticated && self.session.tx.is_none() {
            let proto = self.session.proto;
            let timed = || {
                let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                Timed::start(Protocol::Resp, &name)
            };
            match resp_cluster_op(shared, proto, args, self.out.now()) {
                ClusterRoute::Forward(op, reply) => return self.forward(shared, timed, op, reply),
                ClusterRoute::ForwardMulti(multi) => {
                    let weight = multi.ops.len().max(1);
                    let touch = Touch::keys(multi.ops.iter().filter_map(op_key));
                    return self.send_in_order(shared, (timed, weight), touch, |route| {
                        ToCluster::Multi { route, multi }
                    });
                }
                ClusterRoute::Listing(listing) => {
                    let work = |route| ToCluster::Listing { route, listing };
                    let weight = (timed, MAX_IN_FLIGHT);
                    return self.send_in_order(shared, weight, Touch::All, work);
                }
                // Never run locally what the cluster refused.
                ClusterRoute::Refused => return true,
                ClusterRoute::NotCoordinated => {}
            }
            if resp_refused_in_cluster(args, self.out.now()) {
                if args[0].eq_ignore_ascii_case(b"multi") {
                    // What the client pipelined after MULTI must not run.
                    self.session.tx = Some(resp_tx::Queued::refused_on_cluster());
                }
                return true;
            }
        }
        let run = |session: &mut Session, out: &mut Vec<u8>| {
            resp_cmd::execute(shared, session, args, out)
        };
        if self.run_local(shared, Wire::Resp, run) == After::Close
            || self.session.too_many_auth_failures()
        {
            self.closing = true;
        }
        true
    }

    /// The native preamble.
    pub(super) fn preamble_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
        match native::check_preamble(&self.rbuf[at..]) {
            Ok(None) => None,
            Ok(Some(_)) => {
                self.preamble_flags = native::preamble_flags(&self.rbuf[at..]);
                let link = self.preamble_flags & native::FLAG_PEER_LINK != 0;
                if self.admission.is_probation() && !link {
                    self.refuse_over_limit(shared);
                    return None;
                }
                self.out.now().extend_from_slice(&native::preamble());
                self.proto = Proto::Native;
                Some(native::PREAMBLE_LEN)
            }
            Err(e) => {
                let out = self.out.now();
                out.extend_from_slice(&native::preamble());
                let kind = match e {
                    ProtoError::UnsupportedVersion { .. } => ErrorKind::Unsupported,
                    _ => ErrorKind::Malformed,
                };
                native::encode_frame(out, 0, &Response::error(kind, e.to_string()));
                self.closing = true;
                None
            }
        }
    }

    /// One native request frame.
    pub(super) fn native_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
        // Before AUTH or a peer handshake, a frame is small (AUTH,
        // PeerHello, PeerProof), as a RESP command is; so it is on a slot
        // kept for peers until the handshake is done (no password needed
        // there, but no client's frames either).
        let open = self.session.authenticated && !self.admission.is_probation();
        let max = if open || self.peer.is_some() {
            shared.config.max_request_bytes()
        } else {
            UNAUTHENTICATED_MAX_FRAME
        };
        let decoded = native::decode_frame::<Request>(&self.rbuf[at..], max);
        match decoded {
            Ok(None) => None,
            Ok(Some((frame, used))) => self
                .native_request(shared, frame.id, frame.body)
                .then_some(used),
            Err(e) => {
                let kind = match e {
                    ProtoError::FrameTooLarge { .. } => ErrorKind::TooLarge,
                    _ => ErrorKind::Malformed,
                };
                let msg = format!("{e}; closing the connection");
                native::encode_frame(self.out.now(), 0, &Response::error(kind, msg));
                self.protocol_error(shared);
                None
            }
        }
    }

    /// Runs or routes one native request; false if it must wait for an
    /// earlier request of this connection (it stays in the read buffer).
    fn native_request(&mut self, shared: &Shared, id: u64, req: Request) -> bool {
        let handshake = matches!(req, Request::PeerHello { .. } | Request::PeerProof { .. });
        if self.admission.is_probation() && !handshake {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let why = format!("{MAX_CLIENTS_REACHED} (only peers may connect now)");
            let r = Response::error(ErrorKind::Refused, why);
            native::encode_frame(self.out.now(), id, &r);
            self.protocol_error(shared);
            return true;
        }
        match req {
            Request::PeerHello {
                version,
                from,
                nonce,
            } => self.peer_hello(shared, id, version, from, nonce),
            Request::PeerProof { mac } => self.peer_proof(shared, id, &mac),
            Request::Peer { payload } => self.peer_message(shared, &payload),
            Request::PeerBatch { payload } => self.peer_batch(shared, &payload),
            Request::Join { addr } => self.admin(shared, id, Admin::Invite(addr)),
            Request::Leave { addr } => self.admin(shared, id, Admin::Leave(addr)),
            Request::Remove { addr } => self.admin(shared, id, Admin::Remove(addr)),
            req => {
                let clustered = shared.cluster.get().is_some_and(|c| c.is_clustered());
                if clustered && self.session.authenticated {
                    match native_cluster_op(shared, id, &req) {
                        Some(Ok((op, reply))) => {
                            let timed = || Timed::start(Protocol::Native, native_cmd::label(&req));
                            return self.forward(shared, timed, op, reply);
                        }
                        Some(Err(refusal)) => {
                            native::encode_frame(self.out.now(), id, &refusal);
                            return true;
                        }
                        None => {}
                    }
                }
                self.run_local(shared, Wire::Native(id), |session, out| {
                    let reply = native_cmd::execute(shared, session, req);
                    native::encode_frame(out, id, &reply);
                });
                if self.session.too_many_auth_failures() {
                    self.closing = true;
                }
            }
        }
        true
    }
}

/// The key of a cluster operation (`None`: a listing, which touches
/// every key).
fn op_key(op: &ClientOp) -> Option<&[u8]> {
    match op {
        ClientOp::Get { key } | ClientOp::Put { key, .. } | ClientOp::Delete { key } => Some(key),
        ClientOp::List { .. } => None,
    }
}

/// What a clustered node does with a RESP command.
enum ClusterRoute {
    /// The cluster coordinates it.
    Forward(ClientOp, ReplyTo),
    /// The cluster coordinates it, one operation per key.
    ForwardMulti(crate::multi_key::MultiOp),
    /// SCAN, KEYS or DBSIZE: the cluster walks its keys.
    Listing(Box<crate::cluster_list::Listing>),
    /// It was refused (size or memory); the error is already written.
    Refused,
    /// Not a command the cluster coordinates.
    NotCoordinated,
}

/// The cluster operation for a RESP data command, if it is one the
/// cluster coordinates; size and memory refusals are written to `out`.
fn resp_cluster_op(
    shared: &Shared,
    proto: resp::Protocol,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> ClusterRoute {
    let Some(name) = args.first().map(|a| a.to_ascii_lowercase()) else {
        return ClusterRoute::NotCoordinated;
    };
    let (op, reply) = match (name.as_slice(), &args[1..]) {
        (b"get", [k]) => (ClientOp::Get { key: k.to_vec() }, ReplyTo::RespGet(proto)),
        (b"set", [k, v]) => {
            if resp_cmd::refuse_write(shared, k, Some(v), out) {
                return ClusterRoute::Refused;
            }
            let op = ClientOp::Put {
                key: k.to_vec(),
                value: v.to_vec(),
                expires_at: None,
            };
            (op, ReplyTo::RespSet)
        }
        (b"del" | b"unlink", [k]) => (ClientOp::Delete { key: k.to_vec() }, ReplyTo::RespDel),
        (name, keys) => {
            use crate::multi_key::MultiRoute;
            match crate::multi_key::resp_op(shared, proto, name, keys, out) {
                Some(MultiRoute::Forward(multi)) => return ClusterRoute::ForwardMulti(multi),
                Some(MultiRoute::Refused) => return ClusterRoute::Refused,
                None => {}
            }
            match crate::cluster_list::Listing::from_resp(args, out) {
                Some(Ok(listing)) => return ClusterRoute::Listing(Box::new(listing)),
                Some(Err(())) => return ClusterRoute::Refused,
                None => {}
            }
            return match crate::resp_expiry::cluster_op(shared, proto, args, out) {
                Some(crate::resp_expiry::Route::Forward(op, reply)) => {
                    ClusterRoute::Forward(op, reply)
                }
                Some(crate::resp_expiry::Route::Refused) => ClusterRoute::Refused,
                None => ClusterRoute::NotCoordinated,
            };
        }
    };
    ClusterRoute::Forward(op, reply)
}

/// Commands whose local answer would be wrong in a cluster: refused with a
/// clear error (written to `out`). Returns whether it refused.
fn resp_refused_in_cluster(args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) -> bool {
    let Some(name) = args
        .first()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
    else {
        return false;
    };
    if let Some(refusal) = crate::resp_expiry::cluster_refusal(&name, args) {
        resp_cmd::error(out, &refusal);
        return true;
    }
    let why = match name.as_str() {
        "multi" | "exec" | "discard" | "watch" | "unwatch" => {
            "MULTI/EXEC transactions are not supported on a cluster: they would need atomic operations across replicas"
        }
        _ if crate::resp_rmw::is_read_modify_write(&name, args.len()) => {
            "needs an atomic read-modify-write across replicas, which the cluster does not have yet; nothing was written"
        }
        "flushall" | "flushdb" | "randomkey" | "strlen" | "getrange" | "substr" | "type"
        | "object" | "memory" => {
            "with these arguments is not supported on a cluster yet; use GET, SET, DEL key (or LIST from kv-client)"
        }
        _ => return false,
    };
    resp_cmd::error(out, &format!("ERR '{name}' {why}"));
    true
}

/// The cluster operation for a native data request (`None` for requests
/// answered locally), or the refusal to send now.
fn native_cluster_op(
    shared: &Shared,
    id: u64,
    req: &Request,
) -> Option<Result<(ClientOp, ReplyTo), Response>> {
    let native = |kind| ReplyTo::Native(id, kind);
    Some(match req {
        Request::Get { key } => Ok((ClientOp::Get { key: key.clone() }, native(NativeKind::Get))),
        Request::Put { key, value } => match native_cmd::refuse_write(shared, key, value) {
            Some(refusal) => Err(refusal),
            None => Ok((
                ClientOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                    expires_at: None,
                },
                native(NativeKind::Put),
            )),
        },
        Request::Delete { key } => Ok((
            ClientOp::Delete { key: key.clone() },
            native(NativeKind::Delete),
        )),
        Request::List {
            prefix,
            after,
            limit,
        } => {
            let op = ClientOp::List {
                prefix: prefix.clone(),
                from: 0,
                after: after.clone(),
                limit: (*limit).clamp(1, native_cmd::MAX_LIST_PAGE),
            };
            Ok((op, native(NativeKind::List)))
        }
        _ => return None,
    })
}

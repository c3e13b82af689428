//! One client connection: buffers, protocol detection, request processing,
//! replies kept in request order (some are answered later by the cluster),
//! back-pressure. Knows nothing of mio beyond the stream it reads and
//! writes.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use kv_proto::native::{self, ErrorKind, ProtoError, Request, Response};
use kv_proto::resp::{self, Limits};
use kv_replication::{ClientOp, PeerMsg};

use crate::admission::{self, Admission};
use crate::cluster::{Admin, NativeKind, ReplyTo, Route, ToCluster};
use crate::durable::{Parked, Wire};
use crate::metrics::{Metrics, Protocol};
use crate::native_cmd;
use crate::resp_cmd::{self, After, Session};
use crate::resp_tx;
use crate::state::Shared;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 << 10;
/// Above this many unsent reply bytes, the connection stops reading and
/// processing until the client catches up.
pub const HIGH_WATER: usize = 1 << 20;
/// Most requests of one connection waiting for the cluster at once.
const MAX_IN_FLIGHT: usize = 1024;
/// Most arguments of a RESP command before AUTH (Redis's limit too).
const UNAUTHENTICATED_MAX_ARGS: usize = 10;
/// Largest RESP bulk string or inline command before AUTH (Redis's too).
const UNAUTHENTICATED_MAX_BULK: usize = 16 << 10;
/// Largest native frame before AUTH or a peer handshake: room for a
/// password, or a peer's hello or proof.
const UNAUTHENTICATED_MAX_FRAME: usize = 16 << 10;
/// What a client over `--max-clients` is told (Redis's words).
const MAX_CLIENTS_REACHED: &str = "max number of clients reached";
/// Most bytes read and thrown away after a connection was told it is
/// being closed; then it is closed outright.
const DISCARD_LIMIT: usize = 4 << 20;

/// A stream whose writing half can be closed on its own, and that says
/// what its transport knows (TLS: see [`crate::tls::Stream`]).
pub trait HalfClose {
    /// Closes the writing half (sends FIN; over TLS, a close_notify first).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Whether bytes already written wait inside the stream for the socket
    /// (TLS records); [`Write::flush`] sends them.
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Whether the other end showed a certificate signed by the CA
    /// (`--tls-ca-cert`).
    fn peer_certified(&self) -> bool {
        false
    }

    /// Whether the other end's CA-signed certificate is valid for the host
    /// of the node id `id` (see [`crate::tls::Stream::certified_for`]).
    fn certified_for(&self, _id: &str) -> bool {
        false
    }

    /// Whether a transport handshake (TLS) is still under way.
    fn handshaking(&self) -> bool {
        false
    }
}

impl HalfClose for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Which protocol the connection speaks, known from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Unknown,
    Resp,
    NativeAwaitingPreamble,
    Native,
}

/// A command the cluster answers, for its figures: where they are kept
/// and when it arrived.
struct Timed {
    proto: Protocol,
    slot: usize,
    started: Instant,
}

impl Timed {
    fn start(proto: Protocol, name: &str) -> Option<Timed> {
        Some(Timed {
            proto,
            slot: Metrics::slot(proto, name)?,
            started: Instant::now(),
        })
    }
}

/// Replies in request order: those ready go straight to the write buffer
/// unless an earlier one is still awaited from the cluster.
#[derive(Default)]
struct Outbox {
    wbuf: Vec<u8>,
    wpos: usize,
    /// Replies queued behind one still awaited: (sequence, bytes if ready).
    slots: VecDeque<(u64, Option<Vec<u8>>)>,
    /// The commands awaited from the cluster, for their figures, and
    /// what each weighs (see [`Outbox::weight`]).
    timed: Vec<(u64, Option<Timed>, usize)>,
    /// The sum of the weights of the replies awaited.
    weight: usize,
    next_seq: u64,
}

impl Outbox {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Bytes of replies this connection holds: those ready to write and
    /// those queued behind a reply still awaited (from the cluster, or an
    /// fsync). Reading stops past [`HIGH_WATER`], so that replies queued
    /// behind one awaited reply cannot grow without bound. Ready replies
    /// in a row share one slot, so there are at most about twice as many
    /// slots as awaited replies ([`MAX_IN_FLIGHT`]) to add up.
    fn held(&self) -> usize {
        let queued: usize = self
            .slots
            .iter()
            .map(|(_, b)| b.as_ref().map_or(0, Vec::len))
            .sum();
        self.pending() + queued
    }

    /// Where to write a reply available now.
    fn now(&mut self) -> &mut Vec<u8> {
        if self.slots.is_empty() {
            return &mut self.wbuf;
        }
        if !matches!(self.slots.back(), Some((_, Some(_)))) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.slots.push_back((seq, Some(Vec::new())));
        }
        match self.slots.back_mut() {
            Some((_, Some(v))) => v,
            _ => &mut self.wbuf,
        }
    }

    /// Keeps a place for a reply that comes later, for work of `weight`
    /// (the cluster operations it starts); returns its sequence.
    fn later(&mut self, timed: Option<Timed>, weight: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back((seq, None));
        if timed.is_some() || weight != 1 {
            self.timed.push((seq, timed, weight));
        }
        self.weight += weight;
        seq
    }

    /// What the cluster works on for this connection now: one per
    /// awaited operation on one key, one per key of a command on several,
    /// [`MAX_IN_FLIGHT`] for a listing (a walk of every key). No more
    /// requests are read while it is at [`MAX_IN_FLIGHT`], so that one
    /// connection cannot pile up walks or millions of key operations.
    fn weight(&self) -> usize {
        self.weight
    }

    /// Fills the place `seq` and moves every ready reply at the front to
    /// the write buffer; returns the command's figures slot, if timed.
    fn complete(&mut self, seq: u64, bytes: Vec<u8>) -> Option<Timed> {
        let mut timed = None;
        let mut weight = 1;
        if let Some(i) = self.timed.iter().position(|(s, ..)| *s == seq) {
            let (_, t, w) = self.timed.swap_remove(i);
            (timed, weight) = (t, w);
        }
        if self.slots.iter().any(|(s, b)| *s == seq && b.is_none()) {
            self.weight = self.weight.saturating_sub(weight);
        }
        if let Some(slot) = self.slots.iter_mut().find(|(s, _)| *s == seq) {
            slot.1 = Some(bytes);
        }
        while let Some((_, Some(_))) = self.slots.front() {
            if let Some((_, Some(b))) = self.slots.pop_front() {
                self.wbuf.extend_from_slice(&b);
            }
        }
        timed
    }

    fn awaiting(&self) -> usize {
        self.slots.len()
    }
}

/// A client connection's state.
pub struct Conn<S> {
    /// The socket.
    pub stream: S,
    /// Where cluster replies for this connection are sent.
    route: Route,
    rbuf: Vec<u8>,
    out: Outbox,
    /// Replies waiting for their writes' fsync (see [`crate::durable`]).
    parked: Parked,
    proto: Proto,
    /// Where the RESP command in `rbuf` stopped parsing (resumed on the
    /// next read, never re-parsed from its first byte).
    parser: resp::CommandParser,
    session: Session,
    /// The node at the other end, once it proved it is a peer.
    peer: Option<String>,
    /// A peer handshake under way: the dialer's claimed id and nonce, and
    /// the nonce this side sent it.
    handshake: Option<(String, native::Nonce, native::Nonce)>,
    /// The flags of the native preamble the other side sent.
    preamble_flags: u16,
    /// Finish sending what is buffered, then close.
    closing: bool,
    /// The client closed its side (no more requests will come).
    peer_closed: bool,
    /// While closing: our side is shut down, input is being discarded so
    /// that the client reads our last reply instead of a reset.
    lingering: bool,
    discarded: usize,
    /// Reading stopped for back-pressure, not because the socket was
    /// drained: readiness is edge-triggered, so no event will say there is
    /// more, and reading must resume once replies drain.
    read_paused: bool,
    /// What the connection counts against (see [`crate::admission`]).
    admission: Admission,
}

impl<S: Read + Write + HalfClose> Conn<S> {
    /// A new connection; `authenticated` is false when a password is
    /// required. `route` says where cluster replies must be sent (its
    /// `seq` is ignored).
    pub fn new(stream: S, authenticated: bool, route: Route) -> Self {
        Conn {
            stream,
            route,
            rbuf: Vec::new(),
            out: Outbox::default(),
            parked: Parked::default(),
            proto: Proto::Unknown,
            parser: resp::CommandParser::default(),
            session: Session::new(authenticated, route.conn, route.worker),
            peer: None,
            handshake: None,
            preamble_flags: 0,
            closing: false,
            peer_closed: false,
            lingering: false,
            discarded: 0,
            read_paused: false,
            admission: Admission::Uncounted,
        }
    }

    /// Sets what the connection counts against; [`Conn::release`] gives
    /// it back.
    pub fn admit_as(&mut self, a: Admission) {
        self.admission = a;
    }

    /// Counts this connection's failed AUTHs against its source address
    /// too (see [`crate::auth_limit`]).
    pub fn set_source(&mut self, shared: &Shared, ip: std::net::IpAddr) {
        self.session.source = Some((ip, shared.auth_sources.clone()));
    }

    /// Enters the connection's registry entry in its session (see
    /// [`crate::clients`]).
    pub fn set_client(&mut self, client: std::sync::Arc<crate::clients::Client>) {
        self.session.client = Some(client);
    }

    /// Gives back the connection's slot (when it is closed).
    pub fn release(&mut self, shared: &Shared) {
        admission::release(shared, &mut self.admission);
    }

    /// What the deadlines of [`crate::admission`] need to know.
    pub fn deadline_state(&self) -> admission::ConnState {
        let handshake_pending = self.peer.is_none()
            && (self.admission.is_probation()
                || self.stream.handshaking()
                || self.handshake.is_some()
                || self.proto == Proto::NativeAwaitingPreamble
                || !self.session.authenticated);
        admission::ConnState {
            handshake_pending,
            probation: self.admission.is_probation(),
            idle_client: self.peer.is_none()
                && !self.admission.is_probation()
                && self.out.awaiting() == 0,
        }
    }

    /// Refuses a connection let in over `--max-clients` that speaks as a
    /// client: the RESP error line every client understands (a native
    /// client reads it in place of the preamble), then close.
    fn refuse_over_limit(&mut self, shared: &Shared) {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        resp_cmd::error(self.out.now(), &format!("ERR {MAX_CLIENTS_REACHED}"));
        self.closing = true;
    }

    /// This connection's unique id.
    pub fn id(&self) -> u64 {
        self.route.conn
    }

    /// Whether the loop should watch for readability.
    pub fn wants_read(&self) -> bool {
        !self.closing
            && !self.peer_closed
            && self.out.held() < HIGH_WATER
            && self.out.weight() < MAX_IN_FLIGHT
    }

    /// Whether the loop should watch for writability.
    pub fn wants_write(&self) -> bool {
        self.out.pending() > 0 || self.stream.has_pending_output()
    }

    /// Whether requests (or parts of one) are buffered.
    pub fn has_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Whether the connection has nothing left to do and can be dropped.
    pub fn is_done(&self) -> bool {
        if self.out.pending() > 0 || self.stream.has_pending_output() {
            return false;
        }
        if self.peer_closed {
            // A client that only half-closed still gets its answers.
            return self.out.awaiting() == 0;
        }
        self.closing
            && self.out.awaiting() == 0
            && (!self.lingering || self.discarded > DISCARD_LIMIT)
    }

    /// A reply from the cluster for request `seq`; `failed` if it is an
    /// error. The command's figures count the time since it arrived.
    pub fn complete(&mut self, shared: &Shared, seq: u64, bytes: Vec<u8>, failed: bool) {
        if let Some(t) = self.out.complete(seq, bytes) {
            let took = t.started.elapsed();
            let worker = self.route.worker;
            shared
                .metrics
                .record_slot(worker, t.proto, t.slot, took, failed);
        }
    }

    /// The furthest ticket of the replies held for durability, if any: the
    /// loop asks the store to flush up to it.
    pub fn parked_ticket(&self) -> Option<kv_storage::Ticket> {
        self.parked.latest()
    }

    /// Releases, in their places, the held replies whose writes are now
    /// durable (or failed to be); returns whether any was.
    pub fn settle_durable(&mut self, shared: &Shared) -> bool {
        let released = self.parked.settle(&shared.store);
        let any = !released.is_empty();
        for r in released {
            self.complete(shared, r.seq, r.bytes, r.failed);
        }
        any
    }

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

    /// Once the last reply of a closing connection is sent: shut our side
    /// and keep reading (and discarding) until the client closes, so that
    /// it sees the reply rather than a connection reset.
    fn linger(&mut self) {
        let idle = self.out.pending() == 0
            && self.out.awaiting() == 0
            && !self.stream.has_pending_output();
        if self.closing && !self.lingering && !self.peer_closed && idle {
            self.lingering = self.stream.shutdown_write().is_ok();
        }
    }

    /// Reads and throws away input of a lingering connection.
    fn discard(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16 << 10];
        while self.discarded <= DISCARD_LIMIT {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Ok(n) => self.discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// At shutdown: whether this lingering connection has sent everything
    /// and has nothing more to read, so that it can be closed now (with no
    /// unread input, closing sends a plain FIN, and the client still gets
    /// every reply) rather than when an idle client gets round to closing.
    pub fn quiet_at_shutdown(&mut self) -> bool {
        if !self.lingering
            || self.out.pending() > 0
            || self.out.awaiting() > 0
            || self.stream.has_pending_output()
        {
            return false;
        }
        let before = self.discarded;
        self.discard().is_ok() && self.discarded == before
    }

    /// Whether [`Conn::finish`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the loop should watch for readability while lingering.
    pub fn wants_discard(&self) -> bool {
        self.lingering && !self.peer_closed
    }

    /// Stops taking requests: what is buffered is answered, then the
    /// connection closes (used at shutdown).
    pub fn finish(&mut self, shared: &Shared) {
        self.process(shared);
        self.closing = true;
    }

    /// Reads what the socket has, processing requests as they complete,
    /// until it would block or back-pressure says stop. Returns an error
    /// only for a broken socket.
    pub fn on_readable(&mut self, shared: &Shared) -> io::Result<()> {
        if self.lingering {
            return self.discard();
        }
        self.read_paused = false;
        let mut drained = false;
        while self.wants_read() {
            let len = self.rbuf.len();
            self.rbuf.resize(len + READ_CHUNK, 0);
            match self.stream.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    self.peer_closed = true;
                }
                Ok(n) => self.rbuf.truncate(len + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.rbuf.truncate(len);
                    continue;
                }
                Err(e) => {
                    self.rbuf.truncate(len);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        drained = true;
                        break;
                    }
                    return Err(e);
                }
            }
            self.process(shared);
        }
        self.read_paused = !drained && !self.peer_closed && !self.closing;
        self.process(shared);
        Ok(())
    }

    /// Whether reading stopped for back-pressure with the socket perhaps
    /// still holding requests, and may resume now.
    pub fn should_resume_reading(&self) -> bool {
        self.read_paused && self.wants_read()
    }

    /// Answers every whole request buffered, in order, while replies fit
    /// under the high-water mark.
    pub fn process(&mut self, shared: &Shared) {
        let mut used = 0;
        while self.wants_read_or_closing_input() && used < self.rbuf.len() {
            let step = match self.proto {
                Proto::Unknown => {
                    self.proto = if self.rbuf[used] == native::MAGIC[0] {
                        Proto::NativeAwaitingPreamble
                    } else {
                        Proto::Resp
                    };
                    if self.proto == Proto::Resp && self.admission.is_probation() {
                        self.refuse_over_limit(shared);
                        break;
                    }
                    Some(0)
                }
                Proto::Resp => self.resp_step(shared, used),
                Proto::NativeAwaitingPreamble => self.preamble_step(shared, used),
                Proto::Native => self.native_step(shared, used),
            };
            match step {
                Some(n) => used += n,
                None => break,
            }
        }
        self.rbuf.drain(..used);
        if self.closing {
            self.rbuf.clear();
            self.parser.reset();
        } else if self.rbuf.len() > shared.config.query_buffer_limit() {
            let limit = shared.config.query_buffer_limit();
            log::warn!(
                "closing a client whose unfinished command passed the query buffer limit ({limit} bytes)"
            );
            let msg =
                format!("query buffer limit of {limit} bytes reached; closing the connection");
            match self.proto {
                Proto::Native => native::encode_frame(
                    self.out.now(),
                    0,
                    &Response::error(ErrorKind::TooLarge, msg),
                ),
                _ => resp_cmd::error(self.out.now(), &format!("ERR {msg}")),
            }
            self.protocol_error(shared);
            self.rbuf = Vec::new();
            self.parser.reset();
        }
    }

    /// Whether more buffered requests may be taken now.
    fn wants_read_or_closing_input(&self) -> bool {
        !self.closing && self.out.held() < HIGH_WATER && self.out.weight() < MAX_IN_FLIGHT
    }

    /// Writes buffered replies until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        let o = &mut self.out;
        while o.wpos < o.wbuf.len() {
            match self.stream.write(&o.wbuf[o.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => o.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match self.stream.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if o.wpos == o.wbuf.len() {
            o.wbuf.clear();
            o.wpos = 0;
            if o.wbuf.capacity() > 4 * HIGH_WATER {
                o.wbuf.shrink_to(HIGH_WATER);
            }
            self.linger();
        } else if o.wpos > HIGH_WATER {
            o.wbuf.drain(..o.wpos);
            o.wpos = 0;
        }
        Ok(())
    }

    fn protocol_error(&mut self, shared: &Shared) {
        shared
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        self.closing = true;
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

    /// Hands a client operation to the cluster; its reply comes later.
    fn forward(&mut self, shared: &Shared, timed: Option<Timed>, op: ClientOp, reply: ReplyTo) {
        self.send_to_cluster(shared, (timed, 1), |route| ToCluster::Client {
            route,
            op,
            reply,
        });
    }

    /// Sends the cluster thread work whose reply takes the next place in
    /// this connection's reply order.
    fn send_to_cluster(
        &mut self,
        shared: &Shared,
        (timed, weight): (Option<Timed>, usize),
        work: impl FnOnce(Route) -> ToCluster,
    ) {
        let Some(cluster) = shared.cluster.get() else {
            return;
        };
        shared.count_command();
        let seq = self.out.later(timed, weight);
        cluster.send(work(Route { seq, ..self.route }));
    }

    /// One RESP command at `rbuf[at..]`: `Some(bytes used)`, or `None` if
    /// incomplete or fatal.
    fn resp_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
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
            Ok(Some((args, used))) => {
                self.resp_command(shared, &args);
                Some(used)
            }
            Err(e) => {
                resp_cmd::error(self.out.now(), &format!("ERR {e}"));
                self.protocol_error(shared);
                None
            }
        };
        self.rbuf = rbuf;
        result
    }

    fn resp_command(&mut self, shared: &Shared, args: &[Cow<'_, [u8]>]) {
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
                ClusterRoute::Forward(op, reply) => {
                    return self.forward(shared, timed(), op, reply)
                }
                ClusterRoute::ForwardMulti(multi) => {
                    let weight = multi.ops.len().max(1);
                    return self.send_to_cluster(shared, (timed(), weight), |route| {
                        ToCluster::Multi { route, multi }
                    });
                }
                ClusterRoute::Listing(listing) => {
                    let work = |route| ToCluster::Listing { route, listing };
                    return self.send_to_cluster(shared, (timed(), MAX_IN_FLIGHT), work);
                }
                // Never run locally what the cluster refused.
                ClusterRoute::Refused => return,
                ClusterRoute::NotCoordinated => {}
            }
            if resp_refused_in_cluster(args, self.out.now()) {
                if args[0].eq_ignore_ascii_case(b"multi") {
                    // What the client pipelined after MULTI must not run.
                    self.session.tx = Some(resp_tx::Queued::refused_on_cluster());
                }
                return;
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
    }

    /// The native preamble.
    fn preamble_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
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
    fn native_step(&mut self, shared: &Shared, at: usize) -> Option<usize> {
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
            Ok(Some((frame, used))) => {
                self.native_request(shared, frame.id, frame.body);
                Some(used)
            }
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

    fn native_request(&mut self, shared: &Shared, id: u64, req: Request) {
        let handshake = matches!(req, Request::PeerHello { .. } | Request::PeerProof { .. });
        if self.admission.is_probation() && !handshake {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let why = format!("{MAX_CLIENTS_REACHED} (only peers may connect now)");
            let r = Response::error(ErrorKind::Refused, why);
            native::encode_frame(self.out.now(), id, &r);
            return self.protocol_error(shared);
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
                            let timed = Timed::start(Protocol::Native, native_cmd::label(&req));
                            return self.forward(shared, timed, op, reply);
                        }
                        Some(Err(refusal)) => {
                            return native::encode_frame(self.out.now(), id, &refusal)
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
    }

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
    fn peer_hello(
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
    fn peer_proof(&mut self, shared: &Shared, id: u64, mac: &native::Mac) {
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

    fn peer_message(&mut self, shared: &Shared, payload: &[u8]) {
        let Some((from, cluster)) = self.proven_peer(shared) else {
            return;
        };
        match postcard::from_bytes::<PeerMsg>(payload) {
            Ok(msg) => {
                if let Some(reply) = serve_peer(shared, cluster, &from, msg) {
                    match postcard::to_allocvec(&reply) {
                        Ok(payload) => {
                            native::encode_frame(self.out.now(), 0, &Request::Peer { payload })
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
    fn peer_batch(&mut self, shared: &Shared, payload: &[u8]) {
        let Some((from, cluster)) = self.proven_peer(shared) else {
            return;
        };
        let batched = self.preamble_flags & native::FLAG_PEER_BATCH != 0;
        let cap = crate::peer_batch::cap(&shared.config);
        let mut replies = Vec::new();
        for msg in crate::peer_batch::Messages::new(payload) {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    log::warn!("malformed message from peer {from}: {e}");
                    self.protocol_error(shared);
                    break;
                }
            };
            let Some(reply) = serve_peer(shared, cluster, &from, msg) else {
                continue;
            };
            let encoded = if batched {
                crate::peer_batch::push_capped(self.out.now(), &mut replies, &reply, cap)
            } else {
                postcard::to_allocvec(&reply).map(|payload| {
                    native::encode_frame(self.out.now(), 0, &Request::Peer { payload })
                })
            };
            if let Err(e) = encoded {
                log::warn!("cannot encode a reply to {from}: {e}");
            }
        }
        crate::peer_batch::seal(self.out.now(), &mut replies);
    }
}

/// One message from peer `from`: a replica request is answered here (the
/// reply returned, to go back on this connection); anything else, and
/// every message before a restarted node checked how long it was away,
/// goes to the cluster thread.
fn serve_peer(
    shared: &Shared,
    cluster: &crate::cluster::ClusterHandle,
    from: &str,
    msg: PeerMsg,
) -> Option<PeerMsg> {
    // The cluster's time, as the node checks timestamps (not this host's
    // wall clock, which may have been stepped).
    let now = cluster.clock.now(crate::cluster::now_ms());
    let max_offset = shared.config.max_clock_offset_ms;
    // Before a restarted node checked how long it was away, none of its
    // data leaves and it acknowledges no write (it may yet give its data
    // up): the node answers nothing.
    if !cluster.checked.load(Ordering::Acquire) {
        cluster.send(ToCluster::Peer {
            from: from.to_string(),
            msg,
        });
        return None;
    }
    // Replica requests are answered here, on this connection; only
    // coordination goes through the cluster thread. The ring's read lock
    // is held until the request is applied (see `ClusterHandle::ring`).
    let reply = {
        let ring = cluster.ring.read();
        kv_replication::node::serve_replica_fenced(&shared.store, &msg, (now, max_offset), *ring)
    };
    match &reply {
        Some(reply) => {
            // Only a write served here moves the clock (a refused one does
            // not; one too far ahead is not served, and the node logs it).
            let request = match &msg {
                PeerMsg::OnRing { request, .. } => request.as_ref(),
                other => other,
            };
            if let (PeerMsg::ReplicateAck { .. }, PeerMsg::Replicate { version, .. }) =
                (reply, request)
            {
                cluster.observed.fetch_max(version.ts, Ordering::AcqRel);
            }
        }
        None => cluster.send(ToCluster::Peer {
            from: from.to_string(),
            msg,
        }),
    }
    reply
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

#[cfg(test)]
mod tests {
    use super::*;
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
            matches!(near, Some(PeerMsg::ReplicateAck { .. })),
            "{near:?}"
        );
        assert_eq!(shared.store.get(b"near"), Some(b"v".to_vec()));
    }
}

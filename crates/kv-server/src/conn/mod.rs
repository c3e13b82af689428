//! One client connection: buffers, protocol detection, request processing,
//! replies kept in request order (some are answered later by the cluster),
//! back-pressure. Knows nothing of mio beyond the stream it reads and
//! writes.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use kv_proto::native::{self, ErrorKind, Response};
use kv_proto::resp;

use crate::admission::{self, Admission};
use crate::cluster::Route;
use crate::durable::Parked;
use crate::resp_cmd::{self, Session};
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

mod order;
mod outbox;
mod peer;
mod route;

use order::InFlight;
use outbox::{Outbox, Timed};

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
    /// Its commands in the cluster's hands, for their order (see
    /// `order.rs`).
    in_flight: InFlight,
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
            in_flight: InFlight::default(),
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
        !self.peer_closed && self.wants_input()
    }

    /// Whether buffered requests may be taken now (also after the client
    /// half-closed: a command held back for an earlier one runs once that
    /// one is answered).
    pub fn wants_input(&self) -> bool {
        !self.closing
            && !self.in_flight.holding
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
        self.in_flight.answered(seq);
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
        while self.wants_input() && used < self.rbuf.len() {
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
}

//! One client connection: buffers, protocol detection, request processing,
//! back-pressure. Knows nothing of mio beyond the stream it reads and
//! writes.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use kv_proto::native::{self, ErrorKind, ProtoError, Request, Response};
use kv_proto::resp::{self, Limits};

use crate::native_cmd;
use crate::resp_cmd::{self, After, Session};
use crate::state::Shared;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 << 10;
/// Above this many unsent reply bytes, the connection stops reading and
/// processing until the client catches up.
pub const HIGH_WATER: usize = 1 << 20;

/// Most bytes read and thrown away after a connection was told it is
/// being closed; then it is closed outright.
const DISCARD_LIMIT: usize = 4 << 20;

/// A stream whose writing half can be closed on its own.
pub trait HalfClose {
    /// Closes the writing half (sends FIN).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
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

/// A client connection's state.
pub struct Conn<S> {
    /// The socket.
    pub stream: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    proto: Proto,
    session: Session,
    /// Finish sending what is buffered, then close.
    closing: bool,
    /// The client closed its side (no more requests will come).
    peer_closed: bool,
    /// While closing: our side is shut down, input is being discarded so
    /// that the client reads our last reply instead of a reset.
    lingering: bool,
    discarded: usize,
}

impl<S: Read + Write + HalfClose> Conn<S> {
    /// A new connection; `authenticated` is false when a password is required.
    pub fn new(stream: S, authenticated: bool) -> Self {
        Conn {
            stream,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            proto: Proto::Unknown,
            session: Session { authenticated },
            closing: false,
            peer_closed: false,
            lingering: false,
            discarded: 0,
        }
    }

    fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Whether the loop should watch for readability.
    pub fn wants_read(&self) -> bool {
        !self.closing && !self.peer_closed && self.pending_out() < HIGH_WATER
    }

    /// Whether the loop should watch for writability.
    pub fn wants_write(&self) -> bool {
        self.pending_out() > 0
    }

    /// Whether requests (or parts of one) are buffered.
    pub fn has_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Whether the connection has nothing left to do and can be dropped.
    pub fn is_done(&self) -> bool {
        if self.pending_out() > 0 {
            return false;
        }
        self.peer_closed || (self.closing && (!self.lingering || self.discarded > DISCARD_LIMIT))
    }

    /// Once the last reply of a closing connection is sent: shut our side
    /// and keep reading (and discarding) until the client closes, so that
    /// it sees the reply rather than a connection reset.
    fn linger(&mut self) {
        if self.closing && !self.lingering && !self.peer_closed && self.pending_out() == 0 {
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
                        break;
                    }
                    return Err(e);
                }
            }
            self.process(shared);
        }
        self.process(shared);
        Ok(())
    }

    /// Answers every whole request buffered, in order, while replies fit
    /// under the high-water mark.
    pub fn process(&mut self, shared: &Shared) {
        let mut used = 0;
        while !self.closing && self.pending_out() < HIGH_WATER && used < self.rbuf.len() {
            let input = &self.rbuf[used..];
            let step = match self.proto {
                Proto::Unknown => {
                    self.proto = if input[0] == native::MAGIC[0] {
                        Proto::NativeAwaitingPreamble
                    } else {
                        Proto::Resp
                    };
                    Some(0)
                }
                Proto::Resp => resp_step(
                    shared,
                    &mut self.session,
                    input,
                    &mut self.wbuf,
                    &mut self.closing,
                ),
                Proto::NativeAwaitingPreamble => {
                    let (step, ok) = preamble_step(input, &mut self.wbuf, &mut self.closing);
                    if ok {
                        self.proto = Proto::Native;
                    }
                    step
                }
                Proto::Native => native_step(
                    shared,
                    &mut self.session,
                    input,
                    &mut self.wbuf,
                    &mut self.closing,
                ),
            };
            match step {
                Some(n) => used += n,
                None => break,
            }
        }
        self.rbuf.drain(..used);
        if self.closing {
            self.rbuf.clear();
        }
    }

    /// Writes buffered replies until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 4 * HIGH_WATER {
                self.wbuf.shrink_to(HIGH_WATER);
            }
            self.linger();
        } else if self.wpos > HIGH_WATER {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }
}

fn protocol_error(shared: &Shared) {
    shared
        .counters
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
}

/// One RESP command: `Some(bytes used)`, or `None` if incomplete.
fn resp_step(
    shared: &Shared,
    session: &mut Session,
    input: &[u8],
    out: &mut Vec<u8>,
    closing: &mut bool,
) -> Option<usize> {
    let limits = Limits {
        max_bulk: shared.config.max_request_bytes(),
        ..Limits::default()
    };
    match resp::parse_command(input, &limits) {
        Ok(None) => None,
        Ok(Some((args, used))) => {
            if resp_cmd::execute(shared, session, &args, out) == After::Close {
                *closing = true;
            }
            Some(used)
        }
        Err(e) => {
            protocol_error(shared);
            resp_cmd::error(out, &format!("ERR {e}"));
            *closing = true;
            None
        }
    }
}

/// The native preamble: `(Some(used) or None, accepted)`.
fn preamble_step(input: &[u8], out: &mut Vec<u8>, closing: &mut bool) -> (Option<usize>, bool) {
    match native::check_preamble(input) {
        Ok(None) => (None, false),
        Ok(Some(_)) => {
            out.extend_from_slice(&native::preamble());
            (Some(native::PREAMBLE_LEN), true)
        }
        Err(e) => {
            out.extend_from_slice(&native::preamble());
            let kind = match e {
                ProtoError::UnsupportedVersion { .. } => ErrorKind::Unsupported,
                _ => ErrorKind::Malformed,
            };
            native::encode_frame(out, 0, &Response::error(kind, e.to_string()));
            *closing = true;
            (None, false)
        }
    }
}

/// One native request frame.
fn native_step(
    shared: &Shared,
    session: &mut Session,
    input: &[u8],
    out: &mut Vec<u8>,
    closing: &mut bool,
) -> Option<usize> {
    match native::decode_frame::<Request>(input, shared.config.max_request_bytes()) {
        Ok(None) => None,
        Ok(Some((frame, used))) => {
            let reply = native_cmd::execute(shared, session, frame.body);
            native::encode_frame(out, frame.id, &reply);
            Some(used)
        }
        Err(e) => {
            protocol_error(shared);
            let kind = match e {
                ProtoError::FrameTooLarge { .. } => ErrorKind::TooLarge,
                _ => ErrorKind::Malformed,
            };
            let msg = format!("{e}; closing the connection");
            native::encode_frame(out, 0, &Response::error(kind, msg));
            *closing = true;
            None
        }
    }
}

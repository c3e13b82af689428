//! The acceptor and the event loops.
//!
//! The main thread owns the listener and the signal pipe in its own mio
//! `Poll`; it hands each accepted socket to one of `--threads` worker loops
//! (round robin) over a channel and wakes it. Each worker owns its
//! connections and serves them to completion. On SIGINT or SIGTERM the
//! acceptor stops accepting, the workers answer what they have already
//! read, flush, and close, while the cluster thread goes on coordinating
//! the operations under way (giving them up with an error after a grace);
//! then the cluster thread stops, and the store's log is flushed.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::admission::{self, Admission, Clock, Overdue};
use crate::cluster::{self, Route, ToWorker, WorkerMailbox};
use crate::conn::Conn;
use crate::state::Shared;
use crate::tls::Stream;

/// Listener `i` has token `i`.
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// How long shutdown waits for slow clients to take their replies.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How often the acceptor re-checks memory and retries a failed accept.
const TICK: Duration = Duration::from_millis(100);

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The event loop failed.
    #[error("event loop failure: {0}")]
    Io(#[from] io::Error),
}

/// A worker loop: its mailbox and thread.
struct WorkerHandle {
    mailbox: WorkerMailbox,
    thread: JoinHandle<()>,
}

/// A listening socket, plain or TLS.
struct Listener {
    socket: TcpListener,
    tls: bool,
}

/// A bound server, ready to run.
pub struct Server {
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

/// Connections the kernel completes and holds for the acceptor (Redis's
/// `tcp-backlog`): a burst of connections, or an acceptor thread slow to
/// get a core on a loaded machine, then costs no one a SYN retransmit of
/// a second. Linux caps it at `net.core.somaxconn` (4096 by default).
const BACKLOG: i32 = 511;

/// A listening socket on `addr` with a backlog of 511 (the standard library's
/// `bind` uses 128), `SO_REUSEADDR` set as the standard library does.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(addr: SocketAddr, shared: Shared) -> Result<Server, ServerError> {
        let listener = listen(addr).map_err(|source| ServerError::Listen { addr, source })?;
        Server::from_std(listener, shared)
    }

    /// Serves on an already bound listener.
    pub fn from_std(
        listener: std::net::TcpListener,
        shared: Shared,
    ) -> Result<Server, ServerError> {
        Server::with_listeners(Some(listener), None, shared)
    }

    /// Serves plain connections on `plain` and TLS connections on `tls`
    /// (with `shared.tls` set). At least one is given.
    pub fn with_listeners(
        plain: Option<std::net::TcpListener>,
        tls: Option<std::net::TcpListener>,
        shared: Shared,
    ) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        for (l, tls) in [(plain, false), (tls, true)] {
            if let Some(l) = l {
                l.set_nonblocking(true)?;
                let socket = TcpListener::from_std(l);
                listeners.push(Listener { socket, tls });
            }
        }
        let addr_of = |tls: bool| {
            listeners
                .iter()
                .find(|l| l.tls == tls)
                .and_then(|l| l.socket.local_addr().ok())
        };
        let (plain_addr, tls_addr) = (addr_of(false), addr_of(true));
        // Peers dial the TLS port with --tls-cluster.
        let addr = match (plain_addr, tls_addr) {
            (_, Some(t)) if shared.config.tls_cluster => t,
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                return Err(ServerError::Io(io::Error::other("no listening socket")));
            }
        };
        Ok(Server {
            listeners,
            shared: Arc::new(shared),
            addr,
            tls_addr,
        })
    }

    /// The state every event loop shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The address actually bound (useful with port 0).
    /// The address this node is known by (the plain port's, or the TLS
    /// port's when there is no plain port or with `--tls-cluster`); the
    /// one actually bound, useful with port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the TLS port, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the plain port, if any.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        let plain = self.listeners.iter().find(|l| !l.tls)?;
        plain.socket.local_addr().ok()
    }

    /// Serves until SIGINT or SIGTERM, then shuts down cleanly and returns
    /// the shared state (so the caller can close the store).
    pub fn run(mut self) -> Result<Arc<Shared>, ServerError> {
        let mut poll = Poll::new()?;
        let (mut signals, _guards) = signal_pipe()?;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            poll.registry()
                .register(&mut l.socket, Token(i), Interest::READABLE)?;
        }
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let loops = (0..self.shared.config.worker_threads())
            .map(|_| WorkerLoop::new())
            .collect::<io::Result<Vec<_>>>()?;
        let mailboxes: Vec<WorkerMailbox> = loops.iter().map(|l| l.mailbox.clone()).collect();
        // Replies held for durability are released when a flush is done.
        for m in &mailboxes {
            let waker = m.waker.clone();
            let wake = move || drop(waker.wake());
            self.shared.store.on_durable(Arc::new(wake));
        }
        self.shared.clients.set_mailboxes(mailboxes.clone());
        let id = self
            .shared
            .config
            .advertise
            .clone()
            .unwrap_or_else(|| self.addr.to_string());
        // A single server runs no cluster machinery (crate::standalone).
        let cluster_thread = if crate::standalone::cluster_needed(&self.shared.config) {
            let (cluster, thread) = cluster::start(self.shared.clone(), id, mailboxes)?;
            let _ = self.shared.cluster.set(cluster);
            Some(thread)
        } else {
            crate::standalone::start(&self.shared, &id);
            None
        };
        let workers = loops
            .into_iter()
            .enumerate()
            .map(|(i, l)| l.spawn(i, self.shared.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        self.accept_until_signal(&mut poll, &workers)?;
        self.listeners.clear();
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for w in &workers {
            let _ = w.mailbox.waker.wake();
        }
        // The cluster thread runs on while the event loops drain: the
        // operations it coordinates are answered (or given up with an
        // error after its grace), and the replies reach their clients.
        for w in workers {
            let _ = w.thread.join();
        }
        if let Some(c) = self.shared.cluster.get() {
            c.stop();
        }
        if let Some(t) = cluster_thread {
            let _ = t.join();
        }
        Ok(self.shared)
    }

    fn accept_until_signal(&mut self, poll: &mut Poll, workers: &[WorkerHandle]) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut next = 0;
        loop {
            match poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if events.iter().any(|e| e.token() == SIGNALS) {
                log::info!("signal received, shutting down");
                return Ok(());
            }
            // Also on every tick: an accept that failed for lack of file
            // descriptors is retried.
            self.accept_all(workers, &mut next);
            self.shared.sample_ops();
            if self.shared.config.maxmemory > 0 {
                self.shared.refresh_memory();
            }
        }
    }

    fn accept_all(&mut self, workers: &[WorkerHandle], next: &mut usize) {
        for i in 0..self.listeners.len() {
            self.accept_from(i, workers, next);
        }
    }

    fn accept_from(&mut self, i: usize, workers: &[WorkerHandle], next: &mut usize) {
        loop {
            let l = &self.listeners[i];
            match l.socket.accept() {
                Ok((stream, _)) => self.hand_over(stream, l.tls, workers, next),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("accept failed: {e} (will retry)");
                    return;
                }
            }
        }
    }

    fn hand_over(
        &self,
        mut stream: TcpStream,
        tls: bool,
        workers: &[WorkerHandle],
        next: &mut usize,
    ) {
        let c = &self.shared.counters;
        // Clients up to --max-clients; over it, a few would-be peers.
        let source = stream.peer_addr().ok().map(|a| a.ip());
        let Some(admission) = admission::admit(&self.shared, source) else {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            if !tls {
                let _ = stream.write(b"-ERR max number of clients reached\r\n");
            }
            return;
        };
        let stream = match (tls, self.shared.tls.get()) {
            (false, _) => Stream::Plain(stream),
            (true, Some(t)) => match t.accept(stream) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot start TLS on a connection: {e}");
                    admission::release(&self.shared, &mut { admission });
                    return;
                }
            },
            (true, None) => {
                admission::release(&self.shared, &mut { admission });
                return;
            }
        };
        c.connections_received.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let w = &workers[*next % workers.len()];
        *next += 1;
        w.mailbox.deliver(ToWorker::NewConn(stream, admission));
    }
}

/// A pipe that SIGINT and SIGTERM write to, so that the poll wakes up.
fn signal_pipe() -> io::Result<(UnixStream, Vec<signal_hook::SigId>)> {
    let (read, write) = StdUnixStream::pair()?;
    read.set_nonblocking(true)?;
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        ids.push(signal_hook::low_level::pipe::register(
            sig,
            write.try_clone()?,
        )?);
    }
    Ok((UnixStream::from_std(read), ids))
}

/// A worker loop made but not yet started.
struct WorkerLoop {
    poll: Poll,
    rx: Receiver<ToWorker>,
    mailbox: WorkerMailbox,
}

impl WorkerLoop {
    fn new() -> io::Result<WorkerLoop> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        Ok(WorkerLoop {
            poll,
            rx,
            mailbox: WorkerMailbox { tx, waker },
        })
    }

    fn spawn(self, i: usize, shared: Arc<Shared>) -> io::Result<WorkerHandle> {
        let mailbox = self.mailbox.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kv-worker-{i}"))
            .spawn(move || {
                let mut w = Worker {
                    index: i,
                    poll: self.poll,
                    rx: self.rx,
                    conns: Slab::new(),
                    shared,
                    next_conn: 0,
                    last_sweep: Instant::now(),
                    parked: BTreeSet::new(),
                };
                if let Err(e) = w.run() {
                    log::warn!("worker {i} failed: {e}");
                }
            })?;
        Ok(WorkerHandle { mailbox, thread })
    }
}

/// A connection, the interest it is registered with, and its clock.
struct Slot {
    conn: Conn<Stream>,
    interest: Interest,
    clock: Clock,
}

struct Worker {
    index: usize,
    poll: Poll,
    rx: Receiver<ToWorker>,
    conns: Slab<Slot>,
    shared: Arc<Shared>,
    next_conn: u64,
    /// When connections were last checked against their deadlines.
    last_sweep: Instant,
    /// Connections holding replies until their writes are durable (see
    /// [`crate::durable`]).
    parked: BTreeSet<usize>,
}

impl Worker {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shared.shutting_down.load(Ordering::SeqCst) {
            match self.poll.poll(&mut events, Some(admission::SWEEP_EVERY)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.adopt_new()?,
                    Token(key) => self.serve(key, event.is_readable()),
                }
            }
            self.settle_parked();
            if self.last_sweep.elapsed() >= admission::SWEEP_EVERY {
                self.sweep();
            }
            if let Some(c) = self.shared.cluster.get() {
                c.flush();
            }
        }
        self.drain(&mut events)
    }

    fn adopt_new(&mut self) -> io::Result<()> {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                ToWorker::NewConn(stream, admission) => self.adopt(stream, admission),
                ToWorker::Kill { token, conn } => {
                    if self.conns.get(token).is_some_and(|s| s.conn.id() == conn) {
                        self.close(token);
                    }
                }
                ToWorker::Reply {
                    token,
                    conn,
                    seq,
                    bytes,
                    failed,
                } => {
                    let Some(slot) = self.conns.get_mut(token) else {
                        continue;
                    };
                    if slot.conn.id() == conn {
                        slot.conn.complete(&self.shared, seq, bytes, failed);
                        self.serve(token, false);
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end of a pass: releases the held replies whose writes are
    /// durable, then asks the store for one flush covering the rest.
    fn settle_parked(&mut self) {
        let mut latest = None;
        for key in std::mem::take(&mut self.parked) {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.conn.settle_durable(&self.shared) {
                self.serve(key, false);
            }
            if let Some(t) = self.conns.get(key).and_then(|s| s.conn.parked_ticket()) {
                latest = latest.max(Some(t));
                self.parked.insert(key);
            }
        }
        if let Some(t) = latest {
            self.shared.store.request_durable(t);
        }
    }

    fn adopt(&mut self, mut stream: Stream, mut admission: Admission) {
        let entry = self.conns.vacant_entry();
        let interest = Interest::READABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(entry.key()), interest)
        {
            admission::release(&self.shared, &mut admission);
            log::warn!("cannot register a connection: {e}");
            return;
        }
        self.next_conn += 1;
        let route = Route {
            worker: self.index,
            token: entry.key(),
            conn: (self.index as u64) << 48 | self.next_conn,
            seq: 0,
        };
        let authenticated = self.shared.config.requirepass.is_none();
        let addrs = (stream.peer_addr().ok(), stream.local_addr().ok());
        let client =
            self.shared
                .clients
                .add(route.conn, (self.index, entry.key()), addrs, stream.fd());
        let source = addrs.0.map(|a| a.ip());
        let mut conn = Conn::new(stream, authenticated, route);
        conn.set_client(client);
        conn.admit_as(admission);
        if let Some(ip) = source {
            conn.set_source(&self.shared, ip);
        }
        entry.insert(Slot {
            conn,
            interest,
            clock: Clock::new(Instant::now()),
        });
    }

    /// Closes the connections past a deadline: a handshake not finished
    /// within --handshake-timeout, a client idle for --timeout.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let config = &self.shared.config;
        let overdue: Vec<(usize, Overdue)> = self
            .conns
            .iter()
            .filter_map(|(key, slot)| {
                let state = slot.conn.deadline_state();
                admission::overdue(config, &slot.clock, &state, now).map(|o| (key, o))
            })
            .collect();
        let unfinished = overdue
            .iter()
            .filter(|(_, o)| *o == Overdue::Handshake)
            .count();
        if unfinished > 0 {
            log::warn!(
                "closed {unfinished} connection(s) that did not finish their handshake (TLS, AUTH or peer) within {} s ({} s on a slot kept for peers)",
                config.handshake_timeout,
                admission::PROBATION_DEADLINE
                    .as_secs()
                    .min(config.handshake_timeout)
            );
        }
        for (key, _) in overdue {
            self.close(key);
        }
    }

    fn serve(&mut self, key: usize, readable: bool) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if readable {
            slot.clock.last_read = Instant::now();
        }
        let result = step(&mut slot.conn, &self.shared, readable);
        if result.is_err() || slot.conn.is_done() {
            self.close(key);
            return;
        }
        if slot.conn.parked_ticket().is_some() {
            self.parked.insert(key);
        }
        if let Err(e) = update_interest(self.poll.registry(), key, slot) {
            log::warn!("cannot update a connection: {e}");
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut slot) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut slot.conn.stream);
            self.shared.clients.remove(slot.conn.id());
            slot.conn.release(&self.shared);
        }
    }

    /// Shutdown: answer what was read, flush, close; give up on clients
    /// that do not read their replies within the deadline.
    fn drain(&mut self, events: &mut Events) -> io::Result<()> {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut woken = true;
        while !self.conns.is_empty() && Instant::now() < deadline {
            if woken {
                // Replies from the cluster for requests already taken still
                // go out; a connection handed over late is finished too.
                self.adopt_new()?;
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    if let Some(slot) = self.conns.get_mut(key) {
                        if !slot.conn.is_closing() {
                            slot.conn.finish(&self.shared);
                        }
                    }
                    self.serve(key, false);
                }
            }
            self.settle_parked();
            // An idle client that has its replies need not be waited for.
            let quiet: Vec<usize> = self
                .conns
                .iter_mut()
                .filter_map(|(k, slot)| slot.conn.quiet_at_shutdown().then_some(k))
                .collect();
            for key in quiet {
                self.close(key);
            }
            if self.conns.is_empty() {
                break;
            }
            self.poll.poll(events, Some(Duration::from_millis(50)))?;
            woken = false;
            for event in events.iter() {
                if event.token() == WAKER {
                    woken = true;
                } else {
                    self.serve(event.token().0, false);
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        Ok(())
    }
}

/// Reads (if readable), answers, writes; then, if replies drained below the
/// high-water mark, answers requests that back-pressure held back.
fn step(conn: &mut Conn<Stream>, shared: &Shared, readable: bool) -> io::Result<()> {
    if readable {
        conn.on_readable(shared)?;
    }
    conn.flush()?;
    if conn.wants_input() && conn.has_input() {
        conn.process(shared);
        conn.flush()?;
    }
    // Back-pressure is over: read what the socket kept meanwhile (no new
    // readiness event would announce it).
    if conn.should_resume_reading() {
        conn.on_readable(shared)?;
        conn.flush()?;
    }
    Ok(())
}

fn update_interest(registry: &Registry, key: usize, slot: &mut Slot) -> io::Result<()> {
    let reading = slot.conn.wants_read() || slot.conn.wants_discard();
    let want = match (reading, slot.conn.wants_write()) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        // Nothing to send and not reading (closing with an empty buffer is
        // handled by the caller): keep watching for the peer to close.
        (_, false) => Interest::READABLE,
    };
    if want != slot.interest {
        registry.reregister(&mut slot.conn.stream, Token(key), want)?;
        slot.interest = want;
    }
    Ok(())
}

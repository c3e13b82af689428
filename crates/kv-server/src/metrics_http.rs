//! The HTTP side of the Prometheus endpoint (`--metrics-port`): a small
//! poll loop on its own thread, so that a connection that sends half a
//! request and stalls (or never reads its answer) holds up no other scrape.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::state::Shared;

/// How long a connection has to send its request.
const REQUEST_TIME: Duration = Duration::from_secs(2);
/// How long it has, in all, to take its answer.
const ANSWER_TIME: Duration = Duration::from_secs(5);
/// Largest request read.
const MAX_REQUEST: usize = 8192;
/// Connections served at once; past it the one that has sent least (the
/// oldest of those) is closed.
const MAX_CONNECTIONS: usize = 64;
const LISTENER: Token = Token(usize::MAX);

/// One scraper's connection.
struct Scrape {
    stream: TcpStream,
    opened: Instant,
    request: Vec<u8>,
    /// The answer, once the request is in, and how much of it is sent.
    answer: Option<(Vec<u8>, usize)>,
}

/// Serves the endpoint on `listener`, on its own thread, until the server
/// shuts down (checked at least every 250 ms).
pub fn serve(
    listener: std::net::TcpListener,
    shared: Weak<Shared>,
) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new()
        .name("kv-metrics".into())
        .spawn(move || run(poll, listener, shared))
}

fn run(mut poll: Poll, listener: TcpListener, shared: Weak<Shared>) {
    let mut events = Events::with_capacity(64);
    let mut conns: HashMap<Token, Scrape> = HashMap::new();
    let mut next = 0usize;
    loop {
        if poll
            .poll(&mut events, Some(Duration::from_millis(250)))
            .is_err_and(|e| e.kind() != io::ErrorKind::Interrupted)
        {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(&poll, &listener, &mut conns, &mut next);
            } else if let Some(c) = conns.get_mut(&ev.token()) {
                if step(c, &shared).is_err() || c.done() {
                    close(&poll, &mut conns, ev.token());
                }
            }
        }
        let now = Instant::now();
        let late: Vec<Token> = conns
            .iter()
            .filter(|(_, c)| c.late(now))
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            close(&poll, &mut conns, t);
        }
    }
}

fn accept(
    poll: &Poll,
    listener: &TcpListener,
    conns: &mut HashMap<Token, Scrape>,
    next: &mut usize,
) {
    while let Ok((mut stream, _)) = listener.accept() {
        if conns.len() >= MAX_CONNECTIONS {
            // Make room by closing the oldest of those that have sent
            // least: a flood of silent connections evicts its own kind
            // before a scraper whose request is under way.
            let victim = conns
                .iter()
                .min_by_key(|(_, c)| (c.request.len(), c.opened))
                .map(|(t, _)| *t);
            if let Some(t) = victim {
                close(poll, conns, t);
            }
        }
        let token = Token(*next % (usize::MAX - 1));
        *next += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if poll
            .registry()
            .register(&mut stream, token, interest)
            .is_ok()
        {
            conns.insert(
                token,
                Scrape {
                    stream,
                    opened: Instant::now(),
                    request: Vec::new(),
                    answer: None,
                },
            );
        }
    }
}

fn close(poll: &Poll, conns: &mut HashMap<Token, Scrape>, t: Token) {
    if let Some(mut c) = conns.remove(&t) {
        let _ = poll.registry().deregister(&mut c.stream);
    }
}

impl Scrape {
    fn late(&self, now: Instant) -> bool {
        let age = now.duration_since(self.opened);
        match self.answer {
            None => age > REQUEST_TIME,
            Some(_) => age > ANSWER_TIME,
        }
    }

    fn done(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|(bytes, sent)| *sent == bytes.len())
    }
}

/// Reads what has come and writes what can go; `Err` closes.
fn step(c: &mut Scrape, shared: &Arc<Shared>) -> io::Result<()> {
    if c.answer.is_none() {
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                // A scraper that half-closes after its request still gets
                // its answer.
                Ok(0) if has_head(&c.request) => break,
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => c.request.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if c.request.len() > MAX_REQUEST {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        if !has_head(&c.request) {
            return Ok(());
        }
        c.answer = Some((answer(&c.request, shared), 0));
    }
    if let Some((bytes, sent)) = &mut c.answer {
        while *sent < bytes.len() {
            match c.stream.write(&bytes[*sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Whether the request's head (up to its blank line) has arrived.
fn has_head(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n")
}

/// The whole HTTP answer to `request`: `GET /metrics` (or `/`), else 404.
fn answer(request: &[u8], shared: &Arc<Shared>) -> Vec<u8> {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => ("200 OK", crate::metrics::render(shared)),
        _ => (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

//! The cluster thread's outbound links to its peers: connecting, the
//! handshake (the peer's challenge), queueing, flushing and reading.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;

use kv_proto::native::{self, Request, Response};
use kv_replication::PeerMsg;
use mio::{Interest, Token};

use super::thread::ClusterThread;
use super::{MAX_PEER_QUEUE, RECONNECT_AFTER_MS};

pub(super) enum LinkState {
    /// Connecting; preamble and hello are queued.
    Connecting,
    /// Waiting for the peer's preamble and challenge.
    AwaitChallenge,
    /// Handshake done.
    Ready,
}

pub(super) struct PeerLink {
    stream: crate::tls::Stream,
    token: Token,
    state: LinkState,
    nonce: native::Nonce,
    out: Vec<u8>,
    /// Peer messages queued until the handshake is done: none is sent
    /// before this side has proved itself.
    queued: Vec<u8>,
    rbuf: Vec<u8>,
    /// Whether the peer takes batch frames (its preamble said so).
    batches: bool,
    /// Messages of this pass, encoded back to back: one
    /// [`Request::PeerBatch`] frame at the end of the pass
    /// ([`crate::peer_batch`]).
    batch: Vec<u8>,
}

impl ClusterThread {
    /// Hands each worker its replies and each peer link its queued bytes.
    pub(super) fn flush_all(&mut self, now: u64, down_until: &mut BTreeMap<String, u64>) {
        for (w, batch) in self.workers.iter().zip(self.replies.iter_mut()) {
            w.deliver_all(std::mem::take(batch));
        }
        for l in self.peers.values_mut() {
            crate::peer_batch::seal(&mut l.out, &mut l.batch);
        }
        let broken: Vec<String> = self
            .peers
            .iter_mut()
            .filter(|(_, l)| {
                matches!(l.state, LinkState::Ready | LinkState::AwaitChallenge) && !l.out.is_empty()
            })
            .filter_map(|(id, l)| flush_link(l).err().map(|_| id.clone()))
            .collect();
        for peer in broken {
            self.drop_link(&peer);
            down_until.insert(peer, now + RECONNECT_AFTER_MS);
        }
    }

    pub(super) fn send_peer(&mut self, to: &str, msg: &PeerMsg) -> io::Result<()> {
        if !self.peers.contains_key(to) {
            self.connect(to)?;
        }
        let Some(link) = self.peers.get_mut(to) else {
            return Ok(());
        };
        if link.batches && matches!(link.state, LinkState::Ready) {
            if link.out.len() + link.batch.len() > MAX_PEER_QUEUE {
                return Ok(()); // drop: the peer is not keeping up
            }
            crate::peer_batch::push_capped(&mut link.out, &mut link.batch, msg, self.batch_cap)
                .map_err(|e| io::Error::other(e.to_string()))?;
            return Ok(());
        }
        let payload = postcard::to_allocvec(msg).map_err(|e| io::Error::other(e.to_string()))?;
        let out = match link.state {
            LinkState::Ready => &mut link.out,
            _ => &mut link.queued,
        };
        if out.len() > MAX_PEER_QUEUE {
            return Ok(()); // drop: the peer is not keeping up
        }
        native::encode_frame(out, 0, &Request::Peer { payload });
        Ok(())
    }

    pub(super) fn connect(&mut self, to: &str) -> io::Result<()> {
        if crate::state::cluster_secret(&self.shared.config).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "no --cluster-secret: this node speaks to no peers",
            ));
        }
        let nonce = crate::state::handshake_nonce()
            .ok_or_else(|| io::Error::other("no randomness for a handshake nonce"))?;
        let addr = to.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing")
        })?;
        let stream = crate::dial::connect_from(self.shared.config.bind, addr)?;
        // Small messages must not wait for Nagle's algorithm (40 ms stalls).
        stream.set_nodelay(true)?;
        // With --tls-cluster, over TLS, showing this node's certificate.
        let mut stream = match self.shared.tls.get() {
            Some(tls) => tls.dial(stream, to)?,
            None => crate::tls::Stream::Plain(stream),
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut out = native::peer_preamble().to_vec();
        let hello = Request::PeerHello {
            version: native::PEER_PROTOCOL_VERSION,
            from: self.handle.id.clone(),
            nonce,
        };
        native::encode_frame(&mut out, 0, &hello);
        self.tokens.insert(token, to.to_string());
        self.peers.insert(
            to.to_string(),
            PeerLink {
                stream,
                token,
                state: LinkState::Connecting,
                nonce,
                out,
                queued: Vec::new(),
                rbuf: Vec::new(),
                batches: false,
                batch: Vec::new(),
            },
        );
        Ok(())
    }

    /// The cluster secret (empty when none is set: then no link is made).
    pub(super) fn secret(&self) -> Vec<u8> {
        crate::state::cluster_secret(&self.shared.config)
            .unwrap_or_default()
            .to_vec()
    }

    pub(super) fn drop_link(&mut self, peer: &str) {
        if let Some(mut link) = self.peers.remove(peer) {
            let _ = self.poll.registry().deregister(&mut link.stream);
            self.tokens.remove(&link.token);
        }
    }

    /// Handles readiness on a link: completes the connection, checks the
    /// welcome, writes what is queued, and returns the answers the peer
    /// sent back over it.
    pub(super) fn service_link(&mut self, peer: &str) -> io::Result<Vec<PeerMsg>> {
        let secret = self.secret();
        let Some(link) = self.peers.get_mut(peer) else {
            return Ok(Vec::new());
        };
        if let LinkState::Connecting = link.state {
            if let Some(e) = link.stream.take_error()? {
                return Err(e);
            }
            match link.stream.peer_addr() {
                Ok(_) => link.state = LinkState::AwaitChallenge,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        flush_link(link)?;
        read_link(link, &mut self.scratch)?;
        if let LinkState::AwaitChallenge = link.state {
            if !check_challenge(link, &self.handle.id, peer, &secret)? {
                return Ok(Vec::new());
            }
            // The proof and what waited for it.
            flush_link(link)?;
        }
        take_answers(link)
    }
}

/// Checks the peer's preamble and challenge once they arrived: the peer
/// must be the node dialed (`peer`) and prove it knows the secret. Then
/// queues this side's proof and the messages that waited for it, and the
/// link is ready: `Ok(true)`; `Ok(false)` when more bytes are needed.
fn check_challenge(link: &mut PeerLink, me: &str, peer: &str, secret: &[u8]) -> io::Result<bool> {
    if link.rbuf.len() < native::PREAMBLE_LEN {
        return Ok(false);
    }
    native::check_preamble(&link.rbuf).map_err(|e| io::Error::other(e.to_string()))?;
    let flags = native::preamble_flags(&link.rbuf);
    if flags & native::FLAG_PEER_EXPIRY == 0 {
        log::warn!("{peer} runs an older kv whose peer messages carry no key expiry; not talking to it (upgrade every node of the cluster)");
        return Err(io::Error::other("peer without key expiry"));
    }
    let body = &link.rbuf[native::PREAMBLE_LEN..];
    let Some((frame, used)) = native::decode_frame::<Response>(body, 1 << 20)
        .map_err(|e| io::Error::other(e.to_string()))?
    else {
        return Ok(false);
    };
    match frame.body {
        Response::PeerChallenge { id, nonce, mac } => {
            if id != peer {
                log::warn!("the node dialed at {peer} says it is {id}; not talking to it (use the address it advertises)");
                return Err(io::Error::other("wrong peer id"));
            }
            let role = native::PeerRole::Listener;
            if !native::verify_peer_mac(secret, role, &link.nonce, &nonce, me, peer, &mac) {
                log::warn!("peer {peer} failed the cluster-secret check; not talking to it");
                return Err(io::Error::other("bad proof"));
            }
            let role = native::PeerRole::Dialer;
            let mac = native::peer_mac(secret, role, &link.nonce, &nonce, me, peer);
            native::encode_frame(&mut link.out, 0, &Request::PeerProof { mac });
            link.out.append(&mut link.queued);
            link.state = LinkState::Ready;
            link.batches = flags & native::FLAG_PEER_BATCH != 0;
            link.rbuf.drain(..native::PREAMBLE_LEN + used);
            Ok(true)
        }
        Response::Error { message, .. } => {
            log::warn!("peer {peer} refused us: {message}");
            Err(io::Error::other("refused"))
        }
        other => {
            log::warn!("peer {peer} answered the handshake with {other:?}; not talking to it");
            Err(io::Error::other("bad handshake"))
        }
    }
}

/// Decodes the peer messages (answers to our requests) that arrived on a
/// ready link.
fn take_answers(link: &mut PeerLink) -> io::Result<Vec<PeerMsg>> {
    let mut msgs = Vec::new();
    let mut used = 0;
    while let Some((frame, n)) = native::decode_frame::<Request>(&link.rbuf[used..], MAX_PEER_QUEUE)
        .map_err(|e| io::Error::other(e.to_string()))?
    {
        used += n;
        let bad = |e: postcard::Error| io::Error::other(e.to_string());
        match frame.body {
            Request::Peer { payload } => msgs.push(postcard::from_bytes(&payload).map_err(bad)?),
            Request::PeerBatch { payload } => {
                for m in crate::peer_batch::Messages::new(&payload) {
                    msgs.push(m.map_err(bad)?);
                }
            }
            _ => return Err(io::Error::other("unexpected frame from a peer")),
        }
    }
    link.rbuf.drain(..used);
    Ok(msgs)
}

fn flush_link(link: &mut PeerLink) -> io::Result<()> {
    while !link.out.is_empty() {
        match link.stream.write(&link.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                link.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    // TLS records the socket could not take yet.
    match link.stream.flush() {
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Reads what the link has into its buffer, through `scratch` (reused, so
/// that small reads cost no more than their bytes and large pages need
/// few calls).
fn read_link(link: &mut PeerLink, scratch: &mut [u8]) -> io::Result<()> {
    loop {
        match link.stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => link.rbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

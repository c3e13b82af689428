//! The native protocol: preamble, frames, requests and responses.
//!
//! ```text
//! connection start, both directions: F0 'K' 'V' 'N' | version u16 LE | flags u16 LE (FLAG_PEER_EXPIRY | FLAG_PEER_BATCH)
//! then frames:                        length u32 LE | postcard((id u64, body))
//! ```

use hmac::Mac as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// First four bytes of every native connection, in both directions.
pub const MAGIC: [u8; 4] = [0xF0, b'K', b'V', b'N'];
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Length of the preamble.
pub const PREAMBLE_LEN: usize = 8;
/// Preamble flag: this side's peer messages carry key expiry (the
/// `expires_at` of a replicated write). Client requests and responses are
/// the same with or without it; a node refuses a peer without it, whose
/// peer messages have another layout.
pub const FLAG_PEER_EXPIRY: u16 = 1;
/// Preamble flag: this side takes [`Request::PeerBatch`] frames.
pub const FLAG_PEER_BATCH: u16 = 2;
/// Preamble flag: the connection is a link from another node, which will
/// prove itself a peer next (`PeerHello`). A server whose client slots are
/// all taken still lets such a connection in, on a few slots kept for
/// peers, and refuses it if it then speaks as a client.
pub const FLAG_PEER_LINK: u16 = 4;
/// The layout of the messages between nodes ([`Request::Peer`],
/// [`Request::PeerBatch`] and the replication messages inside them), sent
/// in [`Request::PeerHello`]. A node refuses a link whose other end speaks
/// another version, in one log line naming both, rather than fail later
/// on a message it cannot decode. Raise it whenever a peer message's
/// encoding changes. Version 1 is the layout from before the hello carried
/// a version.
pub const PEER_PROTOCOL_VERSION: u16 = 2;
/// Default largest frame a peer accepts (64 MiB of payload).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Errors of the native codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The connection did not start with [`MAGIC`].
    #[error("not a kv native-protocol connection (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks a protocol version this side does not.
    #[error("unsupported protocol version {got} (this side speaks {VERSION})")]
    UnsupportedVersion {
        /// The version the peer sent.
        got: u16,
    },
    /// A frame announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The preamble this side sends.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0; PREAMBLE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..6].copy_from_slice(&VERSION.to_le_bytes());
    p[6..8].copy_from_slice(&(FLAG_PEER_EXPIRY | FLAG_PEER_BATCH).to_le_bytes());
    p
}

/// The preamble a node sends on a link it dials to a peer: [`preamble`]
/// with [`FLAG_PEER_LINK`].
pub fn peer_preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = preamble();
    p[6..8].copy_from_slice(&(FLAG_PEER_EXPIRY | FLAG_PEER_BATCH | FLAG_PEER_LINK).to_le_bytes());
    p
}

/// The flags of a preamble that [`check_preamble`] accepted (0 if it is
/// short).
pub fn preamble_flags(b: &[u8]) -> u16 {
    match b.get(6..8) {
        Some(f) => u16::from_le_bytes([f[0], f[1]]),
        None => 0,
    }
}

/// Checks a received preamble: `Ok(None)` if fewer than
/// [`PREAMBLE_LEN`] bytes have arrived, `Ok(Some(version))` if it is valid.
pub fn check_preamble(b: &[u8]) -> Result<Option<u16>, ProtoError> {
    let have = b.len().min(4);
    if b[..have] != MAGIC[..have] {
        let mut got = [0; 4];
        got[..have].copy_from_slice(&b[..have]);
        return Err(ProtoError::BadMagic(got));
    }
    if b.len() < PREAMBLE_LEN {
        return Ok(None);
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(ProtoError::UnsupportedVersion { got: version });
    }
    Ok(Some(version))
}

/// A request from a client (or a peer acting as one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; the reply echoes `payload`.
    Ping {
        /// Echoed back.
        payload: Vec<u8>,
    },
    /// Authenticate with the server's password (`--requirepass`).
    Auth {
        /// The password.
        password: String,
    },
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write one key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// One page of the keys, in order: those starting with `prefix` and
    /// greater than `after`, at most `limit` of them.
    List {
        /// Only keys starting with this.
        prefix: Vec<u8>,
        /// Only keys after this one (the `next` of the previous page).
        after: Option<Vec<u8>>,
        /// Page size; the server may cap it.
        limit: u32,
    },
    /// Server statistics as text.
    Info,
    /// Ask the node at `addr` (host:port) to join this node's cluster.
    Join {
        /// host:port of the joining node.
        addr: String,
    },
    /// Decommission the node at `addr` (host:port).
    Leave {
        /// host:port of the leaving node.
        addr: String,
    },
    /// The cluster view as text.
    Cluster,
    /// First frame of a connection from another node (the dialer): who it
    /// is and its fresh random nonce. The listener answers
    /// [`Response::PeerChallenge`]; see [`peer_mac`].
    PeerHello {
        /// The dialer's [`PEER_PROTOCOL_VERSION`]. First, so that any later
        /// layout of the hello still starts with it.
        version: u16,
        /// The dialing node's id (its advertised host:port).
        from: String,
        /// The dialer's nonce: [`NONCE_LEN`] bytes from a CSPRNG.
        nonce: Nonce,
    },
    /// A message between nodes (encoded by the replication layer). Not
    /// answered.
    Peer {
        /// The encoded message.
        #[serde(with = "bytes")]
        payload: Vec<u8>,
    },
    /// Remove the node at `addr` (host:port), which is down, for good: its
    /// ranges are rebuilt from the other replicas.
    Remove {
        /// host:port of the dead node.
        addr: String,
    },
    /// Last frame of the peer handshake, from the dialer: its MAC over
    /// both nonces and both ids ([`PeerRole::Dialer`]). Only once the
    /// listener has checked it is the connection a peer's.
    PeerProof {
        /// `peer_mac(secret, Dialer, dialer nonce, listener nonce, from, id)`.
        mac: Mac,
    },
    /// Several messages between nodes in one frame: the concatenation of
    /// their encodings (each self-delimiting), in the order sent. Sent
    /// only to a side whose preamble has [`FLAG_PEER_BATCH`]. Not
    /// answered.
    PeerBatch {
        /// The encoded messages, back to back.
        #[serde(with = "bytes")]
        payload: Vec<u8>,
    },
}

/// Serde for byte strings as one run of bytes rather than a sequence of
/// `u8` (the same postcard encoding, a length then the bytes, but copied
/// whole instead of byte by byte).
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// A handshake nonce (random bytes, one per side and connection).
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 tag.
pub type Mac = [u8; 32];

/// Which side of a peer connection computes a MAC. The role is part of
/// what is authenticated, so that one side's tag is never valid as the
/// other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The node that opened the connection (sends `PeerHello`, `PeerProof`).
    Dialer,
    /// The node that accepted it (sends `PeerChallenge`).
    Listener,
}

/// The peer handshake's tag: HMAC-SHA256 keyed with the cluster secret
/// over a domain label, the role, both nonces and both node ids (each id
/// length-prefixed, so no two inputs share an encoding). A fresh nonce on
/// each side makes every tag valid for one connection only: a captured
/// hello or proof proves nothing to anyone later.
pub fn peer_mac(
    secret: &[u8],
    role: PeerRole,
    dialer_nonce: &Nonce,
    listener_nonce: &Nonce,
    dialer: &str,
    listener: &str,
) -> Mac {
    peer_hmac(secret, role, dialer_nonce, listener_nonce, dialer, listener)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `mac` is the right [`peer_mac`], compared in constant time.
pub fn verify_peer_mac(
    secret: &[u8],
    role: PeerRole,
    dialer_nonce: &Nonce,
    listener_nonce: &Nonce,
    dialer: &str,
    listener: &str,
    mac: &Mac,
) -> bool {
    peer_hmac(secret, role, dialer_nonce, listener_nonce, dialer, listener)
        .verify_slice(mac)
        .is_ok()
}

fn peer_hmac(
    secret: &[u8],
    role: PeerRole,
    dialer_nonce: &Nonce,
    listener_nonce: &Nonce,
    dialer: &str,
    listener: &str,
) -> hmac::Hmac<sha2::Sha256> {
    // HMAC takes keys of any length.
    let mut m = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret)
        .unwrap_or_else(|e| panic!("HMAC refused a key: {e}"));
    m.update(b"kv peer handshake v1\0");
    m.update(match role {
        PeerRole::Dialer => b"dialer\0",
        PeerRole::Listener => b"listen\0",
    });
    m.update(dialer_nonce);
    m.update(listener_nonce);
    for id in [dialer, listener] {
        m.update(&(id.len() as u64).to_le_bytes());
        m.update(id.as_bytes());
    }
    m
}

/// What went wrong, for a program to act on; the message is for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be decoded or makes no sense.
    Malformed,
    /// A key, value or frame exceeds a server limit.
    TooLarge,
    /// The server requires AUTH first.
    AuthRequired,
    /// Wrong password.
    AuthFailed,
    /// The server is over `--maxmemory`; reads still work.
    OutOfMemory,
    /// Not enough replicas answered.
    Unavailable,
    /// The server does not support this request (yet).
    Unsupported,
    /// The server is shutting down.
    ShuttingDown,
    /// Anything else (an I/O error on the server, say).
    Internal,
    /// The cluster refused an operator command (JOIN, LEAVE, REMOVE); the
    /// message says why.
    Refused,
}

/// A reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Success with nothing to return (Put, Auth, Join, Leave).
    Ok,
    /// Reply to Ping.
    Pong {
        /// What the Ping carried.
        payload: Vec<u8>,
    },
    /// Reply to Get: the value, or `None` if the key is absent.
    Value {
        /// The value.
        value: Option<Vec<u8>>,
    },
    /// Reply to Delete.
    Deleted {
        /// Whether the key held a value.
        existed: bool,
    },
    /// Reply to List: a page of keys in order.
    Keys {
        /// The keys.
        keys: Vec<Vec<u8>>,
        /// Pass as `after` to get the next page; `None` when this was the last.
        next: Option<Vec<u8>>,
    },
    /// Reply to Info and Cluster.
    Text {
        /// Human-readable text, `field:value` lines for Info.
        text: String,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened, for people.
        message: String,
    },
    /// Reply to PeerHello: the listener's id, its fresh nonce and its MAC
    /// ([`PeerRole::Listener`]), which proves it knows the secret.
    PeerChallenge {
        /// The answering node's id.
        id: String,
        /// The listener's nonce.
        nonce: Nonce,
        /// `peer_mac(secret, Listener, dialer nonce, nonce, from, id)`.
        mac: Mac,
    },
}

impl Response {
    /// Shorthand for an error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// A decoded frame: the request id and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<T> {
    /// Chosen by the client; the response to a request carries the same id.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// Appends one frame holding `(id, body)` to `out`.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, id: u64, body: &T) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    // Serializing into a Vec cannot fail for these types.
    let encoded = postcard::to_extend(&(id, body), std::mem::take(out));
    *out = encoded.unwrap_or_else(|e| panic!("postcard encoding failed: {e}"));
    let len = (out.len() - start - LENGTH_PREFIX) as u32;
    out[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one frame from the start of `buf`. Returns `Ok(None)` if more
/// bytes are needed, or the frame and the number of bytes it used. A frame
/// announcing more than `max` bytes is refused before it is buffered.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(Frame<T>, usize)>, ProtoError> {
    let Some(len) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let total = LENGTH_PREFIX + len;
    if buf.len() < total {
        return Ok(None);
    }
    let (msg, rest): ((u64, T), &[u8]) = postcard::take_from_bytes(&buf[LENGTH_PREFIX..total])
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(Some((
        Frame {
            id: msg.0,
            body: msg.1,
        },
        total,
    )))
}

/// The payload length announced at the start of `buf`, once its prefix has
/// arrived; an error if it exceeds `max`.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtoError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    Ok(Some(len))
}

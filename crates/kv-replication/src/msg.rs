//! Messages between nodes, client operations and their replies.

use serde::{Deserialize, Serialize};

/// A node's identity: the address other nodes and clients reach it at.
pub type NodeId = String;

/// Most entries one page of a listing holds, whatever was asked: a
/// coordinator caps a client's LIST at this, and a replica a
/// [`PeerMsg::ListPage`].
pub const MAX_LIST_PAGE: u32 = 10_000;

/// A version on the wire (timestamp, node number); see
/// [`kv_types::Version`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ver {
    /// Hybrid-logical-clock timestamp.
    pub ts: u64,
    /// Number of the coordinating node.
    pub node: u32,
}

impl From<Ver> for kv_types::Version {
    fn from(v: Ver) -> Self {
        kv_types::Version::new(v.ts, v.node)
    }
}

impl From<kv_types::Version> for Ver {
    fn from(v: kv_types::Version) -> Self {
        Ver {
            ts: v.timestamp,
            node: v.node,
        }
    }
}

/// A key's state on one replica: its version, value (`None`: tombstone)
/// and expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    /// The version.
    pub version: Ver,
    /// The value, or `None` for a delete (or a value that has expired).
    pub value: Option<Vec<u8>>,
    /// When the value expires, in ms since the Unix epoch (`None`: never).
    /// An absolute time, so that every replica expires the key at the
    /// same moment; part of the write, like the value.
    pub expires_at: Option<u64>,
}

impl Stamped {
    /// The value as a reader at `now_ms` sees it: `None` once expired
    /// (a replica whose clock is behind may still send it).
    pub fn value_at(&self, now_ms: u64) -> Option<&[u8]> {
        match self.expires_at {
            Some(t) if t <= now_ms => None,
            _ => self.value.as_deref(),
        }
    }
}

/// One key of an anti-entropy page ([`PeerMsg::AeKeys`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeKey {
    /// The key.
    pub key: Vec<u8>,
    /// Its version.
    pub version: Ver,
    /// Whether that version is a tombstone.
    pub tombstone: bool,
}

/// One key's state sent by anti-entropy ([`PeerMsg::AeValues`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeValue {
    /// The key.
    pub key: Vec<u8>,
    /// Its version.
    pub version: Ver,
    /// The value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// When the value expires, ms since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// A member's part in the ring. A member only ever moves forward through
/// these, so gossip merges them by taking the later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Known to the cluster, waiting for its turn to join (one node joins
    /// or leaves at a time).
    Waiting,
    /// Receiving its ranges: it gets every write, but reads do not rely on
    /// it yet.
    Joining,
    /// A full member: holds its ranges.
    Normal,
    /// Decommissioning: still holds its ranges while the new owners copy
    /// them; gets no new writes.
    Leaving,
    /// Gone from the ring for good.
    Left,
}

impl Status {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Joining => "joining",
            Status::Normal => "normal",
            Status::Leaving => "leaving",
            Status::Left => "left",
        }
    }
}

/// What one node says of a member in gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The member.
    pub id: NodeId,
    /// Set once when the member is first started on an empty data
    /// directory: a higher generation is a new life of the same address
    /// and replaces everything known of the old one.
    pub generation: u64,
    /// Bumped by the member itself to overrule older news about it.
    pub incarnation: u64,
    /// Bumped by the member itself on every gossip round while it lives.
    pub heartbeat: u64,
    /// Its part in the ring.
    pub status: Status,
    /// The member's own view of the ring (0: no rebalance under way,
    /// otherwise the rebalance's hash), so that others can tell when the
    /// whole cluster knows of a rebalance.
    pub view: u64,
    /// The rebalance whose ranges the member has finished receiving.
    pub synced: u64,
}

impl Digest {
    /// A member with `status`, heard of for the first time (generation 1,
    /// no heartbeats yet): for tests and tools that build a membership.
    pub fn new(id: &str, status: Status) -> Digest {
        Digest {
            id: id.to_string(),
            generation: 1,
            incarnation: 0,
            heartbeat: 0,
            status,
            view: 0,
            synced: 0,
        }
    }
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Membership news.
    Gossip {
        /// What the sender knows of every member.
        members: Vec<Digest>,
        /// The sender's clock (ms) when it sent this, so that a node can
        /// tell when its own clock is far ahead of the cluster's.
        clock: u64,
        /// The number the sender stamps into versions: unique in a
        /// cluster, a duplicate is refused.
        number: u32,
    },
    /// Store this write if it is newer than what you hold.
    Replicate {
        /// The coordinator's operation number.
        op: u64,
        /// The key.
        key: Vec<u8>,
        /// The value (`None`: delete).
        value: Option<Vec<u8>>,
        /// The write's version.
        version: Ver,
        /// When the value expires, in ms since the Unix epoch (`None`:
        /// never); the same absolute time on every replica.
        expires_at: Option<u64>,
    },
    /// The write is stored, or (`newer`) it was not because the replica
    /// holds a newer version of the key.
    ReplicateAck {
        /// The operation.
        op: u64,
        /// Whether the key held a live value before.
        existed: bool,
        /// `Some(v)`: not applied, the replica holds `v`, newer than the
        /// write's version; the write lost there.
        newer: Option<Ver>,
    },
    /// Send me your state of this key.
    Read {
        /// The operation.
        op: u64,
        /// The key.
        key: Vec<u8>,
    },
    /// A replica's state of a key.
    ReadReply {
        /// The operation.
        op: u64,
        /// Its state, `None` if it never heard of the key.
        state: Option<Stamped>,
    },
    /// Send me a page of your keys, in (hash, key) order (the hash is the
    /// key's ring position).
    ListPage {
        /// The operation.
        op: u64,
        /// Key prefix.
        prefix: Vec<u8>,
        /// Keys whose hash is at least this one (a `SCAN` cursor; 0: all).
        from: u64,
        /// Keys after this one in (hash, key) order.
        after: Option<Vec<u8>>,
        /// Most entries (capped at [`MAX_LIST_PAGE`]).
        limit: u32,
    },
    /// Anti-entropy, step 1: the sender's hash of each range of its read
    /// ring (the ranges between tokens) that both nodes replicate.
    AeDigest {
        /// Which ring the ranges are of (compared only if both agree).
        ring: u64,
        /// (range index, order-independent hash of its keys and versions).
        arcs: Vec<(u32, u64)>,
    },
    /// Anti-entropy, step 2 and on: one page of the sender's keys and
    /// versions in range `arc`, complete for the window of key positions
    /// `[from, until]`. The receiver compares it with its own page of the
    /// same window (cut short at its own page size), sends values where
    /// it is newer ([`PeerMsg::AeValues`]), asks for them where it is
    /// older ([`PeerMsg::AePull`]), and answers with its next page: the
    /// two nodes take turns until the range is done, then go on with the
    /// next of `rest`. Every message is bounded (see
    /// [`crate::anti_entropy`]).
    AeKeys {
        /// Which ring the range is of.
        ring: u64,
        /// The range.
        arc: u32,
        /// First key position of the window.
        from: u64,
        /// Last key position of the window.
        until: u64,
        /// The sender's keys in the window, tombstones included.
        entries: Vec<AeKey>,
        /// Differing ranges still to compare after this one.
        rest: Vec<u32>,
    },
    /// Anti-entropy: send me your state of these keys (you have newer
    /// versions).
    AePull {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Anti-entropy: states of keys the receiver lacks or holds older;
    /// each is stored if newer.
    AeValues {
        /// The states.
        entries: Vec<AeValue>,
    },
    /// Rebalancing: send me a page of your keys in these ranges of the
    /// ring, from this point of your store on.
    StreamReq {
        /// The rebalance this is for.
        transition: u64,
        /// Ranges of positions, as inclusive `(low, high)` pairs, sorted.
        ranges: Vec<(u64, u64)>,
        /// Where to continue: (shard, key hash).
        cursor: (u32, u64),
        /// About how many bytes to send.
        max_bytes: u32,
    },
    /// A page of a rebalancing stream.
    StreamPage {
        /// The rebalance, echoed.
        transition: u64,
        /// The cursor of the request, echoed.
        cursor: (u32, u64),
        /// Entries, tombstones included. A driver may apply them itself
        /// (with [`crate::node::apply_entries`]) and hand the node the page
        /// without them; `keys` and `bytes` still count them.
        entries: Vec<(Vec<u8>, Stamped)>,
        /// How many entries the page carried.
        keys: u64,
        /// Their key, value and version bytes.
        bytes: u64,
        /// Where to continue; `None`: the stream is complete.
        next: Option<(u32, u64)>,
        /// How far through its store the sender is, in millionths.
        progress: u32,
    },
    /// Join my cluster (sent by the node an operator told to invite you).
    Invite,
    /// The envelope of the version before ring ids: a request with the
    /// sum its coordinator called a ring epoch. That sum is not an order
    /// of rings, so it is never sent now, and a node that receives one
    /// refuses the request with [`PeerMsg::RingDiffers`] (kept so that
    /// the variants after it keep their numbers on the wire).
    InRing {
        /// The old coordinator's ring epoch (ignored).
        epoch: u64,
        /// The request.
        request: Box<PeerMsg>,
    },
    /// A request of operation `op` refused because the replica's ring
    /// differs from its coordinator's ([`PeerMsg::OnRing`]): what the
    /// replica knows of the members. The coordinator merges it (and sends
    /// the replica, by gossip, what it knew that the replica lacked), so
    /// that both then hold the merge of the two tables, and asks again
    /// (never answering from its old ring).
    RingDiffers {
        /// The operation refused.
        op: u64,
        /// What the replica knows of every member.
        members: Vec<Digest>,
        /// For a write the replica stored all the same (the key is its
        /// own under its ring): the [`PeerMsg::ReplicateAck`] it would
        /// have sent. The coordinator takes it as that replica's answer,
        /// so that it never stamps the write again as if no replica held
        /// it (a read may have returned it).
        ack: Option<Box<PeerMsg>>,
    },
    /// A page of a node's keys with versions, tombstones included.
    ListReply {
        /// The operation.
        op: u64,
        /// Entries in (hash, key) order.
        entries: Vec<(Vec<u8>, Stamped)>,
        /// Where the node stopped, if it has more entries after these:
        /// the last key it looked at (every key sharing that key's hash
        /// was looked at too). `None`: the page ends its listing.
        next: Option<Vec<u8>>,
    },
    /// A request that reads or writes (`Replicate`, `Read`, `ListPage`)
    /// with the ring id of its coordinator (see
    /// [`crate::membership::Membership::ring_id`]). A replica whose ring
    /// id differs refuses it with [`PeerMsg::RingDiffers`]; otherwise it
    /// serves `request` as if it had come alone.
    OnRing {
        /// The coordinator's ring id.
        ring: u64,
        /// The request.
        request: Box<PeerMsg>,
    },
}

/// An operation a client asked a node to coordinate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// Read a key at quorum.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write a key at quorum.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// When the value expires, in ms since the Unix epoch (`None`:
        /// never): Redis's `SET key value PXAT t`.
        expires_at: Option<u64>,
    },
    /// Delete a key at quorum (a tombstone).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// One page of the cluster's keys, in (hash, key) order (the hash is
    /// the key's ring position).
    List {
        /// Key prefix.
        prefix: Vec<u8>,
        /// Keys whose hash is at least this one (a `SCAN` cursor; 0: all).
        from: u64,
        /// Keys after this one in (hash, key) order.
        after: Option<Vec<u8>>,
        /// Page size.
        limit: u32,
    },
}

/// The outcome of a client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// Get: the newest state among the replies (`None`: no replica knew the
    /// key). A tombstone means "deleted".
    Value(Option<Stamped>),
    /// Put or Delete acknowledged by a write quorum, with its version.
    Written {
        /// The write's version.
        version: Ver,
        /// Whether any replica that acknowledged held a live value before.
        existed: bool,
    },
    /// List: live keys in (hash, key) order, and the cursor for the next
    /// page.
    Keys {
        /// The keys.
        keys: Vec<Vec<u8>>,
        /// Pass as `after` for the next page; `None` at the end. Every key
        /// sharing its hash was covered, so a `SCAN` may go on at the
        /// next hash. It need not be one of `keys`.
        next: Option<Vec<u8>>,
    },
    /// Put or Delete not acknowledged: replicas kept a newer version than
    /// the write's, and re-stamping it above that version `tries` times did
    /// not make it the newest on a write quorum (or the clock could not
    /// go above it). Nothing was acknowledged.
    Conflict {
        /// The newest version a replica held instead.
        newer: Ver,
        /// Versions tried.
        tries: u32,
    },
    /// The quorum was not reached before the deadline.
    Unavailable {
        /// Replicas that answered.
        answered: usize,
        /// Answers needed.
        needed: usize,
        /// Replicas asked.
        replicas: usize,
    },
}

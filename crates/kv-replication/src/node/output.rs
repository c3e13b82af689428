//! What a node hands its driver: [`Output`]s, [`Hint`]s, what it persists
//! ([`Persisted`]) and its view of members ([`MemberInfo`]).

use super::*;

/// What the driver must do for the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `msg` to node `to`.
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        msg: PeerMsg,
    },
    /// A message for this node's own replica of a key (its copy of a
    /// write or read repair, its part of a read or a listing), or an
    /// answer to itself (a ring refusal of its own copy): what it would
    /// send a peer, ring envelope included. Serve it exactly as a peer's
    /// message: through [`crate::arrive`] with [`Node::replica_view`];
    /// hand a [`crate::Arrival::Served`] reply, once its `durable` ticket
    /// is durable, to [`Node::handle_message`] with this node's own id as
    /// the sender (and its `observed` timestamp to
    /// [`Node::observe_timestamp`]), or hand a
    /// [`crate::Arrival::ToNode`] message there the same way. Like a
    /// peer link, it is answered at most once, and lost in a crash.
    /// [`Node::serve_own`] does all of that at once for drivers whose
    /// writes need not be held (tests, in-memory stores).
    Local(PeerMsg),
    /// Answer the client operation `id`.
    Reply {
        /// The id the driver gave the operation.
        id: u64,
        /// The answer.
        reply: ClientReply,
    },
    /// Save this (for example in the data directory) and pass it back to
    /// [`Node::new`] after a restart.
    Persist(Persisted),
    /// Keep this hint durably (replacing any for the same target and key)
    /// and pass it back to [`Node::restore_hints`] after a restart.
    StoreHint(Hint),
    /// Something worth a line in the log (rebalance progress, members
    /// joining and leaving); its `Display` is the line.
    Event(Event),
    /// Anti-entropy work to run off the coordinating thread (only with
    /// [`Config::offload_anti_entropy`]): run it with
    /// [`AntiEntropy::run`] and hand the outcome to
    /// [`Node::anti_entropy_done`].
    AntiEntropy(AeTask),
    /// The hint for this target and key is delivered (or expired): forget it.
    DropHint {
        /// The replica it was for.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// Whether it expired undelivered (worth a line in the log).
        expired: bool,
    },
    /// Record durably (not on the path of client requests) that this node
    /// was in contact with its cluster at this time (ms), and pass it back
    /// to [`Node::restore_contact`] after a restart.
    Contact(u64),
    /// This node must not serve or spread its data any more (it was out of
    /// contact for longer than the tombstone grace allows; the text says
    /// why): set the data aside and start again as a new generation that
    /// joins the cluster (as `--rejoin-fresh` does). Until then the node
    /// serves nothing.
    RejoinFresh(String),
    /// A cleanup to run off the thread that drives the node (only with
    /// [`Config::offload_cleanup`]): run it with
    /// [`crate::offload::run_cleanup_job`] (or [`CleanupJob::run`]) and
    /// hand the result to [`Node::cleanup_done`]. Until then the node
    /// starts no other cleanup, and keeps the job from forgetting any
    /// range a ring change gives back to it.
    Cleanup(Arc<CleanupJob>),
    /// Save this clock floor (µs) durably, off the thread that drives the
    /// node (only with [`Config::offload_floor`]), then report it with
    /// [`Node::floor_saved`]; after a restart pass the greatest floor
    /// saved back in [`Persisted::clock_floor`]. Nothing waits for it but
    /// the writes that find the clock at the floor last reported.
    SaveFloor(u64),
}

/// A write held for a replica that was down (hinted handoff). It never
/// counts toward a write quorum; it is delivered when the replica is back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    /// The replica the write is for.
    pub target: NodeId,
    /// The key.
    pub key: Vec<u8>,
    /// The value (`None`: a delete).
    pub value: Option<Vec<u8>>,
    /// The write's version.
    pub version: Ver,
    /// When the hint was made (ms).
    pub created: u64,
    /// When the value expires, in ms since the Unix epoch (`None`: never).
    /// Last, so that a hint stored before expiry existed still decodes
    /// (see the server's hint store).
    pub expires_at: Option<u64>,
}

/// What a node must find again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// The membership table.
    pub members: Vec<Digest>,
    /// The clock never issues timestamps at or below this after a restart.
    pub clock_floor: u64,
    /// How far the node got with receiving a rebalance's ranges.
    pub stream: Option<StreamSave>,
}

/// One member in the cluster view.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its state seen from here.
    pub state: MemberState,
    /// Its part in the ring.
    pub status: Status,
    /// Its share of the ring as a primary (0..1).
    pub share: f64,
}

//! What the event loops and the cluster thread send each other: the work
//! for the cluster thread ([`ToCluster`]), for an event loop
//! ([`ToWorker`]), and where and how a reply goes ([`Route`], [`ReplyTo`]).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use kv_replication::{AeOutcome, ClientOp, PeerMsg};
use mio::Waker;

/// How a reply must be encoded for the client waiting for it.
#[derive(Clone, Copy, Debug)]
pub enum ReplyTo {
    /// RESP GET, on a connection speaking this protocol.
    RespGet(kv_proto::resp::Protocol),
    /// RESP SET.
    RespSet,
    /// RESP DEL of one key.
    RespDel,
    /// RESP TTL, PTTL, EXPIRETIME or PEXPIRETIME.
    RespTtl(crate::resp_expiry::TtlKind),
    /// Native request `id` of this kind.
    Native(u64, NativeKind),
    /// RESP SCAN, KEYS or DBSIZE: its page replies go to its
    /// [`crate::cluster_list::Listing`]; this encodes the others (errors).
    RespListing,
}

/// Native requests the cluster coordinates.
#[derive(Clone, Copy, Debug)]
pub enum NativeKind {
    /// Get.
    Get,
    /// Put.
    Put,
    /// Delete.
    Delete,
    /// List.
    List,
}

/// Where a reply goes: worker, connection slot, connection id, sequence.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Worker index.
    pub worker: usize,
    /// Slab token of the connection in that worker.
    pub token: usize,
    /// Unique id of the connection (tokens are reused).
    pub conn: u64,
    /// The request's place in the connection's reply order.
    pub seq: u64,
}

/// Work for the cluster thread.
pub enum ToCluster {
    /// A client operation to coordinate.
    Client {
        /// Where the reply goes.
        route: Route,
        /// The operation.
        op: ClientOp,
        /// How to encode the reply.
        reply: ReplyTo,
    },
    /// A client command on several keys (see [`crate::multi_key`]).
    Multi {
        /// Where the reply goes.
        route: Route,
        /// The command, one operation per key.
        multi: crate::multi_key::MultiOp,
    },
    /// A message from a peer.
    Peer {
        /// The sender.
        from: String,
        /// The message.
        msg: PeerMsg,
    },
    /// An operator command (JOIN, LEAVE, REMOVE), answered as native
    /// request `id` on `route`.
    Admin {
        /// Where the reply goes.
        route: Route,
        /// The native request id.
        id: u64,
        /// The command.
        cmd: Admin,
    },
    /// A RESP SCAN, KEYS or DBSIZE to coordinate.
    Listing {
        /// Where the reply goes.
        route: Route,
        /// What to list.
        listing: Box<crate::cluster_list::Listing>,
    },
    /// A peer connected to us (it is up again: stop backing off from it).
    PeerUp(String),
    /// The anti-entropy thread finished a task.
    AntiEntropyDone(AeOutcome),
    /// The cleanup thread ran the node's cleanup (how many entries it
    /// forgot, or why it failed).
    CleanupDone(Result<usize, String>),
    /// The floor writer saved this clock floor durably.
    FloorSaved(u64),
}

/// An operator command for the cluster.
#[derive(Clone, Debug)]
pub enum Admin {
    /// Ask the node at this address to join our cluster.
    Invite(String),
    /// Decommission the live node at this address.
    Leave(String),
    /// Remove the dead node at this address for good.
    Remove(String),
}

impl std::fmt::Display for Admin {
    /// The command as an operator types it: `JOIN 127.0.0.1:9001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admin::Invite(addr) => write!(f, "JOIN {addr}"),
            Admin::Leave(addr) => write!(f, "LEAVE {addr}"),
            Admin::Remove(addr) => write!(f, "REMOVE {addr}"),
        }
    }
}

/// Work for an event loop.
pub enum ToWorker {
    /// A new connection, and what it counts against.
    NewConn(crate::tls::Stream, crate::admission::Admission),
    /// An encoded reply for a connection.
    Reply {
        /// The connection's slab token.
        token: usize,
        /// The connection's unique id.
        conn: u64,
        /// The request's sequence number.
        seq: u64,
        /// The encoded reply.
        bytes: Vec<u8>,
        /// Whether the reply is an error (for the per-command figures).
        failed: bool,
    },
    /// Close a connection at once (CLIENT KILL).
    Kill {
        /// The connection's slab token.
        token: usize,
        /// The connection's unique id.
        conn: u64,
    },
}

/// A worker's mailbox.
#[derive(Clone)]
pub struct WorkerMailbox {
    /// Where to send.
    pub tx: Sender<ToWorker>,
    /// How to wake it.
    pub waker: Arc<Waker>,
}

impl WorkerMailbox {
    /// Delivers a message and wakes the worker.
    pub fn deliver(&self, m: ToWorker) {
        if self.tx.send(m).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Delivers several messages with one wake-up.
    pub fn deliver_all(&self, ms: Vec<ToWorker>) {
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = self.tx.send(m);
        }
        let _ = self.waker.wake();
    }
}

//! `kv-replication`: the cluster's logic, with no I/O at all.
//!
//! A [`Node`] is a state machine. Its inputs are client operations
//! ([`Node::handle_client`]), messages from peers
//! ([`Node::handle_message`]) and the passing of time
//! ([`Node::handle_tick`]), each with the current time as an argument; its
//! outputs, drained with [`Node::poll_output`], are messages to send,
//! replies to clients, state to persist, and [`Event`]s to log. It reads and writes the local
//! replica's data through the storage port it is handed,
//! [`kv_types::ReplicaStore`] (`kv-server` and the simulator pass a
//! `kv_storage::Store`); this crate depends on `kv-types`, not on the
//! storage engine. It never opens a socket, starts a thread, sleeps or
//! reads a clock, and draws randomness from a seed: the same code runs
//! under `kv-server` and under the deterministic simulator of this crate's
//! tests (`tests/simulator/`, run by `tests/sim.rs`).
//!
//! The coordinator's own replica is one of its replicas, reached through
//! the same messages as its peers: its copy of a write, its part of a read
//! or a listing and a read repair of its own copy are
//! [`Output::Local`] messages that the driver serves through [`arrive`],
//! the entry point it serves peers' requests with, and whose answers it
//! hands back with [`Node::handle_message`] from the node's own id.
//! Persist before reply is in the types: `arrive` serves a write inside
//! the port's [`kv_types::ReplicaStore::deferring`] scope, and
//! [`Arrival::Served`] carries the [`DurableTicket`] the answer must wait
//! for, so a driver lets it go (to a peer, or back to its node) only once
//! the store reports it durable, asking for one flush per pass for all of
//! them. The node's other store calls (rebalance pages, anti-entropy,
//! cleanups) are still synchronous: such a write returns once the store
//! has made it as durable as its policy says, on the calling thread.
//!
//! What it does: membership by gossip with heartbeats and incarnations
//! ([`membership`]); keys placed on a [`kv_ring::Ring`]; every write
//! stamped by a hybrid logical clock ([`hlc`]) plus the node's number, so
//! versions are unique and last-write-wins; writes and reads coordinated
//! over the key's N replicas with strict quorums W and R.
//!
//! ```
//! use kv_replication::{ClientOp, ClientReply, Config, Node, Output};
//! use kv_storage::{Options, Store};
//!
//! let store = Store::open(Options::in_memory()).unwrap();
//! let mut node = Node::new(Config::new("127.0.0.1:7001"), 1_000, None, &store, 42);
//! // A one-node cluster: the node is the only replica.
//! node.handle_client(1_000, 1, ClientOp::Put { key: b"k".to_vec(), value: b"v".to_vec(), expires_at: None }, &store);
//! // Its own copy is a message to itself ([`Output::Local`]), served here
//! // at once ([`Node::poll_serving`]; a server holds the answer until the
//! // write is durable).
//! let replies: Vec<Output> = std::iter::from_fn(|| node.poll_serving(1_000, &store)).collect();
//! assert!(replies.iter().any(|o| matches!(o, Output::Reply { id: 1, reply: ClientReply::Written { .. } })));
//! assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));
//! ```

#![deny(missing_docs)]

pub mod admin_error;
pub mod anti_entropy;
pub mod event;
pub mod hlc;
pub mod membership;
pub mod msg;
pub mod node;
pub mod offload;
pub mod outage;
mod ownership;
pub mod rebalance;
pub mod stats;

pub use admin_error::AdminError;
pub use anti_entropy::{AeOutcome, AeTask, AntiEntropy};
pub use event::{Event, Refused};
pub use kv_types::DurableTicket;
pub use membership::MemberState;
pub use msg::{
    ClientOp, ClientReply, Digest, NodeId, PeerMsg, Stamped, Status, Ver, MAX_LIST_PAGE,
};
pub use node::{
    apply_entries, arrive, serve_replica, Arrival, Config, Hint, MemberInfo, Node, Output,
    Persisted, Planted,
};
pub use ownership::CleanupJob;
pub use rebalance::{Progress, StreamSave};
pub use stats::NodeStats;

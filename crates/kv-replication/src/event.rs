//! What a node reports to its operator: [`Event`]s, handed to the driver as
//! [`Output::Event`](crate::Output::Event).
//!
//! Each event carries its facts as typed fields, so that a driver (or the
//! simulator) can act on them without reading text; its `Display` is the
//! line the server logs.

use std::fmt;

use crate::membership::MemberState;
use crate::msg::{NodeId, Status, Ver};
use crate::rebalance::Progress;

/// Something worth a line in the log: members coming and going, a
/// rebalance's course, cleanups, and what the node refused and why.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A member that was up has left the cluster: it holds no range any more.
    MemberLeft {
        /// The member.
        id: NodeId,
    },
    /// A member has not been heard from lately.
    MemberSuspect {
        /// The member.
        id: NodeId,
    },
    /// A member has not been heard from for too long: writes for it
    /// become hints.
    MemberDown {
        /// The member.
        id: NodeId,
    },
    /// A member is heard from again.
    MemberBack {
        /// The member.
        id: NodeId,
        /// What it was before.
        was: MemberState,
    },
    /// A member's part in the ring changed (on this node's word: LEAVE,
    /// REMOVE).
    StatusChanged {
        /// The member.
        id: NodeId,
        /// Its part now.
        status: Status,
    },
    /// A node that was alone invited this one into its cluster, and this
    /// node joins.
    Invited {
        /// The node that invited.
        by: NodeId,
    },
    /// An invitation was ignored: this node is already in a cluster.
    InviteIgnored {
        /// The node that invited.
        by: NodeId,
    },
    /// A rebalance began.
    RebalanceStarted {
        /// Members joining.
        joining: Vec<NodeId>,
        /// Members leaving.
        leaving: Vec<NodeId>,
        /// How many ranges this node receives (`None`: it has none to
        /// receive).
        receives: Option<usize>,
    },
    /// This node began to receive its new ranges.
    RebalanceReceiving {
        /// Ranges to receive.
        ranges: usize,
        /// Nodes they come from.
        nodes: usize,
        /// After a restart: how many ranges resume where they stopped, and
        /// the bytes received before.
        resumed: Option<(usize, u64)>,
    },
    /// How the rebalance under way is going (now and then).
    RebalanceProgress(Progress),
    /// This node received all its new ranges.
    RebalanceReceived {
        /// Ranges received.
        ranges: usize,
        /// Entries received.
        keys: u64,
        /// Bytes received.
        bytes: u64,
        /// How long it took (ms, at least 1).
        elapsed_ms: u64,
    },
    /// Every gainer has its ranges: the joining members became normal and
    /// the leaving ones left (logged by the node that saw it first).
    RebalanceDone {
        /// Members that joined.
        joined: Vec<NodeId>,
        /// Members that left.
        left: Vec<NodeId>,
    },
    /// The rings became one again (this node heard that the rebalance is
    /// over).
    RebalanceOver {
        /// The members of the ring now.
        ring: Vec<NodeId>,
    },
    /// Streamed entries were dropped: their timestamps were beyond the
    /// maximum clock offset.
    StreamRefused {
        /// How many entries of the page.
        entries: usize,
        /// The node that sent them.
        from: NodeId,
    },
    /// A cleanup forgot entries of ranges this node gave away or is
    /// receiving afresh.
    CleanupForgot {
        /// How many entries.
        entries: usize,
    },
    /// A cleanup failed; it is tried again later.
    CleanupFailed {
        /// Why.
        error: String,
    },
    /// The snapshot a failed cleanup owed is written now.
    CleanupSnapshotWritten,
    /// The snapshot a failed cleanup owed failed again; it is tried again
    /// later.
    CleanupSnapshotFailed {
        /// Why.
        error: String,
    },
    /// This node's clock is too far ahead of most peers: it coordinates no
    /// operation until the clock is fixed.
    ClockAhead {
        /// The maximum clock offset (ms).
        max_offset_ms: u64,
        /// Peers this node's clock is too far ahead of.
        ahead_of: usize,
        /// Peers heard from.
        peers: usize,
        /// The peer whose clock reading tipped the balance.
        from: NodeId,
        /// Its clock (ms).
        their_clock_ms: u64,
        /// Ours (ms).
        our_clock_ms: u64,
    },
    /// This node's clock is back within the maximum clock offset of its
    /// peers: it coordinates again.
    ClockBack,
    /// Something stamped too far in the future was refused (logged at most
    /// once a second).
    RefusedFarAhead {
        /// What was refused.
        what: Refused,
        /// Who sent it.
        from: NodeId,
        /// Its timestamp (an HLC timestamp).
        ts: u64,
        /// How far ahead of the cluster's time (ms).
        ahead_ms: u64,
        /// The maximum clock offset (ms).
        max_offset_ms: u64,
        /// How many were refused so far.
        refused: u64,
    },
    /// A node gossiped a version number another node has: it is refused.
    DuplicateNumber {
        /// The node refused.
        from: NodeId,
        /// The number.
        number: u32,
        /// The node that had it first.
        holder: NodeId,
    },
    /// This node was out of contact too long and gives up its data.
    RejoiningFresh {
        /// Why.
        why: String,
    },
    /// A write was refused: the clock cannot go higher.
    ClockExhausted {
        /// The key.
        key: Vec<u8>,
        /// The clock's last timestamp.
        last: u64,
    },
    /// A write failed: the replicas kept newer versions after every try.
    WriteGaveUp {
        /// The key.
        key: Vec<u8>,
        /// The newest version the replicas kept.
        newer: Ver,
        /// How many versions were tried.
        tries: u32,
    },
    /// Anti-entropy refused a pull of too many keys (logged at powers of
    /// two).
    AePullRefused {
        /// Keys asked for.
        keys: usize,
        /// Who asked.
        from: NodeId,
        /// The most one pull may ask for.
        max: usize,
        /// How many pulls were refused so far.
        refused: u64,
    },
}

/// What carried a timestamp too far ahead ([`Event::RefusedFarAhead`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A replicated write.
    Write,
    /// A replica's answer to a write, naming a newer version.
    WriteAck,
    /// A replica's answer to a read.
    ReadReply,
    /// This node's own copy of a write it coordinates.
    OwnWrite,
    /// A timestamp the driver observed.
    Timestamp,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Write => "a write",
            Refused::WriteAck => "a write ack",
            Refused::ReadReply => "a read reply",
            Refused::OwnWrite => "its own write",
            Refused::Timestamp => "a timestamp",
        })
    }
}

/// `n` and `noun`, plural unless `n` is 1: "1 range", "3 ranges".
pub(crate) fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::MemberLeft { id } => {
                write!(f, "member {id} has left the cluster: it holds no range any more")
            }
            Event::MemberSuspect { id } => write!(f, "member {id} is suspect: not heard from lately"),
            Event::MemberDown { id } => write!(
                f,
                "member {id} is down: not heard from for too long; writes for it become hints"
            ),
            Event::MemberBack { id, was } => {
                write!(f, "member {id} is back (it was {})", was.name())
            }
            Event::StatusChanged { id, status } => write!(f, "{id} is now {}", status.name()),
            Event::Invited { by } => write!(f, "invited by {by}: joining its cluster"),
            Event::InviteIgnored { by } => write!(
                f,
                "invitation from {by} ignored: this node is already in a cluster"
            ),
            Event::RebalanceStarted {
                joining,
                leaving,
                receives,
            } => {
                write!(
                    f,
                    "rebalance started: joining [{}], leaving [{}]; ",
                    joining.join(", "),
                    leaving.join(", ")
                )?;
                match receives {
                    None => f.write_str("this node has no range to receive"),
                    Some(n) => write!(f, "this node receives {}", counted(*n, "range")),
                }
            }
            Event::RebalanceReceiving {
                ranges,
                nodes,
                resumed,
            } => {
                write!(
                    f,
                    "rebalance: receiving {} from {}",
                    counted(*ranges, "range"),
                    counted(*nodes, "node")
                )?;
                match resumed {
                    Some((n, bytes)) => write!(
                        f,
                        ", resuming {n} of them where they stopped ({:.1} MB received before)",
                        *bytes as f64 / 1e6
                    ),
                    None => Ok(()),
                }
            }
            Event::RebalanceProgress(p) => f.write_str(&p.line()),
            Event::RebalanceReceived {
                ranges,
                keys,
                bytes,
                elapsed_ms,
            } => {
                let secs = *elapsed_ms as f64 / 1000.0;
                let mb = *bytes as f64 / 1e6;
                write!(
                    f,
                    "rebalance: received all {}: {keys} keys, {mb:.2} MB in {secs:.1} s ({:.1} MB/s)",
                    counted(*ranges, "range"),
                    mb / secs
                )
            }
            Event::RebalanceDone { joined, left } => write!(
                f,
                "rebalance done: joined [{}], left [{}]",
                joined.join(", "),
                left.join(", ")
            ),
            Event::RebalanceOver { ring } => {
                write!(f, "rebalance over: the ring is now [{}]", ring.join(", "))
            }
            Event::StreamRefused { entries, from } => write!(
                f,
                "refused {entries} streamed entries from {from}: timestamps beyond the maximum clock offset"
            ),
            Event::CleanupForgot { entries } => write!(
                f,
                "cleanup: forgot {entries} entries of ranges this node gave away or is receiving afresh"
            ),
            Event::CleanupFailed { error } => {
                write!(f, "cleanup failed, retried later: {error}")
            }
            Event::CleanupSnapshotWritten => {
                f.write_str("cleanup: the snapshot that failed is written now")
            }
            Event::CleanupSnapshotFailed { error } => {
                write!(f, "cleanup: snapshot failed again, retried later: {error}")
            }
            Event::ClockAhead {
                max_offset_ms,
                ahead_of,
                peers,
                from,
                their_clock_ms,
                our_clock_ms,
            } => write!(
                f,
                "this node's clock is more than the maximum clock offset ({max_offset_ms} ms) ahead of {ahead_of} of {peers} peers ({from}'s reads {their_clock_ms}, ours {our_clock_ms}): it coordinates no operation until the clock is fixed"
            ),
            Event::ClockBack => f.write_str(
                "this node's clock is back within the maximum clock offset of its peers: coordinating again",
            ),
            Event::RefusedFarAhead {
                what,
                from,
                ts,
                ahead_ms,
                max_offset_ms,
                refused,
            } => write!(
                f,
                "refused {what} from {from}: timestamp {ts} is {ahead_ms} ms ahead of the cluster's time (maximum clock offset {max_offset_ms} ms); {refused} refused so far"
            ),
            Event::DuplicateNumber {
                from,
                number,
                holder,
            } => write!(
                f,
                "refused {from}: its version number {number} is already {holder}'s; node numbers (--node-id, or the hash of the address) must be unique in a cluster"
            ),
            Event::RejoiningFresh { why } => write!(
                f,
                "giving up this node's data and rejoining as a new generation: {why}"
            ),
            Event::ClockExhausted { key, last } => write!(
                f,
                "write of {} refused: the clock cannot go above {last}",
                String::from_utf8_lossy(key)
            ),
            Event::WriteGaveUp { key, newer, tries } => write!(
                f,
                "write of {} failed: replicas kept {newer:?}, newer, after {tries} versions",
                String::from_utf8_lossy(key)
            ),
            Event::AePullRefused {
                keys,
                from,
                max,
                refused,
            } => write!(
                f,
                "anti-entropy: refused a pull of {keys} keys from {from} (at most {max}); {refused} refused so far"
            ),
        }
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;

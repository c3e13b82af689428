//! Why an admin command ([`Node::leave`](crate::Node::leave),
//! [`Node::remove`](crate::Node::remove)) was refused: [`AdminError`].

use std::fmt;

use crate::msg::{NodeId, Status};

/// Why a LEAVE or REMOVE was refused. Its `Display` is the text the client
/// gets back; each variant's doc says what the operator can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// The node is not in the cluster (check the address in CLUSTER).
    NotMember {
        /// The node named.
        node: NodeId,
    },
    /// The node has left already: nothing to do.
    AlreadyLeft {
        /// The node named.
        node: NodeId,
    },
    /// LEAVE of a node that is down: REMOVE it instead.
    Down {
        /// The node named.
        node: NodeId,
    },
    /// LEAVE of a node that is not a normal member (it is joining or
    /// leaving already): wait until CLUSTER shows it normal.
    NotNormal {
        /// The node named.
        node: NodeId,
        /// Its part now.
        status: Status,
    },
    /// Another node joins or leaves: retry once CLUSTER shows it done.
    Busy {
        /// The members joining or leaving.
        moving: Vec<NodeId>,
    },
    /// The node is the only one holding data: add a node first.
    OnlyHolder {
        /// The node named.
        node: NodeId,
    },
    /// REMOVE of the node asked: use LEAVE to decommission a live node.
    IsSelf {
        /// The node named.
        node: NodeId,
    },
    /// REMOVE of a node not yet seen as down: wait until CLUSTER shows it
    /// down, or LEAVE it if it is up.
    NotYetDown {
        /// The node named.
        node: NodeId,
        /// How long without a word marks a member down (ms).
        down_after_ms: u64,
    },
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotMember { node } => write!(f, "{node} is not a member of this cluster"),
            AdminError::AlreadyLeft { node } => write!(f, "{node} has already left"),
            AdminError::Down { node } => write!(
                f,
                "{node} is down: REMOVE it instead, to rebuild its ranges from the other replicas"
            ),
            AdminError::NotNormal { node, status } => {
                write!(f, "{node} is {}, not a normal member", status.name())
            }
            AdminError::Busy { moving } => write!(
                f,
                "a rebalance is under way ({}); one node joins or leaves at a time, retry when CLUSTER shows it done",
                moving.join(", ")
            ),
            AdminError::OnlyHolder { node } => {
                write!(f, "{node} is the only member holding data")
            }
            AdminError::IsSelf { node } => write!(
                f,
                "{node} is this node: use LEAVE to decommission a live node"
            ),
            AdminError::NotYetDown {
                node,
                down_after_ms,
            } => write!(
                f,
                "{node} is not yet seen as down (a member is marked down after {} s without a word from it): if it just stopped, wait until CLUSTER shows it down, then REMOVE it; if it is up, use LEAVE to decommission a live node",
                *down_after_ms as f64 / 1000.0
            ),
        }
    }
}

impl std::error::Error for AdminError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: AdminError) -> String {
        e.to_string()
    }

    #[test]
    fn each_refusal_reads_as_before() {
        let n = || "127.0.0.1:7003".to_string();
        for (e, want) in [
            (
                AdminError::NotMember { node: n() },
                "127.0.0.1:7003 is not a member of this cluster",
            ),
            (
                AdminError::AlreadyLeft { node: n() },
                "127.0.0.1:7003 has already left",
            ),
            (
                AdminError::Down { node: n() },
                "127.0.0.1:7003 is down: REMOVE it instead, to rebuild its ranges from the other replicas",
            ),
            (
                AdminError::NotNormal {
                    node: n(),
                    status: Status::Joining,
                },
                "127.0.0.1:7003 is joining, not a normal member",
            ),
            (
                AdminError::Busy {
                    moving: vec![n(), "127.0.0.1:7004".to_string()],
                },
                "a rebalance is under way (127.0.0.1:7003, 127.0.0.1:7004); one node joins or leaves at a time, retry when CLUSTER shows it done",
            ),
            (
                AdminError::OnlyHolder { node: n() },
                "127.0.0.1:7003 is the only member holding data",
            ),
            (
                AdminError::IsSelf { node: n() },
                "127.0.0.1:7003 is this node: use LEAVE to decommission a live node",
            ),
            (
                AdminError::NotYetDown {
                    node: n(),
                    down_after_ms: 3_000,
                },
                "127.0.0.1:7003 is not yet seen as down (a member is marked down after 3 s without a word from it): if it just stopped, wait until CLUSTER shows it down, then REMOVE it; if it is up, use LEAVE to decommission a live node",
            ),
            (
                AdminError::NotYetDown {
                    node: n(),
                    down_after_ms: 1_500,
                },
                "127.0.0.1:7003 is not yet seen as down (a member is marked down after 1.5 s without a word from it): if it just stopped, wait until CLUSTER shows it down, then REMOVE it; if it is up, use LEAVE to decommission a live node",
            ),
        ] {
            assert_eq!(text(e), want);
        }
    }
}

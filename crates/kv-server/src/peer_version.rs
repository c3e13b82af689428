//! The peer protocol version a dialer states in its hello
//! ([`kv_proto::native::PEER_PROTOCOL_VERSION`]): a node refuses a link
//! from a node that speaks another, saying so in one line that names
//! both versions, rather than fail later on a message it cannot decode
//! (see `docs/cluster.md`, "Upgrades").

use kv_proto::native::PEER_PROTOCOL_VERSION;

use crate::state::Shared;

/// Why a hello stating `theirs` from the node `from` is refused: both
/// nodes and both versions, and what to do. Also sent to the dialer,
/// which logs it.
pub fn mismatch(shared: &Shared, from: &str, theirs: u16) -> String {
    let me = shared
        .cluster
        .get()
        .map_or_else(|| "this node".to_string(), |c| c.id.clone());
    format!(
        "peer protocol versions differ: {from} speaks version {theirs}, {me} speaks version {PEER_PROTOCOL_VERSION}; every node of a cluster must run a release with the same peer protocol (see docs/cluster.md, upgrades)"
    )
}

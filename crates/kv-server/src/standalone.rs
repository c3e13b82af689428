//! A single server: no cluster machinery.
//!
//! A node that can never have peers (no `--cluster-secret`, no
//! `--tls-cluster`, no `--join`, no saved membership naming other members)
//! runs no cluster thread, no rebalance appliers, no anti-entropy thread,
//! no contact writer and no hint store. It cannot become a cluster member
//! at runtime either: without a secret it accepts no peer and dials none,
//! and JOIN is refused (see `docs/security.md`), so nothing is lost by not
//! starting them; a restart with a secret turns it into a cluster node.
//!
//! What such a server still does is write its `cluster.state` at start,
//! as every server does: a later start with `--join` on the same data
//! tells a plain server's data (state naming only itself) from data whose
//! membership was lost (no state at all).

use kv_replication::{Node, Output};

use crate::cluster::{load_state, node_config, now_ms, save_state, state_path, view_text};
use crate::config::Config;
use crate::state::Shared;

/// Why JOIN (and LEAVE, REMOVE) is refused on a node without a secret.
pub const NO_PEERS: &str = "this node has no --cluster-secret, so it has no peers: start every node with the same --cluster-secret";

/// Whether this node needs the cluster machinery: it may have peers now
/// or later. A saved state naming other members counts even without a
/// secret (the start is refused elsewhere, or the node must refuse to
/// serve on its own).
pub fn cluster_needed(config: &Config) -> bool {
    if crate::state::cluster_secret(config).is_some()
        || config.tls_cluster
        || !config.join.is_empty()
    {
        return true;
    }
    if config.no_persistence {
        return false;
    }
    let path = config.data_dir.join(crate::cluster::STATE_FILE);
    load_state(Some(&path)).is_some_and(|p| p.members.len() > 1)
}

/// Sets a single server up without the cluster machinery: writes its
/// `cluster.state` as the cluster thread would have at start, and keeps
/// the CLUSTER text describing the one node. `id` is its advertised
/// address.
pub fn start(shared: &Shared, id: &str) {
    let path = state_path(shared);
    let saved = load_state(path.as_ref());
    let now = now_ms();
    let mut node = Node::new(
        node_config(&shared.config, id),
        now,
        saved,
        &shared.store,
        0,
    );
    while let Some(out) = node.poll_output() {
        if let (Output::Persist(p), Some(path)) = (out, &path) {
            save_state(path, &p);
        }
    }
    let _ = shared.standalone_view.set(view_text(&node, id, now));
}

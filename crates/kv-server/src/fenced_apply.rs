//! The stores made by the threads that work beside the cluster thread —
//! the rebalance appliers (entries of stream pages) and the anti-entropy
//! thread (values a peer sent) — fenced by the ring id the cluster thread
//! publishes in [`crate::cluster::ClusterHandle::ring`]: a thin adapter
//! that holds the read lock of the published id around the fenced
//! functions of [`kv_replication::offload`], whose module comment explains
//! the race they close (the simulator runs the same functions).
//!
//! The cluster thread publishes a new id under the write lock before
//! anything else happens under the new ring — before it saves the
//! membership and before the cleanup runs — so any store under the old id
//! has finished by then, and any later one is refused.

use kv_replication::offload::{apply_page_fenced, run_ae_fenced};
use kv_replication::{AeOutcome, AeTask, AntiEntropy, Stamped};
use kv_storage::Store;

/// Applies a stream page's `entries`, made under ring `epoch`, to `store`
/// if the published `ring` is still `epoch` (holding its read lock
/// meanwhile): the greatest timestamp stored, or `None` if the ring
/// changed (nothing stored: the page belongs to a rebalance that is over)
/// or the store failed (the node asks for the page again).
pub fn apply_page(
    store: &Store,
    ring: &parking_lot::RwLock<u64>,
    epoch: u64,
    entries: &[(Vec<u8>, Stamped)],
) -> Option<u64> {
    let ring = ring.read();
    apply_page_fenced(store, *ring, epoch, entries)
}

/// Runs anti-entropy `task` against `store` if the published `ring` is
/// still the ring the task was made under (holding its read lock
/// meanwhile, but not while the store first rehashes its keys for a new
/// ring); an empty outcome if not (the next round starts afresh on
/// the new ring).
pub fn run_ae(
    ae: &mut AntiEntropy,
    task: AeTask,
    store: &Store,
    ring: &parking_lot::RwLock<u64>,
) -> AeOutcome {
    if *ring.read() != task.epoch {
        return AeOutcome::default();
    }
    // Rehashing every key for a new ring takes seconds on a large store:
    // done before the lock, so that a ring change (the cluster thread's
    // write lock, and behind it every event loop serving a replica) never
    // waits for it.
    ae.prepare(&task, store);
    let ring = ring.read();
    run_ae_fenced(ae, task, store, *ring)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use kv_replication::anti_entropy::{AeView, AeWork};
    use kv_replication::msg::AeValue;
    use kv_replication::{PeerMsg, Ver};

    const R1: u64 = 11;
    const R2: u64 = 23;

    fn store() -> Store {
        Store::open(kv_storage::Options::in_memory()).expect("store")
    }

    /// The range of `key` alone, as a cleanup would drop it.
    fn range_of(key: &[u8]) -> Vec<(u64, u64)> {
        let p = Store::key_position(key);
        vec![(p, p)]
    }

    fn stamped(ts: u64) -> Stamped {
        Stamped {
            version: Ver { ts, node: 9 },
            value: Some(b"old".to_vec()),
            expires_at: None,
        }
    }

    /// The cluster thread moves to ring R2 and its cleanup forgets the
    /// range of `key`, as it does once R2 has settled.
    fn ring_changes_and_cleanup_runs(ring: &parking_lot::RwLock<u64>, s: &Store, key: &[u8]) {
        *ring.write() = R2;
        s.drop_ranges(&range_of(key)).expect("cleanup");
    }

    /// A page handed to an applier under R1, applied only after the ring
    /// moved on and the cleanup forgot the range: nothing is stored.
    #[test]
    fn a_stream_page_of_an_old_ring_stores_nothing_after_the_cleanup() {
        let s = store();
        let ring = parking_lot::RwLock::new(R1);
        let entries = vec![(b"k".to_vec(), stamped(1_000_000))];
        // Handed over under R1; the applier is slow.
        let epoch = *ring.read();
        ring_changes_and_cleanup_runs(&ring, &s, b"k");
        assert_eq!(apply_page(&s, &ring, epoch, &entries), None);
        assert_eq!(
            s.get_versioned(b"k"),
            None,
            "ghost entry of a range given away"
        );
        // Under the current ring it is stored.
        assert_eq!(apply_page(&s, &ring, R2, &entries), Some(1_000_000));
        assert!(s.get_versioned(b"k").is_some());
    }

    /// Values a peer sent, in a task made under R1 and run only after the
    /// ring moved on and the cleanup forgot the range: nothing is stored.
    #[test]
    fn anti_entropy_values_of_an_old_ring_store_nothing_after_the_cleanup() {
        let s = store();
        let ring = parking_lot::RwLock::new(R1);
        let (me, peer) = ("127.0.0.1:1", "127.0.0.1:2");
        let r = kv_ring::Ring::with_nodes(kv_ring::DEFAULT_VNODES, [me, peer]);
        let values = PeerMsg::AeValues {
            entries: vec![AeValue {
                key: b"k".to_vec(),
                version: Ver {
                    ts: 1_000_000,
                    node: 9,
                },
                value: Some(b"old".to_vec()),
                expires_at: None,
            }],
        };
        let task = AeTask {
            view: Arc::new(AeView::new(&r, 2, me)),
            epoch: *ring.read(),
            old_before: 0,
            max_ts: u64::MAX,
            work: AeWork::Message(peer.to_string(), values),
        };
        let mut ae = AntiEntropy::default();
        ring_changes_and_cleanup_runs(&ring, &s, b"k");
        let out = run_ae(&mut ae, task.clone(), &s, &ring);
        assert_eq!(out.applied, 0);
        assert_eq!(
            s.get_versioned(b"k"),
            None,
            "ghost entry of a range given away"
        );
        // Made under the current ring, it is stored.
        let task = AeTask { epoch: R2, ..task };
        assert_eq!(run_ae(&mut ae, task, &s, &ring).applied, 1);
    }
}

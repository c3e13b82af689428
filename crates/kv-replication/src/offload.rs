//! Work a driver runs off the thread that drives the [`Node`]: the
//! entries of a rebalancing stream page (the appliers), anti-entropy
//! tasks, and cleanups ([`Output::Cleanup`]). The server runs them on
//! threads of their own; the simulator queues them and runs them later.
//! Both call these functions, so that the fence below is the same code
//! under both.
//!
//! The race the fence closes: the driver hands a page or a task over
//! under ring R1, in which this node owns the range. Before it runs, the
//! ring changes to R2, in which the node owns the range no more, R2
//! settles and the cleanup forgets the range
//! ([`ReplicaStore::drop_ranges_while`]). Stored after that, the entries
//! would be ghost data of a range the node does not own: nothing forgets
//! them again, and they come back to life when the range comes back to
//! this node (a value whose delete the owners have purged in the
//! meantime with it).
//!
//! The fence: each piece of work carries the ring id ([`Node::ring_id`])
//! under which the driver made it, and is applied only if the ring id the
//! driver publishes is still the same. The driver holds whatever keeps
//! that id from changing (the server: the read lock of the published id)
//! around the call, and publishes a new id (the server: under the write
//! lock) before anything else happens under the new ring — before it
//! saves the membership and before the cleanup runs — so any store under
//! the old id has finished by then, and any later one is refused. (A ring
//! that changes and comes back, R1 → R2 → R1, lets work made under the
//! first R1 through: its ranges are this node's again, and its entries
//! are versioned, so they replace nothing newer.)
//!
//! A cleanup is fenced the other way round: while it runs, the node
//! shrinks what it forgets by every range a ring change gives back
//! ([`CleanupJob`]).
//!
//! [`Node`]: crate::Node
//! [`Node::ring_id`]: crate::Node::ring_id
//! [`Output::Cleanup`]: crate::Output::Cleanup

use kv_types::ReplicaStore;

use crate::anti_entropy::{AeOutcome, AeTask, AntiEntropy};
use crate::hlc::{Micros, Millis};
use crate::msg::Stamped;
use crate::node::apply_entries;
use crate::ownership::CleanupJob;

/// Applies a stream page's `entries`, made under ring `epoch`, to `store`
/// if the ring id the driver publishes, `published`, is still `epoch`
/// (the driver keeps it from changing during the call): the greatest
/// timestamp stored, or `None` if the ring changed (nothing stored: the
/// page belongs to a rebalance that is over, or the node asks for it
/// again) or the store failed (the node asks for the page again).
pub fn apply_page_fenced(
    store: &dyn ReplicaStore,
    published: u64,
    epoch: u64,
    entries: &[(Vec<u8>, Stamped)],
) -> Option<u64> {
    if published != epoch {
        return None;
    }
    apply_entries(store, entries)
}

/// Runs anti-entropy `task` against `store` if the ring id the driver
/// publishes, `published`, is still the ring the task was made under
/// (the driver keeps it from changing during the call); an empty outcome
/// if not (the next round starts afresh on the new ring). A driver that
/// must not hold its lock while the store first rehashes its keys for a
/// new ring calls [`AntiEntropy::prepare`] before taking it.
pub fn run_ae_fenced(
    ae: &mut AntiEntropy,
    task: AeTask,
    store: &dyn ReplicaStore,
    published: u64,
) -> AeOutcome {
    if published != task.epoch {
        return AeOutcome::default();
    }
    ae.run(task, store)
}

/// Drops from `entries` those stamped beyond the maximum clock offset
/// `max` ahead of the cluster's time `now`, as the write path does for a
/// replicated write: such a timestamp comes from a clock far off or a
/// forged message, and stored it would freeze the key. How many it
/// dropped.
pub fn refuse_far_ahead(entries: &mut Vec<(Vec<u8>, Stamped)>, now: Millis, max: Millis) -> usize {
    let before = entries.len();
    entries.retain(|(_, s)| !crate::hlc::too_far_ahead(Micros(s.version.ts), now, max));
    before - entries.len()
}

/// Runs a cleanup `job` (see [`CleanupJob::run`]), turning a panic into
/// an error: what the driver hands back to [`crate::Node::cleanup_done`].
/// The node must hear back from every cleanup it starts, or it never
/// starts another.
pub fn run_cleanup_job(job: &CleanupJob, store: &dyn ReplicaStore) -> Result<usize, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(store)))
        .map_err(|_| "the cleanup panicked".to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Ver;
    use kv_storage::{Options, Store};

    fn stamped(ts: u64) -> Stamped {
        Stamped {
            version: Ver { ts, node: 9 },
            value: Some(b"v".to_vec()),
            expires_at: None,
        }
    }

    #[test]
    fn a_page_of_another_ring_stores_nothing() {
        let s = Store::open(Options::in_memory()).expect("store");
        let entries = vec![(b"k".to_vec(), stamped(5_000))];
        assert_eq!(apply_page_fenced(&s, 2, 1, &entries), None);
        assert_eq!(s.get(b"k"), None, "stored under a ring no longer published");
        assert_eq!(apply_page_fenced(&s, 1, 1, &entries), Some(5_000));
        assert_eq!(s.get(b"k"), Some(b"v".to_vec()));
    }

    #[test]
    fn entries_beyond_the_maximum_offset_are_refused() {
        // Now is 1,000 ms, the offset 500 ms: 1,500 ms (in µs) is the last
        // timestamp taken.
        let mut entries = vec![
            (b"a".to_vec(), stamped(1_500_000)),
            (b"b".to_vec(), stamped(1_500_001)),
        ];
        assert_eq!(
            refuse_far_ahead(&mut entries, Millis(1_000), Millis(500)),
            1
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, b"a".to_vec());
    }

    #[test]
    fn a_cleanup_job_forgets_its_ranges() {
        let s = Store::open(Options::in_memory()).expect("store");
        s.apply(b"k", Some(b"v"), kv_storage::Version::new(1, 1))
            .expect("apply");
        let p = kv_ring::key_position(b"k");
        let job = CleanupJob::new(vec![(p, p)], false);
        assert_eq!(run_cleanup_job(&job, &s), Ok(1));
        assert_eq!(s.get(b"k"), None);
    }
}

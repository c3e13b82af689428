//! The handle through which the event loops reach the cluster thread, and
//! the figures the cluster thread publishes.

#[cfg(test)]
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
#[cfg(test)]
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

#[cfg(test)]
use mio::Poll;
use mio::Waker;
use parking_lot::Mutex;

use super::ToCluster;
#[cfg(test)]
use super::WAKER;

/// What workers use to reach the cluster thread.
pub struct ClusterHandle {
    pub(super) tx: Mutex<Sender<ToCluster>>,
    pub(super) waker: Arc<Waker>,
    /// Whether client data operations must go through the cluster (this
    /// node has peers, or is joining some).
    pub clustered: AtomicBool,
    /// The cluster view, refreshed by the cluster thread.
    pub view: Mutex<String>,
    /// This node's id.
    pub id: String,
    /// The newest version timestamp the event loops saw in replicated
    /// writes they applied themselves; the node's clock stays above it.
    pub observed: std::sync::atomic::AtomicU64,
    /// False while a node restarted on its data has not yet checked, at
    /// its first contact, that it was not away for too long, and once it
    /// gave its data up ([`kv_replication::Node::serves_peers`]): then
    /// the event loops hand peers' requests for data to the cluster thread
    /// (which answers none) instead of answering them from the store.
    pub checked: AtomicBool,
    /// The node's ring id: the event loops serve replica requests only
    /// from coordinators on this very ring (others go to the cluster
    /// thread, which refuses them), and hold the read lock while they
    /// serve one. So once the cluster thread has written a new id, no
    /// request accepted under the old one is still being applied: the
    /// cluster thread writes it before it saves the new membership and
    /// cleans up the ranges the new ring gave away.
    pub ring: parking_lot::RwLock<u64>,
    /// The cluster's time as the node trusts it, published by the cluster
    /// thread: the event loops check replicated writes' timestamps against
    /// it, as the node does, not against this host's wall clock, which
    /// may have been stepped.
    pub clock: kv_replication::hlc::SharedClock,
    /// The cluster's figures for metrics and INFO, refreshed by the
    /// cluster thread.
    pub stats: Mutex<ClusterStats>,
    /// Set once the event loops have stopped (see [`ClusterHandle::stop`]).
    pub(super) stop: AtomicBool,
}

/// What the cluster thread publishes for the metrics endpoint and INFO.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    /// The node's counters.
    pub node: kv_replication::NodeStats,
    /// Hints held now for replicas that were down.
    pub hints_pending: u64,
    /// Each member (this node included) and its state seen from here.
    pub members: Vec<(String, kv_replication::MemberState)>,
    /// The rebalance under way, if any.
    pub rebalance: Option<kv_replication::Progress>,
}

thread_local! {
    /// Work an event loop has collected for the cluster thread during one
    /// pass; sent with a single wake-up by [`ClusterHandle::flush`].
    static BATCH: std::cell::RefCell<Vec<ToCluster>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ClusterHandle {
    /// Queues work for the cluster thread; it is sent at the next
    /// [`ClusterHandle::flush`] from this thread.
    pub fn send(&self, m: ToCluster) {
        BATCH.with_borrow_mut(|b| b.push(m));
    }

    /// Sends what this thread queued and wakes the cluster thread once.
    pub fn flush(&self) {
        let batch = BATCH.with_borrow_mut(std::mem::take);
        if batch.is_empty() {
            return;
        }
        let tx = self.tx.lock();
        for m in batch {
            let _ = tx.send(m);
        }
        let _ = self.waker.wake();
    }

    /// Whether data operations go through the cluster.
    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Acquire)
    }

    /// Stops the cluster thread, once the event loops have stopped (no
    /// client is left to answer). At shutdown the cluster thread runs on
    /// until then, so that the operations it coordinates are answered.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

impl ClusterHandle {
    /// A handle with no cluster thread behind it, for tests of the event
    /// loops: what they send arrives on the returned receiver (the poll
    /// keeps the waker valid).
    #[cfg(test)]
    pub(crate) fn detached(id: &str) -> io::Result<(Self, Receiver<ToCluster>, Poll)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let handle = ClusterHandle {
            tx: Mutex::new(tx),
            waker,
            clustered: AtomicBool::new(true),
            view: Mutex::new(String::new()),
            id: id.to_string(),
            observed: std::sync::atomic::AtomicU64::new(0),
            checked: AtomicBool::new(true),
            ring: parking_lot::RwLock::new(0),
            clock: kv_replication::hlc::SharedClock::new(250),
            stats: Mutex::new(ClusterStats::default()),
            stop: AtomicBool::new(false),
        };
        Ok((handle, rx, poll))
    }
}

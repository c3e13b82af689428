//! The threads a server runs beside its cluster thread, modelled: the
//! rebalance appliers (the entries of the stream pages of a rebalance the
//! node receives) and the cleanup thread (the node's
//! [`Output::Cleanup`] jobs). Their work is queued per node and run later,
//! at a time drawn from the run's generator, through the same
//! `kv_replication::offload` functions as the server, and the results go
//! back to the node as the server sends them: the emptied page (after the
//! greatest timestamp stored is observed) as a message from its source,
//! the cleanup's result to `Node::cleanup_done`. Rings may change in
//! between, which is what the fences are for. A node that crashes loses
//! the work queued for it, as a process that dies does.
//!
//! On for the runs whose seed says so ([`SimConfig::appliers`]); off, the
//! node applies pages and runs cleanups inline.

use std::sync::Arc;

use kv_replication::offload::{apply_page_fenced, refuse_far_ahead, run_cleanup_job};
use kv_replication::CleanupJob;

use super::*;

/// Work queued for a node's applier or cleanup thread.
pub(super) enum Work {
    /// A stream page from `from`, received under ring `epoch`.
    Page {
        from: String,
        epoch: u64,
        msg: PeerMsg,
    },
    /// A cleanup the node handed out.
    Cleanup(Arc<CleanupJob>),
}

/// Chance (per million) that a piece of work waits long (a store busy
/// with a snapshot, a thread descheduled), up to [`SLOW`] ms; else it
/// waits up to [`PROMPT`] ms.
const SLOW_PPM: u64 = 100_000;
const SLOW: u64 = 3000;
const PROMPT: u64 = 20;

impl Sim {
    /// Whether run `seed` models the appliers and the cleanup thread:
    /// as [`SimConfig::appliers`] says, or for half the seeds (a draw of
    /// its own, so that the run's generator is left as it was).
    pub(super) fn appliers_for(seed: u64, cfg: &SimConfig) -> bool {
        cfg.appliers
            .unwrap_or_else(|| kv_replication::node::splitmix64(&mut seed.clone()) % 2 == 0)
    }

    /// Queues `work` for node `i`, to run after a random while.
    fn queue_work(&mut self, i: usize, work: Work) {
        let wait = if self.rng.chance(SLOW_PPM) {
            1 + self.rng.below(SLOW)
        } else {
            1 + self.rng.below(PROMPT)
        };
        self.seq += 1;
        self.offloaded
            .insert((self.now + wait, self.seq), (i, work));
    }

    /// A message delivered to node `i`: a stream page with entries of a
    /// rebalance it receives goes to its appliers (as the server's cluster
    /// thread sends it, tagged with the node's ring id); anything else is
    /// returned, for the node.
    pub(super) fn hand_to_appliers(
        &mut self,
        i: usize,
        from: &str,
        msg: PeerMsg,
    ) -> Option<PeerMsg> {
        if !self.appliers {
            return Some(msg);
        }
        let node = self.nodes[i].node.as_ref()?;
        match &msg {
            PeerMsg::StreamPage {
                entries,
                transition,
                ..
            } if !entries.is_empty() && node.receives_stream(*transition) => {
                let epoch = node.ring_id();
                let from = from.to_string();
                self.queue_work(i, Work::Page { from, epoch, msg });
                None
            }
            _ => Some(msg),
        }
    }

    /// A cleanup node `i` handed out.
    pub(super) fn cleanup_handed_out(&mut self, i: usize, job: Arc<CleanupJob>) {
        self.queue_work(i, Work::Cleanup(job));
    }

    /// Node `i` (re)starts: what was queued for it died with it.
    pub(super) fn drop_work(&mut self, i: usize) {
        self.offloaded.retain(|_, (node, _)| *node != i);
    }

    /// Runs the work due by now.
    pub(super) fn run_work(&mut self) {
        while let Some(entry) = self.offloaded.first_entry() {
            if entry.key().0 > self.now {
                return;
            }
            let (i, work) = entry.remove();
            self.run_one(i, work);
        }
    }

    fn run_one(&mut self, i: usize, work: Work) {
        let now = self.clock(i);
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else {
            return; // crashed: the work died with it
        };
        match work {
            Work::Page {
                from,
                epoch,
                mut msg,
            } => {
                if let PeerMsg::StreamPage { entries, .. } = &mut msg {
                    if let Some((clock, max)) = node.stream_clock_bound(now) {
                        refuse_far_ahead(entries, clock, max);
                    }
                    // The published ring id is the node's own: the
                    // simulator publishes it at once.
                    let epoch = if self.cfg.unfenced_pages {
                        node.ring_id()
                    } else {
                        epoch
                    };
                    let Some(ts) = apply_page_fenced(&n.store, node.ring_id(), epoch, entries)
                    else {
                        self.report.pages_fenced += 1;
                        return; // the node asks for the page again, if still wanted
                    };
                    node.observe_timestamp(now, ts);
                    *entries = Vec::new();
                }
                node.handle_message(now, &from, msg, &n.store);
            }
            Work::Cleanup(job) => {
                let result = run_cleanup_job(&job, &n.store);
                node.cleanup_done(now, result);
                self.report.offloaded_cleanups += 1;
            }
        }
        self.drain(i);
    }
}

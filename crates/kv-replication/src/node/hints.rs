//! Hinted handoff (hints kept for unreachable replicas and their delivery) and
//! the glue to the anti-entropy rounds.

use super::*;

impl Node {
    /// Hands back the hints saved from [`Output::StoreHint`] before a restart.
    pub fn restore_hints(&mut self, hints: impl IntoIterator<Item = Hint>) {
        for h in hints {
            self.hints.insert((h.target.clone(), h.key.clone()), h);
        }
    }

    /// Hints held now.
    pub fn hint_count(&self) -> usize {
        self.hints.len()
    }

    pub(super) fn add_hint(
        &mut self,
        now: u64,
        target: NodeId,
        key: &[u8],
        (value, expires_at): WriteValue,
        version: Ver,
    ) {
        let slot = (target.clone(), key.to_vec());
        if self.hints.get(&slot).is_some_and(|h| h.version >= version) {
            return;
        }
        let hint = Hint {
            target,
            key: key.to_vec(),
            value,
            version,
            created: now,
            expires_at,
        };
        self.hints.insert(slot, hint.clone());
        self.out.push_back(Output::StoreHint(hint));
        self.stats.hints_stored += 1;
    }

    /// Each gossip round: drop expired hints, send the others (a batch per
    /// target) to replicas that are alive again.
    pub(super) fn deliver_hints(&mut self, now: u64) {
        const BATCH: usize = 256;
        // A hint outlives no tombstone: delivered later than half the
        // grace after it was made, it could bring back a value whose
        // delete the other replicas have purged since (to a node that
        // rejoined afresh, say). Anti-entropy repairs the replica instead.
        let window = match self.cfg.tombstone_grace {
            0 => self.cfg.hint_window,
            g => self.cfg.hint_window.min(g / 2),
        };
        let expired: Vec<(NodeId, Vec<u8>)> = self
            .hints
            .iter()
            .filter(|(_, h)| h.created.saturating_add(window) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (target, key) in expired {
            self.hints.remove(&(target.clone(), key.clone()));
            self.stats.hints_expired += 1;
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: true,
            });
        }
        // A hint whose target no longer owns its key (the range moved
        // while it was down) is dropped, not delivered: stored there, the
        // value would sit in a range the target does not own, which its
        // cleanup has already forgotten, and come back to life if the
        // range ever returns (a delete purged meanwhile with it). The new
        // owners got the write from the rebalance. Checked only for the
        // hints about to be sent (a batch per target), so a round costs
        // no ring lookup per hint held.
        let mut sent: BTreeMap<NodeId, usize> = BTreeMap::new();
        let (mut ready, mut moved): (Vec<Hint>, Vec<(NodeId, Vec<u8>)>) = (vec![], vec![]);
        for ((target, key), h) in &self.hints {
            if self.members.state(target, now) != Some(MemberState::Alive) {
                continue;
            }
            let n = sent.entry(target.clone()).or_default();
            if *n >= BATCH {
                continue;
            }
            if union(&self.groups(key, true)).contains(target) {
                *n += 1;
                ready.push(h.clone());
            } else {
                moved.push((target.clone(), key.clone()));
            }
        }
        for (target, key) in moved {
            self.hints.remove(&(target.clone(), key.clone()));
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: false,
            });
        }
        // Unanswered deliveries of the last round are simply sent again.
        self.hint_ops.clear();
        for h in ready {
            let op = self.next_hint_op;
            self.next_hint_op -= 1;
            self.hint_ops
                .insert(op, (h.target.clone(), h.key.clone(), h.version));
            let msg = PeerMsg::Replicate {
                op,
                key: h.key,
                value: h.value,
                version: h.version,
                expires_at: h.expires_at,
            };
            self.send(&h.target, msg);
        }
    }

    pub(super) fn hint_delivered(&mut self, target: NodeId, key: Vec<u8>, version: Ver) {
        let slot = (target, key);
        if self.hints.get(&slot).is_some_and(|h| h.version == version) {
            self.hints.remove(&slot);
            self.stats.hints_delivered += 1;
            let (target, key) = slot;
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: false,
            });
        }
    }

    /// Starts an anti-entropy round with a random live peer; `false` if
    /// there is none.
    pub(super) fn anti_entropy_round(&mut self, now: u64, store: &dyn ReplicaStore) -> bool {
        let peers: Vec<NodeId> = self
            .read_ring
            .nodes()
            .iter()
            .filter(|n| {
                **n != self.cfg.id && self.members.state(n, now) == Some(MemberState::Alive)
            })
            .cloned()
            .collect();
        if peers.is_empty() {
            return false;
        }
        let peer = peers[(self.random() % peers.len() as u64) as usize].clone();
        self.dispatch_ae(now, AeWork::Start(peer), store);
        true
    }

    /// Runs anti-entropy work inline, or hands it to the driver.
    pub(super) fn dispatch_ae(&mut self, now: u64, work: AeWork, store: &dyn ReplicaStore) {
        let task = AeTask {
            view: self.ae_view(),
            epoch: self.ring_id(),
            old_before: match self.cfg.tombstone_grace {
                0 => 0, // tombstones are kept: none is too old
                grace => now.saturating_sub(grace).saturating_mul(1000),
            },
            max_ts: self.clock_bound().map_or(u64::MAX, |m| {
                let clock = self.check_clock(now);
                clock.saturating_add(m).saturating_mul(1000)
            }),
            work,
        };
        if self.cfg.offload_anti_entropy {
            self.out.push_back(Output::AntiEntropy(task));
        } else {
            let mut next = Some(task);
            while let Some(task) = next {
                let mut outcome = self.ae.run(task, store);
                next = outcome.next.take();
                self.anti_entropy_done(outcome);
            }
        }
    }

    /// Anti-entropy's view of the current read ring.
    pub(super) fn ae_view(&mut self) -> Arc<AeView> {
        let id = anti_entropy::ring_id(&self.read_ring);
        match &self.ae_view {
            Some(v) if v.ring == id => v.clone(),
            _ => {
                let (n, _, _) = self.quorums();
                let v = Arc::new(AeView::new(&self.read_ring, n, &self.cfg.id));
                self.ae_view = Some(v.clone());
                v
            }
        }
    }

    /// The outcome of an [`Output::AntiEntropy`] task the driver ran:
    /// its messages go out, its timestamps are observed, and the work it
    /// left (see [`AeOutcome::next`]) is handed back to the driver after
    /// them.
    pub fn anti_entropy_done(&mut self, outcome: AeOutcome) {
        if outcome.observed > 0 {
            self.observe(outcome.observed);
        }
        self.ae_repairs.note(self.last_now, outcome.applied);
        self.stats.ae_entries_repaired += outcome.applied;
        self.stats.ae_ranges_differing += outcome.differing;
        for event in outcome.log {
            self.log(event);
        }
        for (to, msg) in outcome.sends {
            self.send(&to, msg);
        }
        if let Some(next) = outcome.next {
            self.out.push_back(Output::AntiEntropy(next));
        }
    }
}

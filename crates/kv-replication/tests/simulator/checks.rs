//! The invariants, checked against what the clients saw and what the
//! replicas hold.

use super::*;

impl Sim {
    /// Invariant 2, and that every value read is the one written with
    /// its version.
    pub(super) fn check_reads(&mut self) {
        // Once its tombstone is purged, a delete (acknowledged or not: it
        // may have taken effect) reads as nothing at all, which is no loss.
        let purged = |r: &Done| self.maybe_purged_delete(r);
        let mut problems = Vec::new();
        let mut newest_acked: BTreeMap<usize, Vec<(u64, Ver)>> = BTreeMap::new();
        for d in self.done.iter().filter(|d| d.write) {
            if let Some(v) = d.version {
                newest_acked.entry(d.key).or_default().push((d.end, v));
            }
        }
        for r in self.done.iter().filter(|d| !d.write) {
            let floor = newest_acked
                .get(&r.key)
                .into_iter()
                .flatten()
                .filter(|(end, _)| *end < r.start)
                .map(|(_, v)| *v)
                .max();
            if let Some(w) = floor.filter(|_| !purged(r)) {
                if r.version.is_none_or(|v| v < w) {
                    let when = if r.after_rebalance {
                        " (read right after a rebalance ended)"
                    } else {
                        ""
                    };
                    problems.push(format!(
                        "stale read of key{} at {}{when}: saw {:?}, but {:?} was acknowledged before the read began",
                        r.key, r.start, r.version, w
                    ));
                }
            }
            // A deleted value never comes back to life.
            if r.value.is_some() {
                let resurrected = self.done.iter().any(|d| {
                    d.write
                        && d.value.is_none()
                        && d.key == r.key
                        && d.end < r.start
                        && d.version > r.version
                });
                if resurrected {
                    problems.push(format!(
                        "delete of key{} came back to life: a read at {} saw {:?}, older than an acknowledged delete",
                        r.key, r.start, r.version
                    ));
                }
            }
            // Quorum reads never go backwards (this needs read repair).
            let earlier = self
                .done
                .iter()
                .filter(|e| !e.write && e.key == r.key && e.end < r.start)
                .max_by_key(|e| e.version);
            if let Some(e) = earlier {
                if r.version < e.version && !purged(r) {
                    problems.push(format!(
                        "read of key{} went backwards: saw {:?} at {} after a read saw {:?} at {}",
                        r.key, r.version, r.start, e.version, e.end
                    ));
                }
            }
            if let Some(v) = &r.value {
                if self.written.get(v) != Some(&r.key) {
                    problems.push(format!(
                        "read of key{} returned {:?}, which no client wrote to it",
                        r.key,
                        String::from_utf8_lossy(v)
                    ));
                }
            }
        }
        self.report.violations.extend(problems);
    }

    /// An OK means the write was the newest on a write quorum when it was
    /// acknowledged: its version is above that of every write acknowledged
    /// before it began (else it was silently lost, replicas keeping the
    /// older value).
    pub(super) fn check_acks(&mut self) {
        let mut problems = Vec::new();
        for w in self.done.iter().filter(|d| d.write) {
            let earlier = self
                .done
                .iter()
                .filter(|e| e.write && e.key == w.key && e.end < w.start)
                .max_by_key(|e| e.version);
            if let Some(e) = earlier {
                if e.version > w.version {
                    problems.push(format!(
                        "write of key{} acknowledged at {} with {:?}, older than {:?} acknowledged at {} before it began: an OK for a write that lost",
                        w.key, w.end, w.version, e.version, e.end
                    ));
                }
            }
        }
        self.report.violations.extend(problems);
    }

    /// Invariant 3: after healing and some rounds of repair, every
    /// replica of every key holds the same version.
    pub(super) fn check_converged(&mut self) {
        let Some(view) = self.member(0).and_then(|i| self.nodes[i].node.as_ref()) else {
            return;
        };
        let mut problems = Vec::new();
        for key in 0..self.cfg.keys {
            let name = key_name(key);
            let versions: Vec<(String, Option<Ver>)> = view
                .replicas_for(&name)
                .into_iter()
                .filter_map(|id| {
                    let n = self.nodes.iter().find(|n| n.id == id)?;
                    Some((id, n.store.get_versioned(&name).map(|v| v.version.into())))
                })
                .collect();
            if versions.windows(2).any(|w| w[0].1 != w[1].1) {
                problems.push(format!(
                    "replicas of key{key} disagree after healing: {versions:?}"
                ));
            }
        }
        self.report.violations.extend(problems);
    }

    /// After healing: a node that finished its cleanups holds no key of
    /// a range it does not own. A page or write of an older ring stored
    /// there after the cleanup (a missing fence) would stay as ghost
    /// data, to come back to life if the range returns to the node.
    pub(super) fn check_no_ghosts(&mut self) {
        let mut problems = Vec::new();
        for n in &self.nodes {
            let Some(node) = n.node.as_ref() else {
                continue;
            };
            if node.status() != Status::Normal || !node.cleaned_up() {
                continue;
            }
            self.report.ghost_checks += 1;
            for key in 0..self.cfg.keys {
                let name = key_name(key);
                let Some(held) = n.store.get_versioned(&name) else {
                    continue;
                };
                if !node.replicas_for(&name).contains(&n.id) {
                    problems.push(format!(
                        "{} holds key{key} (version {:?}) after its cleanup, outside its ranges",
                        n.id,
                        Ver::from(held.version)
                    ));
                }
            }
        }
        self.report.violations.extend(problems);
    }

    /// Invariant 1: after healing, a quorum read of every key returns at
    /// least its newest acknowledged write. Like a real client, each read
    /// is retried a few times if a dropped message cost it its quorum.
    pub(super) fn final_reads(&mut self) {
        let mut pending: Vec<usize> = (0..self.cfg.keys).collect();
        let mut finals = Vec::new();
        for _attempt in 0..5 {
            self.clients.clear();
            let start = self.done.len();
            for &key in &pending {
                if let Some(i) = self.member(key) {
                    self.issue(i, Kind::Read { key });
                }
            }
            for _ in 0..2000 {
                self.step(false);
                if self.clients.is_empty() {
                    break;
                }
            }
            let got: Vec<Done> = self.done[start..].to_vec();
            pending.retain(|k| !got.iter().any(|d| d.key == *k));
            finals.extend(got);
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            self.report.violations.push(format!(
                "final reads of keys {pending:?} failed five times after healing"
            ));
        }
        for r in finals {
            let newest = self
                .done
                .iter()
                .filter(|d| d.write && d.key == r.key)
                .filter_map(|d| d.version)
                .max();
            if let Some(w) = newest.filter(|_| !self.maybe_purged_delete(&r)) {
                if r.version.is_none_or(|v| v < w) {
                    self.report.violations.push(format!(
                        "acknowledged write {w:?} of key{} lost: final read saw {:?}",
                        r.key, r.version
                    ));
                }
            }
        }
    }

    /// Whether read `r` saw nothing at all (no version) where a delete
    /// issued before it ended may have left a tombstone since purged: with
    /// tombstones purged, such a read is no sign of a lost write.
    pub(super) fn maybe_purged_delete(&self, r: &Done) -> bool {
        self.cfg.purge_tombstones_after.is_some()
            && r.version.is_none()
            && self
                .deletes_issued
                .get(&r.key)
                .is_some_and(|times| times.iter().any(|t| *t < r.end))
    }

    /// After healing, with no other client about, every key can still be
    /// written through every member (a clock behind the others, or one far
    /// ahead, must not make keys unwritable). Writes that lose their
    /// quorum to a dropped message, or answer a conflict (after which the
    /// coordinator's clock is past the newer version), are retried a few
    /// times, as a client would.
    pub(super) fn final_writes(&mut self) {
        let members = self.live_where(|n| n.status() == Status::Normal);
        for key in 0..self.cfg.keys {
            for &i in &members {
                let mut conflicts = 0;
                for _attempt in 0..5 {
                    self.clients.clear();
                    self.conflicted.clear();
                    let acked = self.report.acked_writes;
                    let value = format!("final{}", self.rng.next()).into_bytes();
                    self.issue(
                        i,
                        Kind::Write {
                            key,
                            value: Some(value),
                        },
                    );
                    for _ in 0..2000 {
                        self.step(false);
                        if self.clients.is_empty() {
                            break;
                        }
                    }
                    if self.report.acked_writes > acked {
                        break;
                    }
                    if let Some((_, _, newer, tries)) = self.conflicted.first() {
                        conflicts += 1;
                        if conflicts >= 3 {
                            self.report.violations.push(format!(
                                "key{key} unwritable through {} after healing: {conflicts} writes in a row lost to newer versions ({tries} versions in the last, lost to {newer:?})",
                                self.nodes[i].id
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
}

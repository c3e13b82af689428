//! The clock floor saved in the background ([`Output::SaveFloor`]): each
//! save lasts a while (drawn from the run's seed), and a crash before it
//! ends loses it.

use super::*;

/// The longest an ordinary floor save lasts (ms); one in [`SLOW_IN`]
/// lasts up to [`SLOW`] more (a disk busy with other fsyncs), past the
/// half lead a floor is asked for ahead of need, so that writes wait.
const USUAL: u64 = 40;
const SLOW_IN: u64 = 20;
const SLOW: u64 = 400;

impl Sim {
    /// Node `i` asks for `floor` to be saved: it is, after a delay, unless
    /// the node crashes first. The delays come from a generator of their
    /// own (seeded from the run's seed), so that the rest of a run draws
    /// what it drew before floors were saved apart.
    pub(super) fn save_floor_later(&mut self, i: usize, floor: u64) {
        let mut delay = 1 + self.floor_rng.below(USUAL);
        if self.floor_rng.below(SLOW_IN) == 0 {
            delay += self.floor_rng.below(SLOW);
        }
        let at = self.now + delay;
        let run = self.nodes[i].incarnation;
        self.floor_saves.push((at, i, run, floor));
    }

    /// The floor saves that end now: each is durable (it survives a
    /// later crash) and reported to the node that asked for it, if it
    /// still runs; one whose node crashed meanwhile is lost.
    pub(super) fn end_floor_saves(&mut self) {
        let now = self.now;
        let (done, left): (Vec<_>, Vec<_>) =
            self.floor_saves.iter().partition(|(at, ..)| *at <= now);
        if done.is_empty() {
            return;
        }
        self.floor_saves = left;
        for (_, i, run, floor) in done {
            let n = &mut self.nodes[i];
            if n.incarnation != run || n.node.is_none() {
                continue; // it crashed while saving
            }
            n.floor = n.floor.max(floor);
            let clock = self.clock(i);
            let n = &mut self.nodes[i];
            if let Some(node) = n.node.as_mut() {
                node.floor_saved(clock, floor);
            }
            self.drain(i);
        }
    }
}

impl Sim {
    /// Takes note of the version a `Replicate` carries: one version is
    /// one write (key and value), never two (a node restarted below a
    /// version it sent could stamp it again, and replicas holding the two
    /// values under one version would never converge).
    pub(super) fn note_stamp(&mut self, msg: &PeerMsg) {
        let msg = match msg {
            PeerMsg::OnRing { request, .. } => request.as_ref(),
            other => other,
        };
        let PeerMsg::Replicate {
            key,
            value,
            version,
            ..
        } = msg
        else {
            return;
        };
        let write = mix(mix(0, key), value.as_deref().unwrap_or(b"\0deleted"));
        let first = *self.stamped.entry(*version).or_insert(write);
        if first != write {
            self.report.violations.push(format!(
                "version {version:?} stamped for two writes (the second of {})",
                String::from_utf8_lossy(key)
            ));
        }
    }
}

//! Faults: partitions, crashes, clock jumps and steps, members leaving.

use super::*;

impl Sim {
    /// Now and then a node's clock is stepped by hours, forward or back,
    /// and a few seconds later stepped right again.
    /// Clocks are stepped right as faults heal (`faults` false).
    pub(super) fn clock_steps(&mut self, faults: bool) {
        let now = self.now;
        for n in &mut self.nodes {
            if n.clock_step.0 != 0 && (now >= n.clock_step.1 || !faults) {
                n.clock_step = (0, 0);
            }
        }
        if !faults
            || self.cfg.clock_step == 0
            || self.cfg.clock_step_ppm == 0
            || !self.rng.chance(self.cfg.clock_step_ppm)
        {
            return;
        }
        // One clock at a time is off by hours, as one node with a broken
        // time source would be.
        if self.nodes.iter().any(|n| n.clock_step.0 != 0) {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let step = i64::try_from(self.cfg.clock_step).unwrap_or(i64::MAX);
        let step = if self.rng.chance(500_000) {
            step
        } else {
            -step
        };
        let until = now + 1000 + self.rng.below(5000);
        self.nodes[i].clock_step = (step, until);
        self.report.clock_steps += 1;
    }

    /// Now and then a node's clock jumps forward (never further than
    /// `max_clock_lead` ahead of the slowest clock).
    pub(super) fn clock_jumps(&mut self) {
        if self.cfg.clock_jump == 0
            || self.cfg.clock_jump_ppm == 0
            || !self.rng.chance(self.cfg.clock_jump_ppm)
        {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        if self.cfg.far_future_clock && i == 1 {
            return;
        }
        let slowest = self.nodes.iter().map(|n| n.clock_ahead).min().unwrap_or(0);
        let jump = 1 + self.rng.below(self.cfg.clock_jump);
        let lead = self.nodes[i].clock_ahead + jump - slowest;
        if lead <= self.cfg.max_clock_lead.max(self.cfg.clock_skew) {
            self.nodes[i].clock_ahead += jump;
        }
    }

    pub(super) fn faults(&mut self) {
        if self.cfg.long_outages && self.quiet_for_long_outage() {
            // One fault at a time while a node is away for long or a node
            // that came back rebuilds: two replicas of a range giving their
            // data up together lose what only they held (a documented
            // limit), and a partition followed by a crash is such a pair.
            for i in 0..self.nodes.len() {
                if self.nodes[i].node.is_none()
                    && self.nodes[i].down_until <= self.now
                    && self.nodes[i].saved.is_some()
                {
                    self.restart(i);
                }
            }
            if self.heal_at != 0 && self.now >= self.heal_at {
                self.heal();
            }
            return;
        }
        if self.cfg.partitions && self.heal_at == 0 && self.rng.chance(1_000) {
            // Cut a random minority off from the rest for a while.
            let victim = self.rng.below(self.nodes.len() as u64) as usize;
            for j in 0..self.nodes.len() {
                if j != victim {
                    self.cut[victim][j] = true;
                    self.cut[j][victim] = true;
                }
            }
            let longest = match (self.cfg.long_outages, self.cfg.purge_tombstones_after) {
                (true, Some(grace)) => (kv_replication::outage::limit(grace) / 2).clamp(1, 1500),
                _ => 1500,
            };
            self.heal_at = self.now + 200 + self.rng.below(longest);
        }
        if self.heal_at != 0 && self.now >= self.heal_at {
            self.heal();
        }
        if self.cfg.crashes && self.rng.chance(500) {
            let live = self.live();
            if live.len() > 1 {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.nodes[i].node = None;
                // Its clients never hear back: their outcome is unknown.
                self.clients.retain(|(node, _), _| *node != i);
                self.nodes[i].down_until = self.now + 100 + self.rng.below(2000);
                if let (true, Some(grace)) =
                    (self.cfg.long_outages, self.cfg.purge_tombstones_after)
                {
                    // One node at a time, and not during a rebalance: two
                    // replicas of a range giving their data up together
                    // lose what only they held (a limit, documented).
                    let alone = live.len() == self.nodes.len() && self.rebalancing().is_empty();
                    if alone && self.rng.chance(300_000) {
                        // Longer than the grace: what it missed is purged.
                        self.report.long_outages += 1;
                        self.nodes[i].down_until = self.now + grace + 1 + self.rng.below(grace);
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none()
                && self.nodes[i].down_until <= self.now
                && self.nodes[i].saved.is_some()
            {
                self.restart(i);
            }
        }
    }

    /// Whether a node is down (for long, or any node when this runs with
    /// long outages) or a rebalance runs: then no new fault starts.
    pub(super) fn quiet_for_long_outage(&self) -> bool {
        self.nodes.iter().any(|n| n.node.is_none()) || !self.rebalancing().is_empty()
    }

    /// Live members that see a rebalance under way or wait to join.
    pub(super) fn rebalancing(&self) -> Vec<usize> {
        self.live_where(|n| {
            n.status() != Status::Left && (n.rebalancing() || n.status() == Status::Waiting)
        })
    }

    /// The operator decommissions a random normal member through a random
    /// live node. False if it was refused (another rebalance runs).
    pub(super) fn try_leave(&mut self) -> bool {
        let members = self.live_where(|n| n.status() == Status::Normal && !n.rebalancing());
        if members.len() < 3 {
            return false;
        }
        let victim = members[self.rng.below(members.len() as u64) as usize];
        let via = members[self.rng.below(members.len() as u64) as usize];
        let id = self.nodes[victim].id.clone();
        let now = self.clock(via);
        let Some(node) = self.nodes[via].node.as_mut() else {
            return false;
        };
        let ok = node.leave(now, &id).is_ok();
        self.drain(via);
        ok
    }

    pub(super) fn heal(&mut self) {
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = false);
        }
        self.heal_at = 0;
    }
}

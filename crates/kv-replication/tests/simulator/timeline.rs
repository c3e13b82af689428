//! The run itself: time advancing a millisecond at a time, and the
//! phases of a run (workload with faults, healing, checks).

use super::*;

impl Sim {
    /// Advances time by one millisecond.
    pub(super) fn step(&mut self, faults: bool) {
        self.now += 1;
        while let Some(Reverse((at, _, key))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let Some(m) = self.in_flight.remove(&key) else {
                continue;
            };
            self.deliver(m);
        }
        self.run_work();
        self.end_floor_saves();
        if !self.scheduled.is_empty() {
            self.issue_scheduled();
        }
        if self.now % TICK == 0 {
            if let Some(after) = self.cfg.purge_tombstones_after {
                let before = self.now.saturating_sub(after).saturating_mul(1000);
                for n in &self.nodes {
                    n.store.purge_tombstones(before);
                }
            }
            for i in 0..self.nodes.len() {
                let now = self.clock(i);
                let n = &mut self.nodes[i];
                if let Some(node) = n.node.as_mut() {
                    node.handle_tick(now, &n.store);
                }
                self.drain(i);
            }
            self.clock_jumps();
            self.clock_steps(faults);
            for i in 0..self.nodes.len() {
                if self.nodes[i].wipe {
                    self.rejoin_fresh(i);
                }
            }
        }
        if faults {
            self.faults();
        }
    }

    pub(super) fn run(&mut self) {
        // Node 0 starts alone; the others join through it.
        self.start_node(0);
        self.drain(0);
        for i in 1..self.cfg.nodes {
            self.start_and_join(i);
        }
        for _ in 0..2000 {
            self.step(false);
        }
        if std::env::var_os("KV_SIM_DEBUG").is_some() {
            for n in &self.nodes {
                if let Some(node) = &n.node {
                    let view: Vec<String> = node
                        .view(self.now)
                        .iter()
                        .map(|m| format!("{}={:?}", m.id, m.state))
                        .collect();
                    eprintln!("{} sees {}", n.id, view.join(" "));
                }
            }
        }
        let mut issued = 0;
        let mut joined = self.cfg.nodes;
        let mut leaves = 0;
        let mut far = self.cfg.far_future_clock;
        while issued < self.cfg.ops {
            // A node comes back from a crash with its clock far ahead.
            if far && issued * 2 >= self.cfg.ops && self.nodes.len() > 1 {
                far = false;
                self.nodes[1].node = None;
                self.clients.retain(|(node, _), _| *node != 1);
                self.nodes[1].down_until = self.now + 200;
                self.nodes[1].clock_ahead = u64::MAX / 1000;
            }
            // Joiners arrive spread over the workload.
            if joined < self.nodes.len()
                && issued * (self.cfg.joiners + 1) >= self.cfg.ops * (joined - self.cfg.nodes + 1)
            {
                self.start_and_join(joined);
                joined += 1;
            }
            // So do decommissions, retried while another rebalance runs.
            if leaves < self.cfg.leavers
                && issued * (self.cfg.leavers + 1) >= self.cfg.ops * (leaves + 1)
                && self.now % 100 == 0
                && self.try_leave()
            {
                leaves += 1;
            }
            self.step(true);
            // Now and then, read every key at quorum in the middle of the
            // faults: a loss that repair would hide by the end still shows.
            if self.rng.chance(AUDIT_PPM) {
                for key in 0..self.cfg.keys {
                    self.scheduled.push((self.now, key, false));
                }
            }
            if self.rng.chance(150_000) {
                let live = self.live();
                if let Some(&i) = live.get(self.rng.below(live.len() as u64) as usize) {
                    let kind = self.random_op();
                    self.issue(i, kind);
                    issued += 1;
                }
            }
        }
        // Heal everything, restart everyone, let the stragglers finish.
        self.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() && self.nodes[i].saved.is_none() {
                self.start_and_join(i);
            } else if self.nodes[i].node.is_none() {
                self.restart(i);
            }
        }
        for _ in 0..3000 {
            self.step(false);
        }
        // Let rebalances under way finish, then anti-entropy run a while.
        let mut settled = 0;
        for _ in 0..30_000 {
            if settled >= 2000 {
                break;
            }
            settled = if self.rebalancing().is_empty() {
                settled + 1
            } else {
                0
            };
            self.step(false);
        }
        for i in self.rebalancing() {
            if let Some(n) = &self.nodes[i].node {
                let what = n
                    .progress(self.clock(i))
                    .map(|p| p.line())
                    .unwrap_or_default();
                self.report.violations.push(format!(
                    "{} still {} 30 s after healing: {what}",
                    self.nodes[i].id,
                    n.status().name()
                ));
            }
        }
        self.report.left = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.status() == Status::Left)
            .count();
        self.check_reads();
        self.check_acks();
        self.check_converged();
        self.check_no_ghosts();
        self.final_reads();
        if self.cfg.final_writes {
            self.final_writes();
        }
    }
}

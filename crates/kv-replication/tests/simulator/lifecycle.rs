//! Starting, restarting and rejoining the simulated nodes, and carrying
//! their outputs into the network.

use super::*;

impl Sim {
    pub(super) fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let nodes = (0..cfg.nodes + cfg.joiners)
            .map(|i| SimNode {
                id: format!("n{i}:7000"),
                node: None,
                store: Store::open(Options::in_memory())
                    .unwrap_or_else(|e| panic!("in-memory store: {e}")),
                saved: None,
                hints: BTreeMap::new(),
                down_until: 0,
                contact: None,
                floor: 0,
                incarnation: 0,
                wipe: false,
                clock_ahead: 0,
                clock_step: (0, 0),
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed),
            now: 1_000_000,
            cfg: cfg.clone(),
            nodes,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            floor_saves: Vec::new(),
            floor_rng: Rng(seed ^ 0x00F1_0012),
            stamped: BTreeMap::new(),
            cut: vec![vec![false; cfg.nodes + cfg.joiners]; cfg.nodes + cfg.joiners],
            heal_at: 0,
            clients: BTreeMap::new(),
            history_at: BTreeMap::new(),
            rebalance_reads: std::collections::BTreeSet::new(),
            conflicted: Vec::new(),
            scheduled: Vec::new(),
            next_client: 1,
            done: Vec::new(),
            written: BTreeMap::new(),
            deletes_issued: BTreeMap::new(),
            appliers: Sim::appliers_for(seed, cfg),
            offloaded: BTreeMap::new(),
            report: Report::default(),
        };
        if cfg.clock_skew > 0 {
            for k in 0..sim.nodes.len() {
                sim.nodes[k].clock_ahead = sim.rng.below(cfg.clock_skew + 1);
            }
        }
        sim
    }

    /// Node `i`'s clock (ms): never goes backwards, except when it is
    /// stepped back ([`SimConfig::clock_step`]).
    pub(super) fn clock(&self, i: usize) -> u64 {
        let clock = self.now.saturating_add(self.nodes[i].clock_ahead);
        match self.nodes[i].clock_step.0 {
            s if s >= 0 => clock.saturating_add(s.unsigned_abs()),
            s => clock.saturating_sub(s.unsigned_abs()),
        }
    }

    pub(super) fn node_config(&self, i: usize) -> Config {
        let mut c = Config::new(&self.nodes[i].id);
        c.replicas = self.cfg.replicas;
        c.write_quorum = self.cfg.write_quorum;
        c.read_quorum = self.cfg.read_quorum;
        c.vnodes = 16;
        c.request_timeout = 500;
        c.gossip_interval = 50;
        c.suspect_after = 300;
        c.down_after = 800;
        c.read_repair = self.cfg.read_repair;
        c.anti_entropy_interval = if self.cfg.anti_entropy {
            self.cfg.anti_entropy_interval.max(1)
        } else {
            0
        };
        c.stream_ranges = self.cfg.stream_ranges;
        c.stream_page = self.cfg.stream_page;
        c.planted = self.cfg.planted;
        c.tombstone_grace = self.cfg.purge_tombstones_after.unwrap_or(0);
        c.contact_record_interval = 100;
        c.offload_cleanup = self.appliers;
        c.offload_floor = self.cfg.floor_saves;
        c
    }

    pub(super) fn start_node(&mut self, i: usize) {
        let seed = self.rng.next();
        let cfg = self.node_config(i);
        self.drop_work(i);
        let n = &mut self.nodes[i];
        let now = self.now.saturating_add(n.clock_ahead);
        n.incarnation += 1;
        // The floor saved apart from the state, as the server does.
        let saved = n.saved.clone().map(|mut s| {
            s.clock_floor = s.clock_floor.max(n.floor);
            s
        });
        let mut node = Node::new(cfg, now, saved, &n.store, seed);
        node.restore_hints(n.hints.values().cloned());
        n.node = Some(node);
    }

    /// Restarts node `i` from its saved state, with the seed it was
    /// started with (as a server keeps its `--join` flags); or, if it was
    /// out of contact for longer than its data may be trusted, on an empty
    /// store as a new generation.
    pub(super) fn restart(&mut self, i: usize) {
        let cfg = self.node_config(i);
        let holds_data = self.nodes[i].store.max_timestamp() > 0;
        let contact = self.nodes[i].contact;
        let verdict =
            kv_replication::outage::restart_verdict(&cfg, contact, self.clock(i), holds_data);
        if let kv_replication::outage::Verdict::RejoinFresh(why) = verdict {
            if std::env::var_os("KV_SIM_DEBUG").is_some() {
                eprintln!("{} {} rejoins fresh: {why}", self.now, self.nodes[i].id);
            }
            return self.rejoin_fresh(i);
        }
        self.start_node(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.restore_contact(contact, holds_data);
        }
        if i > 0 {
            let seed = self.nodes[0].id.clone();
            let now = self.clock(i);
            if let Some(n) = self.nodes[i].node.as_mut() {
                n.join(now, &seed);
            }
        }
        self.drain(i);
    }

    /// Node `i` sets its data aside (here: drops it) and joins again as a
    /// new generation, through every other node, as `--rejoin-fresh` does.
    pub(super) fn rejoin_fresh(&mut self, i: usize) {
        self.report.fresh_rejoins += 1;
        let n = &mut self.nodes[i];
        n.store =
            Store::open(Options::in_memory()).unwrap_or_else(|e| panic!("in-memory store: {e}"));
        n.saved = None;
        n.hints.clear();
        n.contact = None;
        n.floor = 0;
        n.wipe = false;
        self.start_node(i);
        let seeds: Vec<String> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.nodes[j].id.clone())
            .collect();
        let now = self.clock(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            for seed in &seeds {
                n.join(now, seed);
            }
        }
        self.drain(i);
    }

    /// Starts node `i` and has it join through node 0.
    pub(super) fn start_and_join(&mut self, i: usize) {
        self.start_node(i);
        let seed = self.nodes[0].id.clone();
        let now = self.clock(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.join(now, &seed);
        }
        self.drain(i);
    }

    pub(super) fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Drains a node's outputs into the network, the client records and
    /// its persisted state.
    pub(super) fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].node.as_mut().and_then(Node::poll_output) else {
                return;
            };
            match out {
                Output::Send { to, msg } => self.send(i, &to, msg),
                Output::Local(msg) => self.serve_own(i, msg),
                Output::Reply { id, reply } => {
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {} reply {id} {reply:?}", self.now, self.nodes[i].id);
                    }
                    self.report.trace =
                        mix(self.report.trace, format!("{i} {id} {reply:?}").as_bytes());
                    self.client_reply(i, id, reply)
                }
                Output::Persist(p) => self.nodes[i].saved = Some(p),
                // The simulator runs anti-entropy inline (no offload).
                Output::AntiEntropy(_) => {}
                Output::Cleanup(job) => self.cleanup_handed_out(i, job),
                Output::Event(event) => {
                    if let Event::RebalanceDone { .. } = event {
                        self.report.rebalances += 1;
                        // Read every key in the seconds right after, before
                        // anti-entropy can hide a range copied short.
                        for delay in AFTER_REBALANCE {
                            for key in 0..self.cfg.keys {
                                self.scheduled.push((self.now + delay, key, true));
                            }
                        }
                    }
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {}: {event}", self.now, self.nodes[i].id);
                    }
                }
                Output::Contact(t) => self.nodes[i].contact = Some(t),
                Output::SaveFloor(floor) => self.save_floor_later(i, floor),
                Output::RejoinFresh(why) => {
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {} gives up its data: {why}", self.now, self.nodes[i].id);
                    }
                    // The driver stops it; it comes back afresh.
                    self.nodes[i].node = None;
                    self.nodes[i].wipe = true;
                    self.clients.retain(|(node, _), _| *node != i);
                }
                Output::StoreHint(h) => {
                    self.nodes[i]
                        .hints
                        .insert((h.target.clone(), h.key.clone()), h);
                }
                Output::DropHint {
                    target,
                    key,
                    expired,
                } => {
                    self.report.hints_delivered += usize::from(!expired);
                    self.nodes[i].hints.remove(&(target, key));
                }
            }
        }
    }

    /// Node `i` sends `msg` to the node whose id is `to` (traced).
    fn send(&mut self, i: usize, to: &str, msg: PeerMsg) {
        self.note_stamp(&msg);
        let bytes = postcard::to_allocvec(&msg).unwrap_or_default();
        self.report.trace = mix(self.report.trace, &bytes);
        self.report.trace = mix(self.report.trace, to.as_bytes());
        if let Some(j) = self.index_of(to) {
            self.transmit(i, j, msg);
        }
    }

    pub(super) fn transmit(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if self.rng.chance(self.cfg.drop_ppm) {
            return;
        }
        // Drawn for every message, so that a seed's run does not depend
        // on which messages may be duplicated.
        let twice = self.rng.chance(self.cfg.dup_ppm);
        let copies = if twice && (self.cfg.dup_writes || !is_write_request(&msg)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.cfg.max_delay);
            self.seq += 1;
            let key = self.seq as usize;
            self.in_flight.insert(
                key,
                Message {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
            self.queue.push(Reverse((at, self.seq, key)));
        }
    }

    /// Node `i`'s message to its own replica, served as a server's
    /// cluster thread serves it: through `arrive`, as a peer's, the
    /// answer (or the refused message) handed back to the node from
    /// itself. The simulated store is in memory: a write is durable when
    /// applied, so the answer goes back at once (a crash between the two
    /// cannot happen here, as it cannot within one pass of the thread).
    fn serve_own(&mut self, i: usize, msg: PeerMsg) {
        let now = self.clock(i);
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else { return };
        let me = n.id.clone();
        match kv_replication::arrive(&n.store, &node.replica_view(now), msg) {
            Arrival::Served {
                reply,
                observed,
                durable,
            } => {
                assert!(durable.is_none(), "an in-memory store defers nothing");
                if let Some(ts) = observed {
                    node.observe_timestamp(now, ts);
                }
                node.handle_message(now, &me, reply, &n.store);
            }
            Arrival::ToNode(msg) => node.handle_message(now, &me, msg, &n.store),
        }
    }

    pub(super) fn deliver(&mut self, m: Message) {
        if self.cut[m.from][m.to] {
            return;
        }
        let from = self.nodes[m.from].id.clone();
        let Some(msg) = self.hand_to_appliers(m.to, &from, m.msg) else {
            return;
        };
        let now = self.clock(m.to);
        let n = &mut self.nodes[m.to];
        let Some(node) = n.node.as_mut() else { return };
        // As a server's event loop does: a replica request is served where
        // it arrives, its answer sent back on the link and its timestamp
        // observed by the node; the rest goes to the node.
        match kv_replication::arrive(&n.store, &node.replica_view(now), msg) {
            Arrival::Served {
                reply, observed, ..
            } => {
                if let Some(ts) = observed {
                    node.observe_timestamp(now, ts);
                }
                self.send(m.to, &from, reply);
            }
            Arrival::ToNode(msg) => node.handle_message(now, &from, msg, &n.store),
        }
        self.drain(m.to);
    }
}

/// Whether `msg` is a `Replicate` (in its ring envelope or not) or a
/// replica's refusal of one for a different ring. The server's transport
/// delivers each message at most once: a link is one TCP stream, and
/// nothing queued on a broken link is sent again. The coordinator relies
/// on that for writes: each copy of a write it sends is answered at most
/// once, and it sends a replica another copy only under a new ring or
/// after that replica refused the last one. When every replica it waits
/// for answers that it holds a newer version, and none may hold the write
/// otherwise, no replica stored it and it may be stamped again. A copy
/// delivered twice (the first stored with its ack lost, then a newer
/// write, then the second answered "newer held"), or a refusal delivered
/// twice (two more copies in flight for one refusal) would break that
/// (issue 9), so the simulated network does not duplicate these, as TCP
/// does not.
fn is_write_request(msg: &PeerMsg) -> bool {
    match msg {
        PeerMsg::Replicate { .. } | PeerMsg::RingDiffers { .. } => true,
        PeerMsg::OnRing { request, .. } | PeerMsg::InRing { request, .. } => {
            is_write_request(request)
        }
        _ => false,
    }
}

//! The cluster thread itself: its run loop, the node's ticks and outputs,
//! client replies and what it publishes for the event loops.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_proto::native::{self, ErrorKind, Response};
use kv_replication::{AeTask, ClientReply, Node, Output, PeerMsg};
use kv_storage::Store;
use mio::{Events, Poll, Token};

use super::links::PeerLink;
use super::state_files::{ensure_marker, hint_key};
use super::{
    encode_not_serving, encode_reply, encode_shutting_down, is_clustered, now_ms, save_state,
    write_durably, Admin, ClusterHandle, ClusterStats, ReplyTo, Route, ToCluster, ToWorker,
    WorkerMailbox, MEMBER_MARKER, RECONNECT_AFTER_MS, REJOIN_MARKER, SHUTDOWN_GRACE, TICK, WAKER,
};
use crate::state::Shared;

pub(super) struct ClusterThread {
    pub(super) poll: Poll,
    pub(super) rx: Receiver<ToCluster>,
    pub(super) node: Node,
    pub(super) shared: Arc<Shared>,
    pub(super) handle: Arc<ClusterHandle>,
    pub(super) workers: Vec<WorkerMailbox>,
    pub(super) routes: BTreeMap<u64, (Route, ReplyTo)>,
    /// Commands on several keys whose keys are under way.
    pub(super) multis: crate::multi_key::InFlight,
    /// The SCAN, KEYS and DBSIZE listings under way, by client operation.
    pub(super) listings: BTreeMap<u64, Box<crate::cluster_list::Listing>>,
    pub(super) next_client: u64,
    /// Replies collected per worker during one pass.
    pub(super) replies: Vec<Vec<ToWorker>>,
    pub(super) peers: BTreeMap<String, PeerLink>,
    pub(super) tokens: BTreeMap<Token, String>,
    pub(super) next_token: usize,
    pub(super) state_path: Option<PathBuf>,
    /// Whether the member marker is known to be written.
    pub(super) marked: bool,
    pub(super) last_tick: u64,
    /// Durable hints for replicas that were down, in `data_dir/hints`.
    pub(super) hints: Store,
    /// Rebalancing pages to apply off this thread.
    pub(super) appliers: Sender<(String, u64, PeerMsg)>,
    /// Anti-entropy work to run off this thread.
    pub(super) anti_entropy: Sender<AeTask>,
    /// Cleanups to run off this thread.
    pub(super) cleanup: Sender<Arc<kv_replication::CleanupJob>>,
    /// Buffer for reading peer links.
    pub(super) scratch: Vec<u8>,
    /// Size at which a link's batch is sealed before the pass ends.
    pub(super) batch_cap: usize,
    /// Where the last contact with the cluster goes to be recorded.
    pub(super) contact_writer: Option<Sender<u64>>,
    /// Where the clock floors the node asks for go to be saved (`None`:
    /// without persistence, where nothing is saved).
    pub(super) floor_writer: Option<Sender<u64>>,
    /// Answers to the node's own copies of writes, held until durable.
    pub(super) own: super::own::OwnHeld,
}

/// The CLUSTER text: this node's view of the membership.
pub(crate) fn view_text(node: &Node, me: &str, now: u64) -> String {
    let view = node.view(now);
    let (n, w, r) = node.quorums();
    // Members that left are listed below, as history, but not counted.
    let gone = view
        .iter()
        .filter(|m| m.status == kv_replication::Status::Left)
        .count();
    let members = view.len() - gone;
    let mut text = format!(
        "# cluster: {members} member{}{}, N={n} W={w} R={r}, this node {}\n",
        if members == 1 { "" } else { "s" },
        if gone == 0 {
            String::new()
        } else {
            format!(" and {gone} that left")
        },
        me
    );
    let left = node.has_left(now);
    if node.is_joining() {
        text.push_str("# this node is not serving yet: it waits to hear from its cluster\n");
    } else if left {
        text.push_str("# this node has left the cluster and serves nothing; stop it (it no longer watches the others' health)\n");
    }
    if let Some(p) = node.progress(now) {
        text.push_str(&format!("# {}\n", p.line()));
    }
    for m in view {
        let mark = if m.id == me { " myself" } else { "" };
        // A node that left hears from no one: the others' silence is not
        // their being down.
        let health = if left && m.status != kv_replication::Status::Left {
            "unmonitored"
        } else {
            m.state.name()
        };
        text.push_str(&format!(
            "{} {health} {} ring-share={:.1}%{mark}\n",
            m.id,
            m.status.name(),
            m.share * 100.0
        ));
    }
    text
}

impl ClusterThread {
    pub(super) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Peers whose link just failed, and until when messages to them are
        // dropped instead of reconnecting at once.
        let mut down_until: BTreeMap<String, u64> = BTreeMap::new();
        // At shutdown: when operations still waiting are given up.
        let mut give_up_at: Option<Instant> = None;
        while !self.handle.stop.load(Ordering::SeqCst) {
            if give_up_at.is_none() && self.shared.shutting_down.load(Ordering::SeqCst) {
                give_up_at = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            // Until the node's next tick (no more often than every TICK),
            // unless a message or a request comes first; at most a
            // second (the clock may have stepped back).
            let due = self.next_tick();
            let mut wait = Duration::from_millis(due.saturating_sub(now_ms()).min(1000));
            if give_up_at.is_some() {
                // Shutting down: the grace is timed to the tick.
                wait = wait.min(TICK);
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = now_ms();
            // The node's own copies made durable since the last pass.
            self.settle_own(now);
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                if let Some(peer) = self.tokens.get(&ev.token()).cloned() {
                    match self.service_link(&peer) {
                        Ok(msgs) => {
                            for msg in msgs {
                                match msg {
                                    // Applied off this thread, fenced by the
                                    // ring (see `fenced_apply`); a page of a
                                    // rebalance this node is not receiving is
                                    // the node's to ignore.
                                    PeerMsg::StreamPage {
                                        ref entries,
                                        transition,
                                        ..
                                    } if !entries.is_empty()
                                        && self.node.receives_stream(transition) =>
                                    {
                                        let epoch = self.node.ring_id();
                                        let _ = self.appliers.send((peer.clone(), epoch, msg));
                                    }
                                    msg => self.node.handle_message(
                                        now,
                                        &peer,
                                        msg,
                                        &self.shared.store,
                                    ),
                                }
                            }
                        }
                        Err(_) => {
                            self.drop_link(&peer);
                            down_until.insert(peer, now + RECONNECT_AFTER_MS);
                        }
                    }
                }
            }
            self.node
                .observe_timestamp(now, self.handle.observed.load(Ordering::Acquire));
            while let Ok(m) = self.rx.try_recv() {
                if let ToCluster::PeerUp(peer) = &m {
                    down_until.remove(peer);
                    continue;
                }
                self.take(now, m);
            }
            // A clock stepped back ticks at once: the node's own times
            // (and so `next_tick`) are on the old clock, and it restarts
            // its timers only when a tick shows it the step.
            if now >= self.next_tick() || now < self.last_tick {
                self.last_tick = now;
                self.node.handle_tick(now, &self.shared.store);
                self.publish(now);
            }
            // The new ring first (waiting out replica requests served
            // under the old one), then the new membership saved, and only
            // then the cleanup of the ranges it gave away.
            let ring = self.node.ring_id();
            if *self.handle.ring.read() != ring {
                *self.handle.ring.write() = ring;
            }
            self.handle.clock.publish(now, self.node.cluster_time(now));
            self.drain_outputs(now, &mut down_until);
            self.node.run_cleanup(now, &self.shared.store);
            self.drain_outputs(now, &mut down_until);
            if give_up_at.is_some_and(|t| Instant::now() >= t) {
                self.give_up_waiting();
            }
            self.flush_all(now, &mut down_until);
            // One flush for the node's own copies of this pass.
            self.request_own_durable();
        }
        Ok(())
    }

    /// When the node next needs a tick ([`Node::poll_timeout`]), but no
    /// sooner than TICK after the last one.
    fn next_tick(&self) -> u64 {
        let tick = u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX);
        self.node
            .poll_timeout()
            .max(self.last_tick.saturating_add(tick))
    }

    /// Shutdown's grace is over: every client operation still waiting for
    /// replicas (or arriving now) is answered with an error that says the
    /// node is shutting down and, for a write, that its outcome is
    /// unknown (some replicas may have stored it).
    fn give_up_waiting(&mut self) {
        self.listings.clear();
        for (_, (route, to)) in std::mem::take(&mut self.routes) {
            let bytes = encode_shutting_down(to);
            self.deliver(route, bytes, true);
        }
        for (route, bytes) in self.multis.give_up() {
            self.deliver(route, bytes, true);
        }
    }

    fn take(&mut self, now: u64, m: ToCluster) {
        let store = &self.shared.store;
        match m {
            ToCluster::Client { route, op, reply } => {
                let id = self.next_client;
                self.next_client += 1;
                self.routes.insert(id, (route, reply));
                self.node.handle_client(now, id, op, store);
            }
            ToCluster::Multi { route, multi } => {
                let next = &mut self.next_client;
                let next_id = || {
                    *next += 1;
                    *next - 1
                };
                for (id, op) in self.multis.start(route, multi, next_id) {
                    self.node.handle_client(now, id, op, store);
                }
            }
            ToCluster::Listing { route, listing } => {
                self.start_listing(now, route, listing);
            }
            ToCluster::Peer { from, msg } => self.node.handle_message(now, &from, msg, store),
            ToCluster::Admin { route, id, cmd } => {
                let result = match &cmd {
                    Admin::Invite(_) if self.secret().is_empty() => {
                        Err(crate::standalone::NO_PEERS.to_string())
                    }
                    Admin::Invite(addr) => {
                        self.node.invite(addr);
                        Ok(format!(
                            "invited {addr}: if it is alone it joins, one node at a time (CLUSTER shows progress)"
                        ))
                    }
                    Admin::Leave(addr) => self.node.leave(now, addr).map_err(|e| e.to_string()),
                    Admin::Remove(addr) => self.node.remove(now, addr).map_err(|e| e.to_string()),
                };
                match &result {
                    Ok(text) => log::info!("{cmd}: {text}"),
                    Err(why) => log::warn!("{cmd} refused: {why}"),
                }
                let response = match result {
                    Ok(text) => Response::Text { text },
                    Err(why) => Response::error(ErrorKind::Refused, why),
                };
                let failed = matches!(response, Response::Error { .. });
                let mut bytes = Vec::new();
                native::encode_frame(&mut bytes, id, &response);
                self.deliver(route, bytes, failed);
            }
            ToCluster::PeerUp(_) => {}
            ToCluster::AntiEntropyDone(outcome) => self.node.anti_entropy_done(outcome),
            ToCluster::CleanupDone(result) => self.node.cleanup_done(now, result),
            ToCluster::FloorSaved(floor) => self.node.floor_saved(now, floor),
        }
    }

    pub(super) fn publish(&self, now: u64) {
        self.handle
            .checked
            .store(self.node.serves_peers(), Ordering::Release);
        self.handle
            .clustered
            .store(is_clustered(&self.node, now), Ordering::Release);
        let text = view_text(&self.node, &self.handle.id, now);
        *self.handle.view.lock() = text;
        let stats = ClusterStats {
            node: self.node.stats().clone(),
            hints_pending: self.node.hint_count() as u64,
            members: (self.node.view(now).into_iter())
                .map(|m| (m.id, m.state))
                .collect(),
            rebalance: self.node.progress(now),
        };
        *self.handle.stats.lock() = stats;
    }

    fn drain_outputs(&mut self, now: u64, down_until: &mut BTreeMap<String, u64>) {
        // Hints whose window passed, by target: one log line each, not
        // one per key.
        let mut expired_hints: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    if down_until.get(&to).is_some_and(|t| *t > now) {
                        continue; // recently unreachable: the message is lost
                    }
                    if self.send_peer(&to, &msg).is_err() {
                        self.drop_link(&to);
                        down_until.insert(to, now + RECONNECT_AFTER_MS);
                    }
                }
                Output::Local(msg) => self.serve_own(now, msg),
                Output::Reply { id, reply } => self.reply(id, reply),
                Output::Event(event) => log::info!("{event}"),
                Output::AntiEntropy(task) => {
                    let _ = self.anti_entropy.send(task);
                }
                Output::Cleanup(job) => {
                    if let Err(mpsc::SendError(job)) = self.cleanup.send(job) {
                        // The cleanup thread is gone: clean up here rather
                        // than never again.
                        log::warn!(
                            "the cleanup thread has stopped; cleaning up on the cluster thread"
                        );
                        let result =
                            kv_replication::offload::run_cleanup_job(&job, &self.shared.store);
                        self.node.cleanup_done(now, result);
                    }
                }
                Output::Persist(p) => {
                    if let Some(path) = &self.state_path {
                        if !self.marked && p.members.len() > 1 {
                            // Before the state that names other members.
                            let dir = path.parent().unwrap_or(Path::new("."));
                            match ensure_marker(dir) {
                                Ok(()) => self.marked = true,
                                Err(e) => log::warn!(
                                    "cannot write {}: {e}",
                                    dir.join(MEMBER_MARKER).display()
                                ),
                            }
                        }
                        save_state(path, &p);
                    }
                }
                Output::Contact(t) => {
                    if let Some(w) = &self.contact_writer {
                        let _ = w.send(t);
                    }
                }
                // Saved off this thread, and reported back; nothing to
                // save without persistence. Should the writer be gone,
                // the floor is never reported (writes that reach it wait).
                Output::SaveFloor(floor) => match &self.floor_writer {
                    Some(w) => {
                        if w.send(floor).is_err() {
                            log::warn!("the clock floor writer has stopped");
                        }
                    }
                    None => self.node.floor_saved(now, floor),
                },
                Output::RejoinFresh(why) => self.rejoin_fresh(&why),
                Output::StoreHint(h) => {
                    let (Ok(k), Ok(v)) = (hint_key(&h.target, &h.key), postcard::to_allocvec(&h))
                    else {
                        continue;
                    };
                    if let Err(e) = self.hints.put(&k, &v) {
                        log::warn!("cannot store a hint for {}: {e}", h.target);
                    }
                }
                Output::DropHint {
                    target,
                    key,
                    expired,
                } => {
                    if let Ok(k) = hint_key(&target, &key) {
                        let _ = self.hints.delete(&k);
                    }
                    if expired {
                        *expired_hints.entry(target).or_default() += 1;
                    }
                }
            }
        }
        for (target, n) in expired_hints {
            log::info!(
                "{n} hint{} for {target} expired after the hint window, undelivered; anti-entropy will repair that replica",
                if n == 1 { "" } else { "s" }
            );
        }
    }

    /// The node found, at its first contact, that it was away for longer
    /// than the tombstone grace allows: it serves nothing any more. Leaves
    /// a marker so that the next start refuses to serve the data unless
    /// told to rejoin fresh (or that the whole cluster was down), and
    /// stops the process (status 75: start it again, it refuses). If the
    /// marker cannot be written, the next start could not know, and a
    /// supervisor restarting the node would loop: that is an error of its
    /// own (status 78, EX_CONFIG) that says what the operator must do.
    fn rejoin_fresh(&mut self, why: &str) {
        log::warn!("not serving the data of this node: {why}; stopping (start it again with --rejoin-fresh --join HOST:PORT to rebuild its ranges from the live replicas)");
        if let Some(path) = &self.state_path {
            let marker = path.with_file_name(REJOIN_MARKER);
            if let Err(e) = write_durably(&marker, why.as_bytes()) {
                log::error!(
                    "cannot write {}: {e}. The next start would not know that                      this node's data must not be served, so do not restart it as it is: fix the                      cause, then start it with --rejoin-fresh --join HOST:PORT (any live member)                      if the rest of the cluster kept running, or with --resume-after-outage if the                      whole cluster was down as long. Stopping with exit status 78",
                    marker.display()
                );
                std::process::exit(78);
            }
        }
        std::process::exit(75);
    }

    /// Asks the node for the next page of `listing`.
    fn start_listing(
        &mut self,
        now: u64,
        route: Route,
        listing: Box<crate::cluster_list::Listing>,
    ) {
        let id = self.next_client;
        self.next_client += 1;
        let op = listing.op();
        self.routes.insert(id, (route, ReplyTo::RespListing));
        self.listings.insert(id, listing);
        self.node.handle_client(now, id, op, &self.shared.store);
    }

    fn reply(&mut self, id: u64, reply: ClientReply) {
        let node = &self.node;
        let left = || node.status() == kv_replication::Status::Left || node.has_left(now_ms());
        let reply = match self.multis.add(id, reply, left) {
            crate::multi_key::Added::NotMine(reply) => reply,
            crate::multi_key::Added::Waiting => return,
            crate::multi_key::Added::Next(id, op) => {
                return self
                    .node
                    .handle_client(now_ms(), id, op, &self.shared.store);
            }
            crate::multi_key::Added::Done(route, bytes) => {
                let failed = bytes.first() == Some(&b'-');
                return self.deliver(route, bytes, failed);
            }
        };
        let Some((route, to)) = self.routes.remove(&id) else {
            return;
        };
        let reply = match (self.listings.remove(&id), reply) {
            (Some(mut listing), ClientReply::Keys { keys, next }) => {
                match listing.take(keys, next) {
                    crate::cluster_list::Step::More => {
                        self.start_listing(now_ms(), route, listing);
                    }
                    crate::cluster_list::Step::Done(bytes) => {
                        let failed = bytes.first() == Some(&b'-');
                        self.deliver(route, bytes, failed);
                    }
                }
                return;
            }
            (_, reply) => reply,
        };
        let failed = matches!(
            reply,
            ClientReply::Conflict { .. } | ClientReply::Unavailable { .. }
        );
        let bytes = match reply {
            // Refused before any replica was asked, because it left.
            ClientReply::Unavailable { replicas: 0, .. } if left() => encode_not_serving(to, true),
            reply => encode_reply(to, reply),
        };
        let failed = failed || (!matches!(to, ReplyTo::Native(..)) && bytes.first() == Some(&b'-'));
        self.deliver(route, bytes, failed);
    }

    fn deliver(&mut self, route: Route, bytes: Vec<u8>, failed: bool) {
        if self.replies.len() < self.workers.len() {
            self.replies.resize_with(self.workers.len(), Vec::new);
        }
        if let Some(batch) = self.replies.get_mut(route.worker) {
            batch.push(ToWorker::Reply {
                token: route.token,
                conn: route.conn,
                seq: route.seq,
                bytes,
                failed,
            });
        }
    }
}

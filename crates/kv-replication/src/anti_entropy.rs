//! Anti-entropy: replicas of the same ranges compare what they hold and
//! exchange what one lacks, so that writes missed while a replica was down
//! (and whose hints expired) reach it.
//!
//! A round, between this node A and a random live peer B:
//!
//! 1. A sends B the hash of each range of the read ring they both
//!    replicate ([`PeerMsg::AeDigest`]). The store keeps these hashes up to
//!    date on every write, so this reads no data.
//! 2. B picks the ranges whose hashes differ and splits them into a few
//!    chains. For the first range of each chain it sends its first page of
//!    keys and versions ([`PeerMsg::AeKeys`]), read with
//!    [`ReplicaStore::range_page`]: only that range is read, and a page holds at
//!    most [`PAGE_KEYS`] keys.
//! 3. The receiver of a page reads its own page of the same window of key
//!    positions (cut short at its own page size), sends the values it holds
//!    newer or the other lacks ([`PeerMsg::AeValues`], at most
//!    [`VALUES_BYTES`] per message), asks for those the other holds newer
//!    ([`PeerMsg::AePull`]), and answers with its next page. The two take
//!    turns until the range is done, then start the chain's next range.
//!
//! So each message, and the work behind it, is bounded, and a range that
//! does not differ is never read. What a peer may ask is bounded too: a
//! pull of more than [`MAX_PULL_KEYS`] keys is refused whole; a pull is
//! served, and values are stored, only for keys of ranges both nodes
//! replicate; and the values of a pull (or of a page's differences) go out
//! one message per task, the rest left as a continuation
//! ([`AeOutcome::next`]) that the driver runs once that message is sent.
//!
//! Rounds come every interval, and sooner after a round that repaired
//! many keys ([`Repairs`]): a node back from an outage gets its last keys
//! a second after the repair goes quiet, not a whole interval later.
//!
//! Tombstones: a tombstone older than the tombstone grace is never sent to
//! a replica that lacks the key, nor taken by one that lacks it. Such a
//! replica has purged it (or never needed it): taking it back would only
//! make the two replicas bounce it between them, purging and pulling. An
//! old tombstone still replaces an older live value.
//!
//! The work runs in [`AntiEntropy::run`], from an [`AeTask`]. By default
//! the [`Node`](crate::Node) runs it inline; a driver that sets
//! [`Config::offload_anti_entropy`](crate::Config::offload_anti_entropy)
//! receives the tasks as [`Output::AntiEntropy`](crate::Output::AntiEntropy),
//! runs them on another thread, and hands the outcome back with
//! [`Node::anti_entropy_done`](crate::Node::anti_entropy_done), so that the
//! thread that coordinates requests never walks the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_ring::Ring;
use kv_types::{RangeKey, ReplicaStore, Version};

use crate::event::Event;
use crate::msg::{AeKey, AeValue, NodeId, PeerMsg, Ver};

/// Most keys in one page of an exchange: a range of a large store (about
/// 1,400 keys per range at 1M keys on 3 nodes) then takes one turn a side
/// instead of three.
pub const PAGE_KEYS: usize = 2048;
/// Most bytes of keys in one page of an exchange.
pub const PAGE_BYTES: usize = 256 << 10;
/// Most bytes of keys and values in one [`PeerMsg::AeValues`] (one value
/// larger than this goes alone).
pub const VALUES_BYTES: usize = 1 << 20;
/// Most keys one [`PeerMsg::AePull`] may ask for: a node pulls only what
/// one page of the other's showed newer, so no honest pull asks for more.
/// A larger pull is refused whole.
pub const MAX_PULL_KEYS: usize = PAGE_KEYS;
/// How many differing ranges are compared at the same time with one peer.
pub const CHAINS: usize = 16;
/// How long after a node starts its first round comes (ms), instead of a
/// whole interval: a node back from an outage is the one most likely to
/// have missed writes.
pub const FIRST_ROUND_AFTER: u64 = 1000;

/// How long anti-entropy must have been quiet (nothing applied) after a
/// round that repaired at least [`REPEAT_AFTER`] keys before the next
/// round starts (ms), instead of a whole interval.
pub const REPEAT_QUIET: u64 = 1000;
/// Keys repaired since a round started above which the next round comes
/// [`REPEAT_QUIET`] after the repair went quiet: a replica that lacked
/// that many is likely to lack more (an exchange cut short, a range that
/// changed meanwhile), and an outage's last keys should not wait a whole
/// interval.
pub const REPEAT_AFTER: u64 = 256;

/// When the next round may come early: counts keys repaired since the
/// last round started (on either side of any exchange).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    applied: u64,
    last_at: u64,
}

impl Repairs {
    /// `applied` keys were stored by anti-entropy at `now` (ms).
    pub fn note(&mut self, now: u64, applied: u64) {
        if applied > 0 {
            self.applied = self.applied.saturating_add(applied);
            self.last_at = now;
        }
    }

    /// A round starts: counting begins again.
    pub fn round_started(&mut self) {
        self.applied = 0;
    }

    /// Whether the next round is due now, before the interval: the last
    /// repaired many keys and has gone quiet.
    pub fn repeat_now(&self, now: u64) -> bool {
        self.applied >= REPEAT_AFTER && now >= self.last_at.saturating_add(REPEAT_QUIET)
    }
}

/// Identifies a ring by its tokens and members.
pub fn ring_id(ring: &Ring) -> u64 {
    let text = format!("{}{:?}", ring.vnodes(), ring.nodes());
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// What anti-entropy knows of the ring: which ranges there are and which
/// nodes replicate each. Built by the node when its read ring changes.
#[derive(Debug, PartialEq, Eq)]
pub struct AeView {
    /// Identifies the ring: two nodes compare ranges only if they agree.
    pub ring: u64,
    /// The ranges' upper bounds (the ring's token positions).
    bounds: Vec<u64>,
    /// Per range, its replicas.
    replicas: Vec<Vec<NodeId>>,
    /// This node.
    me: NodeId,
}

impl AeView {
    /// The view of `ring` with `n` replicas per key, for node `me`.
    pub fn new(ring: &Ring, n: usize, me: &str) -> AeView {
        let id = ring_id(ring);
        let bounds = ring.token_positions();
        let replicas = bounds
            .iter()
            .map(|b| {
                let list = ring.preference_list_at(*b, n);
                list.into_iter().map(str::to_string).collect()
            })
            .collect();
        AeView {
            ring: id,
            bounds,
            replicas,
            me: me.to_string(),
        }
    }

    /// Whether this node and `peer` both replicate range `arc`.
    fn shares(&self, peer: &str, arc: u32) -> bool {
        self.replicas
            .get(arc as usize)
            .is_some_and(|r| r.iter().any(|n| n == peer) && r.contains(&self.me))
    }

    /// Whether this node and `peer` both replicate the range of `key`.
    fn shares_key(&self, peer: &str, key: &[u8]) -> bool {
        let arc = kv_types::range_of_key(&self.bounds, key);
        self.shares(peer, arc as u32)
    }

    /// The ranges this node and `peer` both replicate.
    fn shared(&self, peer: &str) -> Vec<u32> {
        (0..self.replicas.len() as u32)
            .filter(|a| self.shares(peer, *a))
            .collect()
    }
}

/// A piece of anti-entropy work for [`AntiEntropy::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AeTask {
    /// The ring it runs on.
    pub view: Arc<AeView>,
    /// The node's ring id ([`crate::Node::ring_id`]) when the task was
    /// made: a driver that runs tasks on another thread stores what they
    /// apply only while its published ring id is still this one (see the
    /// server's fenced appliers), so that no task made under a ring
    /// writes a range after a later ring's cleanup forgot it.
    pub epoch: u64,
    /// Tombstones with a timestamp below this (µs) are past the grace.
    pub old_before: u64,
    /// Timestamps above this (µs) are too far ahead: not stored.
    pub max_ts: u64,
    /// What to do.
    pub work: AeWork,
}

/// What an [`AeTask`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AeWork {
    /// Start a round with this peer.
    Start(NodeId),
    /// Answer this anti-entropy message from this peer.
    Message(NodeId, PeerMsg),
    /// Send this peer our state of these keys (the rest of a pull or of a
    /// page's differences), one [`PeerMsg::AeValues`] per task: the
    /// continuation of a task that already sent one.
    Serve(NodeId, Vec<Vec<u8>>),
}

/// What running an [`AeTask`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AeOutcome {
    /// Messages to send.
    pub sends: Vec<(NodeId, PeerMsg)>,
    /// The greatest timestamp stored (0: none), for the node's clock.
    pub observed: u64,
    /// Entries stored because they were newer.
    pub applied: u64,
    /// Ranges found differing from the peer's.
    pub differing: u64,
    /// Events for the node's log.
    pub log: Vec<Event>,
    /// Work left for later: the driver runs it once [`AeOutcome::sends`]
    /// are sent, so that a task holds at most one message of values.
    pub next: Option<AeTask>,
}

/// The state anti-entropy keeps next to the store: which ring the store's
/// range hashes follow. One per store; it runs on whatever thread the
/// driver chooses.
#[derive(Debug, Default)]
pub struct AntiEntropy {
    tracked: u64,
    /// Pulls refused so far (logged at powers of two).
    refused_pulls: u64,
}

impl AntiEntropy {
    /// Runs `task` against `store`.
    pub fn run(&mut self, mut task: AeTask, store: &dyn ReplicaStore) -> AeOutcome {
        self.track(&task.view, store);
        let mut out = AeOutcome::default();
        // Taken out (not cloned): a message may carry a megabyte of values.
        match std::mem::replace(&mut task.work, AeWork::Start(NodeId::new())) {
            AeWork::Start(peer) => start(&task, store, &peer, &mut out),
            AeWork::Serve(peer, keys) => serve(&task, store, &peer, keys, &mut out),
            AeWork::Message(from, msg) => match msg {
                PeerMsg::AeDigest { ring, arcs } if ring == task.view.ring => {
                    on_digest(&task, store, &from, &arcs, &mut out)
                }
                PeerMsg::AeKeys {
                    ring,
                    arc,
                    from: lo,
                    until,
                    entries,
                    rest,
                } if ring == task.view.ring && task.view.shares(&from, arc) => {
                    let page = Page { arc, lo, until };
                    on_keys(&task, store, &from, page, entries, rest, &mut out)
                }
                PeerMsg::AePull { keys } if keys.len() > MAX_PULL_KEYS => {
                    self.refused_pulls += 1;
                    if self.refused_pulls.is_power_of_two() {
                        out.log.push(Event::AePullRefused {
                            keys: keys.len(),
                            from,
                            max: MAX_PULL_KEYS,
                            refused: self.refused_pulls,
                        });
                    }
                }
                PeerMsg::AePull { mut keys } => {
                    // Only keys of ranges the puller replicates with us.
                    keys.retain(|k| task.view.shares_key(&from, k));
                    serve(&task, store, &from, keys, &mut out)
                }
                PeerMsg::AeValues { mut entries } => {
                    entries.retain(|e| task.view.shares_key(&from, &e.key));
                    apply(&task, store, &entries, &mut out)
                }
                _ => {} // another ring: the next round, once views agree
            },
        }
        out
    }

    /// Has the store keep range hashes for `task`'s ring: a pass over
    /// every key the first time a ring is seen, which a driver may do
    /// before it takes any lock that [`AntiEntropy::run`] needs (run does
    /// it itself otherwise).
    pub fn prepare(&mut self, task: &AeTask, store: &dyn ReplicaStore) {
        self.track(&task.view, store);
    }

    /// Has the store keep range hashes (and its index by position) for the
    /// view's ring, recomputed only when the ring changes.
    fn track(&mut self, view: &AeView, store: &dyn ReplicaStore) {
        if self.tracked != view.ring {
            store.track_ranges(&view.bounds);
            self.tracked = view.ring;
        }
    }
}

/// Step 1: our hashes of the ranges we share with `peer`.
fn start(task: &AeTask, store: &dyn ReplicaStore, peer: &str, out: &mut AeOutcome) {
    let mine = store.range_hashes();
    let arcs = task
        .view
        .shared(peer)
        .into_iter()
        .filter_map(|i| Some((i, *mine.get(i as usize)?)))
        .collect();
    let ring = task.view.ring;
    out.sends
        .push((peer.to_string(), PeerMsg::AeDigest { ring, arcs }));
}

/// Step 2: the ranges that differ, in chains, each started with our first
/// page of its first range.
fn on_digest(
    task: &AeTask,
    store: &dyn ReplicaStore,
    from: &str,
    theirs: &[(u32, u64)],
    out: &mut AeOutcome,
) {
    let mine = store.range_hashes();
    let differ: Vec<u32> = theirs
        .iter()
        .filter(|(i, h)| task.view.shares(from, *i) && mine.get(*i as usize) != Some(h))
        .map(|(i, _)| *i)
        .collect();
    out.differing += differ.len() as u64;
    for c in 0..CHAINS.min(differ.len()) {
        let chain: Vec<u32> = differ.iter().skip(c).step_by(CHAINS).copied().collect();
        send_page(task, store, from, chain[0], 0, chain[1..].to_vec(), out);
    }
}

/// Our page of range `arc` from position `lo` on, to `to`.
fn send_page(
    task: &AeTask,
    store: &dyn ReplicaStore,
    to: &str,
    arc: u32,
    lo: u64,
    rest: Vec<u32>,
    out: &mut AeOutcome,
) {
    let page = store.range_page(arc as usize, lo, u64::MAX, PAGE_KEYS, PAGE_BYTES);
    let entries = page.entries.into_iter().map(ae_key).collect();
    let msg = PeerMsg::AeKeys {
        ring: task.view.ring,
        arc,
        from: lo,
        until: page.covered_to,
        entries,
        rest,
    };
    out.sends.push((to.to_string(), msg));
}

fn ae_key(e: RangeKey) -> AeKey {
    AeKey {
        key: e.key,
        version: e.version.into(),
        tombstone: e.tombstone,
    }
}

/// The window a received page covers.
struct Page {
    arc: u32,
    lo: u64,
    until: u64,
}

/// Step 3: compare a page of the peer's with ours, exchange the
/// differences, and go on with our next page.
fn on_keys(
    task: &AeTask,
    store: &dyn ReplicaStore,
    from: &str,
    page: Page,
    theirs: Vec<AeKey>,
    mut rest: Vec<u32>,
    out: &mut AeOutcome,
) {
    if page.lo > page.until {
        return;
    }
    let own = store.range_page(
        page.arc as usize,
        page.lo,
        page.until,
        PAGE_KEYS,
        PAGE_BYTES,
    );
    let end = own.covered_to;
    let mut mine: BTreeMap<Vec<u8>, (Ver, bool)> = own
        .entries
        .into_iter()
        .map(|e| (e.key, (e.version.into(), e.tombstone)))
        .collect();
    let (mut push, mut pull) = (Vec::new(), Vec::new());
    for t in theirs {
        let pos = kv_types::key_position(&t.key);
        if pos < page.lo || pos > end {
            continue; // beyond our page: compared on a later turn
        }
        match mine.remove(&t.key) {
            Some((m, _)) if m > t.version => push.push(t.key),
            Some((m, _)) if m == t.version => {}
            Some(_) => pull.push(t.key),
            None if t.tombstone && t.version.ts < task.old_before => {} // purged here
            None => pull.push(t.key),
        }
    }
    for (key, (v, tombstone)) in mine {
        if !(tombstone && v.ts < task.old_before) {
            push.push(key);
        }
    }
    serve(task, store, from, push, out);
    for keys in pull.chunks(MAX_PULL_KEYS) {
        let keys = keys.to_vec();
        out.sends.push((from.to_string(), PeerMsg::AePull { keys }));
    }
    match end.checked_add(1) {
        Some(next) => send_page(task, store, from, page.arc, next, rest, out),
        None if !rest.is_empty() => {
            let arc = rest.remove(0);
            send_page(task, store, from, arc, 0, rest, out)
        }
        None => {}
    }
}

/// Our state of `keys`: one message of at most [`VALUES_BYTES`] (or one
/// value) now, and the keys left over as the outcome's continuation
/// ([`AeOutcome::next`]), which the driver runs once this message is
/// sent. So a task holds one message of values at a time, however many
/// keys or however large the values.
fn serve(
    task: &AeTask,
    store: &dyn ReplicaStore,
    to: &str,
    mut keys: Vec<Vec<u8>>,
    out: &mut AeOutcome,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut used = 0;
    for key in &keys {
        let Some(v) = store.get_versioned(key) else {
            used += 1;
            continue;
        };
        let size = key.len() + v.value.as_ref().map_or(0, Vec::len) + 32;
        if bytes + size > VALUES_BYTES && !batch.is_empty() {
            break;
        }
        used += 1;
        bytes += size;
        batch.push(AeValue {
            key: key.clone(),
            version: v.version.into(),
            value: v.value,
            expires_at: v.expires_at,
        });
    }
    if !batch.is_empty() {
        out.sends
            .push((to.to_string(), PeerMsg::AeValues { entries: batch }));
    }
    keys.drain(..used);
    if !keys.is_empty() {
        out.next = Some(AeTask {
            view: task.view.clone(),
            epoch: task.epoch,
            old_before: task.old_before,
            max_ts: task.max_ts,
            work: AeWork::Serve(to.to_string(), keys),
        });
    }
}

/// Stores the states received that are newer than ours, except
/// timestamps too far ahead and old tombstones for keys we lack.
fn apply(task: &AeTask, store: &dyn ReplicaStore, entries: &[AeValue], out: &mut AeOutcome) {
    for e in entries {
        if e.version.ts > task.max_ts {
            continue;
        }
        let old_tombstone = e.value.is_none() && e.version.ts < task.old_before;
        if old_tombstone && store.get_versioned(&e.key).is_none() {
            continue; // purged here: do not bring it back
        }
        let version: Version = e.version.into();
        match store.apply_with_expiry(&e.key, e.value.as_deref(), version, e.expires_at) {
            Ok(true) => {
                out.applied += 1;
                out.observed = out.observed.max(e.version.ts);
            }
            Ok(false) => {}
            Err(_) => return, // the next round tries again
        }
    }
}

//! Rebalancing: which ranges of the ring a node must receive when members
//! join or leave, and how far it is with receiving them.
//!
//! During a rebalance two rings coexist: the *read ring* (members that hold
//! their ranges: normal and leaving) and the *write ring* (members that
//! will hold them: joining and normal). Writes go to the replicas of both
//! and need a write quorum in each; reads need a read quorum in each. A
//! node that is a replica of a range in the write ring but not in the read
//! ring pulls that range from the range's replicas in the read ring — from
//! a read quorum of them, so that it gets every acknowledged write even if
//! one replica missed some. Once every such node has the ranges, the
//! joining members become normal and the leaving ones leave.

use std::collections::BTreeMap;

use kv_ring::{key_position, Ring};
use serde::{Deserialize, Serialize};

use crate::msg::NodeId;

/// A range this node gains, and the replicas it can copy it from.
#[derive(Clone, Debug)]
pub(crate) struct Gain {
    /// The range, as inclusive position intervals.
    pub ranges: Vec<(u64, u64)>,
    /// The range's replicas in the read ring.
    pub sources: Vec<NodeId>,
    /// How many of them must have sent it all.
    pub need: usize,
}

/// The ranges a rebalance moves, seen from one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Ranges this node gains.
    pub gains: Vec<Gain>,
    /// Every node that gains some range.
    pub gainers: Vec<NodeId>,
}

/// Works out what moves from `read` (replication factor `n_read`) to
/// `write` (`n_write`), for node `me`; `quorum(len)` is the read quorum of
/// a range with `len` replicas.
pub(crate) fn plan(
    me: &str,
    read: &Ring,
    n_read: usize,
    write: &Ring,
    n_write: usize,
    quorum: impl Fn(usize) -> usize,
) -> Plan {
    let mut p = Plan::default();
    for change in read.diff_sized(write, n_read, n_write) {
        for node in &change.after {
            if !change.before.contains(node) && !p.gainers.contains(node) {
                p.gainers.push(node.clone());
            }
        }
        let gains = change.after.iter().any(|n| n == me) && !change.before.iter().any(|n| n == me);
        if !gains || change.before.is_empty() {
            continue;
        }
        p.gains.push(Gain {
            ranges: intervals(change.start, change.end),
            need: quorum(change.before.len()),
            sources: change.before,
        });
    }
    p.gainers.sort();
    p
}

/// What to ask each source for (inclusive position intervals, sorted):
/// each range from the first `need` of its sources that `up` accepts
/// (a read quorum of its old replicas, not all of them).
pub(crate) fn asks(plan: &Plan, up: impl Fn(&str) -> bool) -> BTreeMap<NodeId, Vec<(u64, u64)>> {
    let mut asks: BTreeMap<NodeId, Vec<(u64, u64)>> = BTreeMap::new();
    for g in &plan.gains {
        let mut chosen: Vec<&NodeId> = g.sources.iter().filter(|s| up(s)).take(g.need).collect();
        for s in &g.sources {
            if chosen.len() >= g.need {
                break;
            }
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        for s in chosen {
            asks.entry(s.clone())
                .or_default()
                .extend(g.ranges.iter().copied());
        }
    }
    for a in asks.values_mut() {
        a.sort_unstable();
    }
    asks
}

fn asks_hash(ranges: &[(u64, u64)]) -> u64 {
    let bytes: Vec<u8> = ranges
        .iter()
        .flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
        .collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The ring range `(start, end]` (wrapping when `start >= end`) as
/// inclusive intervals.
fn intervals(start: u64, end: u64) -> Vec<(u64, u64)> {
    if start < end {
        vec![(start + 1, end)]
    } else {
        let mut v = vec![(0, end)];
        if start < u64::MAX {
            v.push((start + 1, u64::MAX));
        }
        v
    }
}

/// Whether `key` lies in one of the sorted inclusive `ranges`.
pub fn key_in_ranges(ranges: &[(u64, u64)], key: &[u8]) -> bool {
    let p = key_position(key);
    let i = ranges.partition_point(|&(lo, _)| lo <= p);
    i > 0 && ranges[i - 1].1 >= p
}

/// A place in a source's store walk: (shard, key hash).
pub type Cursor = (u32, u64);

/// One source of a stream.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    /// Where to continue; `None`: it has sent everything.
    pub cursor: Option<(u32, u64)>,
    /// When the outstanding request was sent.
    pub asked_at: Option<u64>,
    /// How far through its store it is (0..1).
    pub progress: f32,
}

/// Receiving the ranges of one rebalance.
#[derive(Clone, Debug)]
pub(crate) struct Stream {
    pub transition: u64,
    pub plan: Plan,
    /// What each source is asked for.
    pub asks: BTreeMap<NodeId, Vec<(u64, u64)>>,
    pub sources: BTreeMap<NodeId, Source>,
    /// When receiving began (ms); `None` until it does.
    pub started: Option<u64>,
    pub bytes: u64,
    pub keys: u64,
    pub last_log: u64,
    /// When the cursors were last saved.
    pub last_save: u64,
    /// The planted bug [`crate::node::Planted::any_source_done`].
    pub planted_any_source_done: bool,
}

impl Stream {
    /// A stream for `plan`, asking sources `up` accepts, resuming from
    /// `saved` where it asked a source for the same ranges of the same
    /// rebalance.
    pub fn new(
        transition: u64,
        plan: Plan,
        saved: Option<&StreamSave>,
        up: impl Fn(&str) -> bool,
    ) -> Stream {
        let saved = saved.filter(|s| s.transition == transition);
        let asks = asks(&plan, up);
        let sources = asks
            .iter()
            .map(|(id, ranges)| {
                let h = asks_hash(ranges);
                let cursor = saved
                    .and_then(|s| s.cursors.iter().find(|(n, ah, _)| n == id && *ah == h))
                    .map_or(Some((0, 0)), |(_, _, c)| *c);
                let progress = if cursor.is_none() { 1.0 } else { 0.0 };
                let src = Source {
                    cursor,
                    asked_at: None,
                    progress,
                };
                (id.clone(), src)
            })
            .collect();
        Stream {
            transition,
            plan,
            asks,
            sources,
            started: None,
            bytes: saved.map_or(0, |s| s.bytes),
            keys: saved.map_or(0, |s| s.keys),
            last_log: 0,
            last_save: 0,
            planted_any_source_done: false,
        }
    }

    fn done(&self, id: &str) -> bool {
        self.sources.get(id).is_some_and(|s| s.cursor.is_none())
    }

    /// Whether source `id` was asked for every interval of `g` (so that
    /// once it has sent everything, it has sent `g`).
    fn asked_for(&self, id: &str, g: &Gain) -> bool {
        self.asks
            .get(id)
            .is_some_and(|a| g.ranges.iter().all(|r| a.binary_search(r).is_ok()))
    }

    /// Ranges complete: `need` of their sources that were asked for them
    /// have sent everything. A source that finished what it was asked for
    /// counts only for the ranges it was asked for: one asked for other
    /// ranges alone has sent none of this one.
    pub fn ranges_done(&self) -> usize {
        self.plan
            .gains
            .iter()
            .filter(|g| {
                let finished = g
                    .sources
                    .iter()
                    .filter(|s| self.done(s))
                    .filter(|s| self.planted_any_source_done || self.asked_for(s, g))
                    .count();
                finished >= g.need
            })
            .count()
    }

    /// Whether every range is complete.
    pub fn complete(&self) -> bool {
        self.ranges_done() == self.plan.gains.len()
    }

    /// Sources resumed from a saved cursor (not from the start).
    pub fn resumed(&self) -> usize {
        self.sources
            .values()
            .filter(|s| s.cursor != Some((0, 0)))
            .count()
    }

    /// Overall progress (0..1): the sources' progress, each range counted
    /// by its best `need` sources.
    pub fn progress(&self) -> f64 {
        if self.plan.gains.is_empty() {
            return 1.0;
        }
        let mut sum = 0.0;
        for g in &self.plan.gains {
            let mut p: Vec<f64> = g
                .sources
                .iter()
                .map(|s| self.sources.get(s).map_or(0.0, |x| f64::from(x.progress)))
                .collect();
            p.sort_by(|a, b| b.total_cmp(a));
            let need = g.need.max(1);
            sum += p.iter().take(need).sum::<f64>() / need as f64;
        }
        sum / self.plan.gains.len() as f64
    }

    /// What to persist to resume after a restart.
    pub fn save(&self) -> StreamSave {
        StreamSave {
            transition: self.transition,
            cursors: self
                .sources
                .iter()
                .map(|(id, s)| {
                    let h = self.asks.get(id).map_or(0, |a| asks_hash(a));
                    (id.clone(), h, s.cursor)
                })
                .collect(),
            bytes: self.bytes,
            keys: self.keys,
        }
    }
}

/// How far a node got with receiving a rebalance's ranges, saved so that
/// it resumes there after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSave {
    /// The rebalance.
    pub transition: u64,
    /// Each source, the hash of the ranges it was asked for, and its
    /// cursor (`None`: finished).
    pub cursors: Vec<(NodeId, u64, Option<Cursor>)>,
    /// Bytes received so far.
    pub bytes: u64,
    /// Entries received so far.
    pub keys: u64,
}

/// A node's view of the rebalance under way, for the CLUSTER view and the
/// log.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Members joining.
    pub joining: Vec<NodeId>,
    /// Members leaving.
    pub leaving: Vec<NodeId>,
    /// Ranges this node receives, and how many are complete.
    pub ranges: (usize, usize),
    /// Bytes and entries received so far.
    pub bytes: u64,
    /// Entries received so far.
    pub keys: u64,
    /// Bytes per second since receiving began.
    pub rate: f64,
    /// Fraction done (0..1).
    pub fraction: f64,
    /// Estimated seconds left, once there is a rate to go by.
    pub eta_secs: Option<f64>,
    /// What the rebalance waits for, if anything.
    pub waiting_for: Option<String>,
}

impl Progress {
    /// One line for humans.
    pub fn line(&self) -> String {
        let mut s = String::from("rebalance:");
        if !self.joining.is_empty() {
            s.push_str(&format!(" joining {}", self.joining.join(",")));
        }
        if !self.leaving.is_empty() {
            s.push_str(&format!(" leaving {}", self.leaving.join(",")));
        }
        if self.ranges.0 == 0 {
            // Figures of nothing (`0/0 ranges, ... 100%`) say nothing:
            // what the rebalance waits for, below, is the news.
            s.push_str("; this node receives no ranges");
        } else {
            s.push_str(&format!(
                "; this node: {}/{} ranges, {:.1} MB, {} keys, {:.1} MB/s, {:.0}%",
                self.ranges.1,
                self.ranges.0,
                self.bytes as f64 / 1e6,
                self.keys,
                self.rate / 1e6,
                self.fraction * 100.0
            ));
            if let Some(eta) = self.eta_secs {
                s.push_str(&format!(", {eta:.0} s left"));
            }
        }
        if let Some(w) = &self.waiting_for {
            s.push_str(&format!("; waiting for {w}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn majority(n: usize) -> usize {
        n / 2 + 1
    }

    proptest! {
        /// A joining node's ranges, as it asks for them, cover exactly the
        /// keys whose write-ring replicas include it and read-ring
        /// replicas do not; each is asked of all its read-ring replicas.
        #[test]
        fn a_joiners_asks_cover_exactly_its_new_keys(
            nodes in 1usize..6,
            keys in proptest::collection::vec(any::<u64>(), 1..200),
        ) {
            let old: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
            let read = Ring::with_nodes(16, &old);
            let mut write = read.clone();
            write.add("new");
            let n_read = 3.min(nodes);
            let n_write = 3.min(nodes + 1);
            let p = plan("new", &read, n_read, &write, n_write, majority);
            prop_assert_eq!(&p.gainers, &vec!["new".to_string()]);
            let all = asks(&p, |_| true);
            for k in keys {
                let key = k.to_le_bytes();
                let gains = write.preference_list(&key, n_write).contains(&"new");
                let olds = read.preference_list(&key, n_read);
                let asked: Vec<&String> = old
                    .iter()
                    .filter(|src| all.get(*src).is_some_and(|r| key_in_ranges(r, &key)))
                    .collect();
                // Asked of a read quorum of the key's old replicas, only
                // if the new node gains it.
                let want = if gains { majority(olds.len()) } else { 0 };
                prop_assert_eq!(asked.len(), want);
                prop_assert!(asked.iter().all(|s| olds.contains(&s.as_str())));
            }
        }
    }

    /// A source that finished what it was asked for counts only for the
    /// ranges it was asked for (bug 1: it counted for every range it is a
    /// replica of).
    #[test]
    fn a_source_counts_only_for_the_ranges_it_was_asked_for() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = Plan {
            gains: vec![
                Gain {
                    ranges: vec![(10, 20)],
                    sources: ids(&["a", "b", "c"]),
                    need: 2,
                },
                Gain {
                    ranges: vec![(30, 40)],
                    sources: ids(&["c", "d"]),
                    need: 2,
                },
            ],
            gainers: ids(&["me"]),
        };
        let mut st = Stream::new(7, plan, None, |_| true);
        assert_eq!(st.asks.get("c"), Some(&vec![(30, 40)]));
        for id in ["a", "c"] {
            if let Some(s) = st.sources.get_mut(id) {
                s.cursor = None;
            }
        }
        // a finished the first range, c only the second: b still streams
        // the first, so neither is complete.
        assert_eq!(st.ranges_done(), 0);
        st.planted_any_source_done = true;
        assert_eq!(
            st.ranges_done(),
            1,
            "the planted bug counts c for the first range"
        );
        st.planted_any_source_done = false;
        if let Some(s) = st.sources.get_mut("b") {
            s.cursor = None;
        }
        assert_eq!(st.ranges_done(), 1);
        assert!(!st.complete());
    }

    /// A node with nothing to receive says what the rebalance waits
    /// for, not `0/0 ranges, ... 100%`; a receiver keeps its figures.
    #[test]
    fn a_node_receiving_nothing_shows_what_the_rebalance_waits_for() {
        let mut p = Progress {
            joining: vec!["d:1".into()],
            leaving: Vec::new(),
            ranges: (0, 0),
            bytes: 0,
            keys: 0,
            rate: 0.0,
            fraction: 1.0,
            eta_secs: None,
            waiting_for: Some("d:1 to receive ranges".into()),
        };
        assert_eq!(
            p.line(),
            "rebalance: joining d:1; this node receives no ranges; waiting for d:1 to receive ranges"
        );
        p.ranges = (4, 1);
        p.fraction = 0.25;
        p.waiting_for = None;
        assert_eq!(
            p.line(),
            "rebalance: joining d:1; this node: 1/4 ranges, 0.0 MB, 0 keys, 0.0 MB/s, 25%"
        );
    }

    #[test]
    fn ranges_wrap_around_zero() {
        let r = {
            let mut v = intervals(u64::MAX - 10, 5);
            v.sort_unstable();
            v
        };
        assert_eq!(r, vec![(0, 5), (u64::MAX - 9, u64::MAX)]);
        assert_eq!(intervals(3, 9), vec![(4, 9)]);
    }
}

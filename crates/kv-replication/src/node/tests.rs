//! Unit tests of the node state machine.

use super::*;
use kv_storage::{Options, Store};
use proptest::prelude::*;

fn store() -> Store {
    Store::open(Options::in_memory()).expect("in-memory store")
}

/// Quorum arithmetic: N capped by the cluster, majorities by default,
/// explicit quorums capped by N.
#[test]
fn quorum_table() {
    let s = store();
    for (members, replicas, w, r, want) in [
        (1, 3, None, None, (1, 1, 1)),
        (2, 3, None, None, (2, 2, 2)),
        (3, 3, None, None, (3, 2, 2)),
        (5, 3, None, None, (3, 2, 2)),
        (5, 5, None, None, (5, 3, 3)),
        (5, 3, Some(1), Some(1), (3, 1, 1)),
        (5, 3, Some(9), Some(0), (3, 3, 1)),
    ] {
        let mut cfg = Config::new("n0");
        cfg.replicas = replicas;
        cfg.write_quorum = w;
        cfg.read_quorum = r;
        let saved = Persisted {
            members: (0..members)
                .map(|i| Digest::new(&format!("n{i}"), Status::Normal))
                .collect(),
            clock_floor: 0,
            stream: None,
        };
        let node = Node::new(cfg, 0, Some(saved), &s, 1);
        assert_eq!(
            node.quorums(),
            want,
            "{members} members, N={replicas}, W={w:?}, R={r:?}"
        );
    }
}

/// A node gossiping a version number another node already has is
/// refused: not merged into the membership, and logged.
#[test]
fn a_duplicate_node_number_is_refused() {
    let s = store();
    let mk = |id: &str, number: u32| {
        let mut c = Config::new(id);
        c.number = Some(number);
        c
    };
    let mut a = Node::new(mk("a:1", 7), 1_000, None, &s, 1);
    while a.poll_output().is_some() {}
    let gossip = |id: &str, number: u32| PeerMsg::Gossip {
        members: vec![Digest::new(id, Status::Waiting)],
        clock: 1_000,
        number,
    };
    a.handle_message(1_001, "b:1", gossip("b:1", 7), &s);
    assert_eq!(a.refused_duplicates(), vec!["b:1".to_string()]);
    assert!(!a.members.current().contains(&"b:1".to_string()));
    let logs: Vec<String> = std::iter::from_fn(|| a.poll_output())
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert!(logs.iter().any(|l| l.contains("refused b:1")), "{logs:?}");
    // A node with its own number is welcome.
    a.handle_message(1_002, "c:1", gossip("c:1", 8), &s);
    assert_eq!(a.refused_duplicates().len(), 1);
    assert!(a.members.current().contains(&"c:1".to_string()));
}

proptest! {
    /// Paging through the merged listings of several replicas gives
    /// every live key once, in (hash, key) order, whatever the page
    /// size.
    #[test]
    fn merged_pages_list_every_live_key_once(
        writes in proptest::collection::vec((0u8..40, 0usize..3, 1u64..50, any::<bool>()), 0..120),
        limit in 1u32..7,
    ) {
        let stores = [store(), store(), store()];
        let mut newest: BTreeMap<Vec<u8>, (Ver, bool)> = BTreeMap::new();
        for (k, node, ts, live) in writes {
            let key = format!("k{k:02}").into_bytes();
            let v = Ver { ts, node: node as u32 };
            let value = live.then(|| b"v".to_vec());
            stores[node].apply(&key, value.as_deref(), v.into()).expect("apply");
            let e = newest.entry(key).or_insert((Ver { ts: 0, node: 0 }, false));
            if v > e.0 {
                *e = (v, live);
            }
        }
        let want: Vec<Vec<u8>> = newest
            .iter()
            .filter(|(_, (_, live))| *live)
            .map(|(k, _)| k.clone())
            .collect();
        let mut got = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..1000 {
            let pages: Vec<Page> = stores
                .iter()
                .map(|s| list_local(s, b"k", 0, after.as_deref(), limit))
                .collect();
            let ClientReply::Keys { keys, next } = merge_pages(pages, limit) else {
                panic!("not keys");
            };
            got.extend(keys);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        // Pages come in (hash, key) order, not sorted by key.
        let position = |k: &Vec<u8>| (Store::key_position(k), k.clone());
        let ordered = got.windows(2).all(|w| position(&w[0]) < position(&w[1]));
        prop_assert!(ordered, "pages out of (hash, key) order");
        got.sort();
        prop_assert_eq!(got, want);
    }
}

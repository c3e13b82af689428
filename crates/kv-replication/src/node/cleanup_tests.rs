//! The cleanup run off the driving thread ([`Config::offload_cleanup`]):
//! a range that a ring change gives back to this node after the cleanup
//! was handed out, but before (or while) it runs, keeps the writes made
//! there since it came back.

use super::*;
use kv_storage::{Options, Store, Version};

const T0: u64 = 1_000_000;

#[test]
fn a_range_given_back_before_the_offloaded_cleanup_runs_keeps_its_new_writes() {
    let s = Store::open(Options::in_memory()).expect("in-memory store");
    let ids = ["a:1", "b:1", "c:1", "d:1"];
    let digests = |leaving: Option<&str>| -> Vec<Digest> {
        ids.iter()
            .map(|id| {
                let status = if Some(*id) == leaving {
                    Status::Leaving
                } else {
                    Status::Normal
                };
                Digest::new(id, status)
            })
            .collect()
    };
    let saved = Persisted {
        members: digests(None),
        clock_floor: 0,
        stream: None,
    };
    let mut cfg = Config::new("a:1");
    cfg.driver_cleanup = true;
    cfg.offload_cleanup = true;
    let timeout = cfg.request_timeout;
    let mut a = Node::new(cfg, T0, Some(saved), &s, 1);
    // A key a:1 does not replicate among four nodes: an old copy of it,
    // which the cleanup is to forget.
    let four = Ring::with_nodes(kv_ring::DEFAULT_VNODES, ids);
    let key = (0..10_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| !four.preference_list(k, 3).contains(&"a:1"))
        .expect("some key");
    s.apply(&key, Some(b"old"), Version::new(T0 * 1000, 7))
        .expect("apply");

    // The ring has settled: the cleanup is handed out, not run here.
    a.run_cleanup(T0, &s);
    a.run_cleanup(T0 + timeout + 1, &s);
    let job = std::iter::from_fn(|| a.poll_output())
        .find_map(|o| match o {
            Output::Cleanup(job) => Some(job),
            _ => None,
        })
        .expect("a cleanup job");
    let p = Store::key_position(&key);
    assert!(
        job.doomed().iter().any(|&(lo, hi)| lo <= p && p <= hi),
        "the key's range is to be forgotten"
    );
    assert_eq!(s.get(&key), Some(b"old".to_vec()), "not run on this thread");

    // d:1 leaves: in the write ring (a:1, b:1, c:1) the key is a:1's
    // again, and a write lands there under the new ring.
    let gossip = PeerMsg::Gossip {
        members: digests(Some("d:1")),
        clock: T0 + timeout + 2,
        number: node_number("b:1"),
    };
    a.handle_message(T0 + timeout + 2, "b:1", gossip, &s);
    assert!(a.rebalancing());
    s.apply(&key, Some(b"new"), Version::new(T0 * 1000 + 10, 7))
        .expect("apply");

    // Only now does the cleanup run: the write made since the range came
    // back stays.
    let result = job.run(&s).map_err(|e| e.to_string());
    a.cleanup_done(T0 + timeout + 3, result);
    assert_eq!(s.get(&key), Some(b"new".to_vec()));
}

//! `Node::poll_timeout`: an idle node needs a tick only for its next
//! gossip (or anti-entropy) round, so its driver can sleep until then; a
//! node with work under way needs the driver's own pace.

use kv_replication::{ClientOp, Config, Node};
use kv_storage::{Options, Store};

const START: u64 = 1_000_000;

fn node(store: &Store) -> Node {
    let mut n = Node::new(Config::new("127.0.0.1:1"), START, None, store, 7);
    while n.poll_output().is_some() {}
    n
}

#[test]
fn an_idle_node_sleeps_until_its_next_gossip_round() {
    let store = Store::open(Options::in_memory()).expect("store");
    let mut n = node(&store);
    let gossip = Config::new("x").gossip_interval;
    // Ticks a while: anti-entropy falls due but has no peer to run with;
    // that does not make the node want a tick every few milliseconds.
    let mut now = START;
    for _ in 0..100 {
        now += 150;
        n.handle_tick(now, &store);
        while n.poll_output().is_some() {}
        let due = n.poll_timeout();
        assert!(due > now, "at {now} the node wants a tick at once ({due})");
        assert!(
            due <= now + gossip,
            "{due} is past the next gossip after {now}"
        );
    }
    // A request is answered at once by a cluster of one: still idle.
    n.handle_client(
        now,
        1,
        ClientOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expires_at: None,
        },
        &store,
    );
    while n.poll_serving(now, &store).is_some() {}
    assert!(n.poll_timeout() > now);
}

#[test]
fn a_joining_node_wants_ticks_at_the_drivers_pace() {
    let store = Store::open(Options::in_memory()).expect("store");
    let mut n = node(&store);
    let now = START + 10;
    n.handle_tick(now, &store);
    n.join(now, "127.0.0.1:2");
    while n.poll_output().is_some() {}
    assert!(n.poll_timeout() <= now, "{}", n.poll_timeout());
}

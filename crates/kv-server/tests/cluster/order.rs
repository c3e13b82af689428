//! Commands a client pipelines on one connection take effect in the order
//! it sent them, as on one Redis server, although the cluster coordinates
//! each on its own: a write that waits must not let a read of the same key
//! sent after it go first.

use super::*;

/// A coordinator whose clock floor saves are slow (a disk slow to sync:
/// its writes wait for the floor now and then) answers pipelined `SET k
/// v{i}` / `GET k` pairs with the value just set, every time. Before
/// commands of one connection were held in order, a GET went ahead of the
/// SET waiting for the floor and read the previous value.
#[test]
fn pipelined_commands_on_one_key_take_effect_in_order() {
    let a = ServerProc::start(BIN, &sec(&[]));
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &sec(&["--join", &seed]));
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = [("KV_TEST_FLOOR_SAVE_DELAY_MS", "150")];
    let c = ServerProc::start_in_env(BIN, dir.path(), &sec(&["--join", &seed]), &slow);
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    let mut r = redis::Client::open(format!("redis://{}/", c.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let mut out_of_order = Vec::new();
    for round in 0..12 {
        let mut pipe = redis::pipe();
        for i in 0..25 {
            let key = format!("k{}", i % 5);
            pipe.cmd("SET").arg(&key).arg(format!("r{round}-{i}"));
            pipe.cmd("GET").arg(&key);
        }
        let replies: Vec<redis::Value> = pipe.query(&mut r).expect("pipeline");
        for (i, pair) in replies.chunks(2).enumerate() {
            let want = format!("r{round}-{i}");
            match &pair[1] {
                redis::Value::BulkString(v) if *v == want.as_bytes() => {}
                other => out_of_order.push(format!("GET after SET {want} read {other:?}")),
            }
        }
    }
    assert!(out_of_order.is_empty(), "{out_of_order:?}");
}

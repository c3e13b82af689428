//! A cluster under `--fsync always`: the coordinator's own copies of
//! writes share a flush per pass of its cluster thread (they reach its
//! replica through the same messages as its peers', and are answered once
//! durable), and what was acknowledged survives `kill -9` of the
//! coordinator.

use super::*;

/// Flushes of `s`'s write-ahead log so far.
fn fsyncs(metrics: std::net::SocketAddr) -> f64 {
    sample(&scrape(metrics), "kv_wal_fsyncs_total")
}

#[test]
fn a_cluster_under_fsync_always_shares_flushes_and_keeps_writes_through_kill_9() {
    const WRITES: u32 = 300;
    let (mut a, b, _c) = start_three(&["--fsync", "always", "--metrics-port", "0"]);
    let metrics = metrics_addr(&a);
    let mut ca = client(&a);
    let before = fsyncs(metrics);
    // Every key has a copy on each of the three nodes: `a` coordinates
    // each write and holds one of its copies.
    put_many(&mut ca, 0..WRITES);
    let took = fsyncs(metrics) - before;
    println!("{WRITES} pipelined SETs coordinated by a: {took} fsyncs on a");
    assert!(
        took < f64::from(WRITES / 3),
        "{WRITES} writes took {took} fsyncs on their coordinator: its own copies did not share them"
    );
    check_many(&mut ca, 0..WRITES);
    a.kill9();
    // Answered OK, so on a quorum of durable copies: readable without a.
    check_many(&mut client(&b), 0..WRITES);
    a.restart();
    wait_members(&a, 3);
    check_many(&mut client(&a), 0..WRITES);
    assert!(
        local_copy(&a, &key_name(0)).is_some(),
        "a's own copy is gone"
    );
}

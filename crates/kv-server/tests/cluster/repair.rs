//! Repair: anti-entropy and hinted handoff giving a node what it missed.

use super::*;

#[test]
fn anti_entropy_gives_a_restarted_node_what_it_missed() {
    let (a, b, mut c) = start_three(&["--anti-entropy-ms", "200"]);
    c.kill9();
    let mut ca = client(&a);
    for i in 0..200 {
        ca.put(format!("missed{i:03}").as_bytes(), b"while c was down")
            .expect("put");
    }
    c.restart();
    wait_members(&a, 3);
    // Its log says whom it rejoins, from its saved membership.
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    wait_for("c's rejoin line", SETTLE, || {
        c.output().iter().any(|l| {
            l.contains("rejoining the cluster from the saved membership in")
                && l.contains("2 other members")
                && l.contains(&a_addr)
                && l.contains(&b_addr)
        })
    });
    // Nobody reads these keys: only anti-entropy can bring them to C.
    wait_for("c to hold all 200 keys it missed", SETTLE, || {
        (0..200).all(|i| local_copy(&c, &format!("missed{i:03}")).is_some())
    });
    for i in (0..200).step_by(37) {
        let key = format!("missed{i:03}");
        let (want, got_a, got_b) = (
            local_copy(&c, &key),
            local_copy(&a, &key),
            local_copy(&b, &key),
        );
        assert_eq!(want, got_a, "{key}: C and A hold the same version");
        assert_eq!(want, got_b, "{key}: C and B hold the same version");
    }
}

#[test]
fn hinted_handoff_delivers_writes_a_down_node_missed() {
    // Anti-entropy off: only hints can bring the writes to C. A's metrics
    // show c's state and the hints as they are made and delivered.
    let (a, _b, mut c) = start_three(&["--anti-entropy-ms", "0", "--metrics-port", "0"]);
    let metrics = metrics_addr(&a);
    let c_addr = c.addr.to_string();
    let c_state =
        |state: &str| format!(r#"kv_cluster_member_state{{member="{c_addr}",state="{state}"}}"#);
    assert_eq!(sample(&scrape(metrics), &c_state("alive")), 1.0);
    c.kill9();
    let mut ca = client(&a);
    wait_seen_down(&mut ca, &c_addr);
    for i in 0..100 {
        ca.put(format!("hinted{i:03}").as_bytes(), b"held for c")
            .expect("put");
    }
    assert!(local_copy(&a, "hinted000").is_some());
    // Every write (each key has a copy on each of the three nodes) leaves
    // a hint for c on its coordinator, a, once c has not answered it; the
    // figures are published at a's next tick.
    let mut body = String::new();
    wait_for(
        "a's metrics to show c down and its 100 hints",
        SETTLE,
        || {
            body = scrape(metrics);
            try_sample(&body, &c_state("down")) == Some(1.0)
                && sample(&body, "kv_cluster_hints_pending") >= 100.0
        },
    );
    let pending = sample(&body, "kv_cluster_hints_pending");
    assert_eq!(sample(&body, "kv_cluster_hints_stored_total"), pending);
    assert_eq!(sample(&body, "kv_cluster_hints_delivered_total"), 0.0);
    c.restart();
    wait_for("c to receive the 100 hinted writes", SETTLE, || {
        (0..100).all(|i| local_copy(&c, &format!("hinted{i:03}")).is_some())
    });
    wait_for("a's metrics to show the hints delivered", SETTLE, || {
        body = scrape(metrics);
        sample(&body, "kv_cluster_hints_pending") == 0.0
    });
    assert_eq!(sample(&body, "kv_cluster_hints_delivered_total"), pending);
    assert_eq!(sample(&body, "kv_cluster_hints_expired_total"), 0.0);
    assert_eq!(sample(&body, &c_state("alive")), 1.0);
    assert_eq!(sample(&body, "kv_cluster_unavailable_total"), 0.0);
}

/// Hints whose window passes before their replica comes back are logged,
/// a line per replica with their number, not a line per key.
#[test]
fn expired_hints_are_logged_once_per_replica() {
    let (a, _b, mut c) = start_three(&["--anti-entropy-ms", "0", "--hint-window-secs", "1"]);
    let c_addr = c.addr.to_string();
    c.kill9();
    let mut ca = client(&a);
    wait_seen_down(&mut ca, &c_addr);
    for i in 0..20 {
        ca.put(format!("held{i:02}").as_bytes(), b"for c")
            .expect("put");
    }
    // Every key has c among its replicas (N = 3 of 3): 20 hints on a.
    let suffix = format!(" for {c_addr} expired after the hint window, undelivered");
    let expired = || -> u64 {
        a.output()
            .iter()
            .filter_map(|l| {
                let (head, _) = l.split_once(&suffix)?;
                let n = head.rsplit(": ").next()?.split(' ').next()?;
                n.parse::<u64>().ok()
            })
            .sum()
    };
    wait_for("a to log its 20 expired hints", SETTLE, || expired() == 20);
    let per_key = a.output().iter().filter(|l| l.contains("(key ")).count();
    assert_eq!(per_key, 0, "a line per key: {:?}", a.output());
}

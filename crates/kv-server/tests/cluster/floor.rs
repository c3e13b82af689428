//! The clock floor (issue 12): saved off the cluster thread in
//! `cluster.floor`, it is above every version the node stamped, and a
//! restarted node stamps above it.

use super::*;

/// The timestamps of the versions `s` holds of `keys` (all of them).
fn stamps(s: &ServerProc, keys: &[String]) -> Vec<u64> {
    local_versions(s, keys)
        .into_iter()
        .map(|v| {
            let v = v.expect("a copy of every key");
            let (ts, _node) = v.split_once('@').expect("ts@node");
            ts.parse().expect("a timestamp")
        })
        .collect()
}

/// A node killed with `kill -9` while it coordinated writes left a clock
/// floor on disk above every version it stamped, and once restarted it
/// stamps above that floor (so above all it stamped before: a version it
/// stamped is never stamped again, for another value).
#[test]
fn a_restarted_node_stamps_above_every_version_it_stamped() {
    let (mut a, _b, _c) = start_three(&[]);
    let keys: Vec<String> = (0..300).map(|i| format!("floor-{i}")).collect();
    let mut ca = client(&a);
    put_values(
        &mut ca,
        0..300,
        |i| format!("floor-{i}"),
        |_| b"first".to_vec(),
    );
    // Its own copies (each applied before the write was acknowledged).
    let first = stamps(&a, &keys);
    drop(ca);
    a.kill9();
    let path = a.data_dir.join("cluster.floor");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} after kill -9: {e}", path.display()));
    let floor: u64 = text.trim().parse().expect("a floor");
    let highest = first.iter().max().copied().unwrap_or(0);
    assert!(
        highest < floor,
        "stamped {highest}, not below the floor saved {floor}"
    );
    a.restart();
    wait_members(&a, 3);
    let mut ca = client(&a);
    put_values(
        &mut ca,
        0..300,
        |i| format!("floor-{i}"),
        |_| b"second".to_vec(),
    );
    let second = stamps(&a, &keys);
    let lowest = second.iter().min().copied().unwrap_or(0);
    assert!(
        lowest > floor,
        "after the restart stamped {lowest}, not above the floor {floor} saved before"
    );
}

//! The clock floor (issue 12): saved off the cluster thread in
//! `cluster.floor`, it is above every version the node stamped, and a
//! restarted node stamps above it.

use super::*;

/// How many keys each round of writes writes.
const KEYS: u32 = 300;

fn key(i: u32) -> String {
    format!("floor-{i}")
}

/// Writes `value` to [`KEYS`] keys through `s`; the timestamps of the
/// versions `s` then holds of them (its own copies, each applied before
/// the write was acknowledged).
fn write_through(s: &ServerProc, value: &[u8]) -> Vec<u64> {
    let mut c = client(s);
    put_values(&mut c, 0..KEYS, key, |_| value.to_vec());
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    local_versions(s, &keys)
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
    let first = write_through(&a, b"first");
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
    let second = write_through(&a, b"second");
    let lowest = second.iter().min().copied().unwrap_or(0);
    assert!(
        lowest > floor,
        "after the restart stamped {lowest}, not above the floor {floor} saved before"
    );
}

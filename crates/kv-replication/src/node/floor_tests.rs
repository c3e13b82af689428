//! The clock floor saved off the coordinating thread (issue 12): the node
//! asks for the next floor ahead of need ([`Output::SaveFloor`]), stamps
//! only below the floor its driver reported saved ([`Node::floor_saved`]),
//! and keeps answering writes while a save is under way.

use super::write_path_tests::{coordinator_with, drain, store, versioned_replicates, T0};
use super::*;

/// A driver that saves floors in the background: it records what the
/// node asks to save, reports a save only when told to, answers every
/// `Replicate` to `b:1` at once, and checks that no version at or above
/// the floor it reported saved leaves the node or reaches its store.
#[derive(Default)]
struct Driver {
    /// Floors asked for, not reported saved yet, with when they were asked.
    asked: Vec<(u64, u64)>,
    /// The greatest floor reported saved.
    saved: u64,
    /// Clients answered `Written`.
    written: BTreeSet<u64>,
    /// Clients answered otherwise.
    failed: Vec<(u64, ClientReply)>,
    /// What went wrong.
    problems: Vec<String>,
}

impl Driver {
    /// Carries out `out` (and what answering it brings) at `now`.
    fn take(&mut self, n: &mut Node, s: &dyn ReplicaStore, now: u64, mut out: Vec<Output>) {
        while !out.is_empty() {
            for (to, op, v) in versioned_replicates(&out) {
                if v.ts >= self.saved {
                    self.problems.push(format!(
                        "at {now}: Replicate of op {op} to {to} at {} while the saved floor is {}",
                        v.ts, self.saved
                    ));
                }
                if to == "b:1" {
                    let ack = PeerMsg::ReplicateAck {
                        op,
                        existed: false,
                        newer: None,
                    };
                    n.handle_message(now, "b:1", ack, s);
                }
            }
            if s.max_timestamp() >= self.saved.max(1) {
                self.problems.push(format!(
                    "at {now}: a local copy at {} while the saved floor is {}",
                    s.max_timestamp(),
                    self.saved
                ));
            }
            for o in out {
                match o {
                    Output::SaveFloor(f) => self.asked.push((f, now)),
                    // A driver saving the floor in the background: the
                    // old node's floor rode in `Persist`.
                    Output::Persist(p) if p.clock_floor > self.saved => {
                        self.asked.push((p.clock_floor, now));
                    }
                    Output::Reply {
                        id,
                        reply: ClientReply::Written { .. },
                    } => {
                        self.written.insert(id);
                    }
                    Output::Reply { id, reply } => self.failed.push((id, reply)),
                    _ => {}
                }
            }
            out = drain(n, s);
        }
    }

    /// Checks that nothing went wrong and no write failed.
    fn assert_clean(&self) {
        let first = &self.problems[..self.problems.len().min(5)];
        assert!(first.is_empty(), "{first:#?}");
        assert!(self.failed.is_empty(), "{:?}", self.failed);
    }

    /// Reports saved every floor asked for at or before `upto`.
    fn report(&mut self, n: &mut Node, s: &dyn ReplicaStore, now: u64, upto: u64) {
        let (done, left): (Vec<_>, Vec<_>) = self.asked.iter().partition(|(_, at)| *at <= upto);
        self.asked = left;
        for (f, _) in done {
            self.saved = self.saved.max(f);
            n.floor_saved(now, f);
            let out = drain(n, s);
            self.take(n, s, now, out);
        }
    }
}

fn put(i: u64) -> ClientOp {
    ClientOp::Put {
        key: format!("k{}", i % 50).into_bytes(),
        value: format!("v{i}").into_bytes(),
        expires_at: None,
    }
}

/// The node `a:1` of three, with a driver that saves the clock floor
/// in the background, and that driver.
fn offloading(s: &dyn ReplicaStore) -> (Node, Driver) {
    let mut cfg = Config::new("a:1");
    cfg.offload_floor = true;
    let (mut n, out) = coordinator_with(s, &["a:1", "b:1", "c:1"], cfg);
    let mut d = Driver::default();
    d.take(&mut n, s, T0, out);
    (n, d)
}

/// A version at or above the floor the driver reported saved never
/// leaves the node (a `Replicate`) nor goes into its own store: after a
/// crash the node starts above that floor, and a version it sent before
/// could otherwise be stamped again, with another value. Writes come one
/// a millisecond for two seconds (floors for several leads), and each
/// save is reported 40 ms after it was asked for.
///
/// The old node raised its floor in `Node::stamp` and emitted it in an
/// `Output::Persist` just before the `Replicate` it stamped: safe only for
/// a driver that carried the save out, fsyncs and all, before sending the
/// next output (all coordination waited for it), and not even then for the
/// own copy, applied in the store before the outputs were drained.
#[test]
fn no_version_at_or_above_the_saved_floor_leaves_the_node() {
    let s = store();
    let (mut n, mut d) = offloading(&s);
    for i in 0..2000 {
        let now = T0 + i;
        d.report(&mut n, &s, now, now.saturating_sub(40));
        n.handle_client(now, i, put(i), &s);
        let out = drain(&mut n, &s);
        d.take(&mut n, &s, now, out);
        n.handle_tick(now, &s);
        let out = drain(&mut n, &s);
        d.take(&mut n, &s, now, out);
    }
    let end = T0 + 2000;
    d.report(&mut n, &s, end, end);
    d.assert_clean();
    assert_eq!(d.written.len(), 2000, "every write answered");
}

/// While a floor save is under way (the driver holds its report back),
/// writes go on being stamped and answered below the floor saved before:
/// the node asked for the next floor ahead of need. Only once the clock
/// reaches the saved floor do writes wait (neither sent nor failed), and
/// the report sends them on.
#[test]
fn writes_are_answered_while_a_floor_save_is_outstanding() {
    let s = store();
    let (mut n, mut d) = offloading(&s);
    // The first floor is saved at once; every later one is held back.
    d.report(&mut n, &s, T0, T0);
    let first = d.saved;
    assert!(
        first > T0 * 1000,
        "a first floor asked for at the start: {first}"
    );
    let mut answered_while_held = 0;
    let mut waiting = Vec::new();
    for i in 0..1000 {
        let now = T0 + i;
        n.handle_client(now, i, put(i), &s);
        let out = drain(&mut n, &s);
        let before = d.written.len();
        d.take(&mut n, &s, now, out);
        let held = d.asked.iter().any(|(f, _)| *f > d.saved);
        if d.written.len() > before {
            answered_while_held += usize::from(held);
        } else {
            waiting.push(i);
        }
    }
    assert!(
        d.problems.is_empty(),
        "{:#?}",
        &d.problems[..d.problems.len().min(5)]
    );
    assert!(
        answered_while_held > 0,
        "no write answered while a floor save was under way (asked {:?}, saved {})",
        d.asked,
        d.saved
    );
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    // The clock passed the saved floor: the later writes wait for it.
    assert!(!waiting.is_empty(), "the writes past the saved floor wait");
    assert!(waiting.iter().all(|i| T0 + i >= first / 1000));
    let now = T0 + 1000;
    d.report(&mut n, &s, now, now);
    d.assert_clean();
    assert_eq!(
        d.written.len(),
        1000,
        "the waiting writes answered once saved"
    );
}

/// A write waiting for a floor that is never reported saved (the disk
/// failed) is answered unavailable at its deadline, having reached no
/// replica.
#[test]
fn a_write_waiting_for_the_floor_times_out() {
    let s = store();
    let (mut n, mut d) = offloading(&s);
    n.handle_client(T0, 7, put(7), &s);
    let out = drain(&mut n, &s);
    d.take(&mut n, &s, T0, out);
    assert!(d.written.is_empty() && d.failed.is_empty());
    assert!(n.poll_timeout() <= T0, "a waiting write needs ticks");
    let late = T0 + Config::new("a:1").request_timeout;
    n.handle_tick(late, &s);
    let out = drain(&mut n, &s);
    d.take(&mut n, &s, late, out);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(
        matches!(
            d.failed.as_slice(),
            [(7, ClientReply::Unavailable { answered: 0, .. })]
        ),
        "{:?}",
        d.failed
    );
}

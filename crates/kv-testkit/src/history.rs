//! A history of client operations on registers (single keys written with
//! unique values, and read), and the checks that need no search: no
//! phantom value, no read older than a write acknowledged before the read
//! began (which includes an acknowledged write that was lost).
//!
//! Times are in any monotonic unit shared by all events (the fault test
//! uses microseconds since its start).

use std::collections::HashMap;
use std::fmt;

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Refused with nothing stored (for example `LOADING`, or the
    /// connection was refused before the request was sent).
    Fail,
    /// No answer, or an error after which the write may still take effect.
    Unknown,
}

/// One operation. Reads are recorded only when they returned a value (or
/// nil); a failed read says nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The key.
    pub key: Vec<u8>,
    /// When the client sent it.
    pub call: u64,
    /// When the client got the answer, or gave up.
    pub ret: u64,
    /// Whether it was a write (otherwise a read).
    pub write: bool,
    /// The value written, or the value read (`None`: the key was absent).
    pub value: Option<Vec<u8>>,
    /// How a write ended (`Ok` for every recorded read).
    pub outcome: Outcome,
    /// Which node it went through.
    pub node: usize,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self
            .value
            .as_ref()
            .map_or("nil".into(), |v| String::from_utf8_lossy(v).into_owned());
        let op = if self.write { "write" } else { "read ->" };
        write!(
            f,
            "[{}..{}] node {} {} {op} {v} ({:?})",
            self.call,
            self.ret,
            self.node,
            String::from_utf8_lossy(&self.key),
            self.outcome
        )
    }
}

/// Counts of a history, for the test's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Writes acknowledged.
    pub ok: usize,
    /// Writes refused with nothing stored.
    pub failed: usize,
    /// Writes whose outcome is unknown.
    pub unknown: usize,
    /// Reads that returned.
    pub reads: usize,
}

/// Counts the events of `history`.
pub fn counts(history: &[Event]) -> Counts {
    let mut c = Counts::default();
    for e in history {
        match (e.write, e.outcome) {
            (false, _) => c.reads += 1,
            (true, Outcome::Ok) => c.ok += 1,
            (true, Outcome::Fail) => c.failed += 1,
            (true, Outcome::Unknown) => c.unknown += 1,
        }
    }
    c
}

/// The history as the linearizability checker takes it: a refused write
/// is left out (it never happened), a write of unknown outcome has no
/// return time.
pub fn to_ops(history: &[Event]) -> Vec<crate::linearizability::Op> {
    use crate::linearizability::{Op, OpKind};
    history
        .iter()
        .filter(|e| !(e.write && e.outcome == Outcome::Fail))
        .map(|e| Op {
            key: e.key.clone(),
            call: e.call,
            ret: (e.outcome != Outcome::Unknown).then_some(e.ret),
            kind: if e.write {
                OpKind::Write(e.value.clone())
            } else {
                OpKind::Read(e.value.clone())
            },
        })
        .collect()
}

/// Checks every read of `history` (writes must carry unique values per
/// key, and no deletes): it must return a value some write could have
/// stored by then, and nothing older than a write acknowledged before the
/// read was sent. Returns one line per violation (empty when none).
pub fn check_reads(history: &[Event]) -> Vec<String> {
    let mut by_key: HashMap<&[u8], Vec<&Event>> = HashMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    let mut bad = Vec::new();
    for events in by_key.values() {
        check_key(events, &mut bad);
    }
    bad
}

fn check_key(events: &[&Event], bad: &mut Vec<String>) {
    let writes: HashMap<&[u8], &Event> = events
        .iter()
        .filter(|e| e.write)
        .filter_map(|e| Some((e.value.as_deref()?, *e)))
        .collect();
    // Acknowledged writes by return time, with the latest call among those
    // returned so far: a read sent after such a return must see a write
    // that had not returned before that call.
    let mut acked: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.write && e.outcome == Outcome::Ok)
        .collect();
    acked.sort_by_key(|e| e.ret);
    let mut newest = Vec::with_capacity(acked.len());
    for w in &acked {
        let prev: Option<&Event> = newest.last().copied();
        newest.push(match prev {
            Some(p) if p.call >= w.call => p,
            _ => *w,
        });
    }
    for r in events.iter().filter(|e| !e.write) {
        // The acknowledged write with the latest call that returned
        // before the read was sent, if any.
        let before = acked.partition_point(|w| w.ret < r.call);
        let must_see = before.checked_sub(1).map(|i| newest[i]);
        let Some(v) = r.value.as_deref() else {
            if let Some(w) = must_see {
                bad.push(format!(
                    "read nil after an acknowledged write: {r}; the write: {w}"
                ));
            }
            continue;
        };
        let Some(w) = writes.get(v) else {
            bad.push(format!("phantom value (never written): {r}"));
            continue;
        };
        if w.outcome == Outcome::Fail || w.call > r.ret {
            bad.push(format!(
                "phantom value (its write failed, or began later): {r}; the write: {w}"
            ));
        } else if let Some(m) = must_see {
            if w.outcome != Outcome::Unknown && w.ret < m.call {
                bad.push(format!("stale read: {r}; it returned {w}, but {m} was acknowledged before the read began"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(call: u64, ret: u64, write: bool, v: &str, outcome: Outcome) -> Event {
        Event {
            key: b"k".to_vec(),
            call,
            ret,
            write,
            value: (!v.is_empty()).then(|| v.as_bytes().to_vec()),
            outcome,
            node: 0,
        }
    }

    #[test]
    fn a_fresh_read_passes() {
        let h = [
            ev(0, 10, true, "a", Outcome::Ok),
            ev(5, 30, true, "b", Outcome::Ok),
            ev(20, 40, false, "a", Outcome::Ok), // b may not have happened yet
            ev(50, 60, false, "b", Outcome::Ok),
        ];
        assert!(check_reads(&h).is_empty(), "{:?}", check_reads(&h));
    }

    #[test]
    fn stale_nil_and_phantom_reads_are_found() {
        let h = [
            ev(0, 10, true, "a", Outcome::Ok),
            ev(20, 30, true, "b", Outcome::Ok),
            ev(40, 50, false, "a", Outcome::Ok),
            ev(40, 50, false, "", Outcome::Ok),
            ev(40, 50, false, "zzz", Outcome::Ok),
            ev(60, 70, true, "c", Outcome::Fail),
            ev(80, 90, false, "c", Outcome::Ok),
        ];
        let bad = check_reads(&h);
        assert_eq!(bad.len(), 4, "{bad:#?}");
        assert!(bad[0].starts_with("stale read"), "{bad:#?}");
        assert!(bad[1].starts_with("read nil"), "{bad:#?}");
    }

    #[test]
    fn a_write_of_unknown_outcome_may_land_any_time() {
        let h = [
            ev(0, 10, true, "a", Outcome::Unknown),
            ev(20, 30, true, "b", Outcome::Ok),
            ev(40, 50, false, "a", Outcome::Ok),
        ];
        assert!(check_reads(&h).is_empty());
    }
}

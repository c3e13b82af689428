//! A per-key linearizability checker for register histories, in the style
//! of Wing & Gong's search with Lowe's memoisation (as Porcupine does it).
//!
//! A history is a list of [`Op`]s: each has the time the client called it,
//! the time it returned (or `None` when the outcome is unknown, such as a
//! write answered "unavailable" or a timeout), and what it did. Keys are
//! independent registers, so each key is checked on its own.
//!
//! The history is linearizable when every operation can be given a single
//! instant between its call and its return such that, taken in that order,
//! every read returns the value of the write before it (or nothing, before
//! any write). A write whose outcome is unknown may take effect at any time
//! after its call, or never.
//!
//! ```
//! use kv_testkit::linearizability::{check, Op, OpKind};
//! let k = b"k".to_vec();
//! let ops = vec![
//!     Op { key: k.clone(), call: 0, ret: Some(10), kind: OpKind::Write(Some(b"a".to_vec())) },
//!     // Starts after the write returned, so it must see it.
//!     Op { key: k.clone(), call: 20, ret: Some(30), kind: OpKind::Read(None) },
//! ];
//! assert!(check(&ops).is_err());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: Vec<u8>,
    /// When the client sent it (any monotonic unit, the same for all ops).
    pub call: u64,
    /// When the client got the answer; `None` when the outcome is unknown.
    /// Reads that failed should not be recorded at all.
    pub ret: Option<u64>,
    /// What the operation did.
    pub kind: OpKind,
}

/// What an [`Op`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote a value; `None` is a delete.
    Write(Option<Vec<u8>>),
    /// Read and observed a value; `None` means the key was absent.
    Read(Option<Vec<u8>>),
}

/// Why a history is not linearizable (or could not be decided).
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key whose history fails.
    pub key: Vec<u8>,
    /// What went wrong, for people.
    pub reason: String,
    /// The operations around the point where every linearization got stuck,
    /// in call order.
    pub context: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: {}",
            String::from_utf8_lossy(&self.key),
            self.reason
        )?;
        for op in &self.context {
            let show = |v: &Option<Vec<u8>>| match v {
                Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
                None => "nil".to_string(),
            };
            let what = match &op.kind {
                OpKind::Write(v) => format!("write {}", show(v)),
                OpKind::Read(v) => format!("read -> {}", show(v)),
            };
            let ret = op.ret.map_or("unknown".to_string(), |r| r.to_string());
            writeln!(f, "  [{} .. {}] {}", op.call, ret, what)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// How many search states one key may take before the checker gives up and
/// reports the history as undecided (an error, never a pass).
pub const SEARCH_LIMIT: usize = 4_000_000;

/// Checks every key's history, assuming each key starts absent.
pub fn check(ops: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_key(key, &ops)?;
    }
    Ok(())
}

/// A fixed-size bit set, hashed as a whole for the memo.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    /// The lowest index not set (the length in bits when all are set).
    fn first_clear(&self) -> usize {
        self.0
            .iter()
            .position(|w| *w != u64::MAX)
            .map_or(self.0.len() * 64, |i| {
                i * 64 + self.0[i].trailing_ones() as usize
            })
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// An op reduced to what the search needs: values become small ids
/// (0 is "absent").
struct Entry {
    call: u64,
    ret: u64,
    known: bool,
    write: bool,
    value: u32,
}

/// One level of the depth-first search.
struct Frame {
    cands: Vec<usize>,
    next: usize,
    prev_state: u32,
    chosen: Option<usize>,
}

fn check_key(key: &[u8], ops: &[&Op]) -> Result<(), Violation> {
    // A write with an unknown outcome whose value nobody read can always be
    // taken as never having happened: dropping it cannot make a valid
    // linearization invalid. This keeps timeouts from blowing up the search.
    let observed: HashSet<&Option<Vec<u8>>> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Read(v) => Some(v),
            OpKind::Write(_) => None,
        })
        .collect();
    let mut ops: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|op| match &op.kind {
            OpKind::Write(v) => op.ret.is_some() || observed.contains(v),
            OpKind::Read(_) => true,
        })
        .collect();
    ops.sort_by_key(|op| (op.call, op.ret.unwrap_or(u64::MAX)));

    let mut ids: HashMap<&Option<Vec<u8>>, u32> = HashMap::new();
    let none: Option<Vec<u8>> = None;
    ids.insert(&none, 0);
    let entries: Vec<Entry> = ops
        .iter()
        .map(|op| {
            let (write, v) = match &op.kind {
                OpKind::Write(v) => (true, v),
                OpKind::Read(v) => (false, v),
            };
            let next = ids.len() as u32;
            let value = *ids.entry(v).or_insert(next);
            Entry {
                call: op.call,
                ret: op.ret.unwrap_or(u64::MAX),
                known: op.ret.is_some(),
                write,
                value,
            }
        })
        .collect();
    let required = entries.iter().filter(|e| e.known).count();
    if required == 0 {
        return Ok(());
    }

    let n = entries.len();
    let mut done = Bits::new(n);
    let mut done_required = 0usize;
    let mut state = 0u32;
    let mut memo: HashSet<(Bits, u32)> = HashSet::new();
    // The deepest point reached, for the report.
    let mut deepest = (0usize, Vec::new());
    let mut stack = vec![Frame {
        cands: candidates(&entries, &done),
        next: 0,
        prev_state: 0,
        chosen: None,
    }];
    while let Some(frame) = stack.last_mut() {
        if let Some(c) = frame.chosen.take() {
            done.clear(c);
            state = frame.prev_state;
            if entries[c].known {
                done_required -= 1;
            }
        }
        let mut pick = None;
        while frame.next < frame.cands.len() {
            let i = frame.cands[frame.next];
            frame.next += 1;
            let e = &entries[i];
            if e.write || e.value == state {
                pick = Some(i);
                break;
            }
        }
        let Some(i) = pick else {
            stack.pop();
            continue;
        };
        frame.prev_state = state;
        frame.chosen = Some(i);
        done.set(i);
        if entries[i].known {
            done_required += 1;
        }
        if entries[i].write {
            state = entries[i].value;
        }
        if done_required == required {
            return Ok(());
        }
        if !memo.insert((done.clone(), state)) {
            continue;
        }
        if memo.len() > SEARCH_LIMIT {
            return Err(Violation {
                key: key.to_vec(),
                reason: format!(
                    "undecided: the search passed {SEARCH_LIMIT} states (too much concurrency on one key)"
                ),
                context: Vec::new(),
            });
        }
        if done_required > deepest.0 {
            deepest = (done_required, stuck_window(&entries, &done));
        }
        let cands = candidates(&entries, &done);
        stack.push(Frame {
            cands,
            next: 0,
            prev_state: 0,
            chosen: None,
        });
    }
    if deepest.1.is_empty() {
        deepest.1 = stuck_window(&entries, &Bits::new(n));
    }
    Err(Violation {
        key: key.to_vec(),
        reason: format!(
            "not linearizable: at most {} of {} completed operations can be ordered; \
             no order fits the operations below",
            deepest.0, required
        ),
        context: deepest.1.iter().map(|&i| ops[i].clone()).collect(),
    })
}

/// The operations that may take effect next: not yet done, and called no
/// later than every other pending completed operation returned.
fn candidates(entries: &[Entry], done: &Bits) -> Vec<usize> {
    let first = done.first_clear().min(entries.len());
    // Entries are in call order and a return is never before its call, so
    // once a call is past the second-smallest return nothing later can
    // lower either minimum.
    let (mut min1, mut arg1, mut min2) = (u64::MAX, usize::MAX, u64::MAX);
    for (i, e) in entries.iter().enumerate().skip(first) {
        if e.call > min2 {
            break;
        }
        if done.get(i) || !e.known {
            continue;
        }
        if e.ret < min1 {
            (min2, min1, arg1) = (min1, e.ret, i);
        } else if e.ret < min2 {
            min2 = e.ret;
        }
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate().skip(first) {
        if e.call > min1 && i != arg1 {
            break;
        }
        if done.get(i) {
            continue;
        }
        let bound = if i == arg1 { min2 } else { min1 };
        if e.call <= bound {
            out.push(i);
        }
    }
    // Reads first: they do not change the state, so they close off
    // branches cheaply.
    out.sort_by_key(|&i| entries[i].write);
    out
}

/// The pending operations around the earliest one not yet ordered.
fn stuck_window(entries: &[Entry], done: &Bits) -> Vec<usize> {
    let first = (0..entries.len()).find(|&i| !done.get(i) && entries[i].known);
    let Some(first) = first else {
        return Vec::new();
    };
    let lo = first.saturating_sub(4);
    (lo..entries.len().min(first + 8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(call: u64, ret: Option<u64>, v: Option<&str>) -> Op {
        Op {
            key: b"k".to_vec(),
            call,
            ret,
            kind: OpKind::Write(v.map(|v| v.as_bytes().to_vec())),
        }
    }
    fn r(call: u64, ret: u64, v: Option<&str>) -> Op {
        Op {
            key: b"k".to_vec(),
            call,
            ret: Some(ret),
            kind: OpKind::Read(v.map(|v| v.as_bytes().to_vec())),
        }
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        assert!(check(&[w(0, Some(10), Some("a")), r(11, 12, Some("a"))]).is_ok());
        let err = check(&[w(0, Some(10), Some("a")), r(11, 12, None)]).unwrap_err();
        assert!(err.to_string().contains("not linearizable"), "{err}");
    }

    #[test]
    fn a_concurrent_read_may_see_either_value() {
        let base = w(0, Some(1), Some("a"));
        assert!(check(&[base.clone(), w(5, Some(10), Some("b")), r(6, 7, Some("a"))]).is_ok());
        assert!(check(&[base, w(5, Some(10), Some("b")), r(6, 7, Some("b"))]).is_ok());
    }

    #[test]
    fn reads_never_go_back_once_a_later_value_was_seen() {
        // Both reads overlap the write, but the second starts after the
        // first ended: it may not see the older value again.
        let ops = [
            w(0, Some(1), Some("a")),
            w(5, Some(100), Some("b")),
            r(10, 20, Some("b")),
            r(30, 40, Some("a")),
        ];
        assert!(check(&ops).is_err());
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never() {
        // Seen long after its call: fine.
        assert!(check(&[w(0, None, Some("a")), r(100, 101, Some("a"))]).is_ok());
        // Never seen: fine.
        assert!(check(&[w(0, None, Some("a")), r(100, 101, None)]).is_ok());
        // But once seen, it cannot disappear without another write.
        let ops = [
            w(0, None, Some("a")),
            r(100, 101, Some("a")),
            r(102, 103, None),
        ];
        assert!(check(&ops).is_err());
    }

    #[test]
    fn a_phantom_value_fails() {
        assert!(check(&[w(0, Some(1), Some("a")), r(2, 3, Some("z"))]).is_err());
    }

    #[test]
    fn a_delete_is_a_write_of_nothing() {
        let ops = [w(0, Some(1), Some("a")), w(2, Some(3), None), r(4, 5, None)];
        assert!(check(&ops).is_ok());
        let ops = [
            w(0, Some(1), Some("a")),
            w(2, Some(3), None),
            r(4, 5, Some("a")),
        ];
        assert!(check(&ops).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let mut other = r(4, 5, Some("a"));
        other.key = b"other".to_vec();
        assert!(check(&[w(0, Some(1), Some("a")), other]).is_err());
    }

    #[test]
    fn long_busy_histories_are_decided() {
        // 4,000 operations, about ten in flight at any time, a tenth of the
        // writes with unknown outcomes: the memo keeps this small.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut state: Option<Vec<u8>> = None;
        let mut ops = Vec::new();
        for i in 0..4000u64 {
            let at = 1000 + 10 * i;
            let (call, ret) = (at - rnd(50), at + rnd(50));
            let kind = if rnd(2) == 0 {
                state = Some(format!("v{i}").into_bytes());
                OpKind::Write(state.clone())
            } else {
                OpKind::Read(state.clone())
            };
            let unknown = matches!(kind, OpKind::Write(_)) && rnd(10) == 0;
            ops.push(Op {
                key: b"k".to_vec(),
                call,
                ret: (!unknown).then_some(ret),
                kind,
            });
        }
        check(&ops).unwrap();
        // The same history with one read made stale fails.
        let i = (2000..4000)
            .find(|&i| matches!(ops[i].kind, OpKind::Read(Some(_))))
            .unwrap();
        ops[i].kind = OpKind::Read(Some(b"v0".to_vec()));
        assert!(check(&ops).is_err());
    }

    /// A history made by running operations one at a time, at known
    /// instants, and widening each into an interval around its instant.
    fn linear_history() -> impl Strategy<Value = (Vec<Op>, usize)> {
        let op = (0u8..3, 0u8..2, 0u64..40, 0u64..40, 0u8..10);
        (proptest::collection::vec(op, 1..40), any::<usize>()).prop_map(|(raw, pick)| {
            let mut state: [Option<Vec<u8>>; 2] = [None, None];
            let mut ops = Vec::new();
            for (i, (kind, key, before, after, unknown)) in raw.into_iter().enumerate() {
                let at = 1000 + 50 * i as u64;
                let key_name = vec![b'k', key];
                let kind = match kind {
                    0 => {
                        let v = Some(format!("v{i}").into_bytes());
                        state[key as usize] = v.clone();
                        OpKind::Write(v)
                    }
                    1 => {
                        state[key as usize] = None;
                        OpKind::Write(None)
                    }
                    _ => OpKind::Read(state[key as usize].clone()),
                };
                let ret = if unknown == 0 && matches!(kind, OpKind::Write(_)) {
                    None
                } else {
                    Some(at + after * 7)
                };
                ops.push(Op {
                    key: key_name,
                    call: at - before * 7,
                    ret,
                    kind,
                });
            }
            (ops, pick)
        })
    }

    proptest! {
        #[test]
        fn histories_made_by_a_register_pass((ops, _) in linear_history()) {
            prop_assert!(check(&ops).is_ok(), "{}", check(&ops).unwrap_err());
        }

        #[test]
        fn a_read_of_a_value_never_written_fails((mut ops, pick) in linear_history()) {
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| matches!(ops[i].kind, OpKind::Read(_)))
                .collect();
            prop_assume!(!reads.is_empty());
            let i = reads[pick % reads.len()];
            ops[i].kind = OpKind::Read(Some(b"never written".to_vec()));
            prop_assert!(check(&ops).is_err());
        }
    }
}

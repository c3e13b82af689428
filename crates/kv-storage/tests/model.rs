//! Model-based test: random operation sequences run against the store and a
//! `BTreeMap` must give identical results, across reopens and snapshots,
//! with expiries on a simulated clock that the sequence moves forward.
//! A failure prints a seed; proptest replays it from
//! `proptest-regressions/` or with `PROPTEST_RNG_SEED`.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_storage::testing::SimClock;
use kv_storage::{Change, Durability, Options, SnapshotTrigger, Store};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// A whole SCAN-style cursor walk, this many keys a step.
    Walk(usize),
    Put(Vec<u8>, Vec<u8>),
    /// Put expiring after this many ms.
    PutTtl(Vec<u8>, Vec<u8>, u64),
    Expire(Vec<u8>, u64),
    Persist(Vec<u8>),
    /// A read-modify-write through `Store::update`.
    Update(Vec<u8>, Upd),
    Ttl(Vec<u8>),
    /// Move the clock forward this many ms.
    Advance(u64),
    /// Run the active expiry now.
    Sweep,
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Scan(Vec<u8>),
    Page(Vec<u8>, Option<Vec<u8>>, usize),
    /// A whole paged listing with this prefix, this many keys a page.
    List(Vec<u8>, usize),
    Reopen,
    Snapshot,
    Flush,
}

/// What an `Op::Update` does, decided from the key's live state.
#[derive(Clone, Debug)]
enum Upd {
    /// Append these bytes, keeping the expiry (APPEND).
    Append(Vec<u8>),
    /// Store the value only if the key holds none (SETNX).
    SetIfAbsent(Vec<u8>),
    /// Delete it, answering the old value (GETDEL).
    Take,
    /// Keep the value, expiring this many ms from now (EXPIRE).
    ExpireIn(u64),
}

fn upd() -> impl Strategy<Value = Upd> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Upd::Append),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Upd::SetIfAbsent),
        Just(Upd::Take),
        ttl().prop_map(Upd::ExpireIn),
    ]
}

/// The change `u` makes to a key whose live state is `cur` at `now`, and
/// what it answers (the old value).
fn decide(u: &Upd, cur: Option<(&[u8], Option<u64>)>, now: u64) -> (Change, Option<Vec<u8>>) {
    let old = cur.map(|(v, _)| v.to_vec());
    let change = match (u, cur) {
        (Upd::Append(more), _) => {
            let mut v = old.clone().unwrap_or_default();
            v.extend_from_slice(more);
            Change::put(v, cur.and_then(|(_, t)| t))
        }
        (Upd::SetIfAbsent(v), None) => Change::put(v.clone(), None),
        (Upd::SetIfAbsent(_), Some(_)) => Change::Keep,
        (Upd::Take, _) => Change::Delete,
        (Upd::ExpireIn(_), None) => Change::Keep,
        (Upd::ExpireIn(ms), Some((v, _))) => Change::put(v.to_vec(), Some(now + ms)),
    };
    (change, old)
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so that keys collide and prefixes match.
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 0..4)
}

fn ttl() -> impl Strategy<Value = u64> {
    // Around the clock steps, so that keys expire between operations, and
    // exactly at a step now and then.
    prop_oneof![0u64..5000, Just(1000)]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        proptest::collection::vec(any::<u8>(), 200..1500),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (key(), value(), ttl()).prop_map(|(k, v, t)| Op::PutTtl(k, v, t)),
        1 => (key(), ttl()).prop_map(|(k, t)| Op::Expire(k, t)),
        1 => key().prop_map(Op::Persist),
        4 => (key(), upd()).prop_map(|(k, u)| Op::Update(k, u)),
        2 => key().prop_map(Op::Ttl),
        2 => (0u64..3000).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        3 => key().prop_map(Op::Delete),
        3 => key().prop_map(Op::Get),
        1 => key().prop_map(Op::Scan),
        1 => (1usize..5).prop_map(Op::Walk),
        1 => (key(), proptest::option::of(key()), 0usize..5).prop_map(|(p, a, n)| Op::Page(p, a, n)),
        1 => (key(), 1usize..5).prop_map(|(p, n)| Op::List(p, n)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Flush),
    ]
}

fn trigger() -> impl Strategy<Value = SnapshotTrigger> {
    prop_oneof![
        Just(SnapshotTrigger::Manual),
        (1u64..20).prop_map(SnapshotTrigger::Operations),
        Just(SnapshotTrigger::LogGrowth {
            percent: 50,
            min_bytes: 2048
        }),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        Just(Durability::EverySec),
        Just(Durability::No)
    ]
}

/// The model: each key's value and expiry (ms since the Unix epoch). An
/// expired value stays in the model until the store's active expiry or a
/// reopen would have turned it into a tombstone, so that `Sweep` can check
/// how many values the store expires.
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// Keys with their values.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn live(e: &(Vec<u8>, Option<u64>), now: u64) -> bool {
    e.1.is_none_or(|t| now < t)
}

fn model_get(m: &Model, k: &[u8], now: u64) -> Option<Vec<u8>> {
    m.get(k).filter(|e| live(e, now)).map(|e| e.0.clone())
}

fn model_page(m: &Model, now: u64, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Pairs {
    m.iter()
        .filter(|(_, e)| live(e, now))
        .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
        .take(limit)
        .map(|(k, e)| (k.clone(), e.0.clone()))
        .collect()
}

/// The position of a key in a listing: its hash, then its bytes.
fn position(k: &[u8]) -> (u64, &[u8]) {
    (Store::key_position(k), k)
}

/// A page of `Store::list_page`, from the model: the live keys with
/// `prefix` after `after` in (hash, key) order, at most `limit` (at least
/// 1), and whether more follow.
fn model_list_page(
    m: &Model,
    now: u64,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> (Pairs, bool) {
    let mut all = model_page(m, now, prefix, None, usize::MAX);
    all.sort_by(|a, b| position(&a.0).cmp(&position(&b.0)));
    all.retain(|(k, _)| after.is_none_or(|a| position(k) > position(a)));
    let limit = limit.max(1);
    let more = all.len() > limit;
    all.truncate(limit);
    (all, more)
}

/// Removes the expired values from the model; returns how many.
fn model_sweep(m: &mut Model, now: u64) -> usize {
    let before = m.len();
    m.retain(|_, e| live(e, now));
    before - m.len()
}

fn run(
    ops: Vec<Op>,
    opts: Options,
    clock: &SimClock,
    can_reopen: bool,
) -> Result<(), TestCaseError> {
    // The background expiry never runs on its own here: `Sweep` runs it.
    let opts = opts
        .clock(clock)
        .expire_interval(Duration::from_secs(1 << 20));
    let mut store = Store::open(opts.clone()).expect("open");
    let mut model = Model::new();
    for op in ops {
        let now = clock.now_ms();
        match op {
            Op::Put(k, v) => {
                store.put(&k, &v).expect("put");
                model.insert(k, (v, None));
            }
            Op::PutTtl(k, v, ttl) => {
                store
                    .put_with_ttl(&k, &v, Duration::from_millis(ttl))
                    .expect("put_with_ttl");
                model.insert(k, (v, Some((now + ttl).max(1))));
            }
            Op::Expire(k, ttl) => {
                let done = store
                    .expire(&k, Duration::from_millis(ttl))
                    .expect("expire");
                let expect = match model.get_mut(&k).filter(|e| live(e, now)) {
                    Some(e) => {
                        e.1 = Some(now + ttl);
                        true
                    }
                    None => false,
                };
                prop_assert_eq!(done, expect);
            }
            Op::Persist(k) => {
                let done = store.persist(&k).expect("persist");
                let e = model.get_mut(&k).filter(|e| live(e, now) && e.1.is_some());
                let expect = e.map(|e| e.1 = None).is_some();
                prop_assert_eq!(done, expect);
            }
            Op::Update(k, u) => {
                let old = store
                    .update(&k, |cur| {
                        decide(&u, cur.map(|c| (c.value, c.expires_at)), now)
                    })
                    .expect("update");
                let cur = model.get(&k).filter(|e| live(e, now)).cloned();
                let (change, expect) =
                    decide(&u, cur.as_ref().map(|(v, t)| (v.as_slice(), *t)), now);
                prop_assert_eq!(old, expect);
                match change {
                    Change::Keep => {}
                    Change::Delete => {
                        if cur.is_some() {
                            model.remove(&k);
                        }
                    }
                    Change::Put { value, expires_at } => {
                        model.insert(k, (value, expires_at.map(|t| t.max(1))));
                    }
                }
            }
            Op::Ttl(k) => {
                let expect = model
                    .get(&k)
                    .filter(|e| live(e, now))
                    .map(|e| e.1.map(|t| Duration::from_millis(t - now)));
                prop_assert_eq!(store.ttl(&k), expect);
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            Op::Sweep => prop_assert_eq!(store.expire_tick(), model_sweep(&mut model, now)),
            Op::Delete(k) => {
                let existed = store.delete(&k).expect("delete");
                let live_now = model.get(&k).is_some_and(|e| live(e, now));
                if live_now {
                    model.remove(&k);
                }
                prop_assert_eq!(existed, live_now);
            }
            Op::Get(k) => {
                prop_assert_eq!(store.get(&k), model_get(&model, &k, now));
                prop_assert_eq!(store.contains_key(&k), model_get(&model, &k, now).is_some());
            }
            Op::Scan(p) => {
                let want = model_page(&model, now, &p, None, usize::MAX);
                let mut keys = store.keys_matching(&p, |k| k.len() % 2 == 0);
                keys.sort();
                let want_keys: Vec<Vec<u8>> = want
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| k.len() % 2 == 0)
                    .collect();
                prop_assert_eq!(keys, want_keys);
                prop_assert_eq!(store.scan_prefix(&p), want);
            }
            Op::Walk(count) => {
                let mut seen = Vec::new();
                let mut cursor = 0;
                loop {
                    let (keys, next) = store.scan_cursor(cursor, count);
                    prop_assert!(keys.len() <= count);
                    seen.extend(keys);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                seen.sort();
                let want: Vec<Vec<u8>> = model_page(&model, now, b"", None, usize::MAX)
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                prop_assert_eq!(seen, want);
            }
            Op::Page(p, a, n) => {
                // The model holds far fewer keys than a page may examine,
                // so a page is full or ends the listing.
                let page = store.list_page(&p, a.as_deref(), n);
                let (want, more) = model_list_page(&model, now, &p, a.as_deref(), n);
                let last = want.last().map(|(k, _)| k.clone());
                prop_assert_eq!(page.entries, want);
                if more {
                    prop_assert_eq!(page.next, last);
                }
            }
            Op::List(p, n) => {
                let mut got = Vec::new();
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = store.list_page(&p, after.as_deref(), n);
                    prop_assert!(page.entries.len() <= n);
                    got.extend(page.entries);
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                prop_assert_eq!(got, model_list_page(&model, now, &p, None, usize::MAX).0);
            }
            Op::Reopen if can_reopen => {
                store.close().expect("close");
                store = Store::open(opts.clone()).expect("reopen");
                // Recovery turns what has expired into tombstones.
                model_sweep(&mut model, now);
            }
            Op::Reopen => {}
            Op::Snapshot => store.snapshot().expect("snapshot"),
            Op::Flush => store.flush().expect("flush"),
        }
        let now = clock.now_ms();
        let live_keys = model.values().filter(|e| live(e, now)).count();
        prop_assert_eq!(store.len(), live_keys);
        let left: Vec<u64> = model
            .values()
            .filter(|e| live(e, now))
            .filter_map(|e| e.1.map(|t| t - now))
            .collect();
        let stats = store.stats();
        prop_assert_eq!(stats.expiring_keys, left.len() as u64);
        let mean = left.iter().sum::<u64>().checked_div(left.len() as u64);
        prop_assert_eq!(stats.avg_ttl_ms, mean.unwrap_or(0));
    }
    let all = store.scan_prefix(b"");
    let expect = model_page(&model, clock.now_ms(), b"", None, usize::MAX);
    prop_assert_eq!(all, expect);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn durable_store_matches_btreemap(
        ops in proptest::collection::vec(op(), 1..120),
        trigger in trigger(),
        durability in durability(),
        segment in prop_oneof![Just(4096u64), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options::new(dir.path())
            .durability(durability)
            .snapshot_trigger(trigger)
            .segment_bytes(segment)
            .shards(4);
        run(ops, opts, &SimClock::at_ms(1_767_225_600_000), true)?;
    }

    #[test]
    fn in_memory_store_matches_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
        run(ops, Options::in_memory(), &SimClock::at_ms(1_767_225_600_000), false)?;
    }
}

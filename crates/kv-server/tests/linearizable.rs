//! Single-key GET/SET/DEL on a healthy 3-node cluster are linearizable:
//! clients hammer a few hot keys through every node at once, the history
//! (call and return times, values) is recorded, and a per-key
//! linearizability checker must find an order that explains it. Values are
//! unique, so a stale read or a write that silently lost cannot hide.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kv_client::Client;
use kv_testkit::linearizability::{self, Op, OpKind};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "linearizable-test-secret";

/// Client threads, hot keys, and how long they run.
const CLIENTS: usize = 6;
const KEYS: usize = 3;
const RUN: Duration = Duration::from_secs(4);

fn wait_serving(s: &ServerProc, n: usize) {
    let mut c = Client::connect(&s.addr.to_string()).expect("connect");
    wait_for(
        &format!("{n} alive normal members seen by {}", s.addr),
        Duration::from_secs(30),
        || {
            let view = c.cluster().expect("cluster view");
            view.matches(" alive normal ").count() == n && !view.contains("not serving")
        },
    );
}

/// A tiny xorshift generator, seeded per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the workload against `addrs` and returns its history, with how
/// many operations were acknowledged.
fn workload(addrs: &[String]) -> (Vec<Op>, usize) {
    let history = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let micros = move || start.elapsed().as_micros() as u64;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let addrs = addrs.to_vec();
            let history = Arc::clone(&history);
            thread::spawn(move || {
                let mut clients: Vec<Client> = addrs
                    .iter()
                    .map(|a| {
                        let mut c = Client::connect(a).expect("connect");
                        c.set_timeout(Some(Duration::from_secs(5)))
                            .expect("timeout");
                        c
                    })
                    .collect();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                let mut ops = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < RUN {
                    n += 1;
                    let c = &mut clients[rng.below(addrs.len() as u64) as usize];
                    let key = format!("hot{}", rng.below(KEYS as u64)).into_bytes();
                    let call = micros();
                    let op = match rng.below(10) {
                        0..=3 => {
                            let v = format!("t{t}-{n}").into_bytes();
                            let ok = c.put(&key, &v).is_ok();
                            Some((OpKind::Write(Some(v)), ok))
                        }
                        4 => {
                            let ok = c.delete(&key).is_ok();
                            Some((OpKind::Write(None), ok))
                        }
                        // A failed read tells nothing: not recorded.
                        _ => c.get(&key).ok().map(|v| (OpKind::Read(v), true)),
                    };
                    let ret = micros();
                    if let Some((kind, ok)) = op {
                        ops.push(Op {
                            key,
                            call,
                            ret: ok.then_some(ret),
                            kind,
                        });
                    }
                }
                history.lock().expect("history").extend(ops);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let ops = std::mem::take(&mut *history.lock().expect("history"));
    let acked = ops.iter().filter(|o| o.ret.is_some()).count();
    (ops, acked)
}

#[test]
fn hot_keys_through_every_node_of_a_healthy_cluster_are_linearizable() {
    let a = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let seed = a.addr.to_string();
    let args = ["--cluster-secret", SECRET, "--join", seed.as_str()];
    let b = ServerProc::start(BIN, &args);
    let c = ServerProc::start(BIN, &args);
    for s in [&a, &b, &c] {
        wait_serving(s, 3);
    }
    let addrs: Vec<String> = [&a, &b, &c].iter().map(|s| s.addr.to_string()).collect();
    let (ops, acked) = workload(&addrs);
    for s in [a, b, c] {
        s.stop();
    }
    println!("{} operations, {acked} acknowledged", ops.len());
    // The workload really ran, and mostly succeeded.
    assert!(acked > 1000, "only {acked} operations acknowledged");
    if let Err(v) = linearizability::check(&ops) {
        panic!("the cluster's history is not linearizable:\n{v}");
    }
}

#[test]
fn hot_keys_on_a_single_node_are_linearizable() {
    let s = ServerProc::start(BIN, &[]);
    let (ops, acked) = workload(&[s.addr.to_string()]);
    s.stop();
    assert!(acked > 1000, "only {acked} operations acknowledged");
    if let Err(v) = linearizability::check(&ops) {
        panic!("a single node's history is not linearizable:\n{v}");
    }
}

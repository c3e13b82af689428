//! Real `kv-server` processes on loopback forming a cluster: joining,
//! serving each other's writes, losing a node to `kill -9` without errors,
//! and taking it back.

use std::time::Duration;

use kv_client::{Client, ClientError};
use kv_proto::native::{ErrorKind, Request, Response};
use kv_testkit::metrics::{metrics_addr, sample, scrape, try_sample};
use kv_testkit::{wait_for, ServerProc};
use redis::Commands;

mod floor;
mod fsync;
mod membership;
mod order;
mod rebalance;
mod repair;
mod restart;
mod serving;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

const SETTLE: Duration = Duration::from_secs(30);

/// Nodes of a cluster must share a secret (a node without one has no
/// peers).
const SECRET: &str = "cluster-test-secret";

/// `args` with the cluster secret, unless they name one.
fn sec<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::with_capacity(args.len() + 2);
    if !args.contains(&"--cluster-secret") {
        v.extend_from_slice(&["--cluster-secret", SECRET]);
    }
    v.extend_from_slice(args);
    v
}

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

/// Waits until the node `c` is connected to shows `addr` as down.
fn wait_seen_down(c: &mut Client, addr: &str) {
    wait_for(&format!("{addr} to be seen down"), SETTLE, || {
        c.cluster().expect("view").contains(&format!("{addr} down"))
    });
}

/// Waits until `s` sees `n` members, all alive and normal (no rebalance
/// under way), and serves.
fn wait_members(s: &ServerProc, n: usize) {
    let mut c = client(s);
    wait_for(
        &format!("{n} alive normal members seen by {}", s.addr),
        SETTLE,
        || {
            let view = c.cluster().expect("cluster view");
            view.contains(&format!("{n} members"))
                && view.matches(" alive normal ").count() == n
                && !view.contains("not serving")
        },
    );
}

fn start_three(extra: &[&str]) -> (ServerProc, ServerProc, ServerProc) {
    let a = ServerProc::start(BIN, &sec(extra));
    let seed = a.addr.to_string();
    let mut args = vec!["--join", seed.as_str()];
    args.extend_from_slice(extra);
    let b = ServerProc::start(BIN, &sec(&args));
    let c = ServerProc::start(BIN, &sec(&args));
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    (a, b, c)
}

/// Writes `key(i)` = `value(i)` for every `i` in `range`, pipelined.
fn put_values(
    c: &mut Client,
    range: std::ops::Range<u32>,
    key: impl Fn(u32) -> String,
    value: impl Fn(u32) -> Vec<u8>,
) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|&i| Request::Put {
                key: key(i).into_bytes(),
                value: value(i),
            })
            .collect();
        for r in c.pipeline(&reqs).expect("pipelined puts") {
            assert_eq!(r, Response::Ok);
        }
    }
}

/// Reads `key(i)` for every `i` in `range`, pipelined, and checks that it
/// holds `value(i)`.
fn check_values(
    c: &mut Client,
    range: std::ops::Range<u32>,
    key: impl Fn(u32) -> String,
    value: impl Fn(u32) -> Vec<u8>,
) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|&i| Request::Get {
                key: key(i).into_bytes(),
            })
            .collect();
        let replies = c.pipeline(&reqs).expect("pipelined gets");
        for (&i, r) in chunk.iter().zip(replies) {
            let want = Response::Value {
                value: Some(value(i)),
            };
            assert_eq!(r, want, "{}", key(i));
        }
    }
}

fn key_name(i: u32) -> String {
    format!("key{i:05}")
}

fn value_name(i: u32) -> Vec<u8> {
    format!("value{i}").into_bytes()
}

fn put_many(c: &mut Client, range: std::ops::Range<u32>) {
    put_values(c, range, key_name, value_name);
}

fn check_many(c: &mut Client, range: std::ops::Range<u32>) {
    check_values(c, range, key_name, value_name);
}

/// This node's own copy of `key` (LOCALGET), as (value, version).
fn local_copy(s: &ServerProc, key: &str) -> Option<(Option<String>, String)> {
    let mut r = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    redis::cmd("LOCALGET")
        .arg(key)
        .query(&mut r)
        .expect("LOCALGET")
}

/// Each node's own version of each key (LOCALGET, pipelined): `None` where
/// the node holds no copy.
fn local_versions(s: &ServerProc, keys: &[String]) -> Vec<Option<String>> {
    let mut r = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("LOCALGET").arg(k);
        }
        let got: Vec<Option<(Option<String>, String)>> = p.query(&mut r).expect("LOCALGET");
        out.extend(got.into_iter().map(|c| c.map(|(_, v)| v)));
    }
    out
}

//! Faults on real `kv-server` processes: three nodes on 127.0.0.2-4 inside
//! a network namespace of the test's own, clients writing unique values to
//! a few hot keys through every node and reading them through every node,
//! and a nemesis that kills -9 and restarts nodes, pauses them
//! (SIGSTOP/SIGCONT), isolates one node and cuts single links (nftables
//! rules on source and destination address; nodes dial their peers from
//! their `--bind` address, so a rule cuts exactly one link). At the end
//! everything heals, the replicas must converge, and the history must hold
//! no phantom value, no read older than a write acknowledged before it
//! began (so no lost acknowledged write), and all replicas must be equal.
//! Each key's history is also checked for linearizability; under faults a
//! violation is printed, and fails the run only with
//! `KV_FAULTS_LINEARIZABLE=1` (as `benches/faults_soak.sh` sets).
//!
//! `KV_FAULTS_SECS` sets the length of the main run (default 90 s; see
//! `benches/faults_soak.sh`), `KV_FAULTS_SEED` replays a nemesis schedule.
//! Where namespaces or `nft` are missing the tests print SKIPPED and pass,
//! unless `KV_FAULTS_REQUIRE=1`.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_testkit::firewall::Firewall;
use kv_testkit::history::{self, Event, Outcome};
use kv_testkit::netns::{enter, Sandbox};
use kv_testkit::resp::{Reply, RespConn};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "faults-test-secret";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Client threads; each picks a node per operation.
const CLIENTS: usize = 6;
/// Hot keys at a time; the set changes every [`GENERATION`], which keeps
/// each key's history (and the checker's search) short.
const KEYS: u64 = 3;
const GENERATION: Duration = Duration::from_secs(2);
/// How long a client waits for a reply before the outcome is unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the cluster may take to converge after healing.
const CONVERGE: Duration = Duration::from_secs(60);

/// One cluster at a time: each test runs its cluster in a child process.
static SERIAL: Mutex<()> = Mutex::new(());

/// A peer listener on 127.0.0.3 sees a node bound to 127.0.0.2 dial from
/// 127.0.0.2 (not from whatever source the kernel would pick), so that
/// rules on addresses cut exactly one node or link. Needs no namespace.
#[test]
fn peer_connections_come_from_the_bind_address() {
    let peer = TcpListener::bind("127.0.0.3:0").expect("listen on 127.0.0.3");
    let seed = peer.local_addr().expect("addr").to_string();
    let args = [
        "--bind",
        "127.0.0.2",
        "--cluster-secret",
        SECRET,
        "--join",
        &seed,
    ];
    let _node = ServerProc::start(BIN, &args);
    peer.set_nonblocking(true).expect("nonblocking");
    let mut from = None;
    wait_for("the node to dial its seed", kv_testkit::DEADLINE, || {
        from = peer.accept().ok().map(|(_, a)| a);
        from.is_some()
    });
    let from = from.expect("accepted");
    assert_eq!(from.ip(), "127.0.0.2".parse::<IpAddr>().expect("ip"));
}

/// The main run: every fault, strict quorums; the history must be clean.
#[test]
fn strict_quorums_survive_kills_pauses_isolation_and_cut_links() {
    let secs = std::env::var("KV_FAULTS_SECS").map_or(90, |s| s.parse().expect("KV_FAULTS_SECS"));
    sandboxed(
        "strict_quorums_survive_kills_pauses_isolation_and_cut_links",
        &[],
        || {
            let bad = run(&[], Duration::from_secs(secs), &ALL_FAULTS, SLOW);
            assert!(
                bad.is_empty(),
                "{} violations:\n{}",
                bad.len(),
                bad.join("\n")
            );
        },
    );
}

/// W=1, R=1 is not linearizable under faults: the same run must find it.
#[test]
fn w1_r1_fails_the_fault_test() {
    sandboxed("w1_r1_fails_the_fault_test", &[], || {
        let weak = ["--write-quorum", "1", "--read-quorum", "1"];
        let bad = run(&weak, Duration::from_secs(10), &ALL_FAULTS, SLOW);
        assert!(
            !bad.is_empty(),
            "W=1, R=1 passed the fault test: the checks cannot fail"
        );
    });
}

/// Bug 10 put back (a restarted node serves alone from its store until its
/// cluster thread first publishes): kills and restarts must catch it.
#[test]
fn the_restart_window_bug_planted_back_fails_the_fault_test() {
    let plant = [("KV_PLANT_SERVE_BEFORE_PEER", "1")];
    sandboxed(
        "the_restart_window_bug_planted_back_fails_the_fault_test",
        &plant,
        || {
            let bad = run(&[], Duration::from_secs(30), &[FaultKind::Kill], FAST);
            assert!(
                !bad.is_empty(),
                "the planted restart-window bug passed the fault test"
            );
        },
    );
}

fn sandboxed(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    if std::env::var_os("KV_NETNS_INSIDE").is_some() {
        assert!(matches!(enter(name, env), Sandbox::Inside));
        return body();
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = enter(name, env);
}

#[derive(Clone, Copy, Debug)]
enum FaultKind {
    Kill,
    Pause,
    Isolate,
    Cut,
}

const ALL_FAULTS: [FaultKind; 4] = [
    FaultKind::Kill,
    FaultKind::Pause,
    FaultKind::Isolate,
    FaultKind::Cut,
];

/// A range of milliseconds to pick a duration from.
#[derive(Clone, Copy)]
struct Millis(u64, u64);

impl Millis {
    fn pick(self, rng: &mut Rng) -> Duration {
        Duration::from_millis(self.0 + rng.below(self.1 - self.0 + 1))
    }
}

/// How long the nemesis waits between faults, and holds each one.
#[derive(Clone, Copy)]
struct Pace {
    calm: Millis,
    hold: Millis,
}

/// Faults of 1-4 s, 1-2 s apart: long enough for timeouts, failure
/// detection and hints to play their part.
const SLOW: Pace = Pace {
    calm: Millis(1000, 2000),
    hold: Millis(1000, 4000),
};

/// Short faults in quick succession: many restarts per run.
const FAST: Pace = Pace {
    calm: Millis(200, 700),
    hold: Millis(200, 700),
};

/// xorshift64*, seeded from `KV_FAULTS_SEED` or the clock (printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Cluster {
    nodes: Vec<ServerProc>,
    ips: Vec<IpAddr>,
    firewall: Firewall,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let args = |ip: &str, join: Option<&str>| -> Vec<String> {
            let mut a: Vec<String> = ["--bind", ip, "--cluster-secret", SECRET]
                .iter()
                .chain(&["--request-timeout-ms", "1000", "--anti-entropy-ms", "500"])
                .map(|s| s.to_string())
                .collect();
            if let Some(j) = join {
                a.extend(["--join".to_string(), j.to_string()]);
            }
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let start = |a: Vec<String>| {
            ServerProc::start(BIN, &a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let first = start(args(IPS[0], None));
        let seed = first.addr.to_string();
        let mut nodes = vec![first];
        for ip in &IPS[1..] {
            nodes.push(start(args(ip, Some(&seed))));
        }
        let c = Cluster {
            nodes,
            ips: IPS.iter().map(|s| s.parse().expect("ip")).collect(),
            firewall: Firewall::new(),
        };
        c.wait_members();
        c
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Waits until every node sees three alive members and serves.
    fn wait_members(&self) {
        for n in &self.nodes {
            let mut c = kv_client::Client::connect(&n.addr.to_string()).expect("connect");
            wait_for(
                &format!("{} to see 3 alive members", n.addr),
                CONVERGE,
                || {
                    c.cluster().is_ok_and(|v| {
                        v.matches(" alive normal ").count() == 3 && !v.contains("not serving")
                    })
                },
            );
        }
    }

    /// Applies one fault for `hold`, then heals it.
    fn inject(&mut self, kind: FaultKind, rng: &mut Rng, hold: Duration) -> String {
        let i = rng.below(3) as usize;
        let what = match kind {
            FaultKind::Kill => {
                self.nodes[i].kill9();
                std::thread::sleep(hold);
                self.nodes[i].restart();
                format!("kill -9 and restart {}", IPS[i])
            }
            FaultKind::Pause => {
                self.nodes[i].signal(libc::SIGSTOP);
                std::thread::sleep(hold);
                self.nodes[i].signal(libc::SIGCONT);
                format!("pause {}", IPS[i])
            }
            FaultKind::Isolate => {
                self.firewall.isolate(self.ips[i], &self.ips);
                std::thread::sleep(hold);
                self.firewall.heal();
                format!("isolate {}", IPS[i])
            }
            FaultKind::Cut => {
                let j = (i + 1 + rng.below(2) as usize) % 3;
                self.firewall.cut(self.ips[i], self.ips[j]);
                std::thread::sleep(hold);
                self.firewall.heal();
                format!("cut {} <-> {}", IPS[i], IPS[j])
            }
        };
        what
    }
}

/// Runs clients against a fresh cluster under the nemesis for `length`,
/// heals, waits for convergence, and returns every violation found.
fn run(extra: &[&str], length: Duration, faults: &[FaultKind], pace: Pace) -> Vec<String> {
    let seed = std::env::var("KV_FAULTS_SEED").map_or_else(
        |_| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map_or(1, |d| d.as_nanos() as u64) | 1
        },
        |s| s.parse().expect("KV_FAULTS_SEED"),
    );
    println!("fault run: {length:?}, faults {faults:?}, args {extra:?}, KV_FAULTS_SEED={seed}");
    let mut cluster = Cluster::start(extra);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = cluster.addrs();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let stop = stop.clone();
            let addrs = addrs.clone();
            std::thread::spawn(move || client(t, &addrs, start, seed ^ t as u64, &stop))
        })
        .collect();
    let mut rng = Rng(seed);
    while start.elapsed() < length {
        std::thread::sleep(pace.calm.pick(&mut rng));
        let kind = faults[rng.below(faults.len() as u64) as usize];
        let hold = pace.hold.pick(&mut rng);
        let what = cluster.inject(kind, &mut rng, hold);
        println!(
            "{:>6.1}s nemesis: {what} for {hold:?}",
            start.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut events: Vec<Event> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let c = history::counts(&events);
    println!("history: {c:?}");
    cluster.wait_members();
    let keys = keys_used(&events);
    events.extend(final_reads(&cluster.addrs(), &keys, start));
    let mut bad = history::check_reads(&events);
    let checking = Instant::now();
    let linearizable = kv_testkit::linearizability::check(&history::to_ops(&events));
    let verdict = linearizable
        .as_ref()
        .map_or("a violation", |_| "linearizable");
    let took = checking.elapsed();
    println!(
        "linearizability check of {} keys: {verdict} ({took:?})",
        keys.len()
    );
    if let Err(v) = &linearizable {
        dump_key(&events, &v.key);
        // The promise (docs/cluster.md) is linearizability while no node
        // fails; under faults the checks above are the contract. One 240 s
        // soak found a violation right after a 3.6 s pause (open, see the
        // issue's note), so the check fails the run only when asked.
        if std::env::var_os("KV_FAULTS_LINEARIZABLE").is_some() {
            bad.push(format!("not linearizable: {v}"));
        } else {
            println!("NOTE: not linearizable under faults (not failed on; KV_FAULTS_LINEARIZABLE=1 makes it fatal): {v}");
        }
    }
    bad.extend(replicas_differ(&cluster, &keys));
    println!("{} violations", bad.len());
    for b in bad.iter().take(20) {
        println!("  {b}");
    }
    bad
}

/// Writes the whole history of `key` (in call order, with the node each
/// request went through) to a file in the temp directory, for diagnosis.
fn dump_key(events: &[Event], key: &[u8]) {
    let mut ops: Vec<&Event> = events.iter().filter(|e| e.key == key).collect();
    ops.sort_by_key(|e| e.call);
    let text: String = ops.iter().map(|e| format!("{e}\n")).collect();
    let name = format!(
        "kv-faults-{}-{}.txt",
        std::process::id(),
        String::from_utf8_lossy(key)
    );
    let path = std::env::temp_dir().join(name);
    match std::fs::write(&path, text) {
        Ok(()) => println!("the history of that key: {}", path.display()),
        Err(e) => println!(
            "cannot write the history of that key to {}: {e}",
            path.display()
        ),
    }
}

fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// One client: until `stop`, writes a unique value or reads one of the
/// current hot keys, through a random node; returns its history.
fn client(
    t: usize,
    addrs: &[SocketAddr],
    start: Instant,
    seed: u64,
    stop: &AtomicBool,
) -> Vec<Event> {
    let mut rng = Rng(seed | 1);
    let mut conns: Vec<Option<RespConn>> = addrs.iter().map(|_| None).collect();
    let mut out = Vec::new();
    let mut seq = 0u64;
    // After a refused connection, half the time the next request goes to
    // the same node: a restarted node gets requests from its first moment.
    let mut sticky = None;
    while !stop.load(Ordering::Relaxed) {
        let gen = start.elapsed().as_millis() as u64 / GENERATION.as_millis() as u64;
        let key = format!("k{gen}-{}", rng.below(KEYS)).into_bytes();
        let node = sticky
            .take()
            .unwrap_or_else(|| rng.below(addrs.len() as u64) as usize);
        let write = rng.below(2) == 0;
        seq += 1;
        let value = write.then(|| format!("c{t}-{seq}").into_bytes());
        let call = now_us(start);
        if conns[node].is_none() {
            match RespConn::connect(addrs[node], CLIENT_TIMEOUT) {
                Ok(c) => conns[node] = Some(c),
                Err(_) => {
                    // Nothing was sent: a write did not happen.
                    if write {
                        out.push(event(
                            &key,
                            call,
                            now_us(start),
                            value,
                            Some(Outcome::Fail),
                            node,
                        ));
                    }
                    if rng.below(2) == 0 {
                        sticky = Some(node);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
        }
        let conn = conns[node].as_mut().expect("connected");
        let reply = match &value {
            Some(v) => conn.call(&[b"SET", &key, v]),
            None => conn.call(&[b"GET", &key]),
        };
        let ret = now_us(start);
        if reply.is_err() {
            conns[node] = None;
        }
        match (write, reply) {
            (true, Ok(Reply::Status(s))) if s == "OK" => {
                out.push(event(&key, call, ret, value, Some(Outcome::Ok), node))
            }
            (true, Ok(Reply::Error(e))) if e.starts_with("LOADING") => {
                out.push(event(&key, call, ret, value, Some(Outcome::Fail), node))
            }
            (true, _) => out.push(event(&key, call, ret, value, Some(Outcome::Unknown), node)),
            (false, Ok(Reply::Bulk(v))) => out.push(event(&key, call, ret, v, None, node)),
            (false, _) => {}
        }
    }
    out
}

/// A write (with its outcome) when `outcome` is given, else a read.
fn event(
    key: &[u8],
    call: u64,
    ret: u64,
    value: Option<Vec<u8>>,
    outcome: Option<Outcome>,
    node: usize,
) -> Event {
    Event {
        key: key.to_vec(),
        call,
        ret,
        write: outcome.is_some(),
        value,
        outcome: outcome.unwrap_or(Outcome::Ok),
        node,
    }
}

fn keys_used(events: &[Event]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = events.iter().map(|e| e.key.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// After healing: every key read at quorum through every node (retrying
/// refusals until [`CONVERGE`]), as reads of the history.
fn final_reads(addrs: &[SocketAddr], keys: &[Vec<u8>], start: Instant) -> Vec<Event> {
    let mut out = Vec::new();
    for (node, addr) in addrs.iter().enumerate() {
        let mut conn = None;
        for key in keys {
            let mut got = None;
            wait_for("a final read to be answered", CONVERGE, || {
                if conn.is_none() {
                    conn = RespConn::connect(*addr, CLIENT_TIMEOUT).ok();
                }
                let Some(c) = conn.as_mut() else {
                    return false;
                };
                let call = now_us(start);
                match c.call(&[b"GET", key]) {
                    Ok(Reply::Bulk(v)) => {
                        got = Some(event(key, call, now_us(start), v, None, node))
                    }
                    Ok(_) => {}
                    Err(_) => conn = None, // a late reply must not answer the next GET
                }
                got.is_some()
            });
            out.extend(got);
        }
    }
    out
}

/// Waits until every node holds the same copy (value and version) of each
/// key; returns the keys still different at the deadline.
fn replicas_differ(cluster: &Cluster, keys: &[Vec<u8>]) -> Vec<String> {
    let differing = || -> Vec<String> {
        let copies: Vec<Vec<Reply>> = cluster
            .addrs()
            .iter()
            .map(|a| local_copies(*a, keys))
            .collect();
        keys.iter()
            .enumerate()
            .filter(|(i, _)| copies.iter().any(|c| c[*i] != copies[0][*i]))
            .map(|(i, k)| {
                let all: Vec<_> = copies.iter().map(|c| &c[i]).collect();
                format!("replicas differ on {}: {all:?}", String::from_utf8_lossy(k))
            })
            .collect()
    };
    let deadline = Instant::now() + CONVERGE;
    loop {
        let d = differing();
        if d.is_empty() || Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each key's LOCALGET on the node at `addr` (its own copy and version).
fn local_copies(addr: SocketAddr, keys: &[Vec<u8>]) -> Vec<Reply> {
    let mut conn = RespConn::connect(addr, CLIENT_TIMEOUT).expect("connect");
    keys.iter()
        .map(|k| conn.call(&[b"LOCALGET", k]).expect("LOCALGET"))
        .collect()
}

//! Restarts: a restarted node never answers alone before it hears from a
//! peer, refuses while its peers are down, and needs its cluster state.

use super::*;

/// What a client hammering a restarting node saw, from its first accepted
/// connection on.
#[derive(Debug, Default)]
struct Probe {
    /// GETs answered with the value from before the node went down.
    stale: Vec<String>,
    /// GETs answered with the newest value.
    fresh: usize,
    /// Refusals, one example of each distinct text.
    refusals: std::collections::BTreeSet<String>,
    /// Keys whose SET the node acknowledged.
    acked: Vec<String>,
    /// Replies that are none of the above.
    odd: Vec<String>,
    /// Each change of GET reply, with the milliseconds since the first
    /// connection was accepted (for the failure message).
    timeline: Vec<(u128, String)>,
}

impl Probe {
    /// Notes a GET reply in the timeline if it differs from the last one.
    fn note(&mut self, since: std::time::Instant, reply: &str) {
        if self.timeline.last().is_none_or(|(_, r)| r != reply) {
            self.timeline
                .push((since.elapsed().as_millis(), reply.to_string()));
        }
    }
}

/// How many fresh reads a probe wants before it stops.
const PROBE_FRESH_READS: usize = 20;

/// Reads one RESP reply (simple, error, integer or bulk) as text; a bulk
/// string comes back as `$value`, nil as `$nil`.
fn read_resp_reply(r: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else {
            return Ok("$nil".into());
        };
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf)?;
        buf.truncate(len);
        return Ok(format!("${}", String::from_utf8_lossy(&buf)));
    }
    Ok(line)
}

/// Hammers `addr` over RESP from the moment it accepts a connection: GET
/// `key` and SET a fresh key, about once a millisecond, until the node has
/// served [`PROBE_FRESH_READS`] reads of `new` or the deadline passes.
fn probe_resp(addr: std::net::SocketAddr, key: &str, old: &str, new: &str) -> Probe {
    use std::io::{BufReader, Write};
    let deadline = std::time::Instant::now() + SETTLE;
    let mut p = Probe::default();
    let mut i = 0;
    let mut since = None;
    'connect: while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
        let Ok(stream) = std::net::TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let since = *since.get_or_insert_with(std::time::Instant::now);
        stream.set_read_timeout(Some(SETTLE)).expect("timeout");
        let mut w = stream.try_clone().expect("clone");
        let mut r = BufReader::new(stream);
        while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
            let set_key = format!("resp-probe{i:05}");
            i += 1;
            let cmds = format!(
                "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n*3\r\n$3\r\nSET\r\n${}\r\n{set_key}\r\n$1\r\nx\r\n",
                key.len(),
                set_key.len()
            );
            // A reset means the port was not yet the new server's.
            if w.write_all(cmds.as_bytes()).is_err() {
                continue 'connect;
            }
            let (Ok(got), Ok(set)) = (read_resp_reply(&mut r), read_resp_reply(&mut r)) else {
                continue 'connect;
            };
            p.note(since, &got);
            match got.as_str() {
                g if g == format!("${old}") => p.stale.push(got.clone()),
                g if g == format!("${new}") => p.fresh += 1,
                g if g.starts_with('-') => {
                    p.refusals.insert(got.clone());
                }
                _ => p.odd.push(format!("GET: {got}")),
            }
            match set.as_str() {
                "+OK" => p.acked.push(set_key),
                s if s.starts_with('-') => {
                    p.refusals.insert(set);
                }
                _ => p.odd.push(format!("SET: {set}")),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p
}

/// The same over the native protocol (kv-client).
fn probe_native(addr: std::net::SocketAddr, key: &str, old: &str, new: &str) -> Probe {
    let deadline = std::time::Instant::now() + SETTLE;
    let mut p = Probe::default();
    let mut i = 0;
    let mut since = None;
    'connect: while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
        let Ok(mut c) = Client::connect(&addr.to_string()) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let since = *since.get_or_insert_with(std::time::Instant::now);
        while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
            let set_key = format!("native-probe{i:05}");
            i += 1;
            let got = c.get(key.as_bytes());
            p.note(since, &format!("{got:?}"));
            match got {
                Ok(Some(v)) if v == old.as_bytes() => {
                    p.stale.push(String::from_utf8_lossy(&v).into())
                }
                Ok(Some(v)) if v == new.as_bytes() => p.fresh += 1,
                Err(ClientError::Server { kind, message }) => {
                    p.refusals.insert(format!("{kind:?}: {message}"));
                }
                Err(_) => continue 'connect,
                other => p.odd.push(format!("GET: {other:?}")),
            }
            match c.put(set_key.as_bytes(), b"x") {
                Ok(()) => p.acked.push(set_key),
                Err(ClientError::Server { kind, message }) => {
                    p.refusals.insert(format!("{kind:?}: {message}"));
                }
                Err(_) => continue 'connect,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p
}

/// Bug 10: a node restarted on its data directory (no --join) must not
/// answer from its own store, nor acknowledge writes only it stores,
/// before it has heard from a peer and coordinates.
#[test]
fn a_restarted_node_never_answers_alone_before_it_hears_from_a_peer() {
    // Anti-entropy off: a write only the restarted node stored stays so.
    let (a, mut b, c) = start_three(&["--anti-entropy-ms", "0"]);
    let mut ca = client(&a);
    ca.put(b"k", b"old").expect("put old");
    wait_for("b to hold the old value", SETTLE, || {
        local_copy(&b, "k").is_some_and(|(v, _)| v.as_deref() == Some("old"))
    });
    b.kill9();
    ca.put(b"k", b"new")
        .expect("put new, acknowledged by a and c");
    // Down for a moment, as a crashed process is: the others notice (but
    // do not hold hints for it yet, which would bring it `new` at once).
    let b_addr = b.addr.to_string();
    wait_for("a to suspect b", SETTLE, || {
        ca.cluster()
            .expect("view")
            .contains(&format!("{b_addr} suspect"))
    });
    let addr = b.addr;
    let resp = std::thread::spawn(move || probe_resp(addr, "k", "old", "new"));
    let native = std::thread::spawn(move || probe_native(addr, "k", "old", "new"));
    // As docs/cluster.md says: on its data directory, without --join.
    b.restart_with(&sec(&["--anti-entropy-ms", "0"]));
    let (resp, native) = (
        resp.join().expect("resp probe"),
        native.join().expect("native probe"),
    );
    let mut problems = Vec::new();
    for (name, p) in [("RESP", &resp), ("native", &native)] {
        if !p.stale.is_empty() {
            problems.push(format!(
                "{name}: {} GETs answered with the stale value",
                p.stale.len()
            ));
        }
        if !p.odd.is_empty() {
            problems.push(format!("{name}: unexpected replies {:?}", p.odd));
        }
        if p.fresh < PROBE_FRESH_READS {
            problems.push(format!("{name}: the restarted node never served"));
        }
        // Every acknowledged SET is on a write quorum (2 of 3) at once.
        let held = copies_anywhere(&[&a, &b, &c], &p.acked);
        let alone: Vec<&String> = p
            .acked
            .iter()
            .zip(&held)
            .filter(|(_, n)| **n < 2)
            .map(|(k, _)| k)
            .collect();
        if !alone.is_empty() {
            problems.push(format!(
                "{name}: {} of {} acknowledged SETs are on fewer than 2 nodes: {alone:?}",
                alone.len(),
                p.acked.len()
            ));
        }
    }
    // Refusals while it waited say so, in terms each client understands.
    for r in &resp.refusals {
        if !r.starts_with("-LOADING ") || !r.contains("not serving yet") {
            problems.push(format!("RESP refusal {r:?}"));
        }
    }
    for r in &native.refusals {
        if !r.starts_with("Unavailable: ") || !r.contains("not serving yet") {
            problems.push(format!("native refusal {r:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nRESP timeline (ms since the first connection): {:?}\nnative timeline: {:?}",
        resp.timeline,
        native.timeline
    );
}

/// How many of `nodes` hold a copy of each key (LOCALGET).
fn copies_anywhere(nodes: &[&ServerProc], keys: &[String]) -> Vec<usize> {
    let per_node: Vec<Vec<Option<String>>> =
        nodes.iter().map(|n| local_versions(n, keys)).collect();
    (0..keys.len())
        .map(|i| per_node.iter().filter(|v| v[i].is_some()).count())
        .collect()
}

/// Bug 10, the waiting itself: a node restarted while its peers are down
/// refuses reads and writes with an error Redis clients retry (`LOADING`)
/// and the native `Unavailable`, stores nothing, and serves once a peer
/// is back.
#[test]
fn a_restarted_node_whose_peers_are_down_refuses_with_a_retryable_error() {
    let (mut a, mut b, mut c) = start_three(&[]);
    client(&a).put(b"k", b"v").expect("put");
    wait_for("b to hold k", SETTLE, || local_copy(&b, "k").is_some());
    a.kill9();
    c.kill9();
    b.kill9();
    b.restart_with(&sec(&[]));

    let mut r = redis::Client::open(format!("redis://{}/", b.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let err = r.get::<_, Option<String>>("k").expect_err("GET refused");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
        "{err}"
    );
    assert!(
        matches!(err.retry_method(), redis::RetryMethod::WaitAndRetry),
        "{err}"
    );
    assert!(err.to_string().contains("not serving yet"), "{err}");
    let err = r.set::<_, _, ()>("alone", "x").expect_err("SET refused");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
        "{err}"
    );
    let mut cb = client(&b);
    for result in [cb.get(b"k").map(|_| ()), cb.put(b"alone", b"x")] {
        match result {
            Err(ClientError::Server {
                kind: ErrorKind::Unavailable,
                message,
            }) => assert!(message.contains("not serving yet"), "{message}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(
        local_copy(&b, "alone"),
        None,
        "a refused SET stored nothing"
    );
    assert!(cb.cluster().expect("view").contains("not serving yet"));

    // One peer back: the two of them are a quorum and serve.
    a.restart_with(&sec(&[]));
    wait_for(
        "b to serve again",
        SETTLE,
        || matches!(cb.get(b"k"), Ok(Some(v)) if v == b"v"),
    );
    cb.put(b"back", b"y").expect("put once a peer is back");
}

/// Bug 9: a cluster node whose `cluster.state` is lost or damaged must not
/// start as a new cluster of one (acknowledging writes with W=1): it
/// refuses, says what to do, and with --rejoin-fresh --join it rejoins as
/// a new generation.
#[test]
fn a_cluster_node_without_its_cluster_state_refuses_to_start_until_told_to_rejoin_fresh() {
    let (a, mut b, c) = start_three(&[]);
    put_many(&mut client(&a), 0..300);
    b.kill9();
    let state = b.data_dir.join("cluster.state");
    let seed = a.addr.to_string();

    std::fs::remove_file(&state).expect("remove cluster.state");
    for args in [&[][..], &["--join", seed.as_str()][..]] {
        let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(args));
        let said = out.join("\n");
        assert!(!status.success(), "{args:?}: {status}: {said}");
        assert!(
            said.contains("cluster.state") && said.contains("missing"),
            "{args:?}: {said}"
        );
        assert!(said.contains("--rejoin-fresh --join"), "{args:?}: {said}");
    }
    // Without the marker too (say, written by a version that had none):
    // data and --join but no cluster.state is refused all the same.
    let marker = b.data_dir.join("cluster.member");
    let kept = std::fs::read(&marker).expect("b marked itself a member");
    std::fs::remove_file(&marker).expect("remove the marker");
    let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(&["--join", &seed]));
    let said = out.join("\n");
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains("cluster.state") && said.contains("holds data"),
        "{said}"
    );
    std::fs::write(&marker, kept).expect("marker back");

    std::fs::write(&state, b"\xff\xff\xff\xff not a cluster state").expect("damage");
    let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(&[]));
    let said = out.join("\n");
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains("cluster.state") && said.contains("damaged"),
        "{said}"
    );
    assert!(said.contains("--rejoin-fresh --join"), "{said}");

    // Told to, it sets its old data aside and joins as a new generation.
    b.restart_with(&sec(&["--rejoin-fresh", "--join", &seed]));
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    check_many(&mut client(&b), 0..300);
    let set_aside = std::fs::read_dir(&b.data_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("before-rejoin-")
        });
    assert!(set_aside, "the old data is kept aside, not deleted");
    assert!(
        b.output().iter().any(|l| l.contains("before-rejoin-")),
        "{:?}",
        b.output()
    );
}

/// A plain single server (never in a cluster) starts on its data as
/// before, with or without a `cluster.state`, and never marks itself as a
/// cluster member.
#[test]
fn a_single_server_starts_on_its_data_without_a_cluster_state() {
    let mut s = ServerProc::start(BIN, &sec(&[]));
    client(&s).put(b"k", b"v").expect("put");
    s.kill9();
    let _ = std::fs::remove_file(s.data_dir.join("cluster.state"));
    s.restart();
    assert_eq!(
        client(&s).get(b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    client(&s)
        .put(b"k2", b"v2")
        .expect("put alone, as a single server");
    assert!(!s.data_dir.join("cluster.member").exists());
}

//! TLS for clients and peers, tested on real processes: kv-client, the
//! Rust `redis` crate and redis-cli over TLS; a plain client refused on a
//! TLS-only port; a three-node `--tls-cluster` that replicates; a node
//! whose certificate the cluster's CA did not sign cannot join.

#[path = "tls/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kv_client::{Client, TlsOptions};
use kv_proto::native::{self, Request, Response};
use kv_testkit::{wait_for, ServerProc};
use pki::{Ca, Certified};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "tls-test-cluster-secret";
const SETTLE: Duration = Duration::from_secs(30);

/// A directory with a cluster CA, three node certificates, a client
/// certificate, one for a node on 127.0.0.2, and a rogue CA with one node
/// certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    nodes: Vec<Certified>,
    client: Certified,
    rogue_ca: PathBuf,
    rogue: Certified,
    /// Signed by the cluster CA for a node on 127.0.0.2 only.
    elsewhere: Certified,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "ca");
    let rogue_ca = Ca::new(dir.path(), "rogue-ca");
    Pki {
        ca: ca.cert(),
        nodes: (1..=3).map(|i| ca.sign(&format!("node{i}"))).collect(),
        client: ca.sign("client"),
        elsewhere: ca.sign_for("elsewhere", &["127.0.0.2"]),
        rogue: rogue_ca.sign("rogue"),
        rogue_ca: rogue_ca.cert(),
        _dir: dir,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Arguments of a TLS-only node (the testkit adds `--port 0`): a free TLS
/// port, the node's certificate, the CA.
fn tls_args<'a>(ca: &'a Path, node: &'a Certified) -> Vec<&'a str> {
    vec![
        "--no-persistence",
        "--tls-port",
        "0",
        "--tls-cert",
        p(&node.cert),
        "--tls-key",
        p(&node.key),
        "--tls-ca-cert",
        p(ca),
    ]
}

fn client_tls(k: &Pki) -> TlsOptions {
    TlsOptions {
        ca_cert: Some(k.ca.clone()),
        cert: Some(k.client.cert.clone()),
        key: Some(k.client.key.clone()),
        server_name: None,
    }
}

fn tls_client(s: &ServerProc, k: &Pki) -> Client {
    Client::connect_tls(&s.addr.to_string(), &client_tls(k)).expect("TLS connect")
}

#[test]
fn kv_client_library_sets_and_gets_over_tls() {
    let k = pki();
    let s = ServerProc::start(BIN, &tls_args(&k.ca, &k.nodes[0]));
    let mut c = tls_client(&s, &k);
    c.put(b"greeting", b"hello over TLS").expect("put");
    assert_eq!(
        c.get(b"greeting").expect("get").as_deref(),
        Some(&b"hello over TLS"[..])
    );
    // A large value crosses many TLS records both ways.
    let big = vec![b'x'; 3 << 20];
    c.put(b"big", &big).expect("put big");
    assert_eq!(c.get(b"big").expect("get big"), Some(big));
    s.stop();
}

#[test]
fn kv_client_binary_speaks_tls() {
    let k = pki();
    let s = ServerProc::start(BIN, &tls_args(&k.ca, &k.nodes[0]));
    let client_bin = PathBuf::from(BIN).with_file_name("kv-client");
    let run = |cmd: &str| {
        let out = Command::new(&client_bin)
            .args(["--tls", "--cacert", p(&k.ca), "--cert", p(&k.client.cert)])
            .args(["--key", p(&k.client.key), &s.addr.to_string(), "-c", cmd])
            .output()
            .expect("run kv-client");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run("PUT city Lisbon");
    assert!(ok && text.contains("OK"), "{text}");
    let (ok, text) = run("GET city");
    assert!(ok && text.contains("Lisbon"), "{text}");
    s.stop();
}

fn redis_tls_client(s: &ServerProc, k: &Pki) -> redis::Client {
    let read = |path: &Path| std::fs::read(path).expect("read pem");
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: read(&k.client.cert),
            client_key: read(&k.client.key),
        }),
        root_cert: Some(read(&k.ca)),
    };
    redis::Client::build_with_tls(format!("rediss://{}/", s.addr), certs).expect("redis client")
}

#[test]
fn the_redis_crate_sets_and_gets_over_tls_with_resp2_and_resp3() {
    let k = pki();
    let s = ServerProc::start(BIN, &tls_args(&k.ca, &k.nodes[0]));
    let mut r = redis_tls_client(&s, &k)
        .get_connection()
        .expect("TLS connection");
    let () = redis::cmd("SET")
        .arg("lang")
        .arg("rust")
        .query(&mut r)
        .expect("SET");
    let got: String = redis::cmd("GET").arg("lang").query(&mut r).expect("GET");
    assert_eq!(got, "rust");
    let hello: redis::Value = redis::cmd("HELLO").arg(3).query(&mut r).expect("HELLO 3");
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
    let got: String = redis::cmd("GET")
        .arg("lang")
        .query(&mut r)
        .expect("GET in RESP3");
    assert_eq!(got, "rust");
    s.stop();
}

/// redis-cli's `--tls`, when the redis-cli on PATH has it.
#[test]
fn redis_cli_sets_and_gets_over_tls() {
    let help = Command::new("redis-cli").arg("--help").output();
    let has_tls = help.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stderr).contains("--tls")
            || String::from_utf8_lossy(&o.stdout).contains("--tls")
    });
    if !has_tls {
        eprintln!("SKIPPED: no redis-cli with --tls on PATH (apt-get install redis-tools)");
        return;
    }
    let k = pki();
    let s = ServerProc::start(BIN, &tls_args(&k.ca, &k.nodes[0]));
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &s.addr.port().to_string(), "--tls"])
            .args([
                "--cacert",
                p(&k.ca),
                "--cert",
                p(&k.client.cert),
                "--key",
                p(&k.client.key),
            ])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "colour", "teal"]), "OK");
    assert_eq!(cli(&["GET", "colour"]), "teal");
    s.stop();
}

#[test]
fn a_plain_client_is_refused_on_a_tls_only_port_and_tls_goes_on() {
    let k = pki();
    let s = ServerProc::start(BIN, &tls_args(&k.ca, &k.nodes[0]));
    let plain = Client::connect(&s.addr.to_string());
    assert!(plain.is_err(), "a plain native client got in");
    let plain_redis = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut r| redis::cmd("PING").query::<String>(&mut r));
    assert!(
        plain_redis.is_err(),
        "a plain RESP client got an answer: {plain_redis:?}"
    );
    // A TLS client without a certificate is refused (--tls-auth-clients
    // yes is the default, as in Redis).
    let no_cert = TlsOptions {
        ca_cert: Some(k.ca.clone()),
        ..TlsOptions::default()
    };
    let anonymous =
        Client::connect_tls(&s.addr.to_string(), &no_cert).and_then(|mut c| c.put(b"k", b"v"));
    assert!(anonymous.is_err(), "a client without a certificate got in");
    // The server serves on.
    let mut c = tls_client(&s, &k);
    c.put(b"k", b"v").expect("put");
    assert_eq!(c.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    s.stop();
}

#[test]
fn tls_auth_clients_no_lets_a_client_without_a_certificate_in() {
    let k = pki();
    let mut args = tls_args(&k.ca, &k.nodes[0]);
    args.extend(["--tls-auth-clients", "no"]);
    let s = ServerProc::start(BIN, &args);
    let no_cert = TlsOptions {
        ca_cert: Some(k.ca.clone()),
        ..TlsOptions::default()
    };
    let mut c = Client::connect_tls(&s.addr.to_string(), &no_cert).expect("connect");
    c.put(b"k", b"v").expect("put");
    s.stop();
}

fn cluster_args<'a>(ca: &'a Path, node: &'a Certified, join: Option<&'a str>) -> Vec<&'a str> {
    let mut args = tls_args(ca, node);
    args.extend(["--tls-cluster", "--cluster-secret", SECRET]);
    if let Some(seed) = join {
        args.extend(["--join", seed]);
    }
    args
}

fn members_seen(s: &ServerProc, k: &Pki) -> String {
    tls_client(s, k).cluster().expect("cluster view")
}

fn wait_members(s: &ServerProc, k: &Pki, n: usize) {
    wait_for(&format!("{n} members seen by {}", s.addr), SETTLE, || {
        let view = members_seen(s, k);
        view.contains(&format!("{n} members"))
            && view.matches(" alive normal ").count() == n
            && !view.contains("not serving")
    });
}

/// Three nodes whose links are TLS with mutual authentication: with
/// `--write-quorum 3` every write needs every node's acknowledgement over
/// those links, and every node reads every key back.
#[test]
fn a_three_node_tls_cluster_replicates() {
    let k = pki();
    let extra = ["--write-quorum", "3"];
    let mut a_args = cluster_args(&k.ca, &k.nodes[0], None);
    a_args.extend(extra);
    let a = ServerProc::start(BIN, &a_args);
    let seed = a.addr.to_string();
    let mut others = Vec::new();
    for node in &k.nodes[1..] {
        let mut args = cluster_args(&k.ca, node, Some(&seed));
        args.extend(extra);
        others.push(ServerProc::start(BIN, &args));
    }
    for s in [&a, &others[0], &others[1]] {
        wait_members(s, &k, 3);
    }
    let mut c = tls_client(&a, &k);
    for i in 0..100u32 {
        c.put(format!("key{i}").as_bytes(), format!("value{i}").as_bytes())
            .expect("a write acknowledged by all three replicas");
    }
    for s in [&a, &others[0], &others[1]] {
        let mut c = tls_client(s, &k);
        for i in 0..100u32 {
            let got = c.get(format!("key{i}").as_bytes()).expect("get");
            assert_eq!(got, Some(format!("value{i}").into_bytes()), "on {}", s.addr);
        }
    }
    for s in others {
        s.stop();
    }
    a.stop();
}

/// A node that knows the cluster secret but whose certificate another CA
/// signed cannot join: the TLS handshake fails before any peer message.
#[test]
fn a_node_whose_certificate_the_ca_did_not_sign_cannot_join() {
    let k = pki();
    let a = ServerProc::start(BIN, &cluster_args(&k.ca, &k.nodes[0], None));
    let seed = a.addr.to_string();
    // The rogue trusts the cluster's CA (so it accepts the seed's
    // certificate) but shows its own, which the cluster's CA did not sign.
    let rogue_args = cluster_args(&k.ca, &k.rogue, Some(&seed));
    let rogue = ServerProc::start(BIN, &rogue_args);
    let refused = |s: &ServerProc| {
        s.output()
            .iter()
            .any(|l| l.contains("TLS with") && l.contains("invalid peer certificate"))
    };
    wait_for("the seed to refuse the rogue's certificate", SETTLE, || {
        refused(&a)
    });
    // The seed still sees only itself, and the rogue is still joining:
    // it refuses client writes rather than act alone.
    assert!(
        members_seen(&a, &k).contains("1 member,"),
        "{}",
        members_seen(&a, &k)
    );
    let trust_rogue = TlsOptions {
        ca_cert: Some(k.rogue_ca.clone()),
        ..client_tls(&k)
    };
    let mut c = Client::connect_tls(&rogue.addr.to_string(), &trust_rogue).expect("connect");
    assert!(
        c.put(b"k", b"v").is_err(),
        "the rogue acted as a cluster member"
    );
    // A rogue that trusts only its own CA refuses the seed's certificate.
    let lone_args = cluster_args(&k.rogue_ca, &k.rogue, Some(&seed));
    let lone = ServerProc::start(BIN, &lone_args);
    wait_for(
        "the lone rogue to refuse the seed's certificate",
        SETTLE,
        || refused(&lone),
    );
    assert!(members_seen(&a, &k).contains("1 member,"));
    lone.stop();
    rogue.stop();
    a.stop();
}

/// With `--tls-cluster`, a certificate binds the host it names: a
/// certificate the cluster's CA signed for a node on 127.0.0.2 cannot
/// claim the id of a node on 127.0.0.1 (the hello is refused, with no
/// challenge, and logged); the same certificate claiming an id on its own
/// host gets the challenge.
#[test]
fn a_certificate_for_one_node_cannot_claim_another_nodes_id() {
    let k = pki();
    let c = ServerProc::start(BIN, &cluster_args(&k.ca, &k.nodes[0], None));
    let as_b = TlsOptions {
        cert: Some(k.elsewhere.cert.clone()),
        key: Some(k.elsewhere.key.clone()),
        ..client_tls(&k)
    };
    let hello = |from: &str| Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: from.into(),
        nonce: [7; 32],
    };
    let mut conn = Client::connect_tls(&c.addr.to_string(), &as_b).expect("TLS connect");
    let answer = conn.request(&hello("127.0.0.1:7001"));
    assert!(
        matches!(&answer, Err(kv_client::ClientError::Server { message, .. }) if message.contains("not valid for the host")),
        "a certificate for 127.0.0.2 claiming 127.0.0.1:7001 was answered with {answer:?}"
    );
    wait_for("the refusal to be logged", SETTLE, || {
        c.output()
            .iter()
            .any(|l| l.contains("refused peer") && l.contains("127.0.0.1:7001"))
    });
    let mut conn = Client::connect_tls(&c.addr.to_string(), &as_b).expect("TLS connect");
    let answer = conn.request(&hello("127.0.0.2:7002"));
    assert!(
        matches!(&answer, Ok(Response::PeerChallenge { .. })),
        "a certificate for 127.0.0.2 claiming 127.0.0.2:7002 was answered with {answer:?}"
    );
    c.stop();
}

/// Sends the native preamble and a `PeerHello` over plain TCP to `addr`;
/// returns the answer.
fn plain_peer_hello(addr: &str) -> Response {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(SETTLE)).expect("timeout");
    let mut out = native::preamble().to_vec();
    let hello = Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: "127.0.0.1:1".into(),
        nonce: [7; 32],
    };
    native::encode_frame(&mut out, 0, &hello);
    s.write_all(&out).expect("send hello");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() > native::PREAMBLE_LEN {
            let body = &buf[native::PREAMBLE_LEN..];
            if let Some((frame, _)) =
                native::decode_frame::<Response>(body, 1 << 20).expect("frame")
            {
                return frame.body;
            }
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A node with `--tls-cluster` whose plain port is on too: a dialer that
/// knows the secret but comes over the plain port is refused as a peer.
#[test]
fn peers_are_refused_on_the_plain_port_with_tls_cluster() {
    let k = pki();
    let plain_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let mut args = vec!["--port".to_string(), plain_port.to_string()];
    args.extend(["--data-dir".to_string(), p(dir.path()).to_string()]);
    args.extend(
        cluster_args(&k.ca, &k.nodes[0], None)
            .iter()
            .map(|a| a.to_string()),
    );
    let mut a = KillOnDrop(
        Command::new(BIN)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a"),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for pipe in [
        Box::new(a.0.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(a.0.stderr.take().expect("stderr")),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut l = log.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let said = || log.lock().expect("log").clone();
    wait_for("a to listen on both ports", SETTLE, || {
        said().matches("listening on").count() == 2
    });
    // A dialer that knows the secret, on the plain port: the hello gets a
    // refusal, not a challenge.
    let seed = format!("127.0.0.1:{plain_port}");
    let answer = plain_peer_hello(&seed);
    assert!(
        matches!(&answer, Response::Error { message, .. } if message.contains("--tls-cluster")),
        "a peer hello on the plain port was answered with {answer:?}"
    );
    let mut c = Client::connect(&seed).expect("plain client");
    assert!(c.cluster().expect("view").contains("1 member,"));
    // SAFETY: a plain system call on our own child's pid.
    unsafe { libc::kill(a.0.id() as i32, libc::SIGTERM) };
    a.0.wait().expect("a exits");
}

/// A child server killed (by its pid) and reaped when the test ends, also
/// when an assertion fails first: no server outlives its test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `--tls-cluster` node that lets TLS clients in without a certificate
/// (`--tls-auth-clients optional` or `no`): a dialer that comes over TLS
/// without a client certificate and sends a peer's bytes (the preamble
/// and a `PeerHello`) is refused as a peer, gets no challenge, and its
/// connection is closed; the node serves on.
#[test]
fn peers_without_a_client_certificate_are_refused_on_the_tls_port() {
    let k = pki();
    for auth in ["optional", "no"] {
        let mut args = cluster_args(&k.ca, &k.nodes[0], None);
        args.extend(["--tls-auth-clients", auth]);
        let s = ServerProc::start(BIN, &args);
        let no_cert = TlsOptions {
            ca_cert: Some(k.ca.clone()),
            ..TlsOptions::default()
        };
        let mut c = Client::connect_tls(&s.addr.to_string(), &no_cert).expect("TLS connect");
        let hello = Request::PeerHello {
            version: native::PEER_PROTOCOL_VERSION,
            from: "127.0.0.1:1".into(),
            nonce: [7; 32],
        };
        let answer = c.request(&hello);
        assert!(
            matches!(&answer, Err(kv_client::ClientError::Server { message, .. }) if message.contains("--tls-cluster")),
            "--tls-auth-clients {auth}: a peer hello without a certificate was answered with {answer:?}"
        );
        assert!(
            c.ping(b"x").is_err(),
            "--tls-auth-clients {auth}: the connection stayed open"
        );
        wait_for("the refusal to be logged", SETTLE, || {
            s.output().iter().any(|l| l.contains("refused peer"))
        });
        let mut ok = Client::connect_tls(&s.addr.to_string(), &no_cert).expect("TLS connect");
        assert_eq!(ok.ping(b"y").expect("ping"), b"y");
        s.stop();
    }
}

/// A connection to the TLS port that never finishes the TLS handshake
/// (sends nothing, or only a few bytes of it) is closed after
/// `--handshake-timeout`; TLS clients that finished theirs are served.
#[test]
fn a_stalled_tls_handshake_is_closed() {
    use std::io::{ErrorKind, Read, Write};
    let k = pki();
    let mut args = tls_args(&k.ca, &k.nodes[0]);
    args.extend(["--handshake-timeout", "1"]);
    let s = ServerProc::start(BIN, &args);
    let mut done = tls_client(&s, &k);
    let connect = || {
        let c = std::net::TcpStream::connect(s.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        c
    };
    let mut silent = connect();
    let mut partial = connect();
    // The start of a TLS record header (handshake, TLS 1.0 framing).
    partial.write_all(&[0x16, 0x03, 0x01]).expect("send");
    let closed = |c: &mut std::net::TcpStream| {
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    };
    wait_for("stalled TLS handshakes to be closed", SETTLE, || {
        closed(&mut silent) && closed(&mut partial)
    });
    assert_eq!(done.ping(b"x").expect("ping"), b"x");
    s.stop();
}

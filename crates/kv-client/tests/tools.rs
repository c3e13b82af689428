//! The `kv-client` binary's script and watch modes against real servers:
//! `--csv`/`--json`, `--stat`, `--latency` and `--import`, on one node and
//! on a three-node cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kv_client::Client;
use kv_testkit::{wait_for, ServerProc};

const CLIENT: &str = env!("CARGO_BIN_EXE_kv-client");
const SECRET: &str = "kv-client-tools-test-secret";

fn server_binary() -> PathBuf {
    kv_testkit::sibling_binary(CLIENT, "kv-server")
}

fn run(server: &ServerProc, args: &[&str], stdin: &[u8]) -> Output {
    kv_testkit::run_with_stdin(
        Command::new(CLIENT).arg(server.addr.to_string()).args(args),
        stdin,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Three nodes, each seeing the other two alive.
fn three_nodes() -> Vec<ServerProc> {
    let a = ServerProc::start(
        server_binary(),
        &["--no-persistence", "--cluster-secret", SECRET],
    );
    let seed = a.addr.to_string();
    let args = [
        "--no-persistence",
        "--cluster-secret",
        SECRET,
        "--join",
        &seed,
    ];
    let nodes = vec![
        a,
        ServerProc::start(server_binary(), &args),
        ServerProc::start(server_binary(), &args),
    ];
    for n in &nodes {
        let mut c = Client::connect(&n.addr.to_string()).expect("connect");
        wait_for("3 alive normal members", Duration::from_secs(30), || {
            let view = c.cluster().expect("cluster view");
            view.matches(" alive normal ").count() == 3 && !view.contains("not serving")
        });
    }
    nodes
}

#[test]
fn csv_and_json_print_one_record_per_command() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let input = b"PUT a \"x,\\\"y\\\"\"\nGET a\nGET nope\nDELETE a\nFROB\nLIST\nPING\n";
    let o = run(&server, &["--csv"], input);
    assert_eq!(o.status.code(), Some(1), "FROB fails the run: {o:?}");
    assert_eq!(
        text(&o.stdout),
        "OK\n\"x,\"\"y\"\"\"\nNULL\n1\nERROR,\"unknown command \"\"FROB\"\"; type HELP for the list\"\n\nPONG\n"
    );
    let o = run(
        &server,
        &["--json"],
        b"PUT k \"v\\n\\xff\"\nGET k\nGET nope\nLIST\nDELETE k\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        text(&o.stdout),
        "\"OK\"\n\"v\\n\\u00ff\"\nnull\n[\"k\"]\n1\n"
    );
    let o = run(&server, &["--json", "--csv"], b"");
    assert!(!o.status.success(), "--json and --csv together are refused");
    assert!(
        text(&o.stderr).contains("cannot be used with"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn stat_prints_a_line_per_interval_with_the_servers_figures() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    for i in 0..100 {
        c.put(format!("k{i}").as_bytes(), b"v").expect("put");
    }
    let o = run(&server, &["--stat", "-i", "0.2", "--duration", "0.9"], b"");
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("keys"), "a header first: {out}");
    assert!(lines.len() >= 3, "several lines in 0.9 s at 0.2 s: {out}");
    assert!(lines[1].starts_with("100 "), "100 keys: {out}");
    assert!(
        lines[2].contains("(+"),
        "later lines show the requests since the last: {out}"
    );
    let o = run(&server, &["--stat", "-i", "0"], b"");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not a number of seconds above 0"));
}

#[test]
fn latency_prints_min_avg_max_and_a_histogram() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = run(&server, &["--latency", "--duration", "0.5"], b"");
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("min: "), "{out}");
    let samples: u64 = first
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(samples >= 5, "PINGs every 10 ms for 0.5 s: {out}");
    assert!(out.contains("% (cumulative 100.00%)"), "{out}");
}

#[test]
fn a_server_that_is_down_fails_latency() {
    let mut server = ServerProc::start(server_binary(), &["--no-persistence"]);
    server.kill9();
    let o = run(&server, &["--latency", "--duration", "0.3"], b"");
    assert!(!o.status.success(), "{o:?}");
    assert!(
        text(&o.stderr).contains("could not connect"),
        "{}",
        text(&o.stderr)
    );
}

fn write_file(dir: &Path, name: &str, body: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write import file");
    p.to_string_lossy().into_owned()
}

/// Imports a CSV file of `n` keys (with a header and one bad record) and
/// a commands file through `server`; every good record is read back
/// through `reader`.
fn import_and_check(server: &ServerProc, reader: &ServerProc, n: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = b"key,value\n".to_vec();
    for i in 0..n {
        csv.extend_from_slice(format!("key{i},\"value, {i}\"\n").as_bytes());
    }
    csv.extend_from_slice(b"only-one-field\n");
    let file = write_file(dir.path(), "data.csv", &csv);
    let o = run(server, &["--import", &file], b"");
    assert_eq!(
        o.status.code(),
        Some(1),
        "one bad record fails the run: {o:?}"
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("imported {n} records"))
            && out.contains(&format!("{n} PUT, 0 DELETE, 1 errors")),
        "{out}"
    );
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "line {}: expected 2 fields (key,value), found 1",
            n + 2
        )),
        "{err}"
    );
    let cmds = "# a comment\nPUT extra \"a b\"\nDELETE key0\n\nGET key1\n";
    let file = write_file(dir.path(), "cmds.txt", cmds.as_bytes());
    let o = run(server, &["--import", &file], b"");
    let out = text(&o.stdout);
    assert!(
        out.contains("imported 2 records") && out.contains("1 PUT, 1 DELETE, 1 errors"),
        "{out}"
    );
    assert!(text(&o.stderr).contains("line 5: only PUT and DELETE can be imported"));

    let mut c = Client::connect(&reader.addr.to_string()).expect("connect");
    assert_eq!(c.get(b"key0").expect("get"), None);
    for i in 1..n {
        let want = format!("value, {i}").into_bytes();
        assert_eq!(
            c.get(format!("key{i}").as_bytes()).expect("get"),
            Some(want)
        );
    }
    assert_eq!(c.get(b"extra").expect("get").as_deref(), Some(&b"a b"[..]));
    assert_eq!(
        c.get(b"key").expect("get"),
        None,
        "the header is not a record"
    );
}

#[test]
fn import_loads_csv_and_commands_and_reports_bad_records() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    import_and_check(&server, &server, 2000);
    let o = run(&server, &["--import", "/nonexistent/file.csv"], b"");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("cannot open /nonexistent/file.csv"));
}

#[test]
fn import_stat_and_latency_work_against_a_cluster() {
    let nodes = three_nodes();
    import_and_check(&nodes[0], &nodes[2], 1000);
    let o = run(
        &nodes[1],
        &["--stat", "-i", "0.2", "--duration", "0.5"],
        b"",
    );
    assert!(o.status.success(), "{o:?}");
    assert!(text(&o.stdout).lines().count() >= 2, "{}", text(&o.stdout));
    let o = run(&nodes[2], &["--latency", "--duration", "0.3"], b"");
    assert!(o.status.success(), "{o:?}");
    let o = run(&nodes[1], &["--json"], b"GET key5\n");
    assert_eq!(text(&o.stdout), "\"value, 5\"\n");
}

#[test]
fn list_streams_every_page_in_order() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = Vec::new();
    for i in 0..2500 {
        csv.extend_from_slice(format!("k{i:05},v\n").as_bytes());
    }
    let file = write_file(dir.path(), "keys.csv", &csv);
    assert!(run(&server, &["--import", &file], b"").status.success());
    let o = run(&server, &["-c", "LIST k"], b"");
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let want: Vec<String> = (0..2500).map(|i| format!("k{i:05}")).collect();
    // Pages come in (hash, key) order: sorted, the keys are all there once.
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    assert_eq!(got, want, "three pages, every key once");
    let o = run(&server, &["--json", "-c", "LIST k0000"], b"");
    let json = text(&o.stdout);
    let mut items: Vec<&str> = json
        .trim_end()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .collect();
    items.sort_unstable();
    assert_eq!(
        format!("[{}]\n", items.join(",")),
        format!(
            "[{}]\n",
            (0..10)
                .map(|i| format!("\"k0000{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    );
}

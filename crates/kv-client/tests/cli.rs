//! The `kv-client` binary against a real server: piped commands, `-c`,
//! exit codes, and a server that is down.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use kv_testkit::ServerProc;

const CLIENT: &str = env!("CARGO_BIN_EXE_kv-client");

fn server_binary() -> PathBuf {
    kv_testkit::sibling_binary(CLIENT, "kv-server")
}

fn client(server: &ServerProc, extra: &[&str], stdin: &str) -> Output {
    kv_testkit::run_with_stdin(
        Command::new(CLIENT)
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .args(extra),
        stdin.as_bytes(),
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `text` with its lines in `range` sorted (a LIST's lines come in
/// (hash, key) order), each line ended by a newline.
fn lines_with_sorted(text: &str, range: std::ops::Range<usize>) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[range].sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn piped_commands_print_one_result_per_line() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = client(
        &server,
        &[],
        "PUT a 1\nPUT \"b c\" \"x\\ny\"\nGET a\nGET \"b c\"\nGET missing\nLIST\nDELETE a\nDELETE a\nLIST b\nPING\n",
    );
    assert!(o.status.success(), "{o:?}");
    // LIST prints in (hash, key) order, not sorted: sort its two lines.
    assert_eq!(
        lines_with_sorted(&stdout(&o), 5..7),
        "OK\nOK\n1\n\"x\\ny\"\n(nil)\n\"b c\"\na\n1\n0\n\"b c\"\nPONG\n"
    );
}

#[test]
fn one_command_with_dash_c_and_failures_exit_non_zero() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = client(&server, &["-c", "PUT k v"], "");
    assert!(o.status.success(), "{o:?}");
    let o = client(&server, &["-c", "GET k"], "");
    assert_eq!(stdout(&o), "v\n");
    let o = client(&server, &[], "GET k\nFROB\nGET k\n");
    assert_eq!(o.status.code(), Some(1), "an unknown command fails the run");
    assert_eq!(stdout(&o), "v\nv\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown command"));
}

#[test]
fn password_flag_authenticates() {
    let server = ServerProc::start(
        server_binary(),
        &["--no-persistence", "--requirepass", "pw"],
    );
    let o = client(&server, &["-a", "pw", "-c", "PUT k v"], "");
    assert!(o.status.success(), "{o:?}");
    let o = client(&server, &["-c", "GET k"], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("authentication required"),
        "{o:?}"
    );
}

#[test]
fn a_server_that_is_down_gets_a_one_line_message() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let addr = server.addr;
    server.stop();
    let o = Command::new(CLIENT)
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            "-c".into(),
            "PING".into(),
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("could not connect to"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs kv-client with exactly `args` (no address added) and no input.
fn client_args(args: &[&str]) -> Output {
    Command::new(CLIENT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kv-client")
}

#[test]
fn the_address_may_be_host_colon_port() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = client_args(&[&server.addr.to_string(), "-c", "PING"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "PONG\n");
    let twice = client_args(&[&server.addr.to_string(), "9", "-c", "PING"]);
    assert_eq!(twice.status.code(), Some(2), "{twice:?}");
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("port is given twice"),
        "{twice:?}"
    );
}

#[test]
fn ipv6_addresses_with_and_without_brackets() {
    let server = ServerProc::start(server_binary(), &["--no-persistence", "--bind", "::1"]);
    let port = server.addr.port().to_string();
    let o = client_args(&[&format!("[::1]:{port}"), "-c", "PING"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "PONG\n");
    let o = client_args(&["::1", &port, "-c", "PING"]);
    assert!(o.status.success(), "{o:?}");
    let o = client_args(&["[::1]", &port, "-c", "PING"]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn an_unknown_escape_is_an_error_naming_it() {
    use kv_client::command::parse;
    let e = parse(r#"PUT k "x\q""#).expect_err("\\q is not an escape");
    assert!(e.contains(r"\q"), "{e}");
    let e = parse(r#"GET "a\xzz""#).expect_err("\\xzz is not an escape");
    assert!(e.contains(r"\xzz"), "{e}");
    // The escapes HELP lists still work, and single quotes stay literal.
    assert_eq!(
        parse(r#"GET "\n\r\t\b\a\"\\\x41""#),
        Ok(Some(kv_client::command::Command::Get(
            b"\n\r\t\x08\x07\"\\A".to_vec()
        )))
    );
    assert_eq!(
        parse(r"GET 'x\q'"),
        Ok(Some(kv_client::command::Command::Get(b"x\\q".to_vec())))
    );
    // The server's RESP inline parser keeps Redis's leniency.
    assert_eq!(
        kv_proto::resp::split_args(br#"GET "x\q""#).expect("split"),
        vec![b"GET".to_vec(), b"xq".to_vec()]
    );
}

#[test]
fn join_checks_the_address_before_inviting() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = client(&server, &["-c", "JOIN notanaddr"], "");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not host:port"), "{err}");
    assert_eq!(stdout(&o), "");

    let gone = ServerProc::start(server_binary(), &["--no-persistence"]);
    let gone_addr = gone.addr.to_string();
    gone.stop();
    let o = client(&server, &["-c", &format!("JOIN {gone_addr}")], "");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing answers"), "{err}");
    assert!(err.contains(&gone_addr), "{err}");
    assert_eq!(stdout(&o), "");
}

#[test]
fn help_names_the_history_file() {
    let home = std::env::temp_dir().join("kv-client-help-home");
    let o = Command::new(CLIENT)
        .arg("--help")
        .env("HOME", &home)
        .output()
        .expect("run");
    assert!(o.status.success(), "{o:?}");
    let help = stdout(&o);
    let path = home.join(".kv_client_history");
    assert!(help.contains(&path.display().to_string()), "{help}");
}

#[test]
fn piped_lines_that_are_not_utf8_are_sent_as_bytes() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = kv_testkit::run_with_stdin(
        Command::new(CLIENT).arg(server.addr.to_string()),
        b"PUT b \xff\xfe\r\nGET b\nPUT \"k \xe9\" 1\nLIST\nPUT c 2\nGET c",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        lines_with_sorted(&stdout(&o), 3..5),
        "OK\n\"\\xff\\xfe\"\nOK\n\"k \\xe9\"\nb\nOK\n2\n"
    );
}

#[test]
fn list_prints_keys_that_read_back() {
    let server = ServerProc::start(server_binary(), &["--no-persistence"]);
    let o = client(
        &server,
        &[],
        "PUT \"'q'\" v1\nPUT 'a\\b' v2\nPUT \"\\\"x\" v3\nLIST\n",
    );
    assert!(o.status.success(), "{o:?}");
    let listed = stdout(&o);
    let mut keys: Vec<&str> = listed.lines().skip(3).collect();
    keys.sort_unstable(); // LIST prints in (hash, key) order
    assert_eq!(keys, ["\"'q'\"", "\"\\\"x\"", "\"a\\\\b\""], "{listed}");
    let gets: String = keys.iter().map(|k| format!("GET {k}\n")).collect();
    let o = client(&server, &[], &gets);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "v1\nv3\nv2\n");
}

mod show_parse {
    use kv_client::command::{parse, show, Command};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_key_printed_by_list_parses_back(key in proptest::collection::vec(
            // Any byte, with the ones quoting is about made likely.
            prop_oneof![any::<u8>(), proptest::sample::select(b"'\" \\\txa".to_vec())],
            0..24,
        )) {
            let line = format!("GET {}", show(&key));
            prop_assert_eq!(parse(&line), Ok(Some(Command::Get(key))), "{}", line);
        }

        #[test]
        fn any_text_key_parses_back(key in "\\PC{0,12}|['\" \\\\]{0,4}\\PC{0,4}") {
            let line = format!("GET {}", show(key.as_bytes()));
            prop_assert_eq!(parse(&line), Ok(Some(Command::Get(key.into_bytes()))), "{}", line);
        }
    }
}

/// Runs kv-server with `args` to see how it refuses them.
fn server_args(args: &[&str]) -> Output {
    Command::new(server_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kv-server")
}

#[test]
fn kv_server_usage_errors_read_cleanly() {
    let o = server_args(&["--port", "0", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("'--no-such-flag'"), "{err}");
    assert!(err.contains("Usage: kv-server [OPTIONS] [PORT]"), "{err}");

    let o = server_args(&["0", "--port", "0", "--no-persistence"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the port is given twice"), "{err}");
    assert!(!err.contains("cannot be used with"), "{err}");
    assert!(err.contains("Usage: kv-server [OPTIONS] [PORT]"), "{err}");
}

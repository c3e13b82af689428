//! The commands of the `kv-client` prompt: parsing a line, running it, and
//! printing the result.

use std::fmt::Write as _;

use kv_proto::resp::split_args;

use crate::addr::parse_host_port;
use crate::reply::{Format, Reply};
use crate::{Client, ClientError};

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// PUT key value
    Put(Vec<u8>, Vec<u8>),
    /// GET key
    Get(Vec<u8>),
    /// DELETE key
    Delete(Vec<u8>),
    /// `LIST [prefix]`
    List(Vec<u8>),
    /// JOIN host:port
    Join(String),
    /// LEAVE host:port
    Leave(String),
    /// REMOVE host:port
    Remove(String),
    /// PING
    Ping,
    /// INFO
    Info,
    /// CLUSTER
    Cluster,
    /// AUTH password
    Auth(String),
    /// HELP
    Help,
    /// QUIT or EXIT
    Quit,
}

/// The help text of the prompt.
pub const HELP: &str = "\
Commands (names are case-insensitive):
  PUT key value       set key to value
  GET key             print the value of key, or (nil)
  DELETE key          delete key (also DEL); prints 1 if it existed, else 0
  LIST [prefix]       print every key (starting with prefix), one per line
  JOIN host:port      ask the (new, empty) node at host:port to join this cluster
  LEAVE host:port     decommission the live node at host:port (its data moves first)
  REMOVE host:port    drop the dead node at host:port for good (data rebuilt from replicas)
  CLUSTER             show the cluster's nodes and any rebalance's progress
  PING                check the server answers
  INFO                server statistics
  AUTH password       authenticate (or start with -a PASSWORD)
  HELP                this text
  QUIT                leave (also EXIT)
Keys and values with spaces or binary bytes: use double quotes with
backslash escapes, e.g. PUT \"my key\" \"line 1\\nline 2 \\x00\\xff\".";

/// Parses a line. `Ok(None)` for a blank line; `Err` explains a mistake.
/// The line is bytes: words need not be UTF-8.
pub fn parse(line: impl AsRef<[u8]>) -> Result<Option<Command>, String> {
    let line = line.as_ref();
    let args = split_args(line).map_err(|_| "unbalanced quotes".to_string())?;
    check_escapes(line)?;
    let Some((name, rest)) = args.split_first() else {
        return Ok(None);
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    let cmd = match (name.as_str(), rest) {
        ("PUT" | "SET", [k, v]) => Command::Put(k.clone(), v.clone()),
        ("GET", [k]) => Command::Get(k.clone()),
        ("DELETE" | "DEL", [k]) => Command::Delete(k.clone()),
        ("LIST" | "KEYS", []) => Command::List(Vec::new()),
        ("LIST" | "KEYS", [p]) => Command::List(p.clone()),
        ("JOIN", [a]) => Command::Join(parse_host_port(&text(a))?),
        ("LEAVE", [a]) => Command::Leave(parse_host_port(&text(a))?),
        ("REMOVE", [a]) => Command::Remove(parse_host_port(&text(a))?),
        ("PING", []) => Command::Ping,
        ("INFO", []) => Command::Info,
        ("CLUSTER", []) => Command::Cluster,
        ("AUTH", [p]) => Command::Auth(text(p)),
        ("HELP" | "?", _) => Command::Help,
        ("QUIT" | "EXIT", []) => Command::Quit,
        ("PUT" | "SET", _) => return Err("usage: PUT key value".into()),
        ("GET", _) => return Err("usage: GET key".into()),
        ("DELETE" | "DEL", _) => return Err("usage: DELETE key".into()),
        ("LIST" | "KEYS", _) => return Err("usage: LIST [prefix]".into()),
        ("JOIN", _) => return Err("usage: JOIN host:port".into()),
        ("LEAVE", _) => return Err("usage: LEAVE host:port".into()),
        ("REMOVE", _) => return Err("usage: REMOVE host:port".into()),
        ("AUTH", _) => return Err("usage: AUTH password".into()),
        ("PING" | "INFO" | "CLUSTER" | "QUIT" | "EXIT", _) => {
            return Err(format!("{name} takes no arguments"))
        }
        _ => return Err(format!("unknown command {name:?}; type HELP for the list")),
    };
    Ok(Some(cmd))
}

/// Checks the backslash escapes inside double quotes. [`split_args`] is
/// shared with the server's RESP inline commands, where (as in Redis) an
/// unknown escape such as `\q` stands for the letter itself; a typo at this
/// prompt is more likely a mistake, so it is refused, naming the escape.
/// Call after `split_args` succeeded (quotes are balanced).
fn check_escapes(line: &[u8]) -> Result<(), String> {
    let hex = |c: Option<&u8>| c.is_some_and(u8::is_ascii_hexdigit);
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'"' => {
                i += 1;
                while let Some(&c) = line.get(i) {
                    match c {
                        b'"' => break,
                        b'\\' => match line.get(i + 1) {
                            Some(b'n' | b'r' | b't' | b'b' | b'a' | b'"' | b'\\') => i += 2,
                            Some(b'x') if hex(line.get(i + 2)) && hex(line.get(i + 3)) => i += 4,
                            _ => {
                                let end = (i + 4).min(line.len());
                                let shown = String::from_utf8_lossy(&line[i..end]);
                                let shown: String = if line.get(i + 1) == Some(&b'x') {
                                    shown.into_owned()
                                } else {
                                    shown.chars().take(2).collect()
                                };
                                return Err(format!(
                                    "unknown escape `{shown}` in double quotes (use \\n \\r \\t \\b \\a \\\" \\\\ or \\xHH)"
                                ));
                            }
                        },
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'\'' => {
                i += 1;
                while let Some(&c) = line.get(i) {
                    match (c, line.get(i + 1)) {
                        (b'\\', Some(b'\'')) => i += 2,
                        (b'\'', _) => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                while line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    i += 1;
                }
            }
        }
    }
    Ok(())
}

/// Shows bytes so that [`parse`] reads them back as one word (LIST's keys,
/// GET's values): as they are when they are non-empty printable UTF-8 with
/// no whitespace, quote or backslash; otherwise double-quoted, with `\"`,
/// `\\`, `\n`, `\r`, `\t`, and `\xHH` for other control characters,
/// whitespace other than a space, and bytes that are not UTF-8. Printable
/// non-ASCII text stays readable.
pub fn show(b: &[u8]) -> String {
    let plain = |c: char| !c.is_control() && !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\');
    if let Ok(s) = std::str::from_utf8(b) {
        if !s.is_empty() && s.chars().all(plain) {
            return s.to_string();
        }
    }
    quoted(
        b,
        |c| c != ' ' && (c.is_control() || c.is_whitespace()),
        |out, byte| {
            let _ = write!(out, "\\x{byte:02x}");
        },
    )
}

/// `b` in double quotes, with `"`, `\`, newline, carriage return and tab
/// escaped by a backslash; each character for which `escaped` holds, and
/// each byte that is not UTF-8, written one byte at a time by `byte` (the
/// prompt's `\xHH`, JSON's `\u00XX`).
pub(crate) fn quoted(
    b: &[u8],
    escaped: impl Fn(char) -> bool,
    byte: impl Fn(&mut String, u8),
) -> String {
    let mut out = String::from("\"");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if escaped(c) => {
                    let mut buf = [0; 4];
                    for &b in c.encode_utf8(&mut buf).as_bytes() {
                        byte(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            byte(&mut out, b);
        }
    }
    out.push('"');
    out
}

/// Runs a command (other than HELP and QUIT) and returns the lines to print.
pub fn run(client: &mut Client, cmd: &Command) -> Result<Vec<String>, ClientError> {
    Ok(execute(client, cmd)?.render(Format::Plain))
}

/// Runs a command (other than HELP and QUIT) and returns its answer.
pub fn execute(client: &mut Client, cmd: &Command) -> Result<Reply, ClientError> {
    Ok(match cmd {
        Command::Put(k, v) => {
            client.put(k, v)?;
            Reply::Ok
        }
        Command::Get(k) => client.get(k)?.map_or(Reply::Nil, Reply::Value),
        Command::Delete(k) => Reply::Int(i64::from(client.delete(k)?)),
        Command::List(p) => Reply::Keys(client.list_all(p)?),
        Command::Join(a) => {
            // The server would invite any address and report nothing; check
            // from here that a kv node answers there first.
            if let Err(e) = Client::connect_with(a, client.tls()) {
                return Err(ClientError::NotSent(format!(
                    "nothing answers at {a} ({e}); start the new node there first (not invited)"
                )));
            }
            Reply::Text(client.join(a)?)
        }
        Command::Leave(a) => Reply::Text(client.leave(a)?),
        Command::Remove(a) => Reply::Text(client.remove(a)?),
        Command::Ping => {
            client.ping(b"")?;
            Reply::Pong
        }
        Command::Info => Reply::Text(client.info()?),
        Command::Cluster => Reply::Text(client.cluster()?),
        Command::Auth(p) => {
            client.auth(p)?;
            Reply::Ok
        }
        Command::Help => Reply::Text(HELP.to_string()),
        Command::Quit => Reply::Text(String::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands() {
        assert_eq!(
            parse("put a b"),
            Ok(Some(Command::Put(b"a".to_vec(), b"b".to_vec())))
        );
        assert_eq!(
            parse(r#"PUT "my key" "a\x00b\n""#),
            Ok(Some(Command::Put(b"my key".to_vec(), b"a\x00b\n".to_vec())))
        );
        assert_eq!(parse("  "), Ok(None));
        assert_eq!(parse("LIST"), Ok(Some(Command::List(Vec::new()))));
        assert!(parse("GET").unwrap_err().contains("usage"));
        assert!(parse("FROB x").unwrap_err().contains("unknown command"));
        assert!(parse("PUT \"a b").unwrap_err().contains("quotes"));
    }

    #[test]
    fn show_round_trips_through_parse() {
        for v in [
            &b"plain"[..],
            b"with space",
            b"\x00\xff\"\\\n",
            b"",
            b"'q'",
            b"a\\b",
            "héllo wörld".as_bytes(),
            "no\u{a0}break\u{2028}".as_bytes(),
        ] {
            let line = format!("GET {}", show(v));
            assert_eq!(parse(&line), Ok(Some(Command::Get(v.to_vec()))), "{line}");
        }
    }
}

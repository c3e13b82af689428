//! A small blocking RESP client with timeouts, for tests that must tell a
//! refused, an answered and an unanswered request apart (a paused or
//! partitioned server never answers).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and other simple strings.
    Status(String),
    /// `-ERR ...`: the error line without its `-`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` (`None` for a nil bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` (`None` for a nil array).
    Array(Option<Vec<Reply>>),
}

/// One connection to a server.
pub struct RespConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connects to `addr`; every later read and write gives up after
    /// `timeout` (the connection must then be dropped: a late reply would
    /// answer the next request).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RespConn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(RespConn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one command and waits for its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        read_reply(&mut self.reader)
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_len(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| bad(format!("bad length {s:?}")))
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(read_len(rest)?),
        "$" => match usize::try_from(read_len(rest)?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut v = vec![0u8; n + 2];
                r.read_exact(&mut v)?;
                v.truncate(n);
                Reply::Bulk(Some(v))
            }
        },
        "*" => match usize::try_from(read_len(rest)?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(bad(format!("unexpected reply line {line:?}"))),
    })
}

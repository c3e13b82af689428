//! The server's command parser: multibulk and inline commands, resumed
//! across reads by [`CommandParser`].

use super::framing::{bulk_body, header};
use super::{split_args, Limits, RespError};

/// The arguments of a parsed command (borrowing the input where it can)
/// and the number of input bytes it used.
pub type Parsed<'a> = (Vec<std::borrow::Cow<'a, [u8]>>, usize);

/// Parses one command from the start of `buf`: either a multibulk array of
/// bulk strings or an inline line of space-separated words (with Redis's
/// quoting). Returns the arguments (borrowing `buf`) and the bytes used, or
/// `Ok(None)` if more bytes are needed. An empty command (a blank line or
/// `*0`) gives an empty argument list.
///
/// Each call starts from the first byte; a server that receives a command
/// in many reads should keep a [`CommandParser`] instead, which resumes.
pub fn parse_command<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Parsed<'a>>, RespError> {
    CommandParser::default().parse(buf, limits)
}

/// An incremental command parser that remembers how far it got, so that a
/// command arriving in many small reads costs time linear in its bytes,
/// not quadratic: a `*1000000` command sent a few bytes at a time is never
/// re-parsed from its first byte.
///
/// Call [`CommandParser::parse`] with a buffer that starts at the command
/// being parsed; until it returns a command or an error, every later call
/// must pass a buffer that starts at the same byte and extends the earlier
/// one (more bytes appended, none changed).
///
/// ```
/// use kv_proto::resp::{CommandParser, Limits};
///
/// let wire = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
/// let mut p = CommandParser::default();
/// assert!(p.parse(&wire[..9], &Limits::default()).unwrap().is_none());
/// let (args, used) = p.parse(wire, &Limits::default()).unwrap().unwrap();
/// assert_eq!((args.len(), used), (2, wire.len()));
/// ```
#[derive(Debug, Default)]
pub struct CommandParser {
    partial: Option<Partial>,
    examined: u64,
}

#[derive(Debug)]
enum Partial {
    /// A multibulk of `n` elements: the ranges of those parsed so far, and
    /// where the next one starts.
    Multibulk {
        n: usize,
        args: Vec<std::ops::Range<usize>>,
        at: usize,
    },
    /// An inline command with no newline in its first `scanned` bytes.
    Inline { scanned: usize },
}

impl CommandParser {
    /// Parses (or goes on parsing) the command at the start of `buf`; see
    /// [`parse_command`] for what it returns. After an error the parser
    /// starts afresh.
    pub fn parse<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
    ) -> Result<Option<Parsed<'a>>, RespError> {
        let partial = self.partial.take();
        let result = match (partial, buf.first()) {
            (partial, None) => {
                self.partial = partial;
                Ok(None)
            }
            (Some(Partial::Multibulk { n, args, at }), _) => {
                self.multibulk(buf, limits, n, args, at)
            }
            (Some(Partial::Inline { scanned }), _) => self.inline(buf, limits, scanned),
            (None, Some(b'*')) => self.multibulk_start(buf, limits),
            (None, Some(_)) => self.inline(buf, limits, 0),
        };
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    /// Forgets a command in progress (the connection dropped its bytes).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Bytes looked at so far, over every call: stays within a small
    /// multiple of the bytes received however they are split.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    fn multibulk_start<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
    ) -> Result<Option<Parsed<'a>>, RespError> {
        let Some((n, at)) = header(buf, 0, RespError::InvalidMultibulkLength)? else {
            self.examined += buf.len().min(34) as u64;
            return Ok(None);
        };
        self.examined += at as u64;
        if n <= 0 {
            return Ok(Some((Vec::new(), at)));
        }
        if n as u64 > limits.max_array as u64 {
            return Err(RespError::InvalidMultibulkLength);
        }
        let args = Vec::with_capacity((n as usize).min(64));
        self.multibulk(buf, limits, n as usize, args, at)
    }

    fn multibulk<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
        n: usize,
        mut args: Vec<std::ops::Range<usize>>,
        mut at: usize,
    ) -> Result<Option<Parsed<'a>>, RespError> {
        while args.len() < n {
            let Some(&tag) = buf.get(at) else {
                break;
            };
            if tag != b'$' {
                return Err(RespError::ExpectedBulk(tag));
            }
            let Some((len, body)) = header(buf, at, RespError::InvalidBulkLength)? else {
                self.examined += (buf.len() - at).min(34) as u64;
                break;
            };
            if len < 0 || len as u64 > limits.max_bulk as u64 {
                return Err(RespError::InvalidBulkLength);
            }
            let Some((range, next)) = bulk_body(buf, body, len as usize)? else {
                self.examined += (body - at) as u64;
                break;
            };
            self.examined += (next - at) as u64;
            args.push(range);
            at = next;
        }
        if args.len() < n {
            self.partial = Some(Partial::Multibulk { n, args, at });
            return Ok(None);
        }
        let args = args
            .into_iter()
            .map(|r| std::borrow::Cow::Borrowed(&buf[r]))
            .collect();
        Ok(Some((args, at)))
    }

    fn inline<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
        scanned: usize,
    ) -> Result<Option<Parsed<'a>>, RespError> {
        let hi = buf.len().min(limits.max_inline + 1);
        let window = &buf[scanned.min(hi)..hi];
        let from = scanned.min(hi);
        let Some(nl) = window.iter().position(|&c| c == b'\n').map(|i| from + i) else {
            self.examined += window.len() as u64;
            if buf.len() > limits.max_inline {
                return Err(RespError::InlineTooLong);
            }
            self.partial = Some(Partial::Inline { scanned: buf.len() });
            return Ok(None);
        };
        self.examined += (nl + 1 - from) as u64;
        let mut text = &buf[..nl];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
        }
        let args = split_args(text)?
            .into_iter()
            .map(std::borrow::Cow::Owned)
            .collect();
        Ok(Some((args, nl + 1)))
    }
}

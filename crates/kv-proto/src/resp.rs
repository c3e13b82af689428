//! RESP2 and RESP3, the Redis serialization protocol: values, an encoder,
//! an incremental value parser (for clients) and an incremental command
//! parser (for servers) that accepts both multibulk and inline commands.
//!
//! A server speaks RESP2 until a client sends `HELLO 3`; the encoding
//! helpers that differ between the two ([`encode_null`],
//! [`encode_map_header`], [`encode_verbatim`], [`encode_double`],
//! [`encode_bool`]) take the connection's [`Protocol`].

use std::fmt;

/// The RESP version a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2: nulls are `$-1`, maps are flat arrays.
    #[default]
    Resp2,
    /// RESP3: typed nulls, maps, doubles, booleans, verbatim strings.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` reports (`2` or `3`).
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A RESP2 or RESP3 value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK\r\n`
    Simple(String),
    /// `-ERR message\r\n`
    Error(String),
    /// `:42\r\n`
    Integer(i64),
    /// `$3\r\nfoo\r\n`
    Bulk(Vec<u8>),
    /// `$-1\r\n`, the nil bulk string.
    Nil,
    /// `*2\r\n...`
    Array(Vec<Value>),
    /// `*-1\r\n`, the nil array.
    NilArray,
    /// RESP3 `_\r\n`, the one null of RESP3.
    Null,
    /// RESP3 `#t\r\n` or `#f\r\n`.
    Boolean(bool),
    /// RESP3 `,3.14\r\n` (also `inf`, `-inf`, `nan`).
    Double(f64),
    /// RESP3 `%2\r\n` followed by key, value, key, value.
    Map(Vec<(Value, Value)>),
    /// RESP3 `~2\r\n...`, an unordered collection.
    Set(Vec<Value>),
    /// RESP3 `=15\r\ntxt:Some string\r\n`: a three-letter format, then text.
    Verbatim {
        /// The format, such as `txt` or `mkd`.
        format: [u8; 3],
        /// The text.
        text: Vec<u8>,
    },
}

/// Limits that keep a parser's memory bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string.
    pub max_bulk: usize,
    /// Most elements in one array (or pairs in one map).
    pub max_array: usize,
    /// Longest inline command or simple line.
    pub max_inline: usize,
    /// Deepest nesting of arrays (values only; commands are flat).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 512 << 20,
            // As Redis: any count a signed 32-bit integer holds; what bounds
            // a command is the bytes it takes (the query buffer limit).
            max_array: i32::MAX as usize,
            max_inline: 64 << 10,
            max_depth: 32,
        }
    }
}

/// Malformed RESP input. The messages follow Redis's own, so that clients
/// see what they would see from Redis.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A `*` count that is not a number or is out of range.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` length that is not a number or is out of range.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A command element that is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// An inline command or line longer than the limit without a newline.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// Unbalanced quotes in an inline command.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
    /// A value of an unknown type byte.
    #[error("Protocol error: unknown value type '{}'", char::from(*.0))]
    UnknownType(u8),
    /// An integer line that is not a number.
    #[error("Protocol error: invalid integer")]
    InvalidInteger,
    /// Arrays nested deeper than the limit.
    #[error("Protocol error: arrays nested too deeply")]
    TooDeep,
    /// A RESP3 double, boolean or verbatim string that is malformed.
    #[error("Protocol error: invalid RESP3 value")]
    InvalidResp3,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Simple(s) => write!(f, "{s}"),
            Value::Error(e) => write!(f, "(error) {e}"),
            Value::Integer(n) => write!(f, "(integer) {n}"),
            Value::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::Nil | Value::NilArray | Value::Null => write!(f, "(nil)"),
            Value::Boolean(b) => write!(f, "({b})"),
            Value::Double(d) => write!(f, "(double) {d}"),
            Value::Verbatim { text, .. } => write!(f, "{}", String::from_utf8_lossy(text)),
            Value::Map(pairs) => {
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}# {k} => {v}", i + 1)?;
                }
                Ok(())
            }
            Value::Array(items) | Value::Set(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}) {item}", i + 1)?;
                }
                Ok(())
            }
        }
    }
}

/// Appends the encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Simple(s) => line(out, b'+', s.as_bytes()),
        Value::Error(e) => line(out, b'-', e.as_bytes()),
        Value::Integer(n) => encode_integer(out, *n),
        Value::Bulk(b) => encode_bulk(out, b),
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::NilArray => out.extend_from_slice(b"*-1\r\n"),
        Value::Array(items) => {
            encode_array_header(out, items.len());
            for item in items {
                encode(item, out);
            }
        }
        Value::Null => encode_null(out, Protocol::Resp3),
        Value::Boolean(b) => encode_bool(out, *b, Protocol::Resp3),
        Value::Double(d) => encode_double(out, *d, Protocol::Resp3),
        Value::Map(pairs) => {
            encode_map_header(out, pairs.len(), Protocol::Resp3);
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
        Value::Set(items) => {
            out.push(b'~');
            push_decimal(out, items.len() as i64);
            out.extend_from_slice(b"\r\n");
            for item in items {
                encode(item, out);
            }
        }
        Value::Verbatim { format, text } => {
            let format = std::str::from_utf8(format).unwrap_or("txt");
            encode_verbatim(out, format, text, Protocol::Resp3);
        }
    }
}

/// Appends the null reply: `$-1` in RESP2, `_` in RESP3.
pub fn encode_null(out: &mut Vec<u8>, proto: Protocol) {
    out.extend_from_slice(match proto {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// Appends the null array (WATCH conflicts, timeouts): `*-1` in RESP2,
/// `_` in RESP3.
pub fn encode_null_array(out: &mut Vec<u8>, proto: Protocol) {
    out.extend_from_slice(match proto {
        Protocol::Resp2 => b"*-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// Appends the header of a map of `pairs` entries: `%pairs` in RESP3, a
/// flat array of `2 * pairs` elements in RESP2. The caller then appends
/// key, value, key, value.
pub fn encode_map_header(out: &mut Vec<u8>, pairs: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => encode_array_header(out, pairs * 2),
        Protocol::Resp3 => {
            out.push(b'%');
            push_decimal(out, pairs as i64);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a verbatim string (`=len\r\nfmt:text` in RESP3, a bulk string
/// of the text in RESP2). `format` must be three bytes, such as `txt`.
pub fn encode_verbatim(out: &mut Vec<u8>, format: &str, text: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp2 => encode_bulk(out, text),
        Protocol::Resp3 => {
            out.push(b'=');
            push_decimal(out, (text.len() + 4) as i64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(format.as_bytes());
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a double: `,d` in RESP3, a bulk string of its text in RESP2,
/// written as Redis writes it (`inf`, `-inf`, `nan`, shortest round-trip
/// decimal otherwise).
pub fn encode_double(out: &mut Vec<u8>, d: f64, proto: Protocol) {
    let text = format_double(d);
    match proto {
        Protocol::Resp2 => encode_bulk(out, text.as_bytes()),
        Protocol::Resp3 => line(out, b',', text.as_bytes()),
    }
}

/// The text of a double as Redis prints it.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{d}")
    }
}

/// Appends a boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2.
pub fn encode_bool(out: &mut Vec<u8>, b: bool, proto: Protocol) {
    match proto {
        Protocol::Resp2 => encode_integer(out, i64::from(b)),
        Protocol::Resp3 => out.extend_from_slice(if b { b"#t\r\n" } else { b"#f\r\n" }),
    }
}

fn line(out: &mut Vec<u8>, tag: u8, text: &[u8]) {
    out.push(tag);
    // CR and LF cannot appear inside a simple line.
    out.extend(
        text.iter()
            .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends `:n\r\n`.
pub fn encode_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn encode_bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    push_decimal(out, b.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Appends `*n\r\n`; the caller then appends `n` values.
pub fn encode_array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_decimal(out, n as i64);
    out.extend_from_slice(b"\r\n");
}

/// Appends a command (an array of bulk strings), as clients send it.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    encode_array_header(out, args.len());
    for a in args {
        encode_bulk(out, a.as_ref());
    }
}

fn push_decimal(out: &mut Vec<u8>, n: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = n < 0;
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if neg {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Finds the end of the line starting at `at`: the index of its `\r\n`.
/// `Ok(None)` if no CRLF yet; an error if the line exceeds `max`.
fn find_crlf(buf: &[u8], at: usize, max: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[at..buf.len().min(at.saturating_add(max).saturating_add(2))];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(at + i)),
        None if buf.len() - at > max + 1 => Err(RespError::InlineTooLong),
        None => Ok(None),
    }
}

/// Parses an integer as Redis's `string2ll` does: `0`, or an optional `-`
/// then a digit 1-9 and more digits. Leading zeros, `-0`, `+` and spaces
/// are refused, so `*01` and `$04` are malformed as they are for Redis.
fn parse_int(b: &[u8]) -> Option<i64> {
    if b == b"0" {
        return Some(0);
    }
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty()
        || digits.len() > 18
        || !digits.iter().all(u8::is_ascii_digit)
        || digits[0] == b'0'
    {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
    Some(if neg { -n } else { n })
}

/// Reads a `<tag><integer>\r\n` header at `at`: the number and the offset
/// after the line.
fn header(buf: &[u8], at: usize, bad: RespError) -> Result<Option<(i64, usize)>, RespError> {
    let Some(end) = find_crlf(buf, at + 1, 32).map_err(|_| bad.clone())? else {
        return Ok(None);
    };
    let n = parse_int(&buf[at + 1..end]).ok_or(bad)?;
    Ok(Some((n, end + 2)))
}

/// Reads a bulk string body of `len` bytes at `at`; the range of its bytes
/// and the offset after its CRLF.
fn bulk_body(
    buf: &[u8],
    at: usize,
    len: usize,
) -> Result<Option<(std::ops::Range<usize>, usize)>, RespError> {
    let end = at + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(RespError::MissingCrlf);
    }
    Ok(Some((at..end, end + 2)))
}

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

/// Splits an inline command into words: spaces separate, `"..."` allows
/// spaces and `\n \r \t \\ \" \xHH` escapes, `'...'` is literal but for
/// `\'`. This is what redis-cli and Redis itself accept.
pub fn split_args(text: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let (word, next) = match text[i] {
            b'"' => double_quoted(text, i + 1)?,
            b'\'' => single_quoted(text, i + 1)?,
            _ => {
                let end = text[i..]
                    .iter()
                    .position(u8::is_ascii_whitespace)
                    .map_or(text.len(), |p| i + p);
                (text[i..end].to_vec(), end)
            }
        };
        args.push(word);
        i = next;
    }
    Ok(args)
}

fn double_quoted(t: &[u8], mut i: usize) -> Result<(Vec<u8>, usize), RespError> {
    let mut w = Vec::new();
    loop {
        match t.get(i) {
            None => return Err(RespError::UnbalancedQuotes),
            Some(b'"') => return closing(t, i + 1).map(|n| (w, n)),
            Some(b'\\') => {
                let (c, used) = escape(&t[i + 1..]);
                w.push(c);
                i += 1 + used;
            }
            Some(&c) => {
                w.push(c);
                i += 1;
            }
        }
    }
}

fn escape(t: &[u8]) -> (u8, usize) {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    match t {
        [b'x', a, b, ..] if hex(*a).is_some() && hex(*b).is_some() => {
            (hex(*a).unwrap_or(0) * 16 + hex(*b).unwrap_or(0), 3)
        }
        [b'n', ..] => (b'\n', 1),
        [b'r', ..] => (b'\r', 1),
        [b't', ..] => (b'\t', 1),
        [b'b', ..] => (8, 1),
        [b'a', ..] => (7, 1),
        [c, ..] => (*c, 1),
        [] => (b'\\', 0),
    }
}

fn single_quoted(t: &[u8], mut i: usize) -> Result<(Vec<u8>, usize), RespError> {
    let mut w = Vec::new();
    loop {
        match (t.get(i), t.get(i + 1)) {
            (None, _) => return Err(RespError::UnbalancedQuotes),
            (Some(b'\\'), Some(b'\'')) => {
                w.push(b'\'');
                i += 2;
            }
            (Some(b'\''), _) => return closing(t, i + 1).map(|n| (w, n)),
            (Some(&c), _) => {
                w.push(c);
                i += 1;
            }
        }
    }
}

/// After a closing quote there must be a space or the end.
fn closing(t: &[u8], i: usize) -> Result<usize, RespError> {
    match t.get(i) {
        None => Ok(i),
        Some(c) if c.is_ascii_whitespace() => Ok(i),
        Some(_) => Err(RespError::UnbalancedQuotes),
    }
}

/// Parses one value from the start of `buf` (as a client reads replies).
/// `Ok(None)` means more bytes are needed.
pub fn parse_value(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, RespError> {
    parse_value_at(buf, 0, limits, 0)
}

fn parse_value_at(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<(Value, usize)>, RespError> {
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    match tag {
        b'+' | b'-' => {
            let Some(end) = find_crlf(buf, at + 1, limits.max_inline)? else {
                return Ok(None);
            };
            let text = String::from_utf8_lossy(&buf[at + 1..end]).into_owned();
            let v = if tag == b'+' {
                Value::Simple(text)
            } else {
                Value::Error(text)
            };
            Ok(Some((v, end + 2)))
        }
        b':' => {
            Ok(header(buf, at, RespError::InvalidInteger)?
                .map(|(n, next)| (Value::Integer(n), next)))
        }
        b'$' => {
            let Some((len, body)) = header(buf, at, RespError::InvalidBulkLength)? else {
                return Ok(None);
            };
            if len == -1 {
                return Ok(Some((Value::Nil, body)));
            }
            if len < 0 || len as usize > limits.max_bulk {
                return Err(RespError::InvalidBulkLength);
            }
            Ok(bulk_body(buf, body, len as usize)?
                .map(|(r, next)| (Value::Bulk(buf[r].to_vec()), next)))
        }
        b'*' | b'~' | b'%' => parse_aggregate(buf, at, limits, depth),
        b'_' => {
            let Some(end) = find_crlf(buf, at + 1, 0)? else {
                return Ok(None);
            };
            Ok(Some((Value::Null, end + 2)))
        }
        b'#' | b',' => {
            let Some(end) = find_crlf(buf, at + 1, limits.max_inline)? else {
                return Ok(None);
            };
            let text = &buf[at + 1..end];
            let v = match (tag, text) {
                (b'#', b"t") => Value::Boolean(true),
                (b'#', b"f") => Value::Boolean(false),
                (b',', t) => Value::Double(parse_double(t).ok_or(RespError::InvalidResp3)?),
                _ => return Err(RespError::InvalidResp3),
            };
            Ok(Some((v, end + 2)))
        }
        b'=' => {
            let Some((len, body)) = header(buf, at, RespError::InvalidBulkLength)? else {
                return Ok(None);
            };
            if len < 4 || len as usize > limits.max_bulk {
                return Err(RespError::InvalidBulkLength);
            }
            let Some((r, next)) = bulk_body(buf, body, len as usize)? else {
                return Ok(None);
            };
            let b = &buf[r];
            if b[3] != b':' {
                return Err(RespError::InvalidResp3);
            }
            let v = Value::Verbatim {
                format: [b[0], b[1], b[2]],
                text: b[4..].to_vec(),
            };
            Ok(Some((v, next)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

/// An array (`*`), set (`~`) or map (`%`, `n` pairs) at `at`.
fn parse_aggregate(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<(Value, usize)>, RespError> {
    if depth >= limits.max_depth {
        return Err(RespError::TooDeep);
    }
    let Some((n, mut next)) = header(buf, at, RespError::InvalidMultibulkLength)? else {
        return Ok(None);
    };
    let tag = buf[at];
    if n == -1 && tag == b'*' {
        return Ok(Some((Value::NilArray, next)));
    }
    let per_entry = if tag == b'%' { 2 } else { 1 };
    let count = usize::try_from(n).map_err(|_| RespError::InvalidMultibulkLength)?;
    if count.saturating_mul(per_entry) > limits.max_array {
        return Err(RespError::InvalidMultibulkLength);
    }
    let mut items = Vec::with_capacity((count * per_entry).min(1024));
    for _ in 0..count * per_entry {
        let Some((v, after)) = parse_value_at(buf, next, limits, depth + 1)? else {
            return Ok(None);
        };
        items.push(v);
        next = after;
    }
    let value = match tag {
        b'%' => {
            let mut items = items.into_iter();
            let mut pairs = Vec::with_capacity(count);
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        b'~' => Value::Set(items),
        _ => Value::Array(items),
    };
    Ok(Some((value, next)))
}

fn parse_double(t: &[u8]) -> Option<f64> {
    match t {
        b"inf" | b"+inf" => Some(f64::INFINITY),
        b"-inf" => Some(f64::NEG_INFINITY),
        b"nan" => Some(f64::NAN),
        _ => std::str::from_utf8(t).ok()?.parse().ok(),
    }
}

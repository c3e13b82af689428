//! The encoder: values, commands and the replies whose form depends on
//! the connection's [`Protocol`].

use super::{Protocol, Value};

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

//! The client's value parser: reads one reply (any RESP2 or RESP3 value,
//! nested up to [`Limits::max_depth`]).

use super::framing::{bulk_body, find_crlf, header};
use super::{Limits, RespError, Value};

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

//! What both parsers read the same way: CRLF-terminated lines, integers,
//! `<tag><integer>` headers and bulk string bodies.

use super::RespError;

/// Finds the end of the line starting at `at`: the index of its `\r\n`.
/// `Ok(None)` if no CRLF yet; an error if the line exceeds `max`.
pub(super) fn find_crlf(buf: &[u8], at: usize, max: usize) -> Result<Option<usize>, RespError> {
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
pub(super) fn header(
    buf: &[u8],
    at: usize,
    bad: RespError,
) -> Result<Option<(i64, usize)>, RespError> {
    let Some(end) = find_crlf(buf, at + 1, 32).map_err(|_| bad.clone())? else {
        return Ok(None);
    };
    let n = parse_int(&buf[at + 1..end]).ok_or(bad)?;
    Ok(Some((n, end + 2)))
}

/// Reads a bulk string body of `len` bytes at `at`; the range of its bytes
/// and the offset after its CRLF.
pub(super) fn bulk_body(
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

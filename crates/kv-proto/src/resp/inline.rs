//! Inline commands: a line of words with Redis's quoting.

use super::RespError;

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

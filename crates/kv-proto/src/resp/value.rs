//! [`Value`], a RESP2 or RESP3 value, and the text redis-cli would show
//! for it.

use std::fmt;

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

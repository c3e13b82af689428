//! RESP2 and RESP3, the Redis serialization protocol: values, an encoder,
//! an incremental value parser (for clients) and an incremental command
//! parser (for servers) that accepts both multibulk and inline commands.
//!
//! A server speaks RESP2 until a client sends `HELLO 3`; the encoding
//! helpers that differ between the two ([`encode_null`],
//! [`encode_map_header`], [`encode_verbatim`], [`encode_double`],
//! [`encode_bool`]) take the connection's [`Protocol`].
//!
//! The module's files: [`Value`] and its text form in `value.rs`, the
//! encoder in `encode.rs`, the server's [`CommandParser`] in `command.rs`
//! (inline commands split by [`split_args`] in `inline.rs`), the client's
//! [`parse_value`] in `reply.rs`, and the line and header reading both
//! parsers share in `framing.rs`.

mod command;
mod encode;
mod framing;
mod inline;
mod reply;
mod value;

pub use command::{parse_command, CommandParser, Parsed};
pub use encode::{
    encode, encode_array_header, encode_bool, encode_bulk, encode_command, encode_double,
    encode_integer, encode_map_header, encode_null, encode_null_array, encode_verbatim,
    format_double,
};
pub use inline::split_args;
pub use reply::parse_value;
pub use value::Value;

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

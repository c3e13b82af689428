//! The RESP commands this server knows, with Redis's arity, flags and key
//! positions: what `COMMAND`, `COMMAND COUNT`, `COMMAND INFO` and
//! `COMMAND DOCS` answer, what MULTI checks before queueing, and the
//! commands of data types kv does not have, refused by name.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One command as `COMMAND INFO` describes it.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis's arity: `n` means exactly `n` arguments counting the name,
    /// `-n` at least `n`.
    pub arity: i32,
    /// Redis's flags (`readonly`, `write`, `fast`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none).
    pub first_key: i32,
    /// Position of the last key (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// Redis's command group (`string`, `generic`, ...).
    pub group: &'static str,
    /// One line on what it does, for `COMMAND DOCS`.
    pub summary: &'static str,
}

impl CommandSpec {
    /// Whether `argc` arguments (counting the name) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

const R: &[&str] = &["readonly", "fast"];
const RS: &[&str] = &["readonly"];
const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "fast"];
const WFD: &[&str] = &["write", "denyoom", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const ADMIN: &[&str] = &["admin", "noscript", "loading", "stale"];
const NOAUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $group:literal, $summary:literal) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first_key: $first,
            last_key: $last,
            step: $step,
            group: $group,
            summary: $summary,
        }
    };
}

/// Every command this server answers.
pub const COMMANDS: &[CommandSpec] = &[
    spec!("get", 2, R, 1, 1, 1, "string", "Returns the string value of a key."),
    spec!("set", -3, W, 1, 1, 1, "string", "Sets the string value of a key."),
    spec!("mget", -2, R, 1, -1, 1, "string", "Atomically returns the string values of one or more keys."),
    spec!("mset", -3, W, 1, -1, 2, "string", "Atomically creates or modifies the string values of one or more keys."),
    spec!("strlen", 2, R, 1, 1, 1, "string", "Returns the length of a string value."),
    spec!("incr", 2, WFD, 1, 1, 1, "string", "Increments the integer value of a key by one."),
    spec!("decr", 2, WFD, 1, 1, 1, "string", "Decrements the integer value of a key by one."),
    spec!("incrby", 3, WFD, 1, 1, 1, "string", "Increments the integer value of a key by a number."),
    spec!("decrby", 3, WFD, 1, 1, 1, "string", "Decrements a number from the integer value of a key."),
    spec!("incrbyfloat", 3, WFD, 1, 1, 1, "string", "Increments the floating point value of a key by a number."),
    spec!("append", 3, WFD, 1, 1, 1, "string", "Appends a string to the value of a key."),
    spec!("setrange", 4, W, 1, 1, 1, "string", "Overwrites a part of a string value with another by an offset."),
    spec!("getset", 3, WFD, 1, 1, 1, "string", "Returns the previous string value of a key after setting it to a new value."),
    spec!("getdel", 2, WF, 1, 1, 1, "string", "Returns the string value of a key after deleting the key."),
    spec!("setnx", 3, WFD, 1, 1, 1, "string", "Set the string value of a key only when the key doesn't exist."),
    spec!("msetnx", -3, W, 1, -1, 2, "string", "Atomically modifies the string values of one or more keys only when all keys don't exist."),
    spec!("setex", 4, W, 1, 1, 1, "string", "Sets the string value and expiration time of a key. Creates the key if it doesn't exist."),
    spec!("psetex", 4, W, 1, 1, 1, "string", "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist."),
    spec!("getex", -2, WF, 1, 1, 1, "string", "Returns the string value of a key after setting its expiration time."),
    spec!("getrange", 4, RS, 1, 1, 1, "string", "Returns a substring of the string stored at a key."),
    spec!("substr", 4, RS, 1, 1, 1, "string", "Returns a substring from a string value."),
    spec!("del", -2, &["write"], 1, -1, 1, "generic", "Deletes one or more keys."),
    spec!("unlink", -2, WF, 1, -1, 1, "generic", "Asynchronously deletes one or more keys."),
    spec!("rename", 3, &["write"], 1, 2, 1, "generic", "Renames a key and overwrites the destination."),
    spec!("renamenx", 3, WF, 1, 2, 1, "generic", "Renames a key only when the target key name doesn't exist."),
    spec!("copy", -3, W, 1, 2, 1, "generic", "Copies the value of a key to a new key."),
    spec!("exists", -2, R, 1, -1, 1, "generic", "Determines whether one or more keys exist."),
    spec!("touch", -2, R, 1, -1, 1, "generic", "Returns the number of existing keys out of those specified."),
    spec!("expire", -3, WF, 1, 1, 1, "generic", "Sets the expiration time of a key in seconds."),
    spec!("pexpire", -3, WF, 1, 1, 1, "generic", "Sets the expiration time of a key in milliseconds."),
    spec!("expireat", -3, WF, 1, 1, 1, "generic", "Sets the expiration time of a key to a Unix timestamp."),
    spec!("pexpireat", -3, WF, 1, 1, 1, "generic", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec!("persist", 2, WF, 1, 1, 1, "generic", "Removes the expiration time of a key."),
    spec!("ttl", 2, R, 1, 1, 1, "generic", "Returns the expiration time in seconds of a key."),
    spec!("pttl", 2, R, 1, 1, 1, "generic", "Returns the expiration time in milliseconds of a key."),
    spec!("expiretime", 2, R, 1, 1, 1, "generic", "Returns the expiration time of a key as a Unix timestamp."),
    spec!("pexpiretime", 2, R, 1, 1, 1, "generic", "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    spec!("type", 2, R, 1, 1, 1, "generic", "Determines the type of value stored at a key."),
    spec!("keys", 2, RS, 0, 0, 0, "generic", "Returns all key names that match a pattern."),
    spec!("scan", -2, RS, 0, 0, 0, "generic", "Iterates over the key names in the database."),
    spec!("randomkey", 1, RS, 0, 0, 0, "generic", "Returns a random key name from the database."),
    spec!("object", -2, RS, 2, 2, 1, "generic", "A container for object introspection commands (ENCODING)."),
    spec!("wait", 3, &[], 0, 0, 0, "generic", "Blocks until the asynchronous replication of all preceding write commands sent by the connection is completed."),
    spec!("dbsize", 1, R, 0, 0, 0, "server", "Returns the number of keys in the database."),
    spec!("info", -1, &["loading", "stale"], 0, 0, 0, "server", "Returns information and statistics about the server."),
    spec!("config", -2, &[], 0, 0, 0, "server", "A container for server configuration commands (GET)."),
    spec!("command", -1, &["loading", "stale"], 0, 0, 0, "server", "Returns detailed information about all commands."),
    spec!("flushall", -1, &["write"], 0, 0, 0, "server", "Removes all keys from all databases."),
    spec!("flushdb", -1, &["write"], 0, 0, 0, "server", "Removes all keys from the current database."),
    spec!("memory", -2, RS, 0, 0, 0, "server", "A container for memory diagnostics commands (USAGE)."),
    spec!("time", 1, &["loading", "stale", "fast"], 0, 0, 0, "server", "Returns the server time."),
    spec!("ping", -1, &["fast"], 0, 0, 0, "connection", "Returns the server's liveliness response."),
    spec!("echo", 2, &["fast"], 0, 0, 0, "connection", "Returns the given string."),
    spec!("auth", -2, NOAUTH, 0, 0, 0, "connection", "Authenticates the connection."),
    spec!("hello", -1, NOAUTH, 0, 0, 0, "connection", "Handshakes with the Redis server."),
    spec!("select", 2, CONN, 0, 0, 0, "connection", "Changes the selected database (only 0 exists)."),
    spec!("client", -2, &["noscript", "loading", "stale"], 0, 0, 0, "connection", "A container for client connection commands."),
    spec!("reset", 1, NOAUTH, 0, 0, 0, "connection", "Resets the connection."),
    spec!("quit", -1, NOAUTH, 0, 0, 0, "connection", "Closes the connection."),
    spec!("multi", 1, CONN, 0, 0, 0, "transactions", "Starts a transaction."),
    spec!("exec", 1, &["noscript", "loading", "stale"], 0, 0, 0, "transactions", "Executes all commands in a transaction."),
    spec!("discard", 1, CONN, 0, 0, 0, "transactions", "Discards a transaction."),
    spec!("watch", -2, CONN, 1, -1, 1, "transactions", "Monitors changes to keys to determine the execution of a transaction."),
    spec!("unwatch", 1, CONN, 0, 0, 0, "transactions", "Forgets about watched keys of a transaction."),
    spec!("cluster", -1, ADMIN, 0, 0, 0, "cluster", "kv's cluster view: members, health and rebalance progress."),
    spec!("localget", 2, R, 1, 1, 1, "cluster", "kv: this node's own copy of a key and its version, without coordination."),
    spec!("localpexpiretime", 2, R, 1, 1, 1, "cluster", "kv: the expiry (as PEXPIRETIME) of this node's own copy of a key, without coordination."),
];

/// The position in [`COMMANDS`] of `name` (lower case), if this server
/// knows it: one hash lookup, as every command looks itself up here (to
/// run and again to be counted in the metrics).
pub fn index(name: &str) -> Option<usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            COMMANDS
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name, i))
                .collect()
        })
        .get(name)
        .copied()
}

/// The spec of `name` (lower case), if this server knows it.
pub fn find(name: &str) -> Option<&'static CommandSpec> {
    index(name).map(|i| &COMMANDS[i])
}

/// The data type a Redis command works on, for commands of types kv does
/// not store (it stores strings only); `None` for any other command.
pub fn unsupported_type(name: &str) -> Option<&'static str> {
    const TYPES: &[(&str, &[&str])] = &[
        (
            "lists",
            &[
                "lpush",
                "rpush",
                "lpushx",
                "rpushx",
                "lpop",
                "rpop",
                "lrange",
                "llen",
                "lindex",
                "lset",
                "linsert",
                "lrem",
                "ltrim",
                "rpoplpush",
                "lmove",
                "blpop",
                "brpop",
                "brpoplpush",
                "blmove",
                "lpos",
                "lmpop",
                "blmpop",
            ],
        ),
        (
            "hashes",
            &[
                "hset",
                "hget",
                "hmset",
                "hmget",
                "hgetall",
                "hdel",
                "hexists",
                "hincrby",
                "hincrbyfloat",
                "hkeys",
                "hvals",
                "hlen",
                "hsetnx",
                "hstrlen",
                "hscan",
                "hrandfield",
            ],
        ),
        (
            "sets",
            &[
                "sadd",
                "srem",
                "smembers",
                "sismember",
                "smismember",
                "scard",
                "spop",
                "srandmember",
                "sinter",
                "sinterstore",
                "sunion",
                "sunionstore",
                "sdiff",
                "sdiffstore",
                "smove",
                "sscan",
                "sintercard",
            ],
        ),
        (
            "sorted sets",
            &[
                "zadd",
                "zrem",
                "zrange",
                "zrangebyscore",
                "zrevrange",
                "zrevrangebyscore",
                "zscore",
                "zincrby",
                "zcard",
                "zcount",
                "zrank",
                "zrevrank",
                "zpopmin",
                "zpopmax",
                "bzpopmin",
                "bzpopmax",
                "zrangestore",
                "zunionstore",
                "zinterstore",
                "zdiffstore",
                "zscan",
                "zmscore",
                "zrandmember",
                "zlexcount",
                "zrangebylex",
                "zrevrangebylex",
                "zremrangebyrank",
                "zremrangebyscore",
                "zremrangebylex",
                "zunion",
                "zinter",
                "zdiff",
                "zmpop",
                "bzmpop",
                "zintercard",
            ],
        ),
        (
            "streams",
            &[
                "xadd",
                "xrange",
                "xrevrange",
                "xlen",
                "xread",
                "xreadgroup",
                "xgroup",
                "xack",
                "xdel",
                "xtrim",
                "xinfo",
                "xclaim",
                "xautoclaim",
                "xpending",
                "xsetid",
            ],
        ),
        ("HyperLogLogs", &["pfadd", "pfcount", "pfmerge"]),
        (
            "geospatial indexes",
            &[
                "geoadd",
                "geodist",
                "geohash",
                "geopos",
                "georadius",
                "georadiusbymember",
                "geosearch",
                "geosearchstore",
            ],
        ),
        (
            "bitmaps",
            &[
                "setbit", "getbit", "bitcount", "bitop", "bitpos", "bitfield",
            ],
        ),
        (
            "pub/sub",
            &[
                "publish",
                "subscribe",
                "unsubscribe",
                "psubscribe",
                "punsubscribe",
                "pubsub",
                "ssubscribe",
                "sunsubscribe",
                "spublish",
            ],
        ),
        (
            "scripts and functions",
            &[
                "eval",
                "evalsha",
                "eval_ro",
                "evalsha_ro",
                "script",
                "function",
                "fcall",
                "fcall_ro",
            ],
        ),
    ];
    TYPES
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(kind, _)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_found_at_its_own_place() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(index(c.name), Some(i), "{} is listed twice", c.name);
            assert_eq!(c.name, c.name.to_ascii_lowercase());
        }
        assert_eq!(index("nosuchcommand"), None);
        assert!(find("get").is_some_and(|c| c.name == "get"));
    }
}

//! MULTI, EXEC, DISCARD, WATCH and UNWATCH on a single node, as Redis
//! has them: commands after MULTI are checked and queued (`+QUEUED`); a
//! command refused while queueing aborts the transaction at EXEC
//! (`-EXECABORT`); EXEC runs the queue with no other client's command in
//! between; a watched key written by anyone since WATCH makes EXEC answer
//! the null array and run nothing. Clusters refuse transactions (they would
//! need atomic operations across replicas).

use std::borrow::Cow;

use kv_proto::resp::{encode_array_header, encode_null_array};
use kv_storage::Version;

use crate::command_table;
use crate::resp_cmd::{error, run, After, Session};
use crate::state::Shared;

/// A transaction being queued.
#[derive(Debug, Default)]
pub struct Queued {
    commands: Vec<Vec<Vec<u8>>>,
    /// A command was refused while queueing: EXEC must run nothing.
    refused: bool,
    /// Bytes queued (bounded by the query buffer limit).
    bytes: usize,
    /// MULTI itself was refused (on a cluster): every command up to EXEC
    /// or DISCARD is answered with an error and not run, so that a client
    /// that pipelined MULTI ... EXEC sees no part of it applied.
    multi_refused: bool,
}

impl Queued {
    /// How many commands are queued.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The state after a MULTI that was refused on a cluster.
    pub fn refused_on_cluster() -> Queued {
        Queued {
            refused: true,
            multi_refused: true,
            ..Queued::default()
        }
    }
}

/// Keys watched by a connection, with the version each had (`None`: no
/// entry) when WATCH ran.
pub type Watched = std::collections::BTreeMap<Vec<u8>, Option<Version>>;

fn version_of(shared: &Shared, key: &[u8]) -> Option<Version> {
    shared.store.get_versioned(key).map(|v| v.version)
}

/// MULTI. Returns true (the command was handled here).
pub fn multi(s: &mut Session, out: &mut Vec<u8>) -> bool {
    if s.tx.is_some() {
        error(out, "ERR MULTI calls can not be nested");
    } else {
        s.tx = Some(Queued::default());
        out.extend_from_slice(b"+OK\r\n");
    }
    true
}

/// A command sent between MULTI and EXEC: checked, then queued. Returns
/// true (handled).
pub fn queue(
    shared: &Shared,
    s: &mut Session,
    name: &str,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> bool {
    let Some(tx) = s.tx.as_mut() else {
        return false;
    };
    if tx.multi_refused {
        error(
            out,
            "ERR not run: this connection's MULTI was refused (transactions are not supported on a cluster); EXEC or DISCARD ends the refused transaction",
        );
        return true;
    }
    let bytes: usize = args.iter().map(|a| a.len() + 16).sum();
    match command_table::find(name) {
        Some(spec) if spec.flags.contains(&"denyoom") && shared.is_over_memory() => {
            tx.refused = true;
            error(
                out,
                "OOM command not allowed when used memory > 'maxmemory'.",
            );
        }
        Some(_) if tx.bytes.saturating_add(bytes) > shared.config.query_buffer_limit() => {
            tx.refused = true;
            error(
                out,
                "ERR the transaction passed the query buffer limit; it will be discarded",
            );
        }
        Some(spec) if spec.arity_ok(args.len()) => {
            tx.bytes += bytes;
            tx.commands.push(args.iter().map(|a| a.to_vec()).collect());
            out.extend_from_slice(b"+QUEUED\r\n");
        }
        Some(_) => {
            tx.refused = true;
            error(
                out,
                &format!("ERR wrong number of arguments for '{name}' command"),
            );
        }
        None => {
            tx.refused = true;
            crate::resp_cmd::unknown(&args[0], &args[1..], out);
        }
    }
    true
}

/// DISCARD. Returns true (handled).
pub fn discard(s: &mut Session, out: &mut Vec<u8>) -> bool {
    if s.tx.take().is_none() {
        error(out, "ERR DISCARD without MULTI");
    } else {
        s.watched.clear();
        out.extend_from_slice(b"+OK\r\n");
    }
    true
}

/// WATCH key [key ...].
pub fn watch(shared: &Shared, s: &mut Session, keys: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if s.watched.len().saturating_add(keys.len()) > MAX_WATCHED {
        return error(
            out,
            &format!(
                "ERR too many watched keys (at most {MAX_WATCHED} per connection); UNWATCH first"
            ),
        );
    }
    for k in keys {
        if !s.watched.contains_key(k.as_ref()) {
            s.watched.insert(k.to_vec(), version_of(shared, k));
        }
    }
    out.extend_from_slice(b"+OK\r\n");
}

/// Most keys one connection may watch at once.
pub const MAX_WATCHED: usize = 100_000;

/// WATCH between MULTI and EXEC: refused, as Redis does, without
/// discarding the transaction. Returns true (handled).
pub fn refuse_watch(out: &mut Vec<u8>) -> bool {
    error(out, "ERR WATCH inside MULTI is not allowed");
    true
}

/// UNWATCH.
pub fn unwatch(s: &mut Session, out: &mut Vec<u8>) {
    s.watched.clear();
    out.extend_from_slice(b"+OK\r\n");
}

/// EXEC: runs the queue atomically, or answers why it did not.
pub fn exec(shared: &Shared, s: &mut Session, out: &mut Vec<u8>) -> After {
    let Some(tx) = s.tx.take() else {
        return {
            error(out, "ERR EXEC without MULTI");
            After::Continue
        };
    };
    let watched = std::mem::take(&mut s.watched);
    if tx.refused {
        error(
            out,
            "EXECABORT Transaction discarded because of previous errors.",
        );
        return After::Continue;
    }
    // No other command runs until the queue has.
    let _exclusive = shared.exclusive_gate();
    // Checked under the gate: the node may have joined while EXEC waited.
    if shared.is_clustered() {
        error(
            out,
            "EXECABORT Transaction discarded: this node is part of a cluster now, where MULTI/EXEC is not supported",
        );
        return After::Continue;
    }
    if watched.iter().any(|(k, v)| version_of(shared, k) != *v) {
        encode_null_array(out, s.proto);
        return After::Continue;
    }
    encode_array_header(out, tx.commands.len());
    let mut after = After::Continue;
    for cmd in &tx.commands {
        let args: Vec<Cow<'_, [u8]>> = cmd.iter().map(|a| Cow::Borrowed(a.as_slice())).collect();
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        if run(shared, s, &name, &args, out) == After::Close {
            after = After::Close;
        }
    }
    after
}

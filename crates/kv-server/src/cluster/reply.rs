//! How the cluster's replies are encoded for the client waiting for them.

use kv_proto::native::{self, ErrorKind, Response};
use kv_replication::ClientReply;

use super::{now_ms, NativeKind, ReplyTo};

/// The text of a request that did not reach its quorum in time. A write
/// may still have been stored by the replicas that were slow or whose
/// acknowledgement was lost: its outcome is unknown, not failed.
fn unavailable_text(to: ReplyTo, answered: usize, needed: usize, replicas: usize) -> String {
    let write = is_write(to);
    let mut text = format!(
        "unavailable: only {answered} of {replicas} replicas answered in time (needed {needed})"
    );
    if write {
        text.push_str(
            "; the outcome is unknown: some replicas may have stored the write, and later reads may return it",
        );
    }
    text
}

/// The answer to an operation still waiting for its replicas when
/// shutdown's grace ends.
pub(crate) fn encode_shutting_down(to: ReplyTo) -> Vec<u8> {
    let mut out = Vec::new();
    let mut text = String::from(
        "unavailable: this node is shutting down and stopped waiting for the replicas' answers",
    );
    if is_write(to) {
        text.push_str(
            "; the outcome is unknown: some replicas may have stored the write, and later reads may return it",
        );
    }
    match to {
        ReplyTo::Native(id, _) => {
            native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
        }
        _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
    }
    out
}

/// Whether a client waits for the outcome of a write (SET, DEL, PUT).
fn is_write(to: ReplyTo) -> bool {
    matches!(
        to,
        ReplyTo::RespSet
            | ReplyTo::RespDel
            | ReplyTo::Native(_, NativeKind::Put | NativeKind::Delete)
    )
}

/// The refusal of a node that serves nothing: `left` if it has left the
/// cluster, otherwise it has not heard from its cluster yet (restarted, or
/// joining). The latter is temporary: over RESP it is `LOADING`, which
/// Redis clients treat as "retry shortly" (redis-rs, go-redis and
/// redis-py retry it); natively it is `Unavailable`. Nothing was stored.
pub fn encode_not_serving(to: ReplyTo, left: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let text = if left {
        "unavailable: this node is not serving: it has left the cluster (see CLUSTER)"
    } else {
        "this node is not serving yet: it waits to hear from its cluster (it restarted, or is joining); nothing was stored, retry shortly"
    };
    match to {
        ReplyTo::Native(id, _) => {
            native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
        }
        _ if left => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        _ => crate::resp_cmd::error(&mut out, &format!("LOADING {text}")),
    }
    out
}

/// Encodes a cluster reply for the client that waits for it.
pub fn encode_reply(to: ReplyTo, reply: ClientReply) -> Vec<u8> {
    let mut out = Vec::new();
    if let ClientReply::Unavailable { replicas: 0, .. } = reply {
        return encode_not_serving(to, false);
    }
    if let ClientReply::Unavailable {
        answered,
        needed,
        replicas,
    } = reply
    {
        let text = unavailable_text(to, answered, needed, replicas);
        match to {
            ReplyTo::Native(id, _) => {
                native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
            }
            _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        }
        return out;
    }
    if let ClientReply::Conflict { newer, tries } = reply {
        // Never an OK: the write was not the newest on a write quorum.
        let text = format!(
            "write lost to a newer version ({}.{}) on the replicas after {tries} {}: the outcome is unknown (some replicas may hold this value below the newer one); retry if it must be the latest",
            newer.ts,
            newer.node,
            if tries == 1 { "try" } else { "tries" }
        );
        match to {
            ReplyTo::Native(id, _) => {
                native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
            }
            _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        }
        return out;
    }
    let now = now_ms();
    match (to, reply) {
        (ReplyTo::RespGet(_), ClientReply::Value(Some(s))) if s.value_at(now).is_some() => {
            kv_proto::resp::encode_bulk(&mut out, s.value_at(now).unwrap_or_default())
        }
        (ReplyTo::RespGet(p), _) => kv_proto::resp::encode_null(&mut out, p),
        (ReplyTo::RespSet, _) => out.extend_from_slice(b"+OK\r\n"),
        (ReplyTo::RespDel, ClientReply::Written { existed, .. }) => {
            kv_proto::resp::encode_integer(&mut out, i64::from(existed))
        }
        (ReplyTo::RespDel, _) => kv_proto::resp::encode_integer(&mut out, 0),
        (ReplyTo::RespTtl(kind), ClientReply::Value(s)) => {
            let live = s.filter(|s| s.value_at(now).is_some());
            crate::resp_expiry::encode_ttl(&mut out, kind, live.map(|s| s.expires_at), now)
        }
        (ReplyTo::RespTtl(_) | ReplyTo::RespListing, other) => {
            crate::resp_cmd::error(&mut out, &format!("ERR unexpected cluster reply {other:?}"))
        }
        (ReplyTo::Native(id, kind), reply) => {
            let r = match (kind, reply) {
                (NativeKind::Get, ClientReply::Value(s)) => Response::Value {
                    value: s
                        .filter(|s| s.value_at(now).is_some())
                        .and_then(|s| s.value),
                },
                (NativeKind::Put, _) => Response::Ok,
                (NativeKind::Delete, ClientReply::Written { existed, .. }) => {
                    Response::Deleted { existed }
                }
                (NativeKind::List, ClientReply::Keys { keys, next }) => {
                    Response::Keys { keys, next }
                }
                (_, other) => Response::error(
                    ErrorKind::Internal,
                    format!("unexpected cluster reply {other:?}"),
                ),
            };
            native::encode_frame(&mut out, id, &r);
        }
    }
    out
}

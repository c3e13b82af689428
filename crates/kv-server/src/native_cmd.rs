//! Requests of the native protocol.

use kv_proto::native::{ErrorKind, Request, Response};

use crate::resp_cmd::Session;
use crate::state::Shared;

/// Largest page a LIST returns, whatever the client asks.
pub use kv_replication::MAX_LIST_PAGE;

/// The request's label in the per-command figures.
pub fn label(req: &Request) -> &'static str {
    match req {
        Request::Get { .. } => "get",
        Request::Put { .. } => "put",
        Request::Delete { .. } => "delete",
        Request::List { .. } => "list",
        Request::Ping { .. } => "ping",
        Request::Auth { .. } => "auth",
        Request::Info => "info",
        Request::Cluster => "cluster",
        _ => "other",
    }
}

/// Runs one request.
pub fn execute(shared: &Shared, s: &mut Session, req: Request) -> Response {
    shared.count_command();
    let name = label(&req);
    let started = std::time::Instant::now();
    let reply = execute_request(shared, s, req);
    crate::clients::publish_named(s, name);
    let failed = matches!(reply, Response::Error { .. });
    let took = started.elapsed();
    shared.metrics.record(
        s.worker,
        crate::metrics::Protocol::Native,
        name,
        took,
        failed,
    );
    reply
}

/// [`execute`] without the figures.
fn execute_request(shared: &Shared, s: &mut Session, req: Request) -> Response {
    if !s.authenticated && !matches!(req, Request::Auth { .. }) {
        return Response::error(
            ErrorKind::AuthRequired,
            "authentication required: send AUTH first",
        );
    }
    // EXEC holds this exclusively while it runs a transaction.
    let _gate = shared.command_gate(s.worker);
    match req {
        Request::Get { key } => Response::Value {
            value: shared.store.get(&key),
        },
        Request::Put { key, value } => put(shared, &key, &value),
        Request::Delete { key } => match shared.store.delete(&key) {
            Ok(existed) => Response::Deleted { existed },
            Err(e) => storage_error(&e),
        },
        Request::List {
            prefix,
            after,
            limit,
        } => list(shared, &prefix, after.as_deref(), limit),
        Request::Ping { payload } => Response::Pong { payload },
        Request::Auth { password } => auth(shared, s, &password),
        Request::Info => Response::Text {
            text: shared.info(""),
        },
        Request::Cluster => match shared.cluster_view() {
            Some(text) => Response::Text { text },
            None => Response::error(ErrorKind::Unsupported, "cluster support is not running"),
        },
        Request::PeerHello { .. }
        | Request::PeerProof { .. }
        | Request::Peer { .. }
        | Request::PeerBatch { .. }
        | Request::Join { .. }
        | Request::Leave { .. }
        | Request::Remove { .. } => Response::error(
            ErrorKind::Malformed,
            "peer and cluster commands are handled by the connection",
        ),
    }
}

/// The refusal for a write that breaks a size or memory limit, if any.
pub fn refuse_write(shared: &Shared, key: &[u8], value: &[u8]) -> Option<Response> {
    if let Err(msg) = shared.check_sizes(key, Some(value)) {
        return Some(Response::error(ErrorKind::TooLarge, msg));
    }
    if shared.is_over_memory() {
        shared
            .counters
            .oom_rejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Some(Response::error(
            ErrorKind::OutOfMemory,
            format!(
                "out of memory: the data exceeds --maxmemory ({} bytes); writes are refused, reads still work",
                shared.config.maxmemory
            ),
        ));
    }
    None
}

fn put(shared: &Shared, key: &[u8], value: &[u8]) -> Response {
    if let Some(refusal) = refuse_write(shared, key, value) {
        return refusal;
    }
    match shared.store.put(key, value) {
        Ok(_) => Response::Ok,
        Err(e) => storage_error(&e),
    }
}

fn list(shared: &Shared, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Response {
    let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
    let page = shared.store.list_page(prefix, after, limit);
    Response::Keys {
        keys: page.entries.into_iter().map(|(k, _)| k).collect(),
        next: page.next,
    }
}

fn auth(shared: &Shared, s: &mut Session, password: &str) -> Response {
    match &shared.config.requirepass {
        None => Response::error(
            ErrorKind::AuthFailed,
            "no password is configured on this server",
        ),
        Some(want) => {
            let check = || crate::state::same_secret(want.as_bytes(), password.as_bytes());
            match s.try_auth(check) {
                crate::resp_cmd::AuthAttempt::Accepted => Response::Ok,
                crate::resp_cmd::AuthAttempt::Wrong => {
                    Response::error(ErrorKind::AuthFailed, "wrong password")
                }
                crate::resp_cmd::AuthAttempt::TooSoon => Response::error(
                    ErrorKind::AuthFailed,
                    "not checked: too many failed attempts on this connection (the last less than 100 ms ago) or from this address (try again in a few seconds)",
                ),
            }
        }
    }
}

/// The response to a storage failure.
pub fn storage_error(e: &kv_storage::Error) -> Response {
    Response::error(ErrorKind::Internal, format!("storage failure: {e}"))
}

//! The per-connection [`Session`] and the AUTH limits it enforces
//! ([`Session::try_auth`]).

use kv_proto::resp::Protocol;

use crate::resp_tx;

/// Per-connection state that commands see.
#[derive(Debug, Default)]
pub struct Session {
    /// Whether AUTH succeeded (or no password is required).
    pub authenticated: bool,
    /// RESP2 until the client sends `HELLO 3`.
    pub proto: Protocol,
    /// This client's id (CLIENT ID), unique in this server's lifetime.
    pub id: u64,
    /// The event loop serving this client.
    pub worker: usize,
    /// The name set by CLIENT SETNAME or HELLO SETNAME.
    pub name: Option<Vec<u8>>,
    /// CLIENT SETINFO LIB-NAME.
    pub lib_name: Option<Vec<u8>>,
    /// CLIENT SETINFO LIB-VER.
    pub lib_ver: Option<Vec<u8>>,
    /// When the connection was accepted.
    pub since: Option<std::time::Instant>,
    /// The transaction being queued, between MULTI and EXEC.
    pub tx: Option<resp_tx::Queued>,
    /// Keys watched for the next EXEC.
    pub watched: resp_tx::Watched,
    /// Failed AUTHs on this connection; at [`MAX_AUTH_FAILURES`] it closes.
    pub auth_failures: u32,
    /// Until when, after a failed AUTH, attempts fail unchecked.
    pub auth_retry_at: Option<std::time::Instant>,
    /// This connection's entry in
    /// [`Shared::clients`](crate::state::Shared::clients) (none in tests).
    pub client: Option<std::sync::Arc<crate::clients::Client>>,
    /// The client's address and where failed AUTHs from it are counted
    /// (see [`crate::auth_limit`]).
    pub source: Option<(
        std::net::IpAddr,
        std::sync::Arc<crate::auth_limit::SourceLimiter>,
    )>,
}

/// Failed AUTH attempts after which a connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// Failed AUTH attempts on a connection before the retry delay applies
/// (a client that mistypes once or twice retries at once).
pub const FREE_AUTH_FAILURES: u32 = 3;

/// After [`FREE_AUTH_FAILURES`], how long after each failed AUTH further
/// attempts on the same connection fail without being checked (pipelined
/// guesses test nothing). Nothing waits: the attempt is answered at once.
pub const AUTH_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The outcome of an AUTH attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthAttempt {
    /// The password is right: the session is authenticated.
    Accepted,
    /// The password is wrong.
    Wrong,
    /// Not checked: a failure on this connection was too recent, or its
    /// source address failed too often.
    TooSoon,
}

impl Session {
    /// A new client's session; `authenticated` is false when a password is
    /// required.
    pub fn new(authenticated: bool, id: u64, worker: usize) -> Session {
        Session {
            authenticated,
            id,
            worker,
            since: Some(std::time::Instant::now()),
            ..Session::default()
        }
    }

    /// Checks a password with `check`, unless, after
    /// [`FREE_AUTH_FAILURES`], a failed attempt on this connection was less
    /// than [`AUTH_RETRY_DELAY`] ago; every attempt that does not succeed
    /// counts toward [`MAX_AUTH_FAILURES`].
    pub fn try_auth(&mut self, check: impl FnOnce() -> bool) -> AuthAttempt {
        let now = std::time::Instant::now();
        let source_held = self
            .source
            .as_ref()
            .is_some_and(|(ip, limiter)| !limiter.may_try(*ip, now));
        let outcome = if source_held || self.auth_retry_at.is_some_and(|t| now < t) {
            AuthAttempt::TooSoon
        } else if check() {
            AuthAttempt::Accepted
        } else {
            AuthAttempt::Wrong
        };
        if let Some((ip, limiter)) = &self.source {
            match outcome {
                AuthAttempt::Wrong => limiter.failed(*ip, now),
                AuthAttempt::Accepted => limiter.succeeded(*ip, now),
                AuthAttempt::TooSoon => {}
            }
        }
        if outcome == AuthAttempt::Accepted {
            self.authenticated = true;
        } else {
            self.auth_failures = self.auth_failures.saturating_add(1);
            if self.auth_failures >= FREE_AUTH_FAILURES {
                self.auth_retry_at = Some(now + AUTH_RETRY_DELAY);
            }
        }
        outcome
    }

    /// Whether the connection failed AUTH too often and must close.
    pub fn too_many_auth_failures(&self) -> bool {
        self.auth_failures >= MAX_AUTH_FAILURES
    }
}

//! Which budget a connection counts against, and when a connection that
//! is idle or has not finished its handshake is closed (see
//! `docs/security.md`, "Connection limits").
//!
//! - A connection accepted while client slots are free counts as a client
//!   (`--max-clients`). Once it proves it is a peer (the peer handshake),
//!   it moves to the peers' budget (`--max-peers`), so links between nodes
//!   never hold client slots.
//! - When every client slot is taken, a connection is still let in on one
//!   of [`PEER_RESERVE`] slots kept for would-be peers ("probation"), if
//!   the node accepts peers at all: it must send the peer preamble
//!   (`FLAG_PEER_LINK`) and complete the peer handshake; a connection that
//!   speaks as a client there is refused with the usual "max number of
//!   clients reached".
//! - Deadlines: a connection that has not finished its handshake (TLS,
//!   the native preamble, AUTH with `--requirepass`, the peer handshake,
//!   probation) within `--handshake-timeout` seconds is closed; a client
//!   idle for `--timeout` seconds (when not 0) is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::state::Shared;

/// Connections let in over `--max-clients` to prove they are peers, at
/// once. A node's links finish their handshake in a round trip, so a few
/// suffice; a stranger holding them all is closed at the handshake
/// deadline.
pub const PEER_RESERVE: usize = 64;

/// What a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A client slot (`--max-clients`).
    Client,
    /// A slot kept for would-be peers: must prove it is a peer.
    Probation,
    /// A proven peer (`--max-peers`).
    Peer,
    /// Counted nowhere (released already, or never admitted).
    Uncounted,
}

/// How many connections hold each budget now.
#[derive(Default)]
pub struct Budget {
    /// Proven peers.
    pub peers: AtomicUsize,
    /// Would-be peers let in over `--max-clients`.
    pub probation: AtomicUsize,
}

/// Admits a new connection, or `None` (refused: no client slot and no
/// room kept for peers). Clients are counted in `counters.connected`.
pub fn admit(shared: &Shared) -> Option<Admission> {
    let c = &shared.counters;
    let config = &shared.config;
    if take(&c.connected, config.max_clients) {
        return Some(Admission::Client);
    }
    let accepts_peers = crate::state::cluster_secret(config).is_some();
    let peers_full = c.budget.peers.load(Ordering::Relaxed) >= config.max_peers;
    if accepts_peers && !peers_full && take(&c.budget.probation, PEER_RESERVE) {
        return Some(Admission::Probation);
    }
    None
}

/// Moves a connection that just proved it is a peer to the peers'
/// budget. `false` (and nothing changed) when `--max-peers` peers are
/// connected already.
pub fn to_peer(shared: &Shared, a: &mut Admission) -> bool {
    if *a == Admission::Peer {
        return true;
    }
    if !take(&shared.counters.budget.peers, shared.config.max_peers) {
        return false;
    }
    release(shared, a);
    *a = Admission::Peer;
    true
}

/// Gives back what the connection counted against (once).
pub fn release(shared: &Shared, a: &mut Admission) {
    let c = &shared.counters;
    let counter = match a {
        Admission::Client => &c.connected,
        Admission::Probation => &c.budget.probation,
        Admission::Peer => &c.budget.peers,
        Admission::Uncounted => return,
    };
    counter.fetch_sub(1, Ordering::Relaxed);
    *a = Admission::Uncounted;
}

/// Adds one to `n` if it is below `max`.
fn take(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
        (v < max).then_some(v + 1)
    })
    .is_ok()
}

/// How often an event loop looks for connections past a deadline.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// When a connection was opened and last sent something.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Accepted at.
    pub opened: Instant,
    /// Bytes last arrived at.
    pub last_read: Instant,
}

impl Clock {
    /// A connection accepted now.
    pub fn new(now: Instant) -> Clock {
        Clock {
            opened: now,
            last_read: now,
        }
    }
}

/// Why a connection is closed by a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// Its handshake did not finish within `--handshake-timeout`.
    Handshake,
    /// A client idle for `--timeout`.
    Idle,
}

/// What a deadline needs to know of a connection.
pub struct ConnState {
    /// A handshake is not finished (TLS, preamble, AUTH, peer, probation).
    pub handshake_pending: bool,
    /// A client (not a peer) with no request in flight.
    pub idle_client: bool,
}

/// Whether a connection is past a deadline at `now`.
pub fn overdue(config: &Config, clock: &Clock, s: &ConnState, now: Instant) -> Option<Overdue> {
    let handshake = Duration::from_secs(config.handshake_timeout);
    if s.handshake_pending && now.saturating_duration_since(clock.opened) >= handshake {
        return Some(Overdue::Handshake);
    }
    let idle = Duration::from_secs(config.timeout);
    let idle_for = now.saturating_duration_since(clock.last_read);
    (config.timeout > 0 && s.idle_client && idle_for >= idle).then_some(Overdue::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn shared(args: &[&str]) -> Shared {
        let mut all = vec!["kv-server", "--no-persistence"];
        all.extend_from_slice(args);
        let config = Config::parse_from(all);
        let store = kv_storage::Store::open(kv_storage::Options::in_memory()).expect("store");
        Shared::new(store, config)
    }

    #[test]
    fn peers_have_room_when_client_slots_are_full() {
        let s = shared(&["--max-clients", "2", "--cluster-secret", "x"]);
        let mut clients: Vec<_> = (0..2).map(|_| admit(&s).expect("client")).collect();
        assert!(clients.iter().all(|a| *a == Admission::Client));
        let mut p = admit(&s).expect("probation");
        assert_eq!(p, Admission::Probation);
        assert!(to_peer(&s, &mut p));
        assert_eq!(s.counters.budget.peers.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.budget.probation.load(Ordering::Relaxed), 0);
        // A client that proves it is a peer frees its client slot.
        assert!(to_peer(&s, &mut clients[0]));
        assert_eq!(admit(&s), Some(Admission::Client));
        for a in clients.iter_mut().chain([&mut p]) {
            release(&s, a);
            release(&s, a);
        }
        assert_eq!(s.counters.budget.peers.load(Ordering::Relaxed), 0);
        assert_eq!(s.counters.connected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_reserve_is_bounded_and_absent_without_a_secret() {
        let s = shared(&["--max-clients", "0", "--cluster-secret", "x"]);
        let held: Vec<_> = (0..PEER_RESERVE).map(|_| admit(&s)).collect();
        assert!(held.iter().all(|a| *a == Some(Admission::Probation)));
        assert_eq!(admit(&s), None);
        let s = shared(&["--max-clients", "0"]);
        assert_eq!(admit(&s), None);
        let s = shared(&[
            "--max-clients",
            "0",
            "--cluster-secret",
            "x",
            "--max-peers",
            "1",
        ]);
        let mut p = admit(&s).expect("probation");
        assert!(to_peer(&s, &mut p));
        assert_eq!(admit(&s), None, "--max-peers reached: no reserve");
    }

    #[test]
    fn deadlines() {
        let s = shared(&["--timeout", "5", "--handshake-timeout", "2"]);
        let t0 = Instant::now();
        let clock = Clock::new(t0);
        let pending = ConnState {
            handshake_pending: true,
            idle_client: false,
        };
        let idle = ConnState {
            handshake_pending: false,
            idle_client: true,
        };
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(overdue(&s.config, &clock, &pending, at(1)), None);
        assert_eq!(
            overdue(&s.config, &clock, &pending, at(2)),
            Some(Overdue::Handshake)
        );
        assert_eq!(overdue(&s.config, &clock, &idle, at(4)), None);
        assert_eq!(
            overdue(&s.config, &clock, &idle, at(5)),
            Some(Overdue::Idle)
        );
        let off = shared(&[]);
        assert_eq!(overdue(&off.config, &clock, &idle, at(100_000)), None);
    }
}

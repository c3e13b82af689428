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
//!   clients reached". One source address (an IPv4 address, or an IPv6
//!   /64 network) holds at most [`PEER_RESERVE_PER_SOURCE`] of those
//!   slots at once, so a stranger cannot hold them all and keep the
//!   nodes on other addresses out.
//! - Deadlines: a connection that has not finished its handshake (TLS,
//!   the native preamble, AUTH with `--requirepass`, the peer handshake)
//!   within `--handshake-timeout` seconds is closed, one on probation
//!   within [`PROBATION_DEADLINE`] if that is shorter; a client idle for
//!   `--timeout` seconds (when not 0) is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::state::Shared;

/// Connections let in over `--max-clients` to prove they are peers, at
/// once. A node's links finish their handshake in a round trip, so a few
/// suffice; a stranger holding them all is closed at the handshake
/// deadline.
pub const PEER_RESERVE: usize = 64;

/// Slots of [`PEER_RESERVE`] one source address may hold at once. Nodes
/// that share an address (several on one host) each need one while their
/// link to this node is proving itself, a round trip.
pub const PEER_RESERVE_PER_SOURCE: usize = 8;

/// The longest a connection on probation has to prove it is a peer
/// (shorter when `--handshake-timeout` is).
pub const PROBATION_DEADLINE: Duration = Duration::from_secs(5);

/// What a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A client slot (`--max-clients`).
    Client,
    /// A slot kept for would-be peers, held by a source (its key in
    /// [`Budget::probation_sources`], if known): must prove it is a peer.
    Probation(Option<IpAddr>),
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
    /// Of those, how many each source holds (sources holding none are
    /// removed).
    pub probation_sources: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Whether the connection is on a slot kept for would-be peers.
    pub fn is_probation(&self) -> bool {
        matches!(self, Admission::Probation(_))
    }
}

/// Admits a new connection from `source`, or `None` (refused: no client
/// slot, and no room kept for peers or none left for this source).
/// Clients are counted in `counters.connected`.
pub fn admit(shared: &Shared, source: Option<IpAddr>) -> Option<Admission> {
    let c = &shared.counters;
    let config = &shared.config;
    if take(&c.connected, config.max_clients) {
        return Some(Admission::Client);
    }
    let accepts_peers = crate::state::cluster_secret(config).is_some();
    let peers_full = c.budget.peers.load(Ordering::Relaxed) >= config.max_peers;
    if !accepts_peers || peers_full {
        return None;
    }
    let source = source.map(crate::auth_limit::source_key);
    let mut sources = c.budget.probation_sources.lock();
    let held = source.map_or(0, |ip| sources.get(&ip).copied().unwrap_or(0));
    if held >= PEER_RESERVE_PER_SOURCE || !take(&c.budget.probation, PEER_RESERVE) {
        return None;
    }
    if let Some(ip) = source {
        *sources.entry(ip).or_insert(0) += 1;
    }
    Some(Admission::Probation(source))
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
        Admission::Probation(source) => {
            if let Some(ip) = source {
                let mut sources = c.budget.probation_sources.lock();
                if let Some(n) = sources.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        sources.remove(ip);
                    }
                }
            }
            &c.budget.probation
        }
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
    /// On a slot kept for would-be peers (see [`PROBATION_DEADLINE`]).
    pub probation: bool,
    /// A client (not a peer) with no request in flight.
    pub idle_client: bool,
}

/// Whether a connection is past a deadline at `now`.
pub fn overdue(config: &Config, clock: &Clock, s: &ConnState, now: Instant) -> Option<Overdue> {
    let mut handshake = Duration::from_secs(config.handshake_timeout);
    if s.probation {
        handshake = handshake.min(PROBATION_DEADLINE);
    }
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
        let mut clients: Vec<_> = (0..2).map(|_| admit(&s, None).expect("client")).collect();
        assert!(clients.iter().all(|a| *a == Admission::Client));
        let mut p = admit(&s, None).expect("probation");
        assert_eq!(p, Admission::Probation(None));
        assert!(to_peer(&s, &mut p));
        assert_eq!(s.counters.budget.peers.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.budget.probation.load(Ordering::Relaxed), 0);
        // A client that proves it is a peer frees its client slot.
        assert!(to_peer(&s, &mut clients[0]));
        assert_eq!(admit(&s, None), Some(Admission::Client));
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
        let held: Vec<_> = (0..PEER_RESERVE).map(|_| admit(&s, None)).collect();
        assert!(held.iter().all(|a| *a == Some(Admission::Probation(None))));
        assert_eq!(admit(&s, None), None);
        let s = shared(&["--max-clients", "0"]);
        assert_eq!(admit(&s, None), None);
        let s = shared(&[
            "--max-clients",
            "0",
            "--cluster-secret",
            "x",
            "--max-peers",
            "1",
        ]);
        let mut p = admit(&s, None).expect("probation");
        assert!(to_peer(&s, &mut p));
        assert_eq!(admit(&s, None), None, "--max-peers reached: no reserve");
    }

    #[test]
    fn one_source_holds_a_share_of_the_reserve() {
        let s = shared(&["--max-clients", "0", "--cluster-secret", "x"]);
        let ip = |t: &str| Some(t.parse::<IpAddr>().expect("ip"));
        let mut stranger: Vec<_> = (0..PEER_RESERVE_PER_SOURCE)
            .map(|_| admit(&s, ip("10.0.0.1")).expect("probation"))
            .collect();
        assert_eq!(admit(&s, ip("10.0.0.1")), None, "over its share");
        let mut other = admit(&s, ip("10.0.0.2")).expect("another source");
        assert!(other.is_probation());
        release(&s, &mut stranger[0]);
        assert!(admit(&s, ip("10.0.0.1")).is_some(), "a slot given back");
        release(&s, &mut other);
        assert!(!s
            .counters
            .budget
            .probation_sources
            .lock()
            .contains_key(&"10.0.0.2".parse::<IpAddr>().expect("ip")));
    }

    #[test]
    fn deadlines() {
        let s = shared(&["--timeout", "5", "--handshake-timeout", "2"]);
        let t0 = Instant::now();
        let clock = Clock::new(t0);
        let pending = ConnState {
            handshake_pending: true,
            probation: false,
            idle_client: false,
        };
        let idle = ConnState {
            handshake_pending: false,
            probation: false,
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
        let long = shared(&["--handshake-timeout", "60"]);
        let probation = ConnState {
            probation: true,
            ..pending
        };
        assert_eq!(overdue(&long.config, &clock, &pending, at(5)), None);
        assert_eq!(
            overdue(&long.config, &clock, &probation, t0 + PROBATION_DEADLINE),
            Some(Overdue::Handshake)
        );
        let off = shared(&[]);
        assert_eq!(overdue(&off.config, &clock, &idle, at(100_000)), None);
    }
}

//! Writes that do not wait for their fsync: [`Store::deferring`] runs
//! writes under [`Durability::Always`](crate::Durability::Always) without
//! blocking, and hands back a [`Ticket`] that says how far the log must be
//! durable before they may be acknowledged.
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use kv_storage::{Durability, Options, Store};
//!
//! # fn main() -> Result<(), kv_storage::Error> {
//! let dir = std::env::temp_dir().join(format!("kv-doc-deferred-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let store = Store::open(Options::new(&dir).durability(Durability::Always))?;
//! // Woken after each flush the store runs for a ticket (an event loop
//! // would wake its poll here).
//! let (tx, rx) = mpsc::channel();
//! store.on_durable(Arc::new(move || {
//!     let _ = tx.send(());
//! }));
//! let written = store.deferring(|| store.put(b"k", b"v"));
//! let version = written.value?; // applied, readable, not yet durable
//! # let _ = version;
//! let ticket = written.ticket.expect("a write under `always` needs a ticket");
//! store.request_durable(ticket); // returns at once; a store thread flushes
//! while !store.is_durable(ticket)? {
//!     rx.recv().expect("woken");
//! }
//! // Only now may the write be acknowledged.
//! # drop(store); std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::sync::Arc;

/// How far the log must be on stable storage before the writes it was
/// given for are durable (a position in the log). Tickets compare by that
/// position: the greater covers the smaller.
///
/// Hold the acknowledgement of a write until [`Store::is_durable`] says
/// its ticket is durable; ask for the flush with
/// [`Store::request_durable`].
///
/// [`Store::is_durable`]: crate::Store::is_durable
/// [`Store::request_durable`]: crate::Store::request_durable
#[must_use = "a deferred write is not durable: hold its acknowledgement until the ticket is"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub(crate) u64);

/// What [`Store::deferring`](crate::Store::deferring) returns: the
/// closure's result, and the ticket its writes need before that result may
/// be reported as durable (`None`: nothing to wait for — no write needed
/// durability, or the store's policy is not `always`).
#[must_use = "the writes are not durable until the ticket is"]
#[derive(Debug)]
pub struct Deferred<R> {
    /// What the closure returned.
    pub value: R,
    /// The position the log must reach.
    pub ticket: Option<Ticket>,
}

/// Called after each flush the store runs for requested tickets, whether
/// it succeeded or failed (see [`Store::on_durable`](crate::Store::on_durable)).
/// It runs on the store's flushing thread: keep it short (wake a poll,
/// signal a condition variable).
pub type DurableListener = Arc<dyn Fn() + Send + Sync>;

thread_local! {
    /// The store whose writes on this thread are deferred (by the address
    /// of its shared state), and the furthest log position they need.
    static SCOPE: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Puts back the scope that was open before, even if the closure panics.
struct Restore(Option<(usize, u64)>);

impl Drop for Restore {
    fn drop(&mut self) {
        SCOPE.set(self.0);
    }
}

/// Runs `f` with the writes of store `id` deferred; returns what it
/// returned and the furthest log position those writes need.
pub(crate) fn scope<R>(id: usize, f: impl FnOnce() -> R) -> (R, u64) {
    let restore = Restore(SCOPE.replace(Some((id, 0))));
    let value = f();
    let needed = SCOPE.get().map_or(0, |(_, p)| p);
    drop(restore);
    (value, needed)
}

/// Whether the writes of store `id` are deferred on this thread now.
pub(crate) fn deferred(id: usize) -> bool {
    SCOPE.get().is_some_and(|(s, _)| s == id)
}

/// Notes that a deferred write of store `id` needs the log durable up to
/// `pos`.
pub(crate) fn need(id: usize, pos: u64) {
    if let Some((s, p)) = SCOPE.get().filter(|(s, _)| *s == id) {
        SCOPE.set(Some((s, p.max(pos))));
    }
}

/// The flushes asked for by [`Store::request_durable`](crate::Store::request_durable),
/// which the store's committing thread runs.
#[derive(Default)]
pub(crate) struct Commit {
    /// The furthest position asked for.
    pub(crate) wanted: u64,
    /// The furthest position a flush was run for.
    pub(crate) served: u64,
    pub(crate) shutdown: bool,
    pub(crate) listeners: Vec<DurableListener>,
}

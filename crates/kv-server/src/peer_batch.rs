//! Peer messages in batches: one frame per peer link per loop pass.
//!
//! A [`Request::PeerBatch`] frame carries the postcard encodings of
//! several [`PeerMsg`]s back to back (each is self-delimiting). The
//! sender encodes every message of a pass straight into one reusable
//! buffer and seals it into a frame at the end of the pass (or once it
//! reaches [`cap`]), instead of allocating a payload per message and
//! copying it into a frame of its own; the receiver decodes the messages
//! in place. Batches go only to a side whose preamble announces
//! [`native::FLAG_PEER_BATCH`]; to another, each message has its own
//! [`Request::Peer`] frame as before.

use kv_proto::native::{self, Request};
use kv_replication::PeerMsg;

/// Most bytes of messages in one batch frame: a batch that reaches it is
/// sealed and the next message starts another. A single larger message
/// travels alone, as it would in a frame of its own.
pub const MAX_BATCH: usize = 256 << 10;

/// The batch size for a node with this configuration: [`MAX_BATCH`], or
/// less if its peers (configured alike) take smaller frames.
pub fn cap(config: &crate::config::Config) -> usize {
    MAX_BATCH.min(config.max_request_bytes().saturating_sub(64))
}

/// Appends the encoding of `msg` to the batch `buf`. On an error (none
/// is expected: every message encodes) the batch so far is lost, as a
/// message on a broken link is; the protocol tolerates lost messages.
pub fn push(buf: &mut Vec<u8>, msg: &PeerMsg) -> Result<(), postcard::Error> {
    *buf = postcard::to_extend(msg, std::mem::take(buf))?;
    Ok(())
}

/// Appends `msg` to the batch `buf`, sealing batches into `out` so that
/// no frame holds more than `cap` bytes of messages: a message that would
/// take the batch past the cap starts the next one, and a message larger
/// than the cap travels alone (as in a frame of its own). So a batch never
/// exceeds what a peer accepts when each message alone fits.
pub fn push_capped(
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    msg: &PeerMsg,
    cap: usize,
) -> Result<(), postcard::Error> {
    let start = buf.len();
    push(buf, msg)?;
    if buf.len() > cap && start > 0 {
        let tail = buf.split_off(start);
        seal(out, buf);
        buf.extend_from_slice(&tail);
    }
    if buf.len() >= cap {
        seal(out, buf);
    }
    Ok(())
}

/// Seals the batch in `buf` (if any) into one frame appended to `out`,
/// and leaves `buf` empty with its capacity kept for the next pass.
pub fn seal(out: &mut Vec<u8>, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let frame = Request::PeerBatch {
        payload: std::mem::take(buf),
    };
    native::encode_frame(out, 0, &frame);
    if let Request::PeerBatch { mut payload } = frame {
        payload.clear();
        *buf = payload;
    }
}

/// The messages of a batch payload, in order; an error ends it (the
/// rest of the payload cannot be framed).
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    /// The messages in `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Messages { rest: payload }
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<PeerMsg, postcard::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<PeerMsg>(self.rest) {
            Ok((msg, rest)) => {
                self.rest = rest;
                Some(Ok(msg))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_replication::Ver;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn msg() -> impl Strategy<Value = PeerMsg> {
        let ver = (any::<u64>(), any::<u32>()).prop_map(|(ts, node)| Ver { ts, node });
        prop_oneof![
            (
                any::<u64>(),
                bytes(40),
                proptest::option::of(bytes(300)),
                ver.clone(),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(|(op, key, value, version, expires_at)| {
                    PeerMsg::Replicate {
                        op,
                        key,
                        value,
                        version,
                        expires_at,
                    }
                }),
            (any::<u64>(), any::<bool>(), proptest::option::of(ver))
                .prop_map(|(op, existed, newer)| PeerMsg::ReplicateAck { op, existed, newer }),
            (any::<u64>(), bytes(40)).prop_map(|(op, key)| PeerMsg::Read { op, key }),
        ]
    }

    /// Decodes every frame in `wire`: the messages of batch frames and of
    /// single ones, in order.
    fn decode_all(mut wire: &[u8]) -> Vec<PeerMsg> {
        let mut got = Vec::new();
        while !wire.is_empty() {
            let (frame, used) = native::decode_frame::<Request>(wire, 1 << 30)
                .expect("valid frame")
                .expect("whole frame");
            match frame.body {
                Request::PeerBatch { payload } => {
                    got.extend(Messages::new(&payload).map(|m| m.expect("message")))
                }
                Request::Peer { payload } => {
                    got.push(postcard::from_bytes(&payload).expect("message"))
                }
                other => panic!("unexpected {other:?}"),
            }
            wire = &wire[used..];
        }
        got
    }

    proptest! {
        /// Any messages, batched with any cap (sealed whenever the batch
        /// reaches it, and at the end), come out whole and in order.
        #[test]
        fn batches_round_trip(msgs in proptest::collection::vec(msg(), 0..40), cap in 1usize..2000) {
            let (mut wire, mut buf) = (Vec::new(), Vec::new());
            for m in &msgs {
                push_capped(&mut wire, &mut buf, m, cap).expect("encode");
                prop_assert!(buf.len() < cap);
            }
            seal(&mut wire, &mut buf);
            prop_assert_eq!(decode_all(&wire), msgs.clone());
            // No frame holds more than the cap unless it is one message.
            let largest = msgs
                .iter()
                .map(|m| postcard::to_allocvec(m).expect("encode").len())
                .max()
                .unwrap_or(0);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let (frame, used) = native::decode_frame::<Request>(rest, 1 << 30)
                    .expect("valid frame")
                    .expect("whole frame");
                if let Request::PeerBatch { payload } = frame.body {
                    prop_assert!(
                        payload.len() <= cap || Messages::new(&payload).count() == 1,
                        "a batch of {} bytes, cap {cap}, largest message {largest}",
                        payload.len()
                    );
                }
                rest = &rest[used..];
            }
        }

        /// A cut batch is an error, never a wrong message or a panic.
        #[test]
        fn a_cut_batch_is_an_error(msgs in proptest::collection::vec(msg(), 1..10), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            for m in &msgs {
                push(&mut buf, m).expect("encode");
            }
            let at = cut.index(buf.len());
            let got: Vec<_> = Messages::new(&buf[..at]).collect();
            let ok = got.iter().take_while(|m| m.is_ok()).count();
            prop_assert!(ok <= msgs.len());
            for (g, m) in got.iter().zip(&msgs).take(ok) {
                prop_assert_eq!(g.as_ref().ok(), Some(m));
            }
        }
    }

    #[test]
    fn sealing_nothing_writes_nothing() {
        let (mut wire, mut buf) = (Vec::new(), Vec::new());
        seal(&mut wire, &mut buf);
        assert!(wire.is_empty());
    }
}

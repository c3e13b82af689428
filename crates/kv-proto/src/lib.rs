//! `kv-proto`: the wire formats of kv, with no I/O.
//!
//! Two protocols share a server port; the first byte of a connection tells
//! them apart ([`native::MAGIC`] starts with `0xF0`, which no RESP client
//! sends):
//!
//! - [`native`]: a preamble (magic number and version), then length-prefixed
//!   frames of postcard-encoded [`native::Request`]s and
//!   [`native::Response`]s, each carrying a request id so that a client can
//!   pipeline. Specified byte by byte in `docs/protocol.md`.
//! - [`resp`]: RESP2 and RESP3, so that `redis-cli`, `redis-benchmark` and Redis client
//!   libraries can talk to a node.
//!
//! Both decoders are incremental: hand them whatever bytes have arrived;
//! they answer "a whole message and how many bytes it used", "need more
//! bytes", or a typed error for malformed input, and never panic.
//!
//! ```
//! use kv_proto::native::{self, Request, Response};
//!
//! // Client side: encode a request into a frame.
//! let mut wire = Vec::new();
//! native::encode_frame(&mut wire, 7, &Request::Get { key: b"k".to_vec() });
//!
//! // Server side: the bytes may arrive in any split.
//! assert!(native::decode_frame::<Request>(&wire[..3], 1 << 20).unwrap().is_none());
//! let (frame, used) = native::decode_frame::<Request>(&wire, 1 << 20).unwrap().unwrap();
//! assert_eq!((frame.id, used), (7, wire.len()));
//! assert_eq!(frame.body, Request::Get { key: b"k".to_vec() });
//!
//! let mut reply = Vec::new();
//! native::encode_frame(&mut reply, frame.id, &Response::Value { value: None });
//! ```

#![deny(missing_docs)]

pub mod native;
pub mod resp;

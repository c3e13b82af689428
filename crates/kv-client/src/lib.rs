//! `kv-client`: a blocking client for kv servers, speaking the native
//! protocol, and the interactive `kv-client` binary built on it.
//!
//! ```no_run
//! use kv_client::Client;
//!
//! # fn main() -> Result<(), kv_client::ClientError> {
//! let mut c = Client::connect("127.0.0.1:8080")?;
//! c.put(b"greeting", b"hello")?;
//! assert_eq!(c.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
//! for key in c.list_all(b"greet")? {
//!     println!("{}", String::from_utf8_lossy(&key));
//! }
//! assert!(c.delete(b"greeting")?);
//! # Ok(()) }
//! ```
//!
//! Requests can be pipelined with [`Client::pipeline`]: all are sent, then
//! all replies read, matched by request id.

#![deny(missing_docs)]

pub mod addr;
mod client;
pub mod command;
pub mod import;
pub mod monitor;
pub mod reply;
mod tls;

pub use client::{Client, ClientError};
pub use tls::TlsOptions;

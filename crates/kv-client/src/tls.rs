//! TLS for the client (rustls with the ring provider, as the server).
//!
//! ```no_run
//! use kv_client::{Client, TlsOptions};
//!
//! # fn main() -> Result<(), kv_client::ClientError> {
//! let tls = TlsOptions {
//!     ca_cert: Some("tls/ca.crt".into()),
//!     cert: Some("tls/client.crt".into()),
//!     key: Some("tls/client.key".into()),
//!     ..TlsOptions::default()
//! };
//! let mut c = Client::connect_tls("127.0.0.1:6380", &tls)?;
//! c.put(b"k", b"v")?;
//! # Ok(()) }
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Where the system keeps its CA bundle (Debian, Ubuntu, Alpine), used
/// when no `--cacert` is given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to connect over TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// The CA certificate (PEM) the server's certificate must be signed
    /// by (default: the system's CA bundle).
    pub ca_cert: Option<PathBuf>,
    /// This client's certificate (PEM), for servers that ask for one.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// The name the server's certificate must hold (default: the host
    /// the client connects to).
    pub server_name: Option<String>,
}

/// Why the TLS options cannot be used.
fn bad(path: &Path, why: impl ToString) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {}", path.display(), why.to_string()),
    )
}

impl TlsOptions {
    /// The rustls configuration these options describe.
    pub fn config(&self) -> io::Result<Arc<ClientConfig>> {
        let ca = self
            .ca_cert
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| bad(&ca, e))? {
            roots
                .add(cert.map_err(|e| bad(&ca, e))?)
                .map_err(|e| bad(&ca, e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(cert, e))?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad(key, e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a client certificate needs its key, and a key its certificate (--cert and --key)",
            )),
        };
        Ok(Arc::new(config))
    }

    /// The name to check the server's certificate against, for `addr`.
    fn name_for(&self, addr: &str) -> io::Result<ServerName<'static>> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => crate::addr::host_of(addr),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))
    }
}

/// The client's byte stream: plain TCP or TLS over TCP.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl ClientStream {
    /// Wraps `sock` in TLS for `addr` as `tls` says.
    pub(crate) fn tls(sock: TcpStream, addr: &str, tls: &TlsOptions) -> io::Result<ClientStream> {
        let conn =
            ClientConnection::new(tls.config()?, tls.name_for(addr)?).map_err(io::Error::other)?;
        Ok(ClientStream::Tls(Box::new(StreamOwned::new(conn, sock))))
    }

    fn sock(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(t) => &t.sock,
        }
    }

    pub(crate) fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock().set_read_timeout(t)?;
        self.sock().set_write_timeout(t)
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(t) => t.flush(),
        }
    }
}

//! TLS for clients and peers, with rustls driven by the mio event loops
//! (no async runtime).
//!
//! A [`Stream`] is either a plain TCP stream or a TCP stream wrapped in a
//! rustls connection. It reads and writes plaintext like the plain one, so
//! the connection code above it ([`crate::conn::Conn`], the cluster's peer
//! links) does not change: the native protocol, RESP and the peer handshake
//! run inside TLS unchanged.
//!
//! Driving rustls on a non-blocking socket, as its `tlsserver-mio` example
//! shows: reading takes TLS records from the socket (`read_tls`), decrypts
//! them (`process_new_packets`) and hands out the plaintext; writing gives
//! plaintext to rustls and pushes the records it makes to the socket
//! (`write_tls`) until the socket would block. Records that could not be
//! sent yet stay inside rustls: [`Stream::has_pending_output`] says so, and
//! the event loop keeps watching for writability until they are gone.
//!
//! The crypto provider is *ring*: it builds with a C compiler alone, while
//! aws-lc-rs needs more of the system (cmake or a prebuilt library on some
//! targets).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

use crate::config::{Config, TlsAuthClients};
use crate::conn::HalfClose;

/// Most plaintext bytes handed to rustls per write call: the socket takes
/// the records before more is accepted, so a slow reader cannot make
/// rustls buffer a whole reply.
const WRITE_CHUNK: usize = 64 << 10;

/// Why TLS could not be set up from the options.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot read {what} from {path}: {why}")]
    File {
        /// Which option's file (certificate, key, CA).
        what: &'static str,
        /// The path given.
        path: String,
        /// Why.
        why: String,
    },
    /// rustls refused the configuration (a key that does not match the
    /// certificate, say).
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("cannot verify clients against --tls-ca-cert: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// An option needs another one.
    #[error("{0}")]
    Options(String),
}

/// The TLS configurations a node needs: to accept TLS connections, and to
/// dial its peers over TLS (with `--tls-cluster`).
pub struct Tls {
    /// For accepted connections (the TLS port, or the main port when it
    /// is TLS only).
    pub server: Arc<ServerConfig>,
    /// For links to peers, presenting this node's certificate.
    pub peer_client: Option<Arc<ClientConfig>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(what: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(what, path, e))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "no CERTIFICATE in it"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err("the private key", path, e))
}

/// A root store holding the certificates of a CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("the CA certificate", path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

impl Tls {
    /// The TLS settings the options ask for; `None` when no TLS option is
    /// given.
    pub fn from_config(c: &Config) -> Result<Option<Tls>, TlsError> {
        if c.tls_port.is_none() && !c.tls_cluster {
            if c.tls_cert.is_some() || c.tls_key.is_some() || c.tls_ca_cert.is_some() {
                return Err(TlsError::Options(
                    "--tls-cert, --tls-key and --tls-ca-cert need --tls-port (use --tls-port N, and --port 0 for TLS only)".into(),
                ));
            }
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) else {
            return Err(TlsError::Options(
                "TLS needs --tls-cert and --tls-key (this node's certificate and its private key)"
                    .into(),
            ));
        };
        if c.tls_cluster && c.tls_port.is_none() {
            return Err(TlsError::Options(
                "--tls-cluster needs --tls-port: peers reach each other on the TLS port".into(),
            ));
        }
        let certs = load_certs("the certificate", cert)?;
        let key_der = load_key(key)?;
        let roots = match &c.tls_ca_cert {
            Some(ca) => Some(Arc::new(load_roots(ca)?)),
            None => None,
        };
        let server = server_config(
            c.tls_auth_clients,
            c.tls_cluster,
            roots.clone(),
            certs.clone(),
            key_der.clone_key(),
        )?;
        let peer_client = match (c.tls_cluster, roots) {
            (false, _) => None,
            (true, None) => {
                return Err(TlsError::Options(
                    "--tls-cluster needs --tls-ca-cert: peers must show a certificate the cluster's CA signed".into(),
                ))
            }
            (true, Some(roots)) => Some(Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(certs, key_der)?,
            )),
        };
        Ok(Some(Tls {
            server: Arc::new(server),
            peer_client,
        }))
    }

    /// A stream for a connection accepted on a TLS port.
    pub fn accept(&self, sock: TcpStream) -> io::Result<Stream> {
        let conn = rustls::ServerConnection::new(self.server.clone()).map_err(io::Error::other)?;
        Ok(Stream::tls(sock, conn.into()))
    }

    /// A stream for a link dialed to the peer `to` (host:port, the host
    /// checked against the peer's certificate), over TLS when
    /// `--tls-cluster` is on.
    pub fn dial(&self, sock: TcpStream, to: &str) -> io::Result<Stream> {
        let Some(config) = &self.peer_client else {
            return Ok(Stream::Plain(sock));
        };
        let name = server_name(to)?;
        let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        Ok(Stream::tls(sock, conn.into()))
    }
}

fn server_config(
    auth: TlsAuthClients,
    cluster: bool,
    roots: Option<Arc<RootCertStore>>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    // Peers prove themselves with a certificate, so with --tls-cluster the
    // server asks for one even when clients need not show any.
    let auth = match (auth, cluster) {
        (TlsAuthClients::No, true) => TlsAuthClients::Optional,
        (a, _) => a,
    };
    let verifier = match (auth, roots) {
        (TlsAuthClients::No, _) => None,
        (_, None) => {
            return Err(TlsError::Options(
                "--tls-auth-clients yes or optional needs --tls-ca-cert (or give --tls-auth-clients no)".into(),
            ))
        }
        (TlsAuthClients::Yes, Some(roots)) => {
            Some(WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?)
        }
        (TlsAuthClients::Optional, Some(roots)) => Some(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()?,
        ),
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(certs, key)?)
}

/// The name a peer's certificate must hold: the host part of `host:port`
/// (an IP address or a DNS name).
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

/// A TCP stream in rustls.
pub struct TlsStream {
    sock: TcpStream,
    tls: Connection,
    /// The socket reached its end.
    eof: bool,
}

/// A connection's byte stream: plain TCP or TLS over TCP.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
}

impl Stream {
    fn tls(sock: TcpStream, tls: Connection) -> Stream {
        Stream::Tls(Box::new(TlsStream {
            sock,
            tls,
            eof: false,
        }))
    }

    fn sock(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    fn sock_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }

    /// The address of the other end (an error while still connecting).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock().peer_addr()
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock().local_addr()
    }

    /// The socket's file descriptor (CLIENT LIST's `fd=`).
    pub fn fd(&self) -> i64 {
        i64::from(std::os::fd::AsRawFd::as_raw_fd(self.sock()))
    }

    /// The socket's pending error, if any (a failed connect).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock().take_error()
    }

    /// Turns Nagle's algorithm off or on.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock().set_nodelay(on)
    }

    /// Whether TLS records wait to be sent (the socket was full).
    pub fn has_pending_output(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Whether the other end showed a certificate that the CA signed (only
    /// TLS connections whose server verifies clients can say yes).
    pub fn peer_certified(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => {
                !t.tls.is_handshaking() && t.tls.peer_certificates().is_some_and(|c| !c.is_empty())
            }
        }
    }
}

impl Stream {
    /// Whether the other end's certificate (CA-signed, see
    /// [`Stream::peer_certified`]) is valid for the host of `id`, a node id
    /// (its advertised `host:port`): an IP address SAN for an IP host, a
    /// DNS SAN for a name. The same check a dialer makes on the node it
    /// dials ([`Tls::dial`]), so a certificate binds the hosts it names.
    pub fn certified_for(&self, id: &str) -> bool {
        let Stream::Tls(t) = self else {
            return false;
        };
        let Some(end) = t.tls.peer_certificates().and_then(|c| c.first()) else {
            return false;
        };
        let (Ok(cert), Ok(name)) = (webpki::EndEntityCert::try_from(end), server_name(id)) else {
            return false;
        };
        self.peer_certified() && cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

impl TlsStream {
    /// Sends the records rustls holds until the socket would block.
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Like [`TlsStream::push`], with a full socket not an error.
    fn push_some(&mut self) -> io::Result<()> {
        match self.push() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Takes records from the socket and decrypts them. `Ok(false)`: the
    /// socket has nothing more now.
    fn pull(&mut self) -> io::Result<bool> {
        match self.tls.read_tls(&mut self.sock) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.tls.process_new_packets() {
            // Tell the other side why (an alert), then give up.
            let _ = self.push_some();
            let who = self.sock.peer_addr().map_or("?".into(), |a| a.to_string());
            log::warn!("TLS with {who} failed: {e}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // Handshake messages and key updates to answer.
        self.push_some()?;
        Ok(true)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without a close_notify: an end all the
                // same for a protocol whose messages delimit themselves.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if !self.pull()? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Records from the last call go first; while they cannot, the
        // socket is full for us too.
        self.push()?;
        let n = self
            .tls
            .writer()
            .write(&buf[..buf.len().min(WRITE_CHUNK)])?;
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full (before the handshake is done).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push_some()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    /// Sends what rustls holds; `WouldBlock` while the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

impl HalfClose for Stream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        if let Stream::Tls(t) = self {
            t.tls.send_close_notify();
            t.push_some()?;
        }
        self.sock().shutdown(std::net::Shutdown::Write)
    }

    fn has_pending_output(&self) -> bool {
        Stream::has_pending_output(self)
    }

    fn peer_certified(&self) -> bool {
        Stream::peer_certified(self)
    }

    fn certified_for(&self, id: &str) -> bool {
        Stream::certified_for(self, id)
    }

    fn handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.tls.is_handshaking())
    }
}

impl mio::event::Source for Stream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock_mut().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock_mut().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.sock_mut().deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:7000"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:7000"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("node1.example:7000"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name:7000").is_err());
    }
}

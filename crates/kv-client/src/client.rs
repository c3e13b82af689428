//! The blocking client.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use kv_proto::native::{self, ErrorKind, Request, Response};

use crate::tls::{ClientStream, TlsOptions};

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed or was closed.
    #[error("connection to {addr} lost: {source}")]
    Io {
        /// The server.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server refused the connection with a message (too many clients, say).
    #[error("server {addr} refused the connection: {message}")]
    Refused {
        /// The server.
        addr: String,
        /// What it said.
        message: String,
    },
    /// The server sent something that is not the protocol.
    #[error("protocol error from {addr}: {message}")]
    Protocol {
        /// The server.
        addr: String,
        /// What was wrong.
        message: String,
    },
    /// The client did not send a request, for the reason given (the node
    /// a JOIN names does not answer, say).
    #[error("{0}")]
    NotSent(String),
    /// The server answered with an error.
    #[error("{message}")]
    Server {
        /// What kind of error.
        kind: ErrorKind,
        /// The server's message.
        message: String,
    },
}

impl ClientError {
    /// Whether the connection is unusable (reconnect to go on).
    pub fn is_connection_error(&self) -> bool {
        !matches!(self, ClientError::Server { .. } | ClientError::NotSent(_))
    }
}

/// A connection to one server.
pub struct Client {
    stream: ClientStream,
    tls: Option<TlsOptions>,
    addr: String,
    rbuf: Vec<u8>,
    next_id: u64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Connects to `addr` (host:port) and performs the protocol handshake.
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, None)
    }

    /// Connects to `addr` over TLS (checking the server's certificate
    /// against `tls.ca_cert` and the host name) and performs the protocol
    /// handshake inside it.
    pub fn connect_tls(addr: &str, tls: &TlsOptions) -> Result<Client, ClientError> {
        Client::connect_with(addr, Some(tls))
    }

    /// [`Client::connect`], or [`Client::connect_tls`] when `tls` is given.
    pub fn connect_with(addr: &str, tls: Option<&TlsOptions>) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        let mut stream = None;
        for sa in addr.to_socket_addrs().map_err(connect_err)? {
            match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| connect_err(last))?;
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            Some(t) => ClientStream::tls(stream, addr, t).map_err(connect_err)?,
            None => ClientStream::Plain(stream),
        };
        let mut c = Client {
            stream,
            tls: tls.cloned(),
            addr: addr.to_string(),
            rbuf: Vec::new(),
            next_id: 1,
        };
        c.handshake()?;
        Ok(c)
    }

    /// The TLS options of this connection (`None`: plain TCP).
    pub fn tls(&self) -> Option<&TlsOptions> {
        self.tls.as_ref()
    }

    /// The server's address as given to [`Client::connect`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sets a timeout for each read and write (none by default).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_timeouts(t).map_err(|e| self.io(e))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    fn handshake(&mut self) -> Result<(), ClientError> {
        self.stream
            .write_all(&native::preamble())
            .map_err(|e| self.io(e))?;
        while self.rbuf.len() < native::PREAMBLE_LEN {
            if self.rbuf.first() == Some(&b'-') && self.rbuf.contains(&b'\n') {
                break;
            }
            self.fill()?;
        }
        if self.rbuf.first() == Some(&b'-') {
            // A RESP error line: the server refused us before the handshake.
            while !self.rbuf.contains(&b'\n') {
                self.fill()?;
            }
            let text = String::from_utf8_lossy(&self.rbuf[1..]);
            let message = text.trim_end().trim_start_matches("ERR ").to_string();
            return Err(ClientError::Refused {
                addr: self.addr.clone(),
                message,
            });
        }
        native::check_preamble(&self.rbuf).map_err(|e| self.protocol(e.to_string()))?;
        self.rbuf.drain(..native::PREAMBLE_LEN);
        Ok(())
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    fn fill(&mut self) -> Result<(), ClientError> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(self.io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Sends every request, then reads every response, in order.
    pub fn pipeline(&mut self, reqs: &[Request]) -> Result<Vec<Response>, ClientError> {
        let first = self.next_id;
        let mut out = Vec::new();
        for r in reqs {
            native::encode_frame(&mut out, self.next_id, r);
            self.next_id += 1;
        }
        self.stream.write_all(&out).map_err(|e| self.io(e))?;
        (0..reqs.len() as u64)
            .map(|i| self.read_response(first + i))
            .collect()
    }

    fn read_response(&mut self, id: u64) -> Result<Response, ClientError> {
        loop {
            let decoded = native::decode_frame::<Response>(&self.rbuf, usize::MAX >> 1)
                .map_err(|e| self.protocol(e.to_string()))?;
            if let Some((frame, used)) = decoded {
                self.rbuf.drain(..used);
                if frame.id == id {
                    return Ok(frame.body);
                }
                // Id 0: the server reports a connection-level error.
                if let (0, Response::Error { message, .. }) = (frame.id, &frame.body) {
                    return Err(self.protocol(message.clone()));
                }
                return Err(self.protocol(format!(
                    "reply for request {} while waiting for {id}",
                    frame.id
                )));
            }
            self.fill()?;
        }
    }

    /// Sends one request and returns the server's response; an error
    /// response becomes [`ClientError::Server`].
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut rs = self.pipeline(std::slice::from_ref(req))?;
        match rs.pop() {
            Some(Response::Error { kind, message }) => Err(ClientError::Server { kind, message }),
            Some(r) => Ok(r),
            None => Err(self.protocol("no response")),
        }
    }

    fn unexpected(&self, r: Response) -> ClientError {
        self.protocol(format!("unexpected response {r:?}"))
    }

    /// The value of `key`, or `None`.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.request(&Request::Get { key: key.to_vec() })? {
            Response::Value { value } => Ok(value),
            r => Err(self.unexpected(r)),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let req = Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        match self.request(&req)? {
            Response::Ok => Ok(()),
            r => Err(self.unexpected(r)),
        }
    }

    /// Deletes `key`; returns whether it held a value.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        match self.request(&Request::Delete { key: key.to_vec() })? {
            Response::Deleted { existed } => Ok(existed),
            r => Err(self.unexpected(r)),
        }
    }

    /// One page of keys starting with `prefix` after `after`, and the cursor
    /// for the next page (`None` at the end).
    #[allow(clippy::type_complexity)]
    pub fn list(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), ClientError> {
        let req = Request::List {
            prefix: prefix.to_vec(),
            after: after.map(<[u8]>::to_vec),
            limit,
        };
        match self.request(&req)? {
            Response::Keys { keys, next } => Ok((keys, next)),
            r => Err(self.unexpected(r)),
        }
    }

    /// Every key starting with `prefix`, fetched page by page, in the
    /// server's listing order: (hash, key), not sorted by key.
    pub fn list_all(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (keys, next) = self.list(prefix, after.as_deref(), 1000)?;
            all.extend(keys);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// Round trip; returns the echoed payload.
    pub fn ping(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self.request(&Request::Ping {
            payload: payload.to_vec(),
        })? {
            Response::Pong { payload } => Ok(payload),
            r => Err(self.unexpected(r)),
        }
    }

    /// Authenticates.
    pub fn auth(&mut self, password: &str) -> Result<(), ClientError> {
        match self.request(&Request::Auth {
            password: password.to_string(),
        })? {
            Response::Ok => Ok(()),
            r => Err(self.unexpected(r)),
        }
    }

    /// Server statistics (INFO text).
    pub fn info(&mut self) -> Result<String, ClientError> {
        self.text(&Request::Info)
    }

    /// The cluster view.
    pub fn cluster(&mut self) -> Result<String, ClientError> {
        self.text(&Request::Cluster)
    }

    fn text(&mut self, req: &Request) -> Result<String, ClientError> {
        match self.request(req)? {
            Response::Text { text } => Ok(text),
            r => Err(self.unexpected(r)),
        }
    }

    /// Asks the node at `addr` to join this server's cluster. Returns
    /// what the server says happened.
    pub fn join(&mut self, addr: &str) -> Result<String, ClientError> {
        self.text(&Request::Join {
            addr: addr.to_string(),
        })
    }

    /// Decommissions the live node at `addr`: its ranges stream to their
    /// new owners, then it leaves. Refused while another node joins or
    /// leaves.
    pub fn leave(&mut self, addr: &str) -> Result<String, ClientError> {
        self.text(&Request::Leave {
            addr: addr.to_string(),
        })
    }

    /// Removes the dead node at `addr` for good: its ranges are rebuilt
    /// from the surviving replicas.
    pub fn remove(&mut self, addr: &str) -> Result<String, ClientError> {
        self.text(&Request::Remove {
            addr: addr.to_string(),
        })
    }
}

//! Outgoing peer connections that leave from the node's `--bind` address.
//!
//! On a host with several addresses, the kernel picks the source address
//! of an outgoing connection from its routing table, which need not be the
//! address the node listens on and advertises. A node bound to one address
//! therefore binds its outgoing peer sockets to that address as well: its
//! peers (and any firewall between them) see every connection of the node
//! coming from the one address the node is known by.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// The address an outgoing connection to `to` leaves from, for a node
/// listening on `bind`: `None` (the kernel chooses) when `bind` is a
/// wildcard, of the other address family, or a loopback address while
/// `to` is not one (a loopback source cannot reach another host).
pub fn source_for(bind: IpAddr, to: SocketAddr) -> Option<SocketAddr> {
    let same_family = bind.is_ipv4() == to.is_ipv4();
    let reachable = !bind.is_loopback() || to.ip().is_loopback();
    (!bind.is_unspecified() && same_family && reachable).then_some(SocketAddr::new(bind, 0))
}

/// Starts a non-blocking connection to `to`, from `bind` where
/// [`source_for`] says so. Like [`TcpStream::connect`], it returns before
/// the connection is made: writability tells when it is.
pub fn connect_from(bind: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let Some(source) = source_for(bind, to) else {
        return TcpStream::connect(to);
    };
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&source.into())?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn to(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn a_specific_address_is_the_source() {
        let want = Some(to("10.0.0.7:0"));
        assert_eq!(source_for(ip("10.0.0.7"), to("10.0.0.9:7000")), want);
        let want = Some(to("127.0.0.2:0"));
        assert_eq!(source_for(ip("127.0.0.2"), to("127.0.0.3:7000")), want);
    }

    #[test]
    fn the_kernel_chooses_otherwise() {
        assert_eq!(source_for(ip("0.0.0.0"), to("10.0.0.9:7000")), None);
        assert_eq!(source_for(ip("::"), to("[::1]:7000")), None);
        assert_eq!(source_for(ip("10.0.0.7"), to("[fd00::9]:7000")), None);
        assert_eq!(source_for(ip("127.0.0.1"), to("10.0.0.9:7000")), None);
    }
}

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
    let socket = outgoing_socket(source, to)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// A non-blocking TCP socket for a connection to `to`, bound to `source`.
fn outgoing_socket(source: SocketAddr, to: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    defer_port_choice(&socket)?;
    socket.bind(&source.into())?;
    Ok(socket)
}

/// Linux: `IP_BIND_ADDRESS_NO_PORT`, so that binding the source address
/// reserves no ephemeral port; the port is picked at connect, where the
/// same port can serve connections to different peers. Without it every
/// bound socket (each reconnect attempt of each peer link) holds a port of
/// its own (Linux reads the option at the IP level for IPv6 sockets too).
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor we own, with a pointer to a live
    // c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the kernel has no such option: binding reserves a port.
#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &Socket) -> io::Result<()> {
    Ok(())
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

    /// A bound outgoing socket must not take an ephemeral port at bind:
    /// the port is chosen at connect, per destination, so that reconnect
    /// loops to many peers do not use up the ports of the source address.
    #[test]
    fn binding_the_source_takes_no_port_before_connect() {
        let socket = outgoing_socket(to("127.0.0.1:0"), to("127.0.0.1:9")).expect("socket");
        let local = socket
            .local_addr()
            .expect("local")
            .as_socket()
            .expect("inet");
        if cfg!(target_os = "linux") {
            assert_eq!(local.port(), 0, "bind reserved port {}", local.port());
        }
    }
}

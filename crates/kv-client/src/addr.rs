//! Server addresses as users type them: `host`, `host:port`, a bare IPv6
//! address, or `[IPv6]:port`.

/// The port used when none is given.
pub const DEFAULT_PORT: u16 = 8080;

/// Parses `host:port` (or `[IPv6]:port`) into the form
/// [`Client::connect`](crate::Client::connect) takes. A bare IPv6 address
/// needs brackets here, since its last group could be read as a port.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not host:port (for IPv6: [address]:port)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = parse_port(port).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(join(host, port))
}

/// The address to connect to from the command line's `HOST[:PORT]` and
/// optional `PORT`: `host`, `host:port`, `IPv6`, `[IPv6]` or `[IPv6]:port`.
pub fn server_addr(target: &str, port: Option<u16>) -> Result<String, String> {
    let has_port = match target.strip_prefix('[') {
        Some(rest) => !rest.ends_with(']'),
        // One colon: host:port; more: a bare IPv6 address.
        None => target.matches(':').count() == 1,
    };
    match (has_port, port) {
        (true, Some(p)) => Err(format!(
            "the port is given twice ({target:?} and {p}); give it once"
        )),
        (true, None) => parse_host_port(target),
        (false, port) => {
            let host = target
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(target);
            if host.is_empty() {
                return Err("the server address is empty".into());
            }
            Ok(join(host, port.unwrap_or(DEFAULT_PORT)))
        }
    }
}

/// The host part of `host:port` or `[IPv6]:port`, without brackets (the
/// whole string when it has no port).
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) if h.starts_with('[') || !h.contains(':') => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1 to 65535)")),
        Ok(n) => Ok(n),
    }
}

fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_for_certificate_names() {
        assert_eq!(host_of("127.0.0.1:6380"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6380"), "::1");
        assert_eq!(host_of("node1.example:6380"), "node1.example");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn forms_of_the_server_address() {
        let ok = |t: &str, p: Option<u16>| server_addr(t, p).expect(t);
        assert_eq!(ok("127.0.0.1", None), "127.0.0.1:8080");
        assert_eq!(ok("127.0.0.1", Some(9000)), "127.0.0.1:9000");
        assert_eq!(ok("127.0.0.1:9000", None), "127.0.0.1:9000");
        assert_eq!(ok("localhost:9000", None), "localhost:9000");
        assert_eq!(ok("::1", Some(9000)), "[::1]:9000");
        assert_eq!(ok("::1", None), "[::1]:8080");
        assert_eq!(ok("[::1]", Some(9000)), "[::1]:9000");
        assert_eq!(ok("[::1]:9000", None), "[::1]:9000");
        assert!(server_addr("127.0.0.1:9000", Some(9000))
            .unwrap_err()
            .contains("twice"));
        assert!(server_addr("127.0.0.1:x", None).is_err());
        assert!(server_addr("127.0.0.1:0", None).is_err());
        assert!(server_addr("[::1]x", None).is_err());
        assert!(server_addr("", None).is_err());
    }

    #[test]
    fn host_port_for_join() {
        assert_eq!(parse_host_port("10.0.0.1:7000"), Ok("10.0.0.1:7000".into()));
        assert_eq!(parse_host_port("[::1]:7000"), Ok("[::1]:7000".into()));
        for bad in [
            "notanaddr",
            ":7000",
            "h:",
            "h:99999",
            "::1",
            "[::1]",
            "a b:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}

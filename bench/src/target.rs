//! The server under load: `http(s)://host:port` parsed into what the client needs, and the
//! loopback rule (a load generator must not be pointed at someone else's machine by accident).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::error::Error;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed target URL (`scheme://host[:port]`, no path, query or user info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// The host as written (a name or an IP literal without brackets).
    pub host: String,
    pub port: u16,
    /// The resolved address the client connects to.
    pub addr: SocketAddr,
}

/// Whether non-loopback targets are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    LoopbackOnly,
    AllowRemote,
}

impl Target {
    /// Parses and resolves `url`; with [`Reach::LoopbackOnly`] refuses any host that is not
    /// 127.0.0.0/8, `::1` or `localhost` (and any name that resolves elsewhere).
    pub fn parse(url: &str, reach: Reach) -> Result<Target, Error> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(Error::Usage(format!(
                "target {url:?} must start with http:// or https://"
            )));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(Error::Usage(format!(
                "target {url:?} must be scheme://host[:port] without a path"
            )));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| Error::Usage(format!("target {url:?}: bad host or port")))?;
        let port = port.unwrap_or(default_port);
        if reach == Reach::LoopbackOnly && !is_loopback_name(host) {
            return Err(Error::NotLoopback(host.to_owned()));
        }
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {host}"), e))?
            .next()
            .ok_or_else(|| Error::Usage(format!("{host} resolves to no address")))?;
        if reach == Reach::LoopbackOnly && !addr.ip().is_loopback() {
            return Err(Error::NotLoopback(format!("{host} ({})", addr.ip())));
        }
        Ok(Target {
            scheme,
            host: host.to_owned(),
            port,
            addr,
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None, // an IPv6 literal needs brackets
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// Loopback by its spelling: a 127.0.0.0/8 or `::1` literal, or the name `localhost`.
pub fn is_loopback_name(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The path (and query) of an absolute URL, e.g. a `registration_client_uri`: the client
/// sends it to the target it already talks to.
pub fn path_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let slash = rest.find('/')?;
    rest.get(slash..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, reach: Reach, expect: Result<(&str, u16, Scheme), &str>) {
        match (Target::parse(url, reach), expect) {
            (Ok(t), Ok((host, port, scheme))) => {
                assert_eq!(
                    (t.host.as_str(), t.port, t.scheme),
                    (host, port, scheme),
                    "{url}"
                );
                assert_eq!(t.addr.port(), port);
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{url}: {e}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn loopback_targets_parse() {
        use Reach::LoopbackOnly as L;
        check(
            "https://127.0.0.1:8443",
            L,
            Ok(("127.0.0.1", 8443, Scheme::Https)),
        );
        check("http://127.9.8.7:1/", L, Ok(("127.9.8.7", 1, Scheme::Http)));
        check(
            "http://localhost:8080",
            L,
            Ok(("localhost", 8080, Scheme::Http)),
        );
        check("https://[::1]:9", L, Ok(("::1", 9, Scheme::Https)));
        check("http://127.0.0.1", L, Ok(("127.0.0.1", 80, Scheme::Http)));
    }

    #[test]
    fn remote_targets_are_refused_unless_allowed() {
        use Reach::{AllowRemote, LoopbackOnly};
        for url in [
            "https://10.0.0.1:8443",
            "http://192.168.1.1",
            "https://[2001:db8::1]:443",
            "http://0.0.0.0:80",
            "http://example.invalid:80",
        ] {
            check(url, LoopbackOnly, Err("not a loopback address"));
        }
        // Allowed, an IP literal parses without any network traffic.
        check(
            "https://10.0.0.1:8443",
            AllowRemote,
            Ok(("10.0.0.1", 8443, Scheme::Https)),
        );
    }

    #[test]
    fn malformed_targets_are_refused() {
        use Reach::LoopbackOnly as L;
        check("127.0.0.1:8443", L, Err("must start with"));
        check("ftp://127.0.0.1", L, Err("must start with"));
        check(
            "http://127.0.0.1:8443/oauth/token",
            L,
            Err("without a path"),
        );
        check("http://user@127.0.0.1", L, Err("without a path"));
        check("http://127.0.0.1:0", L, Err("bad host or port"));
        check("http://127.0.0.1:99999", L, Err("bad host or port"));
        check("http://::1:80", L, Err("bad host or port"));
        check("http://", L, Err("without a path"));
    }

    #[test]
    fn host_header_and_paths() {
        let t = Target::parse("https://[::1]:9", Reach::LoopbackOnly).unwrap();
        assert_eq!(t.host_header(), "[::1]:9");
        assert_eq!(
            path_of("https://127.0.0.1:8443/api/agentmanagement/v3/register/a1"),
            Some("/api/agentmanagement/v3/register/a1")
        );
        assert_eq!(path_of("https://h"), None);
        assert_eq!(path_of("/relative"), None);
    }
}

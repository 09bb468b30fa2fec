//! Which storage engine `serve` runs on: the embedded redb file (the default), or a cluster of
//! authorities sharing one etcd cluster (`etcd://HOST:PORT[,HOST:PORT…]`, cargo feature
//! `etcd`). The setting parses in every build, so a build without the feature can say exactly
//! what is missing instead of calling the URL malformed.

use std::fmt;
use std::str::FromStr;

/// Most etcd endpoints one `--store` may name: a cluster has 3 or 5 members, and every
/// endpoint is a connection the client keeps.
pub const MAX_ETCD_ENDPOINTS: usize = 16;

/// Longest `HOST:PORT` accepted (a DNS name is at most 253 bytes).
const MAX_ENDPOINT_BYTES: usize = 260;

/// The command that builds a `latchkey` able to use `--store etcd://…`.
pub const ETCD_BUILD_COMMAND: &str =
    "cargo build --release -p latchkey-authority --features etcd (needs protoc)";

/// The `store` setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreEngine {
    /// `<data-dir>/latchkey.redb`, this process its only writer.
    #[default]
    Redb,
    /// The etcd cluster reached at these `HOST:PORT` client endpoints (plain HTTP/2 gRPC).
    Etcd { endpoints: Vec<String> },
}

impl StoreEngine {
    /// Whether this binary was built with the etcd engine (cargo feature `etcd`).
    pub const ETCD_BUILT: bool = cfg!(feature = "etcd");

    /// Refuses an engine this binary cannot run, naming the feature and the build command.
    pub fn check_built(&self) -> Result<(), String> {
        match self {
            StoreEngine::Etcd { .. } if !Self::ETCD_BUILT => Err(format!(
                "store {self}: this latchkey was built without the cargo feature `etcd`; \
                 build one with it: {ETCD_BUILD_COMMAND}"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for StoreEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreEngine::Redb => f.write_str("redb"),
            StoreEngine::Etcd { endpoints } => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

impl FromStr for StoreEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "redb" {
            return Ok(StoreEngine::Redb);
        }
        let Some(list) = s.strip_prefix("etcd://") else {
            return Err(format!(
                "{:?}: the store is `redb` or `etcd://HOST:PORT[,HOST:PORT...]`",
                truncate(s)
            ));
        };
        let endpoints: Vec<String> = list.split(',').map(str::to_owned).collect();
        if endpoints.len() > MAX_ETCD_ENDPOINTS {
            return Err(format!(
                "etcd://: at most {MAX_ETCD_ENDPOINTS} endpoints, got {}",
                endpoints.len()
            ));
        }
        for e in &endpoints {
            check_endpoint(e)?;
        }
        Ok(StoreEngine::Etcd { endpoints })
    }
}

impl<'de> serde::Deserialize<'de> for StoreEngine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `HOST:PORT`: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1–65535.
/// Nothing else (no scheme, path, user or query), so an endpoint cannot smuggle options.
fn check_endpoint(e: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("etcd endpoint {:?}: {why}", truncate(e)));
    if e.len() > MAX_ENDPOINT_BYTES {
        return bad("too long");
    }
    let Some((host, port)) = e.rsplit_once(':') else {
        return bad("expected HOST:PORT");
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p != 0) || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return bad("the port must be 1-65535");
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !host_ok {
        return bad("the host must be a DNS name, an IPv4 address or [IPv6]");
    }
    Ok(())
}

/// Echoes at most 80 bytes of a bad value back in an error.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redb_and_etcd_endpoint_lists() {
        assert_eq!("redb".parse::<StoreEngine>(), Ok(StoreEngine::Redb));
        let e: StoreEngine = "etcd://10.0.0.1:2379,etcd-2.local:2379,[::1]:2379"
            .parse()
            .unwrap();
        assert_eq!(
            e,
            StoreEngine::Etcd {
                endpoints: vec![
                    "10.0.0.1:2379".into(),
                    "etcd-2.local:2379".into(),
                    "[::1]:2379".into()
                ]
            }
        );
        assert_eq!(
            e.to_string(),
            "etcd://10.0.0.1:2379,etcd-2.local:2379,[::1]:2379"
        );
        assert_eq!(StoreEngine::default(), StoreEngine::Redb);
    }

    #[test]
    fn refuses_malformed_stores_with_the_reason() {
        for (bad, why) in [
            ("sqlite", "the store is `redb` or `etcd://"),
            ("etcd://", "expected HOST:PORT"),
            ("etcd://host", "expected HOST:PORT"),
            ("etcd://host:0", "port must be 1-65535"),
            ("etcd://host:70000", "port must be 1-65535"),
            ("etcd://host:+80", "port must be 1-65535"),
            ("etcd://a:1,", "expected HOST:PORT"),
            ("etcd://user@host:1", "the host must be"),
            ("etcd://host/x:1", "the host must be"),
            ("etcd://[zz]:1", "the host must be"),
            ("etcd://:1", "the host must be"),
            ("http://host:1", "the store is `redb` or `etcd://"),
        ] {
            let err = bad.parse::<StoreEngine>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let many = format!("etcd://{}", vec!["h:1"; MAX_ETCD_ENDPOINTS + 1].join(","));
        assert!(
            many.parse::<StoreEngine>()
                .unwrap_err()
                .contains("at most 16")
        );
        let long = format!("etcd://{}:1", "a".repeat(MAX_ENDPOINT_BYTES));
        assert!(
            long.parse::<StoreEngine>()
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn redb_is_always_built() {
        assert_eq!(StoreEngine::Redb.check_built(), Ok(()));
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_names_the_feature_and_the_build_command() {
        let e: StoreEngine = "etcd://127.0.0.1:2379".parse().unwrap();
        let err = e.check_built().unwrap_err();
        assert!(err.contains("cargo feature `etcd`"), "{err}");
        assert!(err.contains("--features etcd"), "{err}");
        assert!(err.contains("etcd://127.0.0.1:2379"), "{err}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_with_the_feature_is_built() {
        let e: StoreEngine = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(e.check_built(), Ok(()));
    }
}

//! What an operator token may do: [`Permission`]s, named by their token scopes, and
//! [`Permissions`], a set of them. Below the API because settings (configured profiles) and
//! first run (the built-in profiles) speak it too.

use std::fmt;

/// One thing an operator token may do. The names are the token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// List and read agents, their online and boarding status.
    AgentsRead,
    /// Create, update, delete and offboard agents; obtain boarding configurations (their
    /// initial access token is the credential that registers the agent).
    AgentsWrite,
    /// List operator clients and profiles.
    ClientsRead,
    /// Create and delete operator clients and profiles.
    ClientsAdmin,
    /// List signing keys.
    KeysRead,
    /// Rotate, import and revoke signing keys.
    KeysAdmin,
    /// Introspect tokens (RFC 7662).
    TokensIntrospect,
    /// Revoke any token, every token of an agent (RFC 7009 and the operator API).
    TokensRevoke,
    /// Read the audit log.
    AuditRead,
    /// Read `/metrics` when it is served with `metrics-access = "operator"`.
    MetricsRead,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::AgentsRead,
        Permission::AgentsWrite,
        Permission::ClientsRead,
        Permission::ClientsAdmin,
        Permission::KeysRead,
        Permission::KeysAdmin,
        Permission::TokensIntrospect,
        Permission::TokensRevoke,
        Permission::AuditRead,
        Permission::MetricsRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::AgentsRead => "agents:read",
            Permission::AgentsWrite => "agents:write",
            Permission::ClientsRead => "clients:read",
            Permission::ClientsAdmin => "clients:admin",
            Permission::KeysRead => "keys:read",
            Permission::KeysAdmin => "keys:admin",
            Permission::TokensIntrospect => "tokens:introspect",
            Permission::TokensRevoke => "tokens:revoke",
            Permission::AuditRead => "audit:read",
            Permission::MetricsRead => "metrics:read",
        }
    }

    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u16);

impl Permissions {
    pub const EMPTY: Permissions = Permissions(0);
    pub const ALL: Permissions = {
        let mut bits = 0;
        let mut i = 0;
        while i < Permission::ALL.len() {
            bits |= Permission::ALL[i].bit();
            i += 1;
        }
        Permissions(bits)
    };
    /// The built-in `ReadOnly` profile: every read, nothing that changes state.
    pub const READ_ONLY: Permissions = Permissions(
        Permission::AgentsRead.bit()
            | Permission::ClientsRead.bit()
            | Permission::KeysRead.bit()
            | Permission::TokensIntrospect.bit()
            | Permission::AuditRead.bit()
            | Permission::MetricsRead.bit(),
    );

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn with(self, p: Permission) -> Permissions {
        Permissions(self.0 | p.bit())
    }

    pub fn intersect(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    pub fn is_subset(self, other: Permissions) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Parses permission names; an unknown name is an error (a typo must not silently grant
    /// less, or more, than intended).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Permissions, String> {
        names.iter().try_fold(Permissions::EMPTY, |acc, n| {
            Permission::parse(n.as_ref())
                .map(|p| acc.with(p))
                .ok_or_else(|| format!("unknown permission {:?}", n.as_ref()))
        })
    }

    /// Parses stored names, ignoring unknown ones (a profile written by a newer release).
    pub fn lenient<S: AsRef<str>>(names: &[S]) -> Permissions {
        names
            .iter()
            .filter_map(|n| Permission::parse(n.as_ref()))
            .fold(Permissions::EMPTY, Permissions::with)
    }

    /// Space-separated scope string (RFC 6749 §3.3).
    pub fn scope(self) -> String {
        self.iter()
            .map(Permission::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

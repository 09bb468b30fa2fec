//! What the state answers from settings and small caches: the URL the server is reached at,
//! the issuer, and each tenant's token algorithm.

use std::collections::HashMap;

use latchkey_core::Algorithm;

use super::App;
use crate::config::parse_token_alg;
use crate::store::TenantRecord;

/// URLs known once the server is bound.
#[derive(Debug)]
pub(super) struct Urls {
    base: String,
    issuer: String,
}

impl App {
    /// Records the address the server listens on; the public URL and issuer default to it.
    /// Call once, after binding and before serving. Later calls are ignored.
    pub fn set_listen_addr(&self, scheme: &str, addr: std::net::SocketAddr) {
        let _ = self
            .urls
            .set(self.make_urls(Some(format!("{scheme}://{addr}"))));
    }

    /// The URL clients reach this server at, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.urls().base
    }

    /// `iss` of every token this authority mints.
    pub fn issuer(&self) -> &str {
        &self.urls().issuer
    }

    fn urls(&self) -> &Urls {
        self.urls.get_or_init(|| self.make_urls(None))
    }

    fn make_urls(&self, bound: Option<String>) -> Urls {
        let base = self
            .settings
            .public_url
            .clone()
            .or(bound)
            .unwrap_or_else(|| "https://localhost".to_owned());
        let issuer = self.settings.issuer.clone().unwrap_or_else(|| base.clone());
        Urls { base, issuer }
    }

    /// The token algorithm of `tenant`'s agent access tokens (RS256 if unknown).
    pub fn tenant_alg(&self, tenant: &str) -> Algorithm {
        self.tenant_algs
            .load()
            .get(tenant)
            .copied()
            .unwrap_or(Algorithm::RS256)
    }

    /// Whether `tenant` exists.
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.tenant_algs.load().contains_key(tenant)
    }

    /// Records a tenant's token algorithm for [`App::tenant_alg`].
    pub(super) fn cache_tenant(&self, t: &TenantRecord) {
        let alg = parse_token_alg(&t.token_alg).unwrap_or(Algorithm::RS256);
        self.tenant_algs.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(t.id.clone(), alg);
            m
        });
    }
}

//! The HTTP APIs: each module registers its routes in [`routes`] and answers with
//! `crate::error::Error` on refusal; [`register`] renders it (through `error::WireError`, the
//! one mapping) into the response the transport sends.
//!
//! Shared request parsing lives here: [`Form`] (`application/x-www-form-urlencoded`, also
//! used for query strings), bearer and Basic credentials, and JSON bodies. Everything is
//! recognised completely before a handler acts on it, with counts and sizes bounded.

pub mod agent_credentials;
pub mod agent_token;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod clients;
pub mod datasource;
pub mod import;
pub mod metrics;
pub mod mindsphere;
pub mod mtls_client_auth;
pub mod oauth;
pub mod offload;
pub mod onboarding;
pub mod operator;
pub mod registration;
pub mod replay_refusal;
pub mod throttle;
pub mod validate;
mod write;

use std::borrow::Cow;
use std::sync::Arc;

use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Router};

/// Registers every API route.
pub fn routes(router: &mut Router, app: &Arc<App>) {
    oauth::routes(router, app);
    operator::routes(router, app);
    clients::routes(router, app);
    audit::routes(router, app);
    certs::routes(router, app);
    let agent_state = Arc::new(onboarding::AgentState::new(Arc::clone(app)));
    agents::routes(router, &agent_state);
    onboarding::routes(router, &agent_state);
    datasource::routes(router, &agent_state);
    agent_credentials::routes(router, &agent_state);
    #[cfg(feature = "etcd")]
    agent_token::peer_routes(router, &agent_state);
    import::routes(router, app);
}

/// A route handler over state `S` shared by a module's routes.
pub type Route<S> = fn(&Arc<S>, &Request<'_>, &RequestContext<'_>) -> Result<Outcome, Error>;

/// Registers a module's `(method, path, handler)` table under `prefix`, every handler sharing
/// `state`.
pub fn register<S: Send + Sync + 'static>(
    router: &mut Router,
    state: &Arc<S>,
    prefix: &str,
    table: &[(&str, &str, Route<S>)],
) {
    for &(method, path, handler) in table {
        let s = Arc::clone(state);
        router.route(
            method,
            &format!("{prefix}{path}"),
            move |req: &Request<'_>, ctx: &RequestContext<'_>| -> Outcome {
                handler(&s, req, ctx).into()
            },
        );
    }
}

/// Most parameters one form or query string may carry.
pub const MAX_FORM_PARAMS: usize = 64;

/// A parsed `application/x-www-form-urlencoded` body or query string. Names must be unique
/// (RFC 6749 §3.1: parameters must not be included more than once).
#[derive(Debug, Default)]
pub struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    /// Parses `a=b&c=d`; `+` is a space, `%XX` a byte; the result must be UTF-8.
    pub fn parse(input: &'a str) -> Result<Form<'a>, Error> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
        for part in input.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_FORM_PARAMS {
                return Err(bad(format!("more than {MAX_FORM_PARAMS} parameters")));
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name)?;
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("parameter {name:?} given more than once")));
            }
            pairs.push((name, percent_decode(value)?));
        }
        Ok(Form { pairs })
    }

    /// The body of a form POST; the content type must say so.
    pub fn from_request(req: &Request<'a>) -> Result<Form<'a>, Error> {
        let ct = req.header("content-type").unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(bad(
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        let body = std::str::from_utf8(req.body()).map_err(|_| bad("body is not UTF-8"))?;
        Form::parse(body)
    }

    /// The query string of a request (empty if none).
    pub fn query(req: &Request<'a>) -> Result<Form<'a>, Error> {
        Form::parse(req.query().unwrap_or(""))
    }

    /// A parameter's value; empty values count as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    /// A required parameter.
    pub fn require(&self, name: &str) -> Result<&str, Error> {
        self.get(name)
            .ok_or_else(|| bad(format!("missing parameter {name:?}")))
    }

    /// A numeric parameter, if present.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Error> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("parameter {name:?} must be a number")))
            })
            .transpose()
    }
}

fn percent_decode(s: &str) -> Result<Cow<'_, str>, Error> {
    if !needs_decoding(s.as_bytes()) {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| bad("truncated percent escape"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad("bad percent escape"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad("bad percent escape"))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| bad("parameter is not UTF-8"))
}

/// Whether `s` holds a `%` or `+`. Most values hold neither (a client assertion is ~400 bytes
/// of base64url), so this scan is the whole cost of decoding them: it ORs each 32-byte block
/// without an early exit inside, which the compiler turns into SIMD compares.
fn needs_decoding(s: &[u8]) -> bool {
    s.chunks(32).any(|block| {
        block
            .iter()
            .fold(false, |hit, &b| hit | (b == b'%') | (b == b'+'))
    })
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer<'a>(req: &Request<'a>) -> Option<&'a str> {
    let h = req.header("authorization")?;
    let (scheme, rest) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// `Authorization: Basic` credentials (client id, secret) if the header uses that scheme.
/// A malformed Basic header is an error, not an absent one.
pub fn basic(req: &Request<'_>) -> Result<Option<(String, zeroize::Zeroizing<String>)>, Error> {
    use base64::Engine as _;
    let Some(h) = req.header("authorization") else {
        return Ok(None);
    };
    let Some((scheme, rest)) = h.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let invalid = || {
        Error::Api(ApiError::InvalidClient(
            "malformed Basic credentials".into(),
        ))
    };
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| invalid())?,
    );
    let text = std::str::from_utf8(&raw).map_err(|_| invalid())?;
    let (id, secret) = text.split_once(':').ok_or_else(invalid)?;
    Ok(Some((
        id.to_owned(),
        zeroize::Zeroizing::new(secret.to_owned()),
    )))
}

/// Undoes the form-encoding RFC 6749 §2.3.1 asks clients to apply inside Basic credentials.
pub fn form_unescape(s: &str) -> Option<String> {
    percent_decode(s).ok().map(Cow::into_owned)
}

/// A JSON request body, parsed into `T`. Requires `Content-Type: application/json`.
pub fn json_body<T: serde::de::DeserializeOwned>(req: &Request<'_>) -> Result<T, Error> {
    let ct = req.header("content-type").unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(Error::Api(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        )));
    }
    serde_json::from_slice(req.body()).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Api(ApiError::InvalidRequest(msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<Vec<(&str, &str)>, &str>) {
        let got = Form::parse(input).map(|f| {
            f.pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        });
        match (got, expect) {
            (Ok(got), Ok(want)) => {
                let want: Vec<_> = want
                    .into_iter()
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect();
                assert_eq!(got, want, "{input}");
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn forms_decode_and_refuse_duplicates() {
        check(
            "grant_type=client_credentials",
            Ok(vec![("grant_type", "client_credentials")]),
        );
        check("a=1&&b=x+y%2Bz", Ok(vec![("a", "1"), ("b", "x y+z")]));
        check("a", Ok(vec![("a", "")]));
        check("", Ok(vec![]));
        check("a=1&a=2", Err("more than once"));
        check("a=%4", Err("truncated"));
        check("a=%zz", Err("bad percent"));
        check("a=%ff", Err("UTF-8"));
        // Escapes found in any 32-byte block of a long value, and none in a plain one.
        let plain = "x".repeat(100);
        for at in [0, 31, 32, 63, 64, 99] {
            let mut v = plain.clone().into_bytes();
            v[at] = b'+';
            let v = String::from_utf8(v).unwrap();
            assert!(needs_decoding(v.as_bytes()), "+ at {at}");
            let want = v.replace('+', " ");
            check(&format!("a={v}"), Ok(vec![("a", want.as_str())]));
        }
        assert!(!needs_decoding(plain.as_bytes()));
        assert!(matches!(percent_decode(&plain), Ok(Cow::Borrowed(_))));
        let many = (0..65)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        check(&many, Err("more than 64"));
        let f = Form::parse("a=&b=2&n=x").unwrap();
        assert_eq!(f.get("a"), None, "empty values count as absent");
        assert_eq!(f.number("b").unwrap(), Some(2));
        assert!(f.number("n").is_err());
        assert!(f.require("zz").is_err());
    }
}

//! A small path router: method + path segments, `{name}` segments capture.
//!
//! Later issues register their handlers here (`router.get("/api/.../agents/{id}", handler)`).
//! Unknown paths answer 404, known paths with the wrong method 405 with `Allow`; the router
//! names the refusal ([`HttpError`]) and the renderer it was built with words it. HEAD is served by the GET route with the
//! body dropped. When several patterns match, the one with literal segments earliest wins, so
//! `/agents/register` beats `/agents/{id}`.
//!
//! Captured `{name}` segments are percent-decoded strictly (RFC 3986 §2.1): `%2F` is a `/` inside
//! the value, `+` stays `+`, and a `%` without two hex digits or a value that is not UTF-8 answers
//! 400 before any handler runs. Literal segments match as sent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::HttpError;
use super::handler::{Handler, Outcome, RequestContext};
use super::metrics::Metrics;
use super::request::Request;
use super::response::Response;

/// Words the refusals the transport decides itself (status, body, headers). The application
/// supplies it, so the transport never maps errors to the wire. A plain `fn`: called only on
/// refusals, it costs the answered requests nothing.
pub type Refusals = fn(&HttpError) -> Response;

/// Index of a route, used for metrics labels. `Router::unmatched` is one past the last route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(pub usize);

/// Routes registered before the server starts.
pub struct Router {
    routes: Vec<Route>,
    refuse: Refusals,
    /// Routes whose pattern has no `{param}`, by pattern, then `(method, index)` (the first
    /// registered per method): a request path equal to such a pattern is found without
    /// scanning every route. See [`Router::dispatch`] for why the answer is the same.
    literal: HashMap<String, Vec<(String, usize)>>,
}

struct Route {
    method: String,
    pattern: String,
    segments: Vec<Segment>,
    handler: Box<dyn Handler>,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Captured `{name}` segments: (name from the pattern, raw value from the path).
type Params<'r, 'p> = Vec<(&'r str, &'p str)>;

/// Captured `{name}` segments, percent-decoded: what handlers see.
pub type Decoded<'r, 'p> = Vec<(&'r str, Cow<'p, str>)>;

/// The result of looking a request up.
pub enum Dispatch<'r, 'p> {
    Found {
        id: RouteId,
        handler: &'r dyn Handler,
        params: Decoded<'r, 'p>,
    },
    /// No route for this path, the path exists with other methods, or a parameter is not
    /// validly percent-encoded: the answer is ready.
    Refused { id: RouteId, response: Response },
}

impl Router {
    /// An empty router whose refusals `refuse` words.
    pub fn new(refuse: Refusals) -> Self {
        Self {
            routes: Vec::new(),
            refuse,
            literal: HashMap::new(),
        }
    }

    /// The answer to a request the transport refuses with `e`.
    pub fn refuse(&self, e: &HttpError) -> Response {
        (self.refuse)(e)
    }

    /// The renderer, for whoever answers outside a router borrow (a dropped completion).
    pub fn refusals(&self) -> Refusals {
        self.refuse
    }

    /// Registers `handler` for `method` and `pattern` (`/a/{param}/b`).
    ///
    /// # Panics
    /// If `pattern` does not start with `/` or has an empty `{}`: patterns are constants in
    /// code, so this is a programming error found by the first test that builds the router.
    pub fn route(&mut self, method: &str, pattern: &str, handler: impl Handler) -> &mut Self {
        assert!(
            pattern.starts_with('/'),
            "route pattern must start with '/': {pattern}"
        );
        let segments = split(pattern)
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => {
                        assert!(!name.is_empty(), "empty parameter name in {pattern}");
                        Segment::Param(name.to_owned())
                    }
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect::<Vec<_>>();
        let method = method.to_ascii_uppercase();
        // Beyond 63 segments specificity bits are shared (see `Route::matches`), so a
        // parameter route could tie with a literal one; such patterns take the scan only.
        if segments.len() < 64 && segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            let methods = self.literal.entry(pattern.to_owned()).or_default();
            if !methods.iter().any(|(m, _)| *m == method) {
                methods.push((method.clone(), self.routes.len()));
            }
        }
        self.routes.push(Route {
            method,
            pattern: pattern.to_owned(),
            segments,
            handler: Box::new(handler),
        });
        self
    }

    pub fn get(&mut self, pattern: &str, handler: impl Handler) -> &mut Self {
        self.route("GET", pattern, handler)
    }

    pub fn post(&mut self, pattern: &str, handler: impl Handler) -> &mut Self {
        self.route("POST", pattern, handler)
    }

    pub fn put(&mut self, pattern: &str, handler: impl Handler) -> &mut Self {
        self.route("PUT", pattern, handler)
    }

    pub fn delete(&mut self, pattern: &str, handler: impl Handler) -> &mut Self {
        self.route("DELETE", pattern, handler)
    }

    /// `GET /healthz` and `GET /metrics`.
    pub fn builtin_routes(&mut self, metrics: Arc<Metrics>) -> &mut Self {
        self.health_route().metrics_route(metrics)
    }

    /// `GET /healthz`.
    pub fn health_route(&mut self) -> &mut Self {
        self.get("/healthz", healthz)
    }

    /// `GET /metrics`, open to whoever reaches the listener.
    pub fn metrics_route(&mut self, metrics: Arc<Metrics>) -> &mut Self {
        self.get(
            "/metrics",
            move |_: &Request<'_>, _: &RequestContext<'_>| -> Outcome {
                Response::text(200, "text/plain; version=0.0.4", metrics.render()).into()
            },
        )
    }

    /// The metrics id for requests that matched no route.
    pub fn unmatched(&self) -> RouteId {
        RouteId(self.routes.len())
    }

    /// `(method, pattern)` per route id, `unmatched` last: labels for `Metrics::init_routes`.
    pub fn labels(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .routes
            .iter()
            .map(|r| (r.method.clone(), r.pattern.clone()))
            .collect();
        v.push((String::new(), "unmatched".to_owned()));
        v
    }

    /// Finds the route for `method` and `path`.
    pub fn dispatch<'r, 'p>(&'r self, method: &str, path: &'p str) -> Dispatch<'r, 'p> {
        // Fast path, same answer as the scan: a path equal to a literal pattern has exactly
        // that pattern's segments, every one matching a literal, which is the highest score
        // any pattern can reach on it; another route with that score has the same pattern,
        // and the first registered wins ties in both. HEAD (two methods to look for) scans.
        if method != "HEAD"
            && let Some(&(_, i)) = self
                .literal
                .get(path)
                .and_then(|methods| methods.iter().find(|(m, _)| m == method))
        {
            return Dispatch::Found {
                id: RouteId(i),
                handler: &*self.routes[i].handler,
                params: Vec::new(),
            };
        }
        self.dispatch_scan(method, path)
    }

    /// Route `i` with its parameters decoded, or 400 naming the parameter that is not.
    fn found<'r, 'p>(&'r self, i: usize, params: Params<'r, 'p>) -> Dispatch<'r, 'p> {
        let id = RouteId(i);
        let mut decoded = Vec::with_capacity(params.len());
        for (name, raw) in params {
            let Some(value) = decode_segment(raw) else {
                return Dispatch::Refused {
                    id,
                    response: self.refuse(&HttpError::BadPathParameter(name.to_owned())),
                };
            };
            decoded.push((name, value));
        }
        Dispatch::Found {
            id,
            handler: &*self.routes[i].handler,
            params: decoded,
        }
    }

    /// [`Router::dispatch`] by trying every route: the best-scoring match, else 405 with the
    /// methods the path has, else 404.
    fn dispatch_scan<'r, 'p>(&'r self, method: &str, path: &'p str) -> Dispatch<'r, 'p> {
        let lookup = if method == "HEAD" { "GET" } else { method };
        let mut best: Option<(u64, usize, Params<'r, 'p>)> = None;
        let mut allow: Vec<&str> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let Some((score, params)) = route.matches(path) else {
                continue;
            };
            let exact = route.method == method || route.method == lookup;
            if !exact {
                allow.push(&route.method);
                continue;
            }
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, i, params));
            }
        }
        if let Some((_, i, params)) = best {
            return self.found(i, params);
        }
        let id = self.unmatched();
        if allow.is_empty() {
            return Dispatch::Refused {
                id,
                response: self.refuse(&HttpError::NotFound),
            };
        }
        if allow.contains(&"GET") {
            allow.push("HEAD");
        }
        allow.sort_unstable();
        allow.dedup();
        let response = self
            .refuse(&HttpError::MethodNotAllowed(method.to_owned()))
            .header("Allow", allow.join(", "));
        Dispatch::Refused { id, response }
    }
}

fn healthz(_: &Request<'_>, _: &RequestContext<'_>) -> Outcome {
    Response::raw_json(200, br#"{"status":"ok"}"#.to_vec()).into()
}

impl fmt::Debug for Dispatch<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dispatch::Found { id, .. } => f
                .debug_struct("Found")
                .field("id", id)
                .finish_non_exhaustive(),
            Dispatch::Refused { id, response } => f
                .debug_struct("Refused")
                .field("id", id)
                .field("response", response)
                .finish(),
        }
    }
}

impl Route {
    /// Specificity score (literal segments earlier weigh more) and captured parameters.
    fn matches<'r, 'p>(&'r self, path: &'p str) -> Option<(u64, Vec<(&'r str, &'p str)>)> {
        let mut parts = split(path);
        let mut params = Vec::new();
        let mut score = 0u64;
        for (i, seg) in self.segments.iter().enumerate() {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l == part => {
                    score |= 1u64
                        .checked_shl(63u32.saturating_sub(i as u32))
                        .unwrap_or(0);
                }
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some((score, params))
    }
}

/// A path segment with its `%XX` escapes decoded; `None` if an escape is malformed or the
/// result is not UTF-8. Unlike a form value, `+` is not a space here.
fn decode_segment(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&h| (h as char).to_digit(16));
            let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
            // Two hex digits: at most 0xFF, so the cast cannot truncate.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Path segments after the leading `/`; `/` alone has none.
fn split(path: &str) -> impl Iterator<Item = &str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').filter({
        let empty_root = rest.is_empty();
        move |_| !empty_root
    })
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.routes
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.pattern)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &super::super::Request<'_>, _: &super::super::RequestContext<'_>) -> Outcome {
        Response::new(204).into()
    }

    fn router() -> Router {
        let mut r = Router::new(super::super::testing::refusal);
        r.get("/agents/{id}", ok)
            .post("/agents/register", ok)
            .get("/", ok)
            .delete("/agents/{id}", ok)
            .get("/agents/{id}/status", ok)
            .get("/agents/all/status", ok)
            .post("/agents/register", ok);
        r
    }

    /// Route index and parameters, or status and `Allow`.
    type Expect<'a> = Result<(usize, Params<'a, 'a>), (u16, Option<&'a str>)>;

    fn check(method: &str, path: &str, expect: Expect<'_>) {
        let r = router();
        let owned = |params: Vec<(&str, &str)>| -> Vec<(String, String)> {
            params
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        };
        let got = match r.dispatch(method, path) {
            Dispatch::Found { id, params, .. } => Ok((
                id.0,
                owned(params.iter().map(|(n, v)| (*n, v.as_ref())).collect()),
            )),
            Dispatch::Refused { response, .. } => Err((
                response.status,
                response.header_value("allow").map(str::to_owned),
            )),
        };
        let expect = expect
            .map(|(i, p)| (i, owned(p)))
            .map_err(|(s, a)| (s, a.map(str::to_owned)));
        assert_eq!(got, expect, "{method} {path}");
    }

    #[test]
    fn matches_params_literals_and_methods() {
        check("GET", "/agents/a1", Ok((0, vec![("id", "a1")])));
        check("HEAD", "/agents/a1", Ok((0, vec![("id", "a1")])));
        check("POST", "/agents/register", Ok((1, vec![])));
        check("GET", "/agents/register", Ok((0, vec![("id", "register")])));
        check("GET", "/", Ok((2, vec![])));
        check("DELETE", "/agents/x", Ok((3, vec![("id", "x")])));
        check("PUT", "/agents/x", Err((405, Some("DELETE, GET, HEAD"))));
        check("GET", "/agents", Err((404, None)));
        check("GET", "/agents/", Err((404, None)));
        check("GET", "/agents/a/b", Err((404, None)));
        // Literal patterns (the indexed fast path) agree with the scan: the literal route
        // beats a parameter one, the first of two identical routes wins, the method must
        // match, and a path that is not spelled exactly like the pattern still matches.
        check("GET", "/agents/all/status", Ok((5, vec![])));
        check("GET", "/agents/x/status", Ok((4, vec![("id", "x")])));
        check("HEAD", "/agents/all/status", Ok((5, vec![])));
        check("PUT", "/agents/all/status", Err((405, Some("GET, HEAD"))));
        check("POST", "/agents/register", Ok((1, vec![])));
        check("POST", "agents/register", Ok((1, vec![])));
        check(
            "DELETE",
            "/agents/register",
            Ok((3, vec![("id", "register")])),
        );
    }

    /// Parameters arrive percent-decoded; a malformed escape is 400 naming the parameter.
    #[test]
    fn parameters_are_percent_decoded_strictly() {
        check("GET", "/agents/evil%2Fx", Ok((0, vec![("id", "evil/x")])));
        check("GET", "/agents/a%40b%3a1", Ok((0, vec![("id", "a@b:1")])));
        check("GET", "/agents/a+b", Ok((0, vec![("id", "a+b")])));
        check("GET", "/agents/%C3%A9/status", Ok((4, vec![("id", "é")])));
        check("GET", "/agents/%41", Ok((0, vec![("id", "A")])));
        for bad in [
            "/agents/%",
            "/agents/a%2",
            "/agents/%zz",
            "/agents/%2g",
            "/agents/%FF",
            "/agents/%C3",
            "/agents/%+1",
        ] {
            let r = router();
            match r.dispatch("GET", bad) {
                Dispatch::Refused { response, id } => {
                    assert_eq!((response.status, id.0), (400, 0), "{bad}");
                    let body = String::from_utf8_lossy(response.body_bytes()).into_owned();
                    assert!(
                        body.contains("invalid_request") && body.contains("parameter id"),
                        "{bad}: {body}"
                    );
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_segment("plain"),
            Some(Cow::Borrowed("plain"))
        ));
    }

    /// The fast path returns what the full scan returns, for every route and a few near
    /// misses, with every method.
    #[test]
    fn literal_index_agrees_with_the_scan() {
        let r = router();
        let paths = [
            "/",
            "/agents",
            "/agents/register",
            "/agents/all/status",
            "/agents/a1",
            "/agents/a1/status",
            "/agents/register/",
            "//agents/register",
        ];
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE"] {
            for path in paths {
                let fast = summary(r.dispatch(method, path));
                let slow = summary(r.dispatch_scan(method, path));
                assert_eq!(fast, slow, "{method} {path}");
            }
        }
    }

    fn summary(d: Dispatch<'_, '_>) -> (usize, Vec<(String, String)>, u16) {
        match d {
            Dispatch::Found { id, params, .. } => (
                id.0,
                params
                    .into_iter()
                    .map(|(a, b)| (a.to_owned(), b.into_owned()))
                    .collect(),
                0,
            ),
            Dispatch::Refused { id, response } => (id.0, vec![], response.status),
        }
    }
}

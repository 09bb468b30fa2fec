//! The audit log read API, `GET /api/latchkey/v1/audit`, and the page reader the command-line
//! tool shares offline. The audit log is global: reading it is reserved to clients of the
//! authority's own tenant, to anyone else it does not exist (404).

use std::sync::Arc;

use serde_json::json;

use super::auth::{self, Permission};
use super::operator::PREFIX;
use super::{Form, Route};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{AuditOutcome, AuditRecord};

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 1] = [("GET", "/audit", audit)];
    super::register(router, app, PREFIX, &table);
}

/// Most audit entries one page request looks at; a page cut short by it says where to
/// continue (`next`), so a filter that matches little never makes one request read the log.
pub const MAX_AUDIT_SCAN: usize = 10_000;
/// Largest audit page.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Filters for the audit log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries naming this agent, as actor or subject.
    pub agent: Option<String>,
    /// Entries naming this client, as actor or subject.
    pub client: Option<String>,
    /// Entries whose actor is exactly this.
    pub actor: Option<String>,
    /// Event name or dotted prefix (`token` matches `token.issue`).
    pub event: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
}

impl AuditFilter {
    pub fn matches(&self, a: &AuditRecord) -> bool {
        let names = |id: &str| {
            a.actor == id || a.subject == id || a.subject.strip_prefix("agent:") == Some(id)
        };
        self.agent.as_deref().is_none_or(names)
            && self.client.as_deref().is_none_or(names)
            && self.actor.as_deref().is_none_or(|x| a.actor == x)
            && self.event.as_deref().is_none_or(|e| {
                a.event == e
                    || a.event
                        .strip_prefix(e)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            && self.since.is_none_or(|s| a.at >= s)
            && self.until.is_none_or(|u| a.at <= u)
    }
}

/// Where an audit page starts, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditCursor {
    /// Newest first, entries with `seq` below this (from the newest with `None`).
    Before(Option<u64>),
    /// Oldest first, entries with `seq` above this.
    After(u64),
}

/// Matching entries from `cursor` in its direction, at most `limit` (≤ [`MAX_AUDIT_PAGE`]),
/// looking at no more than [`MAX_AUDIT_SCAN`] entries. Also returns the cursor to continue
/// from in the same direction (the last entry looked at), `None` when the log ends there.
pub fn audit_page(
    app: &App,
    filter: &AuditFilter,
    cursor: AuditCursor,
    limit: usize,
) -> Result<(Vec<AuditRecord>, Option<u64>), Error> {
    const BATCH: usize = 1000;
    let limit = limit.clamp(1, MAX_AUDIT_PAGE);
    let snap = app.store.read()?;
    let mut out = Vec::new();
    let mut cursor = cursor;
    let mut scanned = 0;
    loop {
        let batch = match cursor {
            AuditCursor::Before(b) => snap.audit_before(b, BATCH)?,
            AuditCursor::After(a) => snap.audit(a, BATCH)?,
        };
        let full = batch.len() == BATCH;
        if batch.is_empty() {
            return Ok((out, None));
        }
        for a in batch {
            cursor = match cursor {
                AuditCursor::Before(_) => AuditCursor::Before(Some(a.seq)),
                AuditCursor::After(_) => AuditCursor::After(a.seq),
            };
            scanned += 1;
            if filter.matches(&a) {
                out.push(a);
                if out.len() == limit {
                    return Ok((out, Some(seq_of(cursor))));
                }
            }
            if scanned == MAX_AUDIT_SCAN {
                return Ok((out, Some(seq_of(cursor))));
            }
        }
        if !full {
            return Ok((out, None));
        }
    }
}

fn seq_of(c: AuditCursor) -> u64 {
    match c {
        AuditCursor::Before(b) => b.unwrap_or(0),
        AuditCursor::After(a) => a,
    }
}

/// An audit entry as the API shows it.
pub fn audit_json(a: &AuditRecord) -> serde_json::Value {
    let (outcome, reason) = match &a.outcome {
        AuditOutcome::Success => ("success", None),
        AuditOutcome::Refused(r) => ("refused", Some(r.as_str())),
    };
    json!({
        "seq": a.seq, "at": a.at, "actor": a.actor, "event": a.event, "subject": a.subject,
        "outcome": outcome, "reason": reason,
    })
}

/// `GET /audit?[before=SEQ|after=SEQ][&order=newest|oldest][&limit=N][&agent=][&client=]`
/// `[&actor=][&event=][&since=][&until=]`: one page and `next`, the cursor for the same
/// direction (`before` when newest first, `after` when oldest first). Without a cursor the
/// order is oldest first unless `order=newest`; times are Unix seconds or RFC 3339.
fn audit(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::AuditRead)?;
    if !p.is_authority(app) {
        return Err(ApiError::NotFound("audit log not found".into()).into());
    }
    let q = Form::query(req)?;
    let time = |name: &str| -> Result<Option<u64>, Error> {
        q.get(name)
            .map(|v| {
                parse_time(v).ok_or_else(|| {
                    ApiError::InvalidRequest(format!(
                        "{name} must be Unix seconds or an RFC 3339 time"
                    ))
                    .into()
                })
            })
            .transpose()
    };
    let filter = AuditFilter {
        agent: q.get("agent").map(str::to_owned),
        client: q.get("client").map(str::to_owned),
        actor: q.get("actor").map(str::to_owned),
        event: q.get("event").map(str::to_owned),
        since: time("since")?,
        until: time("until")?,
    };
    let newest = match q.get("order") {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => {
            return Err(ApiError::InvalidRequest("order must be newest or oldest".into()).into());
        }
    };
    let cursor = match (q.number("before")?, q.number("after")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest("give before or after, not both".into()).into());
        }
        (Some(b), None) => AuditCursor::Before(Some(b)),
        (None, Some(a)) => AuditCursor::After(a),
        (None, None) if newest => AuditCursor::Before(None),
        (None, None) => AuditCursor::After(0),
    };
    let limit = usize::try_from(q.number("limit")?.unwrap_or(100)).unwrap_or(MAX_AUDIT_PAGE);
    // A page may scan up to `MAX_AUDIT_SCAN` rows: on the bounded pool, not the event loop.
    let app2 = Arc::clone(app);
    super::offload::run(app, ctx, move || {
        let (entries, next) = audit_page(&app2, &filter, cursor, limit)?;
        let entries: Vec<serde_json::Value> = entries.iter().map(audit_json).collect();
        Ok(Response::json(
            200,
            &json!({ "entries": entries, "next": next }),
        ))
    })
}

/// Unix seconds or RFC 3339.
pub fn parse_time(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, at: u64, actor: &str, event: &str, subject: &str) -> AuditRecord {
        AuditRecord {
            seq,
            at,
            actor: actor.into(),
            event: event.into(),
            subject: subject.into(),
            outcome: AuditOutcome::Success,
        }
    }

    #[test]
    fn audit_filters_by_agent_client_event_and_time() {
        let f = |agent: Option<&str>, client: Option<&str>, event: Option<&str>, since, until| {
            AuditFilter {
                agent: agent.map(Into::into),
                client: client.map(Into::into),
                actor: None,
                event: event.map(Into::into),
                since,
                until,
            }
        };
        let a = entry(1, 100, "admin", "revoke", "agent:e1");
        assert!(f(Some("e1"), None, None, None, None).matches(&a));
        assert!(f(None, Some("admin"), Some("revoke"), Some(100), Some(100)).matches(&a));
        assert!(!f(Some("e2"), None, None, None, None).matches(&a));
        assert!(!f(None, None, Some("token"), None, None).matches(&a));
        assert!(!f(None, None, None, Some(101), None).matches(&a));
        let t = entry(2, 5, "admin", "token.issue", "jti:x");
        assert!(
            f(None, None, Some("token"), None, None).matches(&t),
            "event prefix"
        );
        assert!(!f(None, None, Some("token.refuse"), None, None).matches(&t));
    }
}

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

/// Filters for the audit log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub agent: Option<String>,
    pub client: Option<String>,
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
            && self
                .event
                .as_deref()
                .is_none_or(|e| a.event == e || a.event.starts_with(&format!("{e}.")))
            && self.since.is_none_or(|s| a.at >= s)
            && self.until.is_none_or(|u| a.at <= u)
    }
}

/// Matching entries after `after` (a sequence number), oldest first, at most `limit`; scans
/// at most a bounded number of entries per call and says where to continue.
pub fn audit_page(
    app: &App,
    filter: &AuditFilter,
    after: u64,
    limit: usize,
) -> Result<(Vec<AuditRecord>, Option<u64>), Error> {
    const SCAN: usize = 10_000;
    let limit = limit.clamp(1, 1000);
    let snap = app.store.read()?;
    let mut out = Vec::new();
    let mut cursor = after;
    let mut scanned = 0;
    loop {
        let batch = snap.audit(cursor, 1000)?;
        let Some(last) = batch.last().map(|a| a.seq) else {
            return Ok((out, None));
        };
        for a in batch {
            cursor = a.seq;
            scanned += 1;
            if filter.matches(&a) {
                out.push(a);
                if out.len() == limit {
                    return Ok((out, Some(cursor)));
                }
            }
        }
        if scanned >= SCAN {
            return Ok((out, Some(last)));
        }
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

fn audit(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::AuditRead)?;
    if !p.is_authority(app) {
        return Err(ApiError::NotFound("audit log not found".into()).into());
    }
    let q = Form::query(req)?;
    let filter = AuditFilter {
        agent: q.get("agent").map(str::to_owned),
        client: q.get("client").map(str::to_owned),
        event: q.get("event").map(str::to_owned),
        since: q.number("since")?,
        until: q.number("until")?,
    };
    let after = q.number("after")?.unwrap_or(0);
    let limit = usize::try_from(q.number("limit")?.unwrap_or(100)).unwrap_or(1000);
    let (entries, next) = audit_page(app, &filter, after, limit)?;
    let entries: Vec<serde_json::Value> = entries.iter().map(audit_json).collect();
    Ok(Response::json(200, &json!({ "entries": entries, "next": next })).into())
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

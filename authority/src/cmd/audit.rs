//! `latchkey audit`: the audit log, filtered by agent, client, event and time. Through a running
//! server, or on a stopped server's data directory.

use serde_json::{Value, json};

use super::remote::{Place, Target, print, s, time};
use crate::api::audit::{AuditFilter, audit_json, audit_page};
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Entries naming this agent (as actor or subject).
    #[arg(long, allow_hyphen_values = true)]
    pub agent: Option<String>,
    /// Entries naming this client (as actor or subject).
    #[arg(long, allow_hyphen_values = true)]
    pub client: Option<String>,
    /// Event name or prefix: token, token.issue, client.create, key, revoke, agent.offboard, ...
    #[arg(long, allow_hyphen_values = true)]
    pub event: Option<String>,
    /// From this time: RFC 3339, Unix seconds, or a duration ago (`1h`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<u64>,
    /// Until this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<u64>,
    /// Most entries to print.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub target: Target,
}

pub fn run(args: &AuditArgs) -> Result<(), Error> {
    let filter = AuditFilter {
        agent: args.agent.clone(),
        client: args.client.clone(),
        event: args.event.clone(),
        since: args.since,
        until: args.until,
    };
    let v = match args.target.open()? {
        Place::Remote(r) => {
            let mut q = format!("limit={}", args.limit);
            for (k, v) in [
                ("agent", &filter.agent),
                ("client", &filter.client),
                ("event", &filter.event),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", encode(v)));
                }
            }
            for (k, v) in [("since", filter.since), ("until", filter.until)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={v}"));
                }
            }
            r.call("GET", &format!("/api/latchkey/v1/audit?{q}"), None, &[])?
                .ok()?
        }
        Place::Local(app) => {
            let (entries, next) = audit_page(&app, &filter, 0, args.limit)?;
            json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>(), "next": next })
        }
    };
    print(args.target.json, &v, listing);
    Ok(())
}

fn listing(v: &Value) -> String {
    let mut out = String::new();
    for e in v
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let reason = e
            .get("reason")
            .and_then(Value::as_str)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>6} {} {:<16} {:<20} {:<40} {}{reason}\n",
            e.get("seq").and_then(Value::as_u64).unwrap_or(0),
            time(e.get("at").and_then(Value::as_u64).unwrap_or(0)),
            s(e, "actor"),
            s(e, "event"),
            s(e, "subject"),
            s(e, "outcome"),
        ));
    }
    if out.is_empty() {
        out.push_str("no matching audit entries");
    }
    out
}

/// Query-string encoding for filter values.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// RFC 3339, Unix seconds, or a duration before now.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|e| e.to_string());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(crate::app::unix_now().saturating_sub(d.as_secs()));
    }
    Err(format!(
        "{s:?} is not a time (RFC 3339, Unix seconds, or a duration ago like 1h)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        let ago = parse_time("1h").unwrap();
        assert!(crate::app::unix_now() - ago >= 3600);
        assert!(parse_time("yesterday-ish").is_err());
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}

//! `latchkey audit`: the audit log, newest first, filtered by agent, client, actor, event and
//! time; paged with `--before`/`--after` sequence numbers, followed with `--follow`, exported
//! as JSON lines with `--format jsonl`. Through a running server, or on a stopped server's
//! data directory.

use std::io::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::remote::{Place, Remote, Target, print, s, time};
use crate::api::audit::{AuditCursor, AuditFilter, MAX_AUDIT_PAGE, audit_json, audit_page};
use crate::app::App;
use crate::error::Error;

/// Shortest and longest `--interval` of `--follow`.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people (`--json`: the page as one JSON object).
    Table,
    /// One JSON object per entry and line, for export.
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Entries naming this agent (as actor or subject).
    #[arg(long, allow_hyphen_values = true)]
    pub agent: Option<String>,
    /// Entries naming this client (as actor or subject).
    #[arg(long, allow_hyphen_values = true)]
    pub client: Option<String>,
    /// Entries whose actor is exactly this (an operator client or an agent).
    #[arg(long, allow_hyphen_values = true)]
    pub actor: Option<String>,
    /// Event name or prefix: token, token.issue, client.create, key, revoke, agent.offboard, ...
    #[arg(long, visible_alias = "action", allow_hyphen_values = true)]
    pub event: Option<String>,
    /// From this time: RFC 3339, Unix seconds, or a duration ago (`1h`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<u64>,
    /// Until this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<u64>,
    /// Most entries to print; 0 for all (with --format jsonl, an export).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Entries older than this sequence number, newest first (the `next` of a previous page).
    #[arg(long, value_name = "SEQ", conflicts_with = "after")]
    pub before: Option<u64>,
    /// Entries newer than this sequence number, oldest first.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// After the page, keep printing new entries as they are written, oldest first, until
    /// interrupted (a running server only).
    #[arg(long, conflicts_with_all = ["before", "after"])]
    pub follow: bool,
    /// How often --follow asks for new entries (200ms to 60s).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub target: Target,
}

/// Where the entries come from.
enum Source {
    Remote(Remote),
    Local(Box<App>),
}

impl Source {
    fn page(
        &self,
        filter: &AuditFilter,
        cursor: AuditCursor,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>), Error> {
        match self {
            Source::Remote(r) => {
                let mut q = format!("limit={limit}");
                match cursor {
                    AuditCursor::Before(None) => q.push_str("&order=newest"),
                    AuditCursor::Before(Some(b)) => q.push_str(&format!("&before={b}")),
                    AuditCursor::After(a) => q.push_str(&format!("&after={a}")),
                }
                for (k, v) in [
                    ("agent", &filter.agent),
                    ("client", &filter.client),
                    ("actor", &filter.actor),
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
                let v = r
                    .call("GET", &format!("/api/latchkey/v1/audit?{q}"), None, &[])?
                    .ok()?;
                let entries = v
                    .get("entries")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                Ok((entries, v.get("next").and_then(Value::as_u64)))
            }
            Source::Local(app) => {
                let (entries, next) = audit_page(app, filter, cursor, limit)?;
                Ok((entries.iter().map(audit_json).collect(), next))
            }
        }
    }
}

pub fn run(args: &AuditArgs) -> Result<(), Error> {
    let filter = AuditFilter {
        agent: args.agent.clone(),
        client: args.client.clone(),
        actor: args.actor.clone(),
        event: args.event.clone(),
        since: args.since,
        until: args.until,
    };
    let source = match args.target.open()? {
        Place::Remote(r) => Source::Remote(r),
        Place::Local(app) if args.follow => {
            drop(app);
            return Err(Error::Config(
                "--follow needs a running server (--server); a data directory in use is locked"
                    .into(),
            ));
        }
        Place::Local(app) => Source::Local(app),
    };
    let mut cursor = match (args.before, args.after) {
        (_, Some(a)) => AuditCursor::After(a),
        (b, None) => AuditCursor::Before(b),
    };
    // Pages until the limit is reached or the log ends; each page's scan is bounded by the
    // server, so a filter that matches little takes more pages, never one long read.
    let wanted = if args.limit == 0 {
        usize::MAX
    } else {
        args.limit
    };
    let mut entries = Vec::new();
    let mut next = None;
    while entries.len() < wanted {
        let (page, n) = source.page(
            &filter,
            cursor,
            (wanted - entries.len()).min(MAX_AUDIT_PAGE),
        )?;
        entries.extend(page);
        next = n;
        match n {
            Some(seq) => {
                cursor = match cursor {
                    AuditCursor::Before(_) => AuditCursor::Before(Some(seq)),
                    AuditCursor::After(_) => AuditCursor::After(seq),
                }
            }
            None => break,
        }
    }
    let newest = entries
        .iter()
        .filter_map(|e| e.get("seq").and_then(Value::as_u64))
        .max();
    match args.format {
        Format::Jsonl => write_lines(&entries)?,
        Format::Table => print(
            args.target.json,
            &json!({ "entries": entries, "next": next }),
            listing,
        ),
    }
    if args.follow {
        follow(&source, &filter, newest, args)?;
    }
    Ok(())
}

/// Polls for entries after the newest seen and prints them as they come, oldest first.
fn follow(
    source: &Source,
    filter: &AuditFilter,
    newest: Option<u64>,
    args: &AuditArgs,
) -> Result<(), Error> {
    // Without a match so far, start after the newest entry of the whole log.
    let mut after = match newest {
        Some(seq) => seq,
        None => {
            let all = AuditFilter::default();
            let (page, _) = source.page(&all, AuditCursor::Before(None), 1)?;
            page.first()
                .and_then(|e| e.get("seq"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        }
    };
    loop {
        let (page, next) = source.page(filter, AuditCursor::After(after), MAX_AUDIT_PAGE)?;
        match args.format {
            Format::Jsonl => write_lines(&page)?,
            Format::Table if args.target.json => {
                for e in &page {
                    println!("{e}");
                }
            }
            Format::Table => {
                let text = listing_rows(&page);
                if !text.is_empty() {
                    print!("{text}");
                }
            }
        }
        std::io::stdout().flush().map_err(Error::Io)?;
        match next {
            // More may be waiting already: ask again at once.
            Some(seq) => after = seq,
            None => {
                if let Some(seq) = page
                    .last()
                    .and_then(|e| e.get("seq"))
                    .and_then(Value::as_u64)
                {
                    after = seq;
                }
                std::thread::sleep(args.interval);
            }
        }
    }
}

fn write_lines(entries: &[Value]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    for e in entries {
        writeln!(out, "{e}").map_err(Error::Io)?;
    }
    out.flush().map_err(Error::Io)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err("--interval must be between 200ms and 60s".into())
    }
}

fn listing_rows(entries: &[Value]) -> String {
    let mut out = String::new();
    for e in entries {
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
    out
}

fn listing(v: &Value) -> String {
    let entries = v
        .get("entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = listing_rows(entries);
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
        return Ok(crate::clock::unix_now().saturating_sub(d.as_secs()));
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
        assert!(crate::clock::unix_now() - ago >= 3600);
        assert!(parse_time("yesterday-ish").is_err());
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}

//! `latchkey agent import --file agents.jsonl|agents.csv`: factory provisioning, through a
//! running server (`POST /api/latchkey/v1/agents/import`, in batches) or offline on a stopped
//! server's data directory, with one engine (`api::import`) for both.
//!
//! A line that cannot be read or is refused is reported with its line number and the rest go
//! on; re-running the same file creates only what is missing. The exit status is non-zero when
//! any line failed, so a provisioning script notices.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::remote::{Place, Target, print, usage};
use crate::api::import::{ItemResult, MAX_IMPORT_BATCH, import};
use crate::error::Error;

/// Longest line read from an import file: an agent entry is a few hundred bytes at most.
const MAX_LINE: usize = 64 * 1024;

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: `{"entityId", "name", "securityProfile"}`.
    Jsonl,
    /// A header row naming `entityId`, `name`, `securityProfile` (or snake_case), then a row
    /// per agent.
    Csv,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The agents: JSON lines or CSV (by extension: .csv is CSV, anything else JSON lines).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The file's format [default: by extension].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Tenant to create the agents in, offline (--data-dir) only; through a server they go to
    /// the caller's tenant [default: the settings' default tenant].
    #[arg(long)]
    pub tenant: Option<String>,
}

/// The file's entries, and the lines that could not be read: (line number, why).
type Parsed = (Vec<Entry>, Vec<(usize, String)>);

/// One agent entry of the file, with the line it came from.
struct Entry {
    line: usize,
    agent: Value,
}

pub fn run(args: &ImportArgs, target: &Target) -> Result<(), Error> {
    let format = args.format.unwrap_or_else(|| by_extension(&args.file));
    let (entries, mut failures) = read(&args.file, format)?;
    let place = target.open()?;
    if args.tenant.is_some() && matches!(place, Place::Remote(_)) {
        return Err(usage(
            "--tenant is for --data-dir; through a server agents go to the caller's tenant",
        ));
    }
    let (mut created, mut exists) = (0usize, 0usize);
    for chunk in entries.chunks(MAX_IMPORT_BATCH) {
        let results = batch(&place, args.tenant.as_deref(), chunk)?;
        for (entry, result) in chunk.iter().zip(results) {
            match result {
                ItemResult::Created => created += 1,
                ItemResult::Exists => exists += 1,
                ItemResult::Error { error } => failures.push((entry.line, error)),
            }
        }
    }
    failures.sort_by_key(|(line, _)| *line);
    let errors: Vec<Value> = failures
        .iter()
        .map(|(line, error)| json!({ "line": line, "error": error }))
        .collect();
    let v =
        json!({ "created": created, "exists": exists, "failed": failures.len(), "errors": errors });
    print(target.json, &v, |_| {
        let mut out = String::new();
        for (line, error) in &failures {
            out.push_str(&format!("line {line}: {error}\n"));
        }
        out.push_str(&format!(
            "created {created}, already present {exists}, failed {}",
            failures.len()
        ));
        out
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Cli(format!(
            "{} of the file's agents were not imported (see above); fix them and run the import again",
            failures.len()
        )))
    }
}

fn by_extension(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
        _ => Format::Jsonl,
    }
}

/// Sends one batch (at most [`MAX_IMPORT_BATCH`]) and returns a result per entry, in order.
fn batch(place: &Place, tenant: Option<&str>, chunk: &[Entry]) -> Result<Vec<ItemResult>, Error> {
    let agents: Vec<Value> = chunk.iter().map(|e| e.agent.clone()).collect();
    match place {
        Place::Remote(r) => {
            let v = r
                .call(
                    "POST",
                    "/api/latchkey/v1/agents/import",
                    Some(&json!({ "agents": agents })),
                    &[],
                )?
                .ok()?;
            let results: Vec<ItemResult> = v
                .get("results")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(remote_result).collect())
                .unwrap_or_default();
            if results.len() != chunk.len() {
                return Err(usage(
                    "the server's import answer does not match the request",
                ));
            }
            Ok(results)
        }
        Place::Local(app) => {
            let tenant = tenant.unwrap_or(&app.settings.default_tenant).to_owned();
            if !app.tenant_exists(&tenant) {
                return Err(usage(&format!("tenant {tenant:?} does not exist")));
            }
            let (tx, rx) = crossbeam::channel::bounded(1);
            import(app, &tenant, "cli", &agents, move |results| {
                let _ = tx.send(results);
            })?;
            rx.recv()
                .map_err(|_| usage("the store closed before the import finished"))
        }
    }
}

fn remote_result(v: &Value) -> ItemResult {
    match v.get("status").and_then(Value::as_str) {
        Some("created") => ItemResult::Created,
        Some("exists") => ItemResult::Exists,
        _ => ItemResult::Error {
            error: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned(),
        },
    }
}

/// Reads the file into entries, and lines that could not be read into failures.
fn read(path: &Path, format: Format) -> Result<Parsed, Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| usage(&format!("cannot open {}: {e}", path.display())))?;
    match format {
        Format::Jsonl => read_jsonl(BufReader::new(file)),
        Format::Csv => read_csv(file),
    }
}

fn read_jsonl(input: impl BufRead) -> Result<Parsed, Error> {
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let line_no = i + 1;
        let line = line?;
        if line.len() > MAX_LINE {
            failures.push((line_no, format!("line longer than {MAX_LINE} bytes")));
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => match entry(fields) {
                Ok(agent) => entries.push(Entry {
                    line: line_no,
                    agent,
                }),
                Err(e) => failures.push((line_no, e)),
            },
            Ok(_) => failures.push((line_no, "not a JSON object".into())),
            Err(e) => failures.push((line_no, format!("not JSON: {e}"))),
        }
    }
    Ok((entries, failures))
}

fn read_csv(input: impl std::io::Read) -> Result<Parsed, Error> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| usage(&format!("the CSV header row cannot be read: {e}")))?
        .clone();
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                failures.push((line, format!("cannot read CSV row: {e}")));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.len() != headers.len() {
            failures.push((
                line,
                format!("{} fields, the header has {}", record.len(), headers.len()),
            ));
            continue;
        }
        let fields: Map<String, Value> = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        match entry(fields) {
            Ok(agent) => entries.push(Entry { line, agent }),
            Err(e) => failures.push((line, e)),
        }
    }
    Ok((entries, failures))
}

/// The `AgentCreate` body for one entry: snake_case names accepted, the name defaulting to the
/// entity id and the profile to SHARED_SECRET, as `agent create` does. Unknown fields pass
/// through so the server's strict parser names them.
fn entry(fields: Map<String, Value>) -> Result<Value, String> {
    let mut out = Map::new();
    for (k, v) in fields {
        let name = match k.as_str() {
            "entity_id" | "entityId" => "entityId",
            "security_profile" | "securityProfile" => "securityProfile",
            other => other,
        };
        if out.insert(name.to_owned(), v).is_some() {
            return Err(format!("field {name:?} given twice"));
        }
    }
    let id = out.get("entityId").cloned().ok_or("missing entityId")?;
    out.entry("name").or_insert(id);
    out.entry("securityProfile")
        .or_insert_with(|| Value::String("SHARED_SECRET".into()));
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reports_bad_lines_by_number_and_keeps_the_rest() {
        let input = b"{\"entityId\":\"a1\"}\n\n# comment\nnot json\n[1]\n{\"name\":\"x\"}\n{\"entity_id\":\"a2\",\"security_profile\":\"RSA_3072\",\"name\":\"n2\"}\n";
        let (entries, failures) = read_jsonl(&input[..]).unwrap();
        let lines: Vec<usize> = entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 7]);
        assert_eq!(entries[0].agent["name"], "a1");
        assert_eq!(entries[0].agent["securityProfile"], "SHARED_SECRET");
        assert_eq!(entries[1].agent["securityProfile"], "RSA_3072");
        assert_eq!(entries[1].agent["name"], "n2");
        let bad: Vec<usize> = failures.iter().map(|f| f.0).collect();
        assert_eq!(bad, [4, 5, 6]);
        assert!(failures[2].1.contains("missing entityId"));
    }

    #[test]
    fn csv_maps_headers_and_reports_short_rows() {
        let input = "entity_id,name,security_profile\na1,,\na2,Name Two,RSA_3072\na3\n\"a,4\",q,SHARED_SECRET\n";
        let (entries, failures) = read_csv(input.as_bytes()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].agent["name"], "a1");
        assert_eq!(entries[0].line, 2);
        assert_eq!(entries[1].agent["name"], "Name Two");
        assert_eq!(entries[2].agent["entityId"], "a,4");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 4);
    }

    #[test]
    fn duplicate_spellings_of_a_field_are_refused() {
        let mut m = Map::new();
        m.insert("entityId".into(), json!("a"));
        m.insert("entity_id".into(), json!("b"));
        assert!(entry(m).unwrap_err().contains("twice"));
    }
}

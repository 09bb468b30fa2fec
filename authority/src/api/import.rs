//! Bulk agent creation for factory provisioning: `POST /api/latchkey/v1/agents/import` and the
//! offline `latchkey agent import --data-dir`, one engine for both.
//!
//! A batch is at most [`MAX_IMPORT_BATCH`] agents in the MindSphere `AgentCreate` shape. Each
//! agent is checked and created on its own: one bad line is reported by its index and never
//! stops or fails the others (each is its own op in the writer's commit groups, so a batch
//! costs a few fsyncs, not one per agent). Re-running the same file is idempotent: an agent
//! that already exists with the same name and security profile is reported `exists` and left
//! untouched; one that exists with other attributes is an error, never overwritten.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;

use super::auth::{self, Permission};
use super::mindsphere::AgentCreate;
use super::{Route, register};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{NewAgent, StoreError, WriteOp};

/// Most agents one import request may carry; the CLI splits larger files.
pub const MAX_IMPORT_BATCH: usize = 1000;

/// What happened to one agent of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ItemResult {
    /// Created, with its first initial access token.
    Created,
    /// Already there with the same name and security profile: nothing written.
    Exists,
    /// Refused; the description names the field or the clash, never echoes a secret.
    Error { error: String },
}

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 1] = [("POST", "", import_handler)];
    register(router, app, "/api/latchkey/v1/agents/import", &table);
}

fn import_handler(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::AgentsWrite)?;
    let items = parse_batch(req.body())?;
    let done = ctx.defer();
    import(app, &p.tenant, &p.client_id, &items, move |results| {
        done.complete(Ok(Response::json(200, &summary(&results))));
    })?;
    Ok(Outcome::Deferred)
}

/// `{"agents": [AgentCreate, …]}`, strict JSON, at most [`MAX_IMPORT_BATCH`] entries. The
/// entries themselves are checked one by one in [`import`], so a bad entry fails only itself.
fn parse_batch(body: &[u8]) -> Result<Vec<Value>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        agents: Vec<Value>,
    }
    let batch: Batch = super::mindsphere::parse_json(body, "agent import")?;
    if batch.agents.len() > MAX_IMPORT_BATCH {
        return Err(ApiError::PayloadTooLarge(format!(
            "agent import: at most {MAX_IMPORT_BATCH} agents per request"
        ))
        .into());
    }
    Ok(batch.agents)
}

/// The answer: a count per status and, per entry, its result (in request order).
pub fn summary(results: &[ItemResult]) -> Value {
    let count = |want: fn(&ItemResult) -> bool| results.iter().filter(|r| want(r)).count();
    serde_json::json!({
        "created": count(|r| matches!(r, ItemResult::Created)),
        "exists": count(|r| matches!(r, ItemResult::Exists)),
        "failed": count(|r| matches!(r, ItemResult::Error { .. })),
        "results": results,
    })
}

/// Creates every valid entry of `items` in `tenant`, audited as done `by`; `done` gets one result per entry, in
/// order, once the last write has committed (on the store's writer thread, or at once when
/// nothing needed writing). Reads one snapshot to tell re-runs from clashes; never blocks.
/// Fails whole, before writing anything, only when the store cannot be read.
pub fn import(
    app: &App,
    tenant: &str,
    by: &str,
    items: &[Value],
    done: impl FnOnce(Vec<ItemResult>) + Send + 'static,
) -> Result<(), Error> {
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let mut ops = Vec::new();
    let snapshot = app.store.read()?;
    let now = app.now();
    for (i, item) in items.iter().enumerate() {
        let new = match serde_json::to_vec(item)
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))
            .and_then(|b| AgentCreate::parse(&b))
        {
            Ok(new) => new,
            Err(e) => {
                results[i] = Some(ItemResult::Error {
                    error: e.to_string(),
                });
                continue;
            }
        };
        match snapshot.agent(tenant, new.id.as_str()) {
            Ok(Some(a)) => {
                results[i] = Some(
                    if a.name == new.name.as_str() && a.security_profile == new.security_profile {
                        ItemResult::Exists
                    } else {
                        ItemResult::Error {
                            error: format!(
                                "agent {:?} already exists with another name or security profile",
                                new.id.as_str()
                            ),
                        }
                    },
                );
            }
            Ok(None) => ops.push((
                i,
                WriteOp::CreateAgent(NewAgent {
                    tenant: tenant.to_owned(),
                    id: new.id.as_str().to_owned(),
                    name: new.name.as_str().to_owned(),
                    security_profile: new.security_profile,
                    iat: Some(super::agents::new_iat(app, now)),
                    by: by.to_owned(),
                    now,
                }),
            )),
            Err(e) => {
                results[i] = Some(ItemResult::Error {
                    error: e.to_string(),
                })
            }
        }
    }
    drop(snapshot);
    if ops.is_empty() {
        done(results.into_iter().map(finished).collect());
        return Ok(());
    }
    let shared = Arc::new(Pending {
        results: Mutex::new(results),
        left: AtomicUsize::new(ops.len()),
        done: Mutex::new(Some(Box::new(done))),
    });
    for (i, op) in ops {
        let pending = Arc::clone(&shared);
        app.store.submit(op, move |r| {
            let result = match r {
                Ok(_) => ItemResult::Created,
                // A name held by another agent, or the same id created concurrently.
                Err(e @ StoreError::Conflict(_)) => ItemResult::Error {
                    error: e.to_string(),
                },
                Err(e) => ItemResult::Error {
                    error: Error::from(e).to_string(),
                },
            };
            pending.finish(i, result);
        });
    }
    Ok(())
}

/// Where a finished batch's results go.
type Done = Box<dyn FnOnce(Vec<ItemResult>) + Send>;

/// The batch while its writes are in flight: the last reply hands the results to `done`.
struct Pending {
    results: Mutex<Vec<Option<ItemResult>>>,
    left: AtomicUsize,
    done: Mutex<Option<Done>>,
}

impl Pending {
    fn finish(&self, i: usize, result: ItemResult) {
        // A poisoned lock means another reply panicked; the results are still plain data.
        let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        results[i] = Some(result);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let results = std::mem::take(&mut *results);
            let done = self
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(done) = done {
                done(results.into_iter().map(finished).collect());
            }
        }
    }
}

/// Every entry has a result by the time the batch finishes; a gap would be a bug, reported as
/// that entry's error rather than a panic.
fn finished(r: Option<ItemResult>) -> ItemResult {
    r.unwrap_or_else(|| ItemResult::Error {
        error: "internal error: no result recorded".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_over_the_bound_are_refused_whole() {
        let agents: Vec<Value> = (0..=MAX_IMPORT_BATCH)
            .map(|i| serde_json::json!({ "entityId": format!("a{i}") }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "agents": agents })).unwrap();
        let e = parse_batch(&body).unwrap_err();
        assert!(e.to_string().contains("at most 1000"), "{e}");
        assert!(parse_batch(br#"{"agents": [], "x": 1}"#).is_err());
        assert!(parse_batch(br#"{"agents": [{}, 1, "x"]}"#).is_ok());
    }

    #[test]
    fn summary_counts_each_status() {
        let s = summary(&[
            ItemResult::Created,
            ItemResult::Exists,
            ItemResult::Error { error: "x".into() },
            ItemResult::Created,
        ]);
        assert_eq!(s["created"], 2);
        assert_eq!(s["exists"], 1);
        assert_eq!(s["failed"], 1);
        assert_eq!(s["results"][2]["status"], "error");
        assert_eq!(s["results"][2]["error"], "x");
    }
}

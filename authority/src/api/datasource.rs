//! `GET`/`PUT /api/agentmanagement/v3/agents/{id}/dataSourceConfiguration`: an agent's data
//! source configuration, in the shape the MindConnect SDKs read and write it.
//!
//! Callers: the agent itself with its access token (that is what the Node SDK's
//! `Get/PutDataSourceConfiguration` send), or an operator with `agents:read` / `agents:write`
//! in the agent's tenant. Another tenant's agent answers 404.
//!
//! The body is validated against the MindSphere shape (`configurationId`, `dataSources` with
//! `name`, `dataPoints` with unique `id`, `name`, `type`), bounded by
//! `[agents] datasource-config-max-bytes`, stored as validated JSON without `id` and `eTag`,
//! and returned as stored with the configuration's `id` and `eTag`. Writes carry `If-Match`
//! like agents do: an agent without a configuration is at eTag 0 (the SDK's first write sends
//! `If-Match: 0`), a stale eTag is 412.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::{self, Permission, PrincipalKind};
use super::mindsphere::{API_BASE, AgentId, IfMatch, parse_json};
use super::onboarding::AgentState;
use super::{Form, Route, register};
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{DataSourceConfigRecord, NewDataSourceConfig, WriteOp};

/// Longest `configurationId`, data source name, data point id, name, type or unit.
const MAX_FIELD: usize = 256;
/// The MindSphere data point types (compared without case: the docs write `int`, the SDK
/// `INT`).
const TYPES: [&str; 7] = [
    "INT",
    "LONG",
    "DOUBLE",
    "BOOLEAN",
    "STRING",
    "BIG_STRING",
    "TIMESTAMP",
];

/// Registers the routes.
pub fn routes(router: &mut Router, state: &Arc<AgentState>) {
    let table: [(&str, &str, Route<AgentState>); 2] = [
        ("GET", "/{id}/dataSourceConfiguration", |s, req, ctx| {
            get_config(s, req, ctx)
        }),
        ("PUT", "/{id}/dataSourceConfiguration", |s, req, ctx| {
            put_config(s, req, ctx)
        }),
    ];
    register(router, state, &format!("{API_BASE}/agents"), &table);
}

/// The tenant and agent id the caller may reach with `need`, or why not.
fn authorize(
    state: &AgentState,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
    need: Permission,
) -> Result<(String, String, String), Error> {
    let id = AgentId::parse(req.param("id").unwrap_or(""))?;
    if super::bearer(req).is_none() {
        return Err(ApiError::InvalidToken("a bearer token is required".into()).into());
    }
    let p = auth::caller(&state.app, req, ctx, &Form::default())?;
    match p.kind {
        PrincipalKind::Operator => p.require(need)?,
        PrincipalKind::Agent if p.client_id == id.as_str() => {}
        PrincipalKind::Agent => {
            return Err(ApiError::Forbidden(
                "an agent's token reaches only its own dataSourceConfiguration".into(),
            )
            .into());
        }
    }
    Ok((p.tenant, id.as_str().to_owned(), p.client_id))
}

fn get_config(
    state: &Arc<AgentState>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let (tenant, id, _) = authorize(state, req, ctx, Permission::AgentsRead)?;
    let snap = state.app.store.read()?;
    if snap.agent(&tenant, &id)?.is_none() {
        return Err(ApiError::NotFound(format!("agent {id:?} not found")).into());
    }
    let rec = snap.datasource_config(&tenant, &id)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "agent {id:?} has no dataSourceConfiguration yet; PUT one with If-Match: 0"
        ))
    })?;
    Ok(config_response(&rec)?.into())
}

fn put_config(
    state: &Arc<AgentState>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let (tenant, id, by) = authorize(state, req, ctx, Permission::AgentsWrite)?;
    let if_match = req.header("if-match").ok_or_else(|| {
        ApiError::InvalidRequest(
            "If-Match with the configuration's eTag (0 when there is none) is required".into(),
        )
    })?;
    let if_match = IfMatch::parse(if_match)?;
    let json = validate(req.body(), state.app.settings.datasource_config_max_bytes)?;
    let op = WriteOp::PutDataSourceConfig(NewDataSourceConfig {
        tenant,
        agent_id: id,
        if_match: if_match.expected(),
        new_id: state.app.jti.next_uuid(),
        json,
        by,
        now: state.app.now(),
    });
    Ok(super::write::submit(
        &state.app,
        ctx,
        op,
        |rec: DataSourceConfigRecord| config_response(&rec),
    ))
}

/// The stored configuration with its `id` and `eTag`, and the `ETag` header.
fn config_response(rec: &DataSourceConfigRecord) -> Result<Response, Error> {
    let mut body: Map<String, Value> = serde_json::from_str(&rec.json).map_err(|e| {
        tracing::error!(agent = %rec.agent_id, error = %e, "stored dataSourceConfiguration unreadable");
        Error::Io(std::io::Error::other("stored dataSourceConfiguration unreadable"))
    })?;
    body.insert("id".into(), rec.id.clone().into());
    body.insert("eTag".into(), rec.etag.to_string().into());
    Ok(Response::json(200, &Value::Object(body)).header("ETag", format!("\"{}\"", rec.etag)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigBody {
    /// Echoed back by clients that send what they read; the server's own values win.
    #[serde(rename = "id")]
    _id: Option<Value>,
    #[serde(rename = "eTag")]
    _etag: Option<Value>,
    configuration_id: String,
    data_sources: Vec<DataSourceBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DataSourceBody {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    data_points: Vec<DataPointBody>,
    #[serde(default)]
    #[allow(dead_code)]
    custom_data: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DataPointBody {
    id: String,
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    custom_data: Option<Map<String, Value>>,
}

/// Checks a configuration body and returns the JSON to store (without `id` and `eTag`).
fn validate(body: &[u8], max: usize) -> Result<String, Error> {
    if body.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "dataSourceConfiguration is {} bytes; at most {max} are accepted",
            body.len()
        ))
        .into());
    }
    const WHAT: &str = "dataSourceConfiguration";
    let typed: ConfigBody = parse_json(body, WHAT)?;
    let bad = |why: String| -> Error { ApiError::InvalidRequest(format!("{WHAT}: {why}")).into() };
    let field = |what: &str, v: &str, may_be_empty: bool| {
        if (!may_be_empty && v.is_empty()) || v.len() > MAX_FIELD || v.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "{what} must be {}..={MAX_FIELD} bytes without control characters",
                u8::from(!may_be_empty)
            )));
        }
        Ok(())
    };
    field("configurationId", &typed.configuration_id, false)?;
    let mut ids: Vec<&str> = Vec::new();
    for (i, source) in typed.data_sources.iter().enumerate() {
        field(&format!("dataSources[{i}].name"), &source.name, false)?;
        for (j, point) in source.data_points.iter().enumerate() {
            let at = format!("dataSources[{i}].dataPoints[{j}]");
            field(&format!("{at}.id"), &point.id, false)?;
            field(&format!("{at}.name"), &point.name, false)?;
            field(
                &format!("{at}.unit"),
                point.unit.as_deref().unwrap_or(""),
                true,
            )?;
            if !TYPES.iter().any(|t| t.eq_ignore_ascii_case(&point.kind)) {
                return Err(bad(format!(
                    "{at}.type must be one of {}",
                    TYPES.join(", ")
                )));
            }
            if ids.contains(&point.id.as_str()) {
                return Err(bad(format!("{at}.id repeats an earlier data point id")));
            }
            ids.push(&point.id);
        }
    }
    let mut value: Map<String, Value> = parse_json(body, WHAT)?;
    value.remove("id");
    value.remove("eTag");
    serde_json::to_string(&value).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value, ok: bool, needle: &str) {
        let r = validate(body.to_string().as_bytes(), 64 * 1024);
        match r {
            Ok(_) => assert!(ok, "{body} accepted"),
            Err(e) => {
                assert!(!ok, "{body} refused: {e}");
                assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
            }
        }
    }

    fn point(id: &str) -> Value {
        json!({"id": id, "name": "Voltage", "type": "DOUBLE", "unit": "V"})
    }

    #[test]
    fn shapes() {
        let good = json!({"configurationId": "c1", "dataSources": [{"name": "s", "dataPoints": [point("a"), point("b")], "customData": {"x": {"y": 1}}}]});
        check(good.clone(), true, "");
        let mut with_meta = good.clone();
        with_meta["id"] = "client-id".into();
        with_meta["eTag"] = "3".into();
        let stored = validate(with_meta.to_string().as_bytes(), 1 << 16).unwrap();
        assert!(
            !stored.contains("client-id") && !stored.contains("eTag"),
            "{stored}"
        );
        check(json!({"dataSources": []}), false, "configurationId");
        check(
            json!({"configurationId": "", "dataSources": []}),
            false,
            "configurationId",
        );
        check(
            json!({"configurationId": "c", "dataSources": [], "extra": 1}),
            false,
            "extra",
        );
        check(
            json!({"configurationId": "c", "dataSources": [{"name": "s", "dataPoints": [point("a"), point("a")]}]}),
            false,
            "repeats",
        );
        let mut p = point("a");
        p["type"] = "FLOAT".into();
        check(
            json!({"configurationId": "c", "dataSources": [{"name": "s", "dataPoints": [p]}]}),
            false,
            "type",
        );
        p["type"] = "int".into();
        check(
            json!({"configurationId": "c", "dataSources": [{"name": "s", "dataPoints": [p]}]}),
            true,
            "",
        );
        check(json!([1, 2]), false, "dataSourceConfiguration");
        let dup = br#"{"configurationId":"a","configurationId":"b","dataSources":[]}"#;
        assert!(validate(dup, 1 << 16).is_err());
        let big = json!({"configurationId": "c", "dataSources": [{"name": "x".repeat(300), "dataPoints": []}]});
        let e = validate(big.to_string().as_bytes(), 100).unwrap_err();
        assert_eq!(crate::error::WireError::from(&e).status, 413);
    }
}

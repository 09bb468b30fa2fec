//! `GET /metrics` as the settings want it: open (`metrics-access = "public"`, the default,
//! for a loopback or private listener) or behind an operator bearer token of the authority's
//! own tenant with `metrics:read` (`"operator"`). The metrics are global (every tenant's
//! traffic), so, like signing keys and the audit log, other tenants get 404.

use std::sync::Arc;

use super::auth::{self, Permission};
use crate::app::App;
use crate::config::MetricsAccess;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};

/// Registers `GET /metrics` on `router` with the given access rule.
pub fn route(router: &mut Router, app: &Arc<App>, access: MetricsAccess) {
    match access {
        MetricsAccess::Public => {
            router.metrics_route(app.metrics.clone());
        }
        MetricsAccess::Operator => {
            super::register(router, app, "", &[("GET", "/metrics", operator_metrics)]);
        }
    }
}

fn operator_metrics(
    app: &Arc<App>,
    req: &Request<'_>,
    _: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::MetricsRead)?;
    if !p.is_authority(app) {
        return Err(ApiError::NotFound("metrics not found".into()).into());
    }
    Ok(Response::text(200, "text/plain; version=0.0.4", app.metrics.render()).into())
}

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
    publish_replay_fill(app, app.now());
    let weak = Arc::downgrade(app);
    app.metrics.set_collector(Box::new(move |out: &mut String| {
        if let Some(app) = weak.upgrade() {
            collect(&app, out);
        }
    }));
    match access {
        MetricsAccess::Public => {
            router.metrics_route(app.metrics.clone());
        }
        MetricsAccess::Operator => {
            super::register(router, app, "", &[("GET", "/metrics", operator_metrics)]);
        }
    }
}

/// Gauges read at each scrape from in-memory state (never the store): agents by boarding
/// state from the list index (O(tenants)), and the replay cache's size.
fn collect(app: &App, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str(
        "# HELP latchkey_agents Agents by boarding state.\n# TYPE latchkey_agents gauge\n",
    );
    for (state, n) in app.store.hot().agents().count_by_state() {
        let _ = writeln!(out, "latchkey_agents{{state=\"{}\"}} {n}", state.as_str());
    }
    let _ = writeln!(
        out,
        "# HELP latchkey_replay_cache_capacity Most client assertions the replay cache can remember.\n\
         # TYPE latchkey_replay_cache_capacity gauge\n\
         latchkey_replay_cache_capacity {}\n\
         # HELP latchkey_replay_cache_bytes Memory the replay cache's slot tables hold now.\n\
         # TYPE latchkey_replay_cache_bytes gauge\n\
         latchkey_replay_cache_bytes {}",
        app.replay.capacity(),
        app.replay.heap_bytes()
    );
    if let Some(f) = app.store.hot().freshness() {
        let age = f.age(std::time::Instant::now());
        let _ = writeln!(
            out,
            "# HELP latchkey_cluster_fresh 1 while this node has proven within the freshness bound that its copy of the store is current (it serves the token path), else 0.\n\
             # TYPE latchkey_cluster_fresh gauge\n\
             latchkey_cluster_fresh {}\n\
             # HELP latchkey_cluster_proof_age_seconds Age of the last proof that this node is current.\n\
             # TYPE latchkey_cluster_proof_age_seconds gauge\n\
             latchkey_cluster_proof_age_seconds {}\n\
             # HELP latchkey_cluster_freshness_bound_seconds The freshness bound (cluster-freshness).\n\
             # TYPE latchkey_cluster_freshness_bound_seconds gauge\n\
             latchkey_cluster_freshness_bound_seconds {}\n\
             # HELP latchkey_cluster_stale_refusals_total Token-path requests refused because this node could not prove it is current.\n\
             # TYPE latchkey_cluster_stale_refusals_total counter\n\
             latchkey_cluster_stale_refusals_total {}\n\
             # HELP latchkey_cluster_applied_revision The etcd revision this node's mirror has applied.\n\
             # TYPE latchkey_cluster_applied_revision gauge\n\
             latchkey_cluster_applied_revision {}",
            u8::from(age.is_some_and(|a| a < f.bound())),
            age.map_or(f64::INFINITY, |a| a.as_secs_f64()),
            f.bound().as_secs_f64(),
            f.refused(),
            f.applied_revision(),
        );
    }
    #[cfg(feature = "etcd")]
    if let Some((serving, avoided)) = crate::store::etcd::health::endpoint_counts() {
        let _ = writeln!(
            out,
            "# HELP latchkey_cluster_etcd_endpoints etcd endpoints requests go to (serving) or avoid (avoided: failing their checks).\n\
             # TYPE latchkey_cluster_etcd_endpoints gauge\n\
             latchkey_cluster_etcd_endpoints{{state=\"serving\"}} {serving}\n\
             latchkey_cluster_etcd_endpoints{{state=\"avoided\"}} {avoided}"
        );
    }
}

/// Sets `latchkey_replay_cache_entries`, the assertions the replay cache remembers now.
/// Counting scans the cache's allocated slots (at most 8 bytes × `replay-capacity`), so the
/// maintenance thread does it once per pass, never a scrape on an event loop.
pub fn publish_replay_fill(app: &App, now: u64) {
    let live = app.replay.live_entries(now);
    app.metrics.set_section(
        "replay_cache",
        format!(
            "# HELP latchkey_replay_cache_entries Client assertions the replay cache remembers (as of the last maintenance pass).\n\
             # TYPE latchkey_replay_cache_entries gauge\n\
             latchkey_replay_cache_entries {live}\n"
        ),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppSettings;
    use crate::http::Metrics;

    #[test]
    fn a_maintenance_pass_publishes_the_replay_cache_fill() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) =
            App::open(dir.path(), AppSettings::default(), Arc::new(Metrics::new())).unwrap();
        let now = app.now();
        for jti in ["a", "b", "c"] {
            app.replay
                .check_and_insert("agent-1", jti, Some(now), now + 60, now)
                .unwrap();
        }
        // Counted on the maintenance thread, not at the scrape.
        assert!(
            !app.metrics
                .render()
                .contains("latchkey_replay_cache_entries")
        );
        app.maintain(now).unwrap();
        let text = app.metrics.render();
        assert!(text.contains("latchkey_replay_cache_entries 3\n"), "{text}");
    }
}

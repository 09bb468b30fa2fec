//! Refusals from the replay cache that are about room, not about the assertion: the whole
//! cache full (503 with Retry-After, everyone waits) or one issuer at its share of it (429
//! `slow_down` for that issuer only; see `[tokens] replay-max-per-issuer`). Both are counted in
//! `latchkey_replay_refused_total{reason}` and logged at most once per 10 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use latchkey_core::replay::ReplayError;

use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::admission::LogLimiter;

/// Retry-After when the whole cache is full.
const FULL_RETRY_SECS: u64 = 60;

/// Counts of room refusals, for `/metrics`.
#[derive(Debug)]
pub struct ReplayRefusals {
    full: AtomicU64,
    issuer_share: AtomicU64,
    log: LogLimiter,
}

impl Default for ReplayRefusals {
    fn default() -> Self {
        Self {
            full: AtomicU64::new(0),
            issuer_share: AtomicU64::new(0),
            log: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

impl ReplayRefusals {
    fn metrics(&self) -> String {
        format!(
            "# HELP latchkey_replay_refused_total Client assertions refused for lack of room in the replay cache.\n\
             # TYPE latchkey_replay_refused_total counter\n\
             latchkey_replay_refused_total{{reason=\"full\"}} {}\n\
             latchkey_replay_refused_total{{reason=\"issuer_share\"}} {}\n",
            self.full.load(Ordering::Relaxed),
            self.issuer_share.load(Ordering::Relaxed)
        )
    }
}

/// The answer to a replay-cache refusal for `issuer`; `None` for refusals about the assertion
/// itself (replayed, out of range), which the caller answers as invalid.
pub fn room_refusal(app: &App, issuer: &str, e: ReplayError) -> Option<Error> {
    let r = &app.replay_refused;
    let (reason, refusal) = match e {
        ReplayError::Full => {
            r.full.fetch_add(1, Ordering::Relaxed);
            let refusal = Error::from(ApiError::Unavailable {
                retry_after: FULL_RETRY_SECS,
                description: "too many recent client assertions; retry later".into(),
            });
            ("full", refusal)
        }
        ReplayError::IssuerShare => {
            r.issuer_share.fetch_add(1, Ordering::Relaxed);
            let retry_after = app.replay.share_retry_after();
            let refusal = Error::from(ApiError::Throttled {
                retry_after,
                description: format!(
                    "this client holds its share of recent client assertions ({}); \
                         retry after {retry_after} s",
                    app.settings.replay.max_per_issuer
                ),
            });
            ("issuer_share", refusal)
        }
        _ => return None,
    };
    app.metrics.set_section("replay_refused", r.metrics());
    if let Some(held_back) = r.log.allow(Instant::now()) {
        let issuer: String = issuer.chars().take(128).collect();
        tracing::warn!(reason, issuer = %issuer, held_back, "client assertion refused: no room in the replay cache");
    }
    Some(refusal)
}

#[cfg(test)]
mod tests {
    use crate::app::{AppConfig, AppSettings};

    #[test]
    fn the_share_default_is_the_documented_one_and_configurable() {
        const DOC: &str = include_str!("../../../docs/configuration.md");
        let d = AppSettings::default();
        assert_eq!(d.replay.max_per_issuer, 2_097_152);
        assert_eq!(d.replay.max_per_issuer, d.replay.capacity / 2);
        assert!(DOC.contains("| `replay-max-per-issuer` | `2097152` |"));
        // The window follows the age limit and the leeway, as the token endpoint remembers.
        assert_eq!(d.replay.share_window, d.assertion_max_age + 2 * d.leeway);
        let s = AppConfig::from_toml(
            "[tokens]\nreplay-max-per-issuer = 3\nassertion-max-age = \"5m\"\nleeway = \"10s\"",
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(s.replay.max_per_issuer, 3);
        assert_eq!(s.replay.share_window, 320);
        let s = AppConfig::default().resolve().unwrap();
        assert_eq!(s.replay, d.replay);
    }
}

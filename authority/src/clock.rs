//! Wall-clock time, read in one place. Everything else takes `now` (Unix seconds) as a
//! parameter, so tests can move time and the token core stays free of clocks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as an RFC 3339 UTC timestamp, e.g. `2026-01-02T03:04:05Z`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_323_045), "2026-01-02T03:04:05Z");
        assert!(unix_now() > 1_767_323_045);
    }
}

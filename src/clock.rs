//! The wall clock as records and tables keep it: milliseconds since the Unix
//! epoch (`received_at`, daily partitions). A leaf module.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

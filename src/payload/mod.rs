//! Wire payload v1 (tracker → chronosd): parse with simd-json, check the
//! envelope, validate each event against the catalog, encode the Kafka record.
//!
//! See docs/wire-format.md for the format and docs/kafka-record.md for the
//! record this module produces.

pub mod depth;
mod encode;
mod envelope;
mod validate;

pub use encode::{anonymise, encode_dead_letter, encode_record, ServerFacts};

/// The `User-Agent` kept with a batch: its first this many characters.
pub const MAX_USER_AGENT_CHARS: usize = 512;
pub use envelope::{plausible_ms, Envelope, PayloadError};
pub use validate::{validate_events, Rejection, Validated};

/// Caps applied while reading a batch (from `http.*` and `limits.*`).
#[derive(Debug, Clone)]
pub struct PayloadLimits {
    pub max_events: usize,
    pub max_string_bytes: usize,
    pub max_session_bytes: usize,
    pub max_page_keys: usize,
}

impl PayloadLimits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        PayloadLimits {
            max_events: c.http.max_events_per_batch,
            max_string_bytes: c.limits.max_string_bytes as usize,
            max_session_bytes: c.limits.max_session_bytes as usize,
            max_page_keys: c.limits.max_page_keys as usize,
        }
    }
}

/// Earliest plausible client time: 2000-01-01T00:00:00Z, in ms.
pub const MIN_PLAUSIBLE_MS: i64 = 946_684_800_000;
/// Latest plausible client time: 2100-01-01T00:00:00Z, in ms.
pub const MAX_PLAUSIBLE_MS: i64 = 4_102_444_800_000;

/// Parses `buf` in place (simd-json unescapes strings into the buffer, so
/// values borrow from it and nothing is copied), after checking that it nests
/// no deeper than a batch needs (`depth`: the parser recurses).
pub fn parse(buf: &mut [u8]) -> Result<simd_json::BorrowedValue<'_>, PayloadError> {
    depth::check(buf, depth::BATCH_DEPTH).map_err(|d| PayloadError::TooDeep { offset: d.offset, limit: d.limit })?;
    let len = buf.len();
    simd_json::to_borrowed_value(buf).map_err(|e| PayloadError::Malformed {
        // simd-json reports the offset of the structural character it stopped at.
        offset: e.index().min(len),
        message: malformed_message(&e),
    })
}

fn malformed_message(e: &simd_json::Error) -> String {
    // The Display of simd_json::Error repeats the index; keep only the kind.
    let text = format!("{:?}", e.error());
    text.split('(').next().unwrap_or(&text).to_string()
}

//! The Kafka record v1, defined once (docs/kafka-record.md): its formats,
//! headers and field names, the batch facts a dead letter keeps, and the
//! event row the loaders and the continuous views read out of a record.
//!
//! A leaf module: it uses no other module of the crate. `payload` writes
//! records, `produce` gives them their headers, `load` reads them and
//! replays dead letters as records, and `views` evaluates their rows.

use rdkafka::message::{Header, OwnedHeaders};
use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

/// The value of field `v`.
pub const VERSION: u64 = 1;

/// Header `chronos-format` of a record on the events topic.
pub const FORMAT_BATCH: &str = "batch.v1";
/// Header `chronos-format` of a record on the dead-letter topic.
pub const FORMAT_DEAD_LETTER: &str = "dead_letter.v1";

/// Header names, in the order records carry them.
pub mod header {
    /// [`super::FORMAT_BATCH`] or [`super::FORMAT_DEAD_LETTER`].
    pub const FORMAT: &str = "chronos-format";
    /// Always [`super::CONTENT_TYPE`].
    pub const CONTENT_TYPE: &str = "content-type";
    /// The write key's public id.
    pub const KEY_ID: &str = "chronos-key-id";
    /// Receive time at chronosd, ms since the Unix epoch, in decimal.
    pub const RECEIVED_AT: &str = "chronos-received-at";
}

/// Header `content-type`.
pub const CONTENT_TYPE: &str = "application/json";

/// The four headers of a record of `format`.
pub fn headers(format: &str, key_id: &str, received_at: i64) -> OwnedHeaders {
    let received_at = received_at.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header { key: header::FORMAT, value: Some(format) })
        .insert(Header { key: header::CONTENT_TYPE, value: Some(CONTENT_TYPE) })
        .insert(Header { key: header::KEY_ID, value: Some(key_id) })
        .insert(Header { key: header::RECEIVED_AT, value: Some(received_at.as_str()) })
}

/// Field names of the record's value.
pub mod field {
    pub const V: &str = "v";
    pub const BATCH_ID: &str = "batch_id";
    pub const SESSION_ID: &str = "session_id";
    pub const USER_ID: &str = "user_id";
    pub const KEY_ID: &str = "key_id";
    pub const SENT_AT: &str = "sent_at";
    pub const RECEIVED_AT: &str = "received_at";
    pub const CLIENT_IP: &str = "client_ip";
    pub const USER_AGENT: &str = "user_agent";
    pub const PAGE: &str = "page";
    pub const IMPORTED: &str = "imported";
    pub const BOT: &str = "bot";
    pub const AGENT: &str = "agent";
    pub const GEO: &str = "geo";
    /// `batch.v1`: each present event type's attribute names, in wire order.
    pub const SCHEMA: &str = "schema";
    /// `batch.v1`: the accepted events.
    pub const EVENTS: &str = "events";
    /// `dead_letter.v1`: where the events were rejected.
    pub const STAGE: &str = "stage";
    /// `dead_letter.v1`: the rejected events.
    pub const REJECTED: &str = "rejected";
}

/// The fields both formats start with, in the order records carry them
/// (optional ones are left out when absent).
pub const COMMON: [&str; 14] = [
    field::V,
    field::BATCH_ID,
    field::SESSION_ID,
    field::USER_ID,
    field::KEY_ID,
    field::SENT_AT,
    field::RECEIVED_AT,
    field::CLIENT_IP,
    field::USER_AGENT,
    field::PAGE,
    field::IMPORTED,
    field::BOT,
    field::AGENT,
    field::GEO,
];

/// The batch facts a dead letter keeps as its `context` (every common field
/// but `v` and `batch_id`), so that a replay rebuilds the batch's record.
pub fn context_fields() -> &'static [&'static str] {
    &COMMON[2..]
}

/// One loadable event of a record, with its batch's facts: what a loader
/// turns into a table row and a continuous view aggregates.
#[derive(Debug)]
pub struct Row<'r, 'v> {
    pub type_name: &'r str,
    pub time: i64,
    pub client_time: i64,
    pub received_at: i64,
    pub time_flagged: bool,
    pub session_id: &'r str,
    pub position: i32,
    pub key_id: &'r str,
    pub client_ip: Option<&'r str>,
    pub page: &'r Value<'v>,
    pub attrs: &'r [Option<&'r Value<'v>>],
    /// Why the batch was taken for a bot's (`None`: a browser's).
    pub bot: Option<&'r str>,
    /// The record's parsed user agent (`agent`), when it has one.
    pub agent: Option<&'r Value<'v>>,
    /// The record's `geo` (country, region, city), when it has one.
    pub geo: Option<&'r Value<'v>>,
    /// The user the site named (`chronos.identify`), when it did.
    pub user_id: Option<&'r str>,
}

impl<'r> Row<'r, '_> {
    /// A field of the record's `agent` object (`browser`, `os`, `device`, …).
    pub fn agent_field(&self, name: &str) -> Option<&'r str> {
        self.agent.and_then(|a| a.get(name)).and_then(|v| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn headers_carry_format_type_key_and_receive_time_in_order() {
        let h = headers(FORMAT_BATCH, "site", 1_764_000_005_210);
        let got: Vec<(&str, &[u8])> = h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect();
        assert_eq!(
            got,
            [
                ("chronos-format", &b"batch.v1"[..]),
                ("content-type", b"application/json"),
                ("chronos-key-id", b"site"),
                ("chronos-received-at", b"1764000005210"),
            ]
        );
    }

    #[test]
    fn the_context_is_every_common_field_after_the_batch_id() {
        assert_eq!(context_fields().first(), Some(&field::SESSION_ID));
        assert_eq!(context_fields().len(), COMMON.len() - 2);
        assert!(!context_fields().contains(&field::BATCH_ID));
    }
}

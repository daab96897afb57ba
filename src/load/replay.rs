//! Dead letters: list them, and replay them after the catalog was fixed.
//! A replay re-validates each event against the current catalog and produces
//! it as a new batch record (acks=all) with a batch id derived from the dead
//! letter's id, so replaying twice stores the event once.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::record::{self, field as f};

/// Namespace of replayed batch ids (uuid v5 of the dead letter id).
const REPLAY_NAMESPACE: Uuid = Uuid::from_u128(0x6368_726f_6e6f_735f_7265_706c_6179_0001);

/// One row of `chronos dead-letters list`.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: i64,
    pub at: String,
    pub stage: String,
    pub reason: String,
    pub event: Option<String>,
    pub replayed: bool,
}

/// The newest dead letters (not yet replayed unless `all`).
pub async fn list(client: &Client, limit: i64, all: bool) -> Result<Vec<DeadLetterRow>> {
    let rows = client
        .query(
            "SELECT id, to_char(at, 'YYYY-MM-DD HH24:MI:SS'), stage, reason, event::text, replayed_at IS NOT NULL
             FROM chronos.dead_letters WHERE $2 OR replayed_at IS NULL ORDER BY id DESC LIMIT $1",
            &[&limit, &all],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetterRow { id: r.get(0), at: r.get(1), stage: r.get(2), reason: r.get(3), event: r.get(4), replayed: r.get(5) })
        .collect())
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: Vec<i64>,
    /// Still invalid under the current catalog (id, reason), or not replayable.
    pub still_invalid: Vec<(i64, String)>,
}

/// Replays every unreplayed dead letter (or only `ids`).
pub async fn replay(config: &Config, client: &Client, ids: &[i64]) -> Result<ReplayReport> {
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let producer: FutureProducer = crate::produce::kafka::producer_config(&config.kafka, 16 << 20).create().context("creating a producer")?;
    let rows = client
        .query(
            "SELECT id, event::text, context::text FROM chronos.dead_letters
             WHERE replayed_at IS NULL AND event IS NOT NULL AND (cardinality($1::bigint[]) = 0 OR id = ANY($1)) ORDER BY id",
            &[&ids],
        )
        .await?;
    let mut report = ReplayReport::default();
    for r in rows {
        let (id, event, context): (i64, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
        match build_record(id, &event, context.as_deref(), &catalog) {
            Err(reason) => report.still_invalid.push((id, reason)),
            Ok(replayed) => {
                let headers = record::headers(record::FORMAT_BATCH, &replayed.key_id, replayed.received_at);
                let delivery = producer
                    .send(FutureRecord::to(&config.kafka.topic).key(&replayed.key).payload(&replayed.value).headers(headers), Duration::from_secs(10))
                    .await;
                if let Err((e, _)) = delivery {
                    anyhow::bail!("the broker did not take dead letter {id}: {e}");
                }
                client.execute("UPDATE chronos.dead_letters SET replayed_at = now() WHERE id = $1", &[&id]).await?;
                report.replayed.push(id);
            }
        }
    }
    Ok(report)
}

/// A dead-lettered event as a batch record again, ready to produce.
#[derive(Debug)]
pub struct Replayed {
    /// The record key: the batch's session id.
    pub key: String,
    /// The record's value (`batch.v1`).
    pub value: Vec<u8>,
    /// For the headers: the write key's public id and the original receive time.
    pub key_id: String,
    pub received_at: i64,
}

/// The batch record v1 of one dead-lettered event, if the current catalog
/// accepts it: the batch facts its dead letter kept (`context`), in the
/// record's field order, then the event's schema and the event.
pub fn build_record(id: i64, event: &str, context: Option<&str>, catalog: &EventCatalog) -> Result<Replayed, String> {
    let context: Map<String, Value> = serde_json::from_str(context.ok_or("no batch context stored (recorded before replay support)")?)
        .map_err(|e| format!("the stored batch context is not a JSON object: {e}"))?;
    let mut buf = format!("[{event}]").into_bytes();
    crate::payload::depth::check(&buf, crate::payload::depth::BATCH_DEPTH - 1).map_err(|d| format!("event {d}"))?;
    let events = simd_json::to_borrowed_value(&mut buf).map_err(|e| e.to_string())?;
    let events = simd_json::prelude::ValueAsArray::as_array(&events).ok_or("event is not an array")?;
    let validated = crate::payload::validate_events(events, catalog);
    if let Some(r) = validated.rejected.first() {
        return Err(r.reason.replacen("events[0]", "event", 1));
    }
    let event: Value = serde_json::from_str(event).map_err(|e| e.to_string())?;
    let ty = event[0].as_str().unwrap_or_default();
    let names: Vec<&str> = catalog.get(ty).map(|t| t.attributes.iter().map(|a| &*a.name).collect()).unwrap_or_default();
    let text = |k: &str| context.get(k).and_then(Value::as_str).map(str::to_string).ok_or(format!("the stored batch context has no `{k}`"));
    let (key, key_id) = (text(f::SESSION_ID)?, text(f::KEY_ID)?);
    let received_at = context.get(f::RECEIVED_AT).and_then(Value::as_i64).ok_or("the stored batch context has no `received_at`")?;
    // Written field by field, in the record's order: a serde_json map sorts its keys.
    fn json(v: &(impl serde::Serialize + ?Sized)) -> String {
        serde_json::to_string(v).expect("JSON values serialise")
    }
    let batch_id = Uuid::new_v5(&REPLAY_NAMESPACE, id.to_string().as_bytes());
    let mut out = format!("{{{}:{},{}:{}", json(f::V), record::VERSION, json(f::BATCH_ID), json(&batch_id.to_string()));
    for &k in record::context_fields() {
        if let Some(v) = context.get(k) {
            out.push_str(&format!(",{}:{}", json(k), json(v)));
        }
    }
    let schema = Map::from_iter([(ty.to_string(), Value::from(names))]);
    out.push_str(&format!(",{}:{},{}:[{}]}}", json(f::SCHEMA), json(&schema), json(f::EVENTS), json(&event)));
    Ok(Replayed { key, value: out.into_bytes(), key_id, received_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;
    use crate::load::decode::{walk, DeadLetter, TimePolicy, Visit};
    use simd_json::prelude::*;

    /// A dead letter's context as the loaders store it, keys in another order.
    const CTX: &str = r#"{"page":{"url":"u"},"geo":{"country":"NL"},"bot":"headless","user_id":"u-9","imported":true,
        "session_id":"s","key_id":"k","sent_at":1764000000000,"received_at":1764000000100,"client_ip":"203.0.113.0",
        "agent":{"browser":"Firefox"},"user_agent":"UA"}"#;

    #[test]
    fn a_fixed_event_becomes_a_record_with_its_batch_facts_in_record_order() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let r = build_record(7, r#"["mouse_moves",1764000000000,1,2]"#, Some(CTX), &catalog).unwrap();
        assert_eq!((r.key.as_str(), r.key_id.as_str(), r.received_at), ("s", "k", 1_764_000_000_100));
        let text = std::str::from_utf8(&r.value).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["schema"]["mouse_moves"], serde_json::json!(["x", "y"]));
        assert_eq!(v["page"]["url"], "u");
        // Every common field, in the order records carry them, then schema and events.
        let order: Vec<usize> = record::COMMON
            .iter()
            .chain(&[f::SCHEMA, f::EVENTS])
            .map(|k| text.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("no `{k}` in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "fields out of order: {text}");
        let again = build_record(7, r#"["mouse_moves",1764000000000,1,2]"#, Some(CTX), &catalog).unwrap();
        let again: Value = serde_json::from_slice(&again.value).unwrap();
        assert_eq!(v["batch_id"], again["batch_id"], "replaying twice gives the same batch id");
        let err = build_record(8, r#"["mouse_moves",1764000000000,"x",2]"#, Some(CTX), &catalog).unwrap_err();
        assert_eq!(err, "event[2] `x`: expected an integer");
    }

    #[test]
    fn the_loaders_read_a_replayed_record_with_the_batch_facts_of_the_original() {
        struct Seen(Vec<String>);
        impl Visit for Seen {
            fn event(&mut self, _table: usize, row: &crate::record::Row<'_, '_>, _batch_id: Uuid) {
                self.0.push(format!(
                    "{} {} {:?} {:?} {:?} {:?} {:?} {:?}",
                    row.session_id,
                    row.key_id,
                    row.client_ip,
                    row.user_id,
                    row.bot,
                    row.agent_field("browser"),
                    row.geo.and_then(|g| g.get("country")).and_then(|v| v.as_str()),
                    row.time_flagged
                ));
            }
            fn reject(&mut self, letter: DeadLetter) {
                panic!("rejected: {}", letter.reason);
            }
        }
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let mut r = build_record(7, r#"["mouse_moves",1700000000000,1,2]"#, Some(CTX), &catalog).unwrap();
        let mut seen = Seen(Vec::new());
        walk(&mut r.value, &catalog, TimePolicy { max_past_ms: 1, max_future_ms: 1 }, &mut seen).unwrap();
        // Imported: its time is kept as given, not clamped to the receive time.
        assert_eq!(seen.0, [r#"s k Some("203.0.113.0") Some("u-9") Some("headless") Some("Firefox") Some("NL") false"#]);
    }

    #[test]
    fn a_context_without_its_session_or_key_says_so() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let err = build_record(9, r#"["mouse_moves",1764000000000,1,2]"#, Some(r#"{"key_id":"k","received_at":1}"#), &catalog).unwrap_err();
        assert_eq!(err, "the stored batch context has no `session_id`");
        let err = build_record(9, r#"["mouse_moves",1764000000000,1,2]"#, None, &catalog).unwrap_err();
        assert_eq!(err, "no batch context stored (recorded before replay support)");
    }
}

//! Dead letters: list them, and replay them after the catalog was fixed.
//! A replay re-validates each event against the current catalog and produces
//! it as a new batch record (acks=all) with a batch id derived from the dead
//! letter's id, so replaying twice stores the event once.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::catalog::EventCatalog;
use crate::config::Config;

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
    let producer: FutureProducer = crate::produce::kafka::producer_config(&config.kafka, 16 << 20)
        .create()
        .context("creating a producer")?;
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
            Ok((key, record)) => {
                let delivery = producer
                    .send(FutureRecord::to(&config.kafka.topic).key(&key).payload(&record), Duration::from_secs(10))
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

/// The batch record v1 of one dead-lettered event, if the current catalog accepts it.
pub fn build_record(id: i64, event: &str, context: Option<&str>, catalog: &EventCatalog) -> Result<(String, Vec<u8>), String> {
    let context: Value = serde_json::from_str(context.ok_or("no batch context stored (recorded before replay support)")?)
        .map_err(|e| e.to_string())?;
    let mut buf = format!("[{event}]").into_bytes();
    let events = simd_json::to_borrowed_value(&mut buf).map_err(|e| e.to_string())?;
    let events = simd_json::prelude::ValueAsArray::as_array(&events).ok_or("event is not an array")?;
    let validated = crate::payload::validate_events(events, catalog);
    if let Some(r) = validated.rejected.first() {
        return Err(r.reason.replacen("events[0]", "event", 1));
    }
    let event: Value = serde_json::from_str(event).map_err(|e| e.to_string())?;
    let ty = event[0].as_str().unwrap_or_default();
    let names: Vec<&str> = catalog.get(ty).map(|t| t.attributes.iter().map(|a| &*a.name).collect()).unwrap_or_default();
    let mut record = json!({
        "v": 1,
        "batch_id": Uuid::new_v5(&REPLAY_NAMESPACE, id.to_string().as_bytes()).to_string(),
        "schema": { ty: names },
        "events": [event],
    });
    for (k, v) in context.as_object().ok_or("context is not an object")? {
        record[k] = v.clone();
    }
    let key = record["session_id"].as_str().unwrap_or_default().to_string();
    Ok((key, serde_json::to_vec(&record).map_err(|e| e.to_string())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;

    #[test]
    fn a_fixed_event_becomes_a_record_and_a_bad_one_says_why() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let ctx = r#"{"session_id":"s","key_id":"k","sent_at":1764000000000,"received_at":1764000000100,"page":{"url":"u"}}"#;
        let (key, rec) = build_record(7, r#"["mouse_moves",1764000000000,1,2]"#, Some(ctx), &catalog).unwrap();
        assert_eq!(key, "s");
        let v: Value = serde_json::from_slice(&rec).unwrap();
        assert_eq!(v["schema"]["mouse_moves"], json!(["x", "y"]));
        assert_eq!(v["page"]["url"], "u");
        let again: Value = serde_json::from_slice(&build_record(7, r#"["mouse_moves",1764000000000,1,2]"#, Some(ctx), &catalog).unwrap().1).unwrap();
        assert_eq!(v["batch_id"], again["batch_id"], "replaying twice gives the same batch id");
        let err = build_record(8, r#"["mouse_moves",1764000000000,"x",2]"#, Some(ctx), &catalog).unwrap_err();
        assert_eq!(err, "event[2] `x`: expected an integer");
    }
}

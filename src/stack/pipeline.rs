//! What `chronos status` says about the data flow: the cluster's health for
//! Chronos's topics, the loaders' consumer lag (records in Kafka past the
//! offsets committed in PostgreSQL), stalled partitions (from chronosd's
//! `/health`, when it runs) and the events stored in the last minute. Works against any deployment the config points
//! at, not only the local stack.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::health::cluster::partition_lag;
use crate::store::schema::ident;

/// Lag of one topic for the loaders' consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLag {
    pub topic: String,
    /// (partition, high watermark, next offset to load)
    pub partitions: Vec<(i32, i64, i64)>,
    /// Records in the topic not yet loaded (sum over partitions).
    pub lag: i64,
}

/// The events and dead-letter topics' lag for `load.group_id`.
pub async fn consumer_lag(config: &Config, timeout: Duration) -> Result<Vec<TopicLag>> {
    let k = &config.kafka;
    let client = crate::store::connect(&config.postgres.url).await?;
    let rows = client
        .query("SELECT topic, partition, next_offset FROM chronos.offsets WHERE consumer_group = $1", &[&config.load.group_id])
        .await
        .context("reading chronos.offsets (run `chronos install-pipeline` if the schema is missing)")?;
    let stored: Vec<(String, i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let (topics, brokers) = (vec![k.topic.clone(), k.dead_letter_topic.clone()], k.brokers.clone());
    let consumer: BaseConsumer =
        crate::produce::kafka::base_client_config(k).create().with_context(|| format!("cannot create a Kafka client for {brokers}"))?;
    // rdkafka's metadata and watermark calls block: keep them off the runtime's thread.
    tokio::task::spawn_blocking(move || {
        topics
            .into_iter()
            .map(|topic| {
                let meta = consumer
                    .fetch_metadata(Some(&topic), timeout)
                    .with_context(|| format!("the broker at {brokers} did not answer (is it running? `chronos start broker`)"))?;
                let t = meta.topics().first().with_context(|| format!("no metadata for topic {topic}"))?;
                if t.partitions().is_empty() {
                    anyhow::bail!("topic {topic} does not exist; create it with `chronos install-kafka`");
                }
                let mut partitions = Vec::new();
                let mut lag = 0;
                for p in t.partitions() {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p.id(), timeout).with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
                    let next = stored.iter().find(|(tp, part, _)| *tp == topic && *part == p.id()).map(|s| s.2);
                    lag += partition_lag(low, high, next);
                    partitions.push((p.id(), high, next.unwrap_or(low).max(low)));
                }
                partitions.sort();
                Ok(TopicLag { topic, partitions, lag })
            })
            .collect()
    })
    .await?
}

/// What the loaders could not store as rows: per topic, the records set aside
/// (a permanent PostgreSQL error traced to them: dead letters with a
/// SQLSTATE), and the continuous views marked broken, with why.
pub struct Refused {
    pub set_aside: Vec<(String, i64)>,
    pub broken_views: Vec<(String, String)>,
}

pub async fn refused(config: &Config) -> Result<Refused> {
    let client = crate::store::connect(&config.postgres.url).await?;
    let set_aside = client
        .query("SELECT topic, count(*) FROM chronos.dead_letters WHERE sqlstate IS NOT NULL GROUP BY topic ORDER BY topic", &[])
        .await
        .context("counting records set aside (schema installed?)")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let broken_views = client
        .query("SELECT name, broken FROM chronos.views WHERE broken IS NOT NULL ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Refused { set_aside, broken_views })
}

/// Events stored whose receipt time is within the last minute, over every
/// enabled event type of the catalog, and how many of them were flagged as
/// a bot's (`is_bot`).
pub async fn events_last_minute(config: &Config) -> Result<(i64, i64)> {
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let client = crate::store::connect(&config.postgres.url).await?;
    // Rows are partitioned by event time, which the loader keeps within
    // [received_at − max_past_secs, received_at + max_future_secs]: the second
    // condition lets PostgreSQL skip old partitions.
    let counts: Vec<String> = catalog
        .types()
        .iter()
        .map(|t| {
            format!(
                "SELECT count(*) AS n, count(*) FILTER (WHERE is_bot) AS bots FROM events.{} WHERE received_at > now() - interval '1 minute' \
                 AND time > now() - interval '1 minute' - make_interval(secs => {})",
                ident(&t.name),
                config.load.max_past_secs
            )
        })
        .collect();
    if counts.is_empty() {
        return Ok((0, 0));
    }
    let sql = format!("SELECT coalesce(sum(n), 0)::bigint, coalesce(sum(bots), 0)::bigint FROM ({}) c", counts.join(" UNION ALL "));
    let row = client.query_one(sql.as_str(), &[]).await.context("counting the last minute's events (schema installed?)")?;
    Ok((row.get(0), row.get(1)))
}

/// The event tables' layout (`store::layout_summary`).
pub async fn table_layout(config: &Config) -> Result<String> {
    let client = crate::store::connect(&config.postgres.url).await?;
    crate::store::layout_summary(&client).await
}

/// One line of `chronos status` (name, state, what, detail).
fn status_line(name: &str, what: &str, detail: &str) -> String {
    format!("{name:<9} {:<5} {what:<28} {detail}", "")
}

/// Seconds as days, hours, minutes or seconds (the largest two units).
fn span(secs: i64) -> String {
    let (sign, s) = if secs < 0 { ("-", -secs) } else { ("", secs) };
    match s {
        s if s >= 86_400 => format!("{sign}{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{sign}{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{sign}{}m {}s", s / 60, s % 60),
        s => format!("{sign}{s}s"),
    }
}

/// The cluster lines of `chronos status`: brokers and controller, each
/// topic's replicas (under-replicated, offline, below `min.insync.replicas`)
/// and retention headroom, then the partitions chronosd reports stalled.
pub async fn cluster_lines(config: &Config, timeout: Duration) -> Vec<String> {
    let mut out = Vec::new();
    match crate::health::cluster::gather(config, timeout).await {
        Err(e) => out.push(status_line("kafka", "", &format!("unknown: {e:#}"))),
        Ok(facts) => {
            let expected = config.kafka.expected_brokers.map(|n| format!(" (expected {n})")).unwrap_or_default();
            let controller = facts.controller.map_or("no active controller".to_string(), |id| format!("controller {id}"));
            out.push(status_line("kafka", "", &format!("{} brokers{expected}, {controller}", facts.brokers.len())));
            for h in facts.health(crate::clock::now_ms()) {
                let min_isr = facts.topics.iter().find(|t| t.name == h.topic).and_then(|t| t.min_insync).unwrap_or(1);
                let headroom = match h.headroom_secs {
                    Some(s) => format!("; retention headroom {}", span(s)),
                    None => String::new(),
                };
                out.push(status_line(
                    "topic",
                    &h.topic,
                    &format!(
                        "{} partitions, replication {}: {} under-replicated, {} offline, {} below min.insync.replicas ({min_isr}){headroom}",
                        h.partitions, h.replication, h.under_replicated, h.offline, h.below_min_isr
                    ),
                ));
            }
        }
    }
    let admin = config.http.admin_listen;
    if let Ok(Ok(board)) = tokio::task::spawn_blocking(move || crate::doctor::gather::board(admin)).await {
        for p in board.partitions.iter().filter(|p| p.stalled) {
            let error = p.last_error.as_deref().unwrap_or("none recorded");
            out.push(status_line(
                "stalled",
                &format!("{}/{}", p.topic, p.partition),
                &format!("{} records waiting, nothing stored for {} s; last error: {error} (chronos doctor)", p.lag, config.load.stalled_after_secs),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn spans_read_in_their_two_largest_units() {
        assert_eq!(span(42), "42s");
        assert_eq!(span(125), "2m 5s");
        assert_eq!(span(7 * 86_400 - 60), "6d 23h");
        assert_eq!(span(-3_700), "-1h 1m");
    }
}

//! Topic set-up through the Kafka admin API (idempotent; works against any
//! Kafka-protocol cluster, and is required where topics are not auto-created).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

fn admin(c: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, String> {
    super::kafka::base_client_config(c).create().map_err(|e| format!("cannot create a Kafka admin client for {}: {e}", c.brokers))
}

/// Creates the events and dead-letter topics when missing. Returns the names created.
pub async fn ensure_topics(c: &KafkaConfig, timeout: Duration) -> Result<Vec<String>, String> {
    let admin = admin(c)?;
    let min_isr = c.topic_min_insync_replicas().to_string();
    let topics: Vec<NewTopic<'_>> = [c.topic.as_str(), c.dead_letter_topic.as_str()]
        .into_iter()
        .map(|name| {
            NewTopic::new(name, c.partitions, TopicReplication::Fixed(c.replication)).set("min.insync.replicas", &min_isr)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(|e| format!("the broker at {} did not answer: {e}", c.brokers))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
        }
    }
    Ok(created)
}

/// A topic's `retention.ms` (how long Kafka keeps its records), as the broker
/// reports it; `Ok(None)` when it keeps them forever (-1).
pub async fn retention_ms(c: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Option<i64>, String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin = admin(c)?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
        .await
        .map_err(|e| format!("the broker at {} did not answer: {e}", c.brokers))?;
    let resource = results.into_iter().next().ok_or("no answer for the topic")?.map_err(|e| format!("topic {topic}: {e}"))?;
    let value = resource
        .entries
        .iter()
        .find(|e| e.name == "retention.ms")
        .and_then(|e| e.value.clone())
        .ok_or_else(|| format!("topic {topic} reports no retention.ms"))?;
    let ms: i64 = value.parse().map_err(|_| format!("topic {topic}: retention.ms = {value} is not a number"))?;
    Ok((ms >= 0).then_some(ms))
}

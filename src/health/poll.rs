//! chronosd's health poll: every `kafka.health_poll_secs` it reads the
//! cluster ([`super::cluster::gather`]), judges it, decides which of its
//! partitions are stalled ([`crate::telemetry::board::Board::assess`]) and sets the
//! health metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::cluster::ClusterFacts;
use crate::config::Config;
use crate::telemetry::Metrics;

/// Polls until the runtime stops.
pub async fn run(config: Config, metrics: Arc<Metrics>) {
    if let Some(n) = config.kafka.expected_brokers {
        metrics.kafka_brokers_expected.with_label_values(&[]).set(n as i64);
    }
    let every = Duration::from_secs(config.kafka.health_poll_secs);
    // Reading one record of a lagging partition takes a fetch: give it time even when polling often.
    let timeout = every.clamp(Duration::from_secs(5), Duration::from_secs(10));
    let stalled_after_ms = config.load.stalled_after_secs as i64 * 1000;
    let mut shown = BTreeSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let facts = super::cluster::gather(&config, timeout).await;
        let now = crate::clock::now_ms();
        let lags = match &facts {
            Ok(f) => {
                export_cluster(&metrics, f, now);
                f.lags(&metrics.board.positions())
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "Cluster health not read.");
                metrics.kafka_brokers.set(0);
                metrics.kafka_controller_active.set(0);
                Default::default()
            }
        };
        let partitions = metrics.board.assess(&lags, now, stalled_after_ms);
        let mut now_shown = BTreeSet::new();
        for p in &partitions {
            let labels = [p.topic.as_str(), &p.partition.to_string()];
            metrics.load_partition_stalled.with_label_values(&labels).set(p.stalled as i64);
            if p.stalled {
                tracing::error!(
                    topic = %p.topic,
                    partition = p.partition,
                    lag = p.lag,
                    last_error = p.last_error.as_deref().unwrap_or("none"),
                    "Partition stalled: records wait and its loader stored nothing for load.stalled_after_secs."
                );
            }
            now_shown.insert((p.topic.clone(), p.partition));
        }
        for (topic, partition) in shown.difference(&now_shown) {
            let labels = [topic.as_str(), &partition.to_string()];
            let _ = metrics.load_partition_stalled.remove_label_values(&labels);
            let _ = metrics.load_last_commit.remove_label_values(&labels);
        }
        shown = now_shown;
    }
}

/// Sets the cluster gauges from one reading.
pub fn export_cluster(metrics: &Metrics, facts: &ClusterFacts, now_ms: i64) {
    metrics.kafka_brokers.set(facts.brokers.len() as i64);
    metrics.kafka_controller_active.set(facts.controller.is_some() as i64);
    for h in facts.health(now_ms) {
        let t = [h.topic.as_str()];
        metrics.kafka_under_replicated.with_label_values(&t).set(h.under_replicated as i64);
        metrics.kafka_offline.with_label_values(&t).set(h.offline as i64);
        metrics.kafka_below_min_isr.with_label_values(&t).set(h.below_min_isr as i64);
        match h.headroom_secs {
            Some(s) => metrics.kafka_retention_headroom.with_label_values(&t).set(s),
            None => {
                let _ = metrics.kafka_retention_headroom.remove_label_values(&t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::cluster::{PartitionFacts, TopicFacts};

    #[test]
    fn one_reading_sets_every_cluster_gauge_and_drops_a_headroom_without_lag() {
        let m = Metrics::new();
        let part = |id, isr: &[i32], lag: bool| PartitionFacts {
            id,
            leader: isr.first().copied().unwrap_or(-1),
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            low: 0,
            high: 10,
            stored_next: Some(if lag { 5 } else { 10 }),
            oldest_unloaded_ms: lag.then_some(1_000_000),
        };
        let mut facts = ClusterFacts {
            brokers: vec![1, 2],
            controller: None,
            topics: vec![TopicFacts {
                name: "ev".into(),
                exists: true,
                partitions: vec![part(0, &[1, 2], true), part(1, &[], false), part(2, &[1], false)],
                min_insync: Some(2),
                retention_ms: Some(60_000),
            }],
            ..Default::default()
        };
        export_cluster(&m, &facts, 1_030_000);
        let text = m.render();
        for line in [
            "chronos_kafka_brokers 2",
            "chronos_kafka_controller_active 0",
            "chronos_kafka_partitions_under_replicated{topic=\"ev\"} 3",
            "chronos_kafka_partitions_offline{topic=\"ev\"} 1",
            "chronos_kafka_partitions_below_min_isr{topic=\"ev\"} 2",
            "chronos_kafka_retention_headroom_seconds{topic=\"ev\"} 30",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("chronos_kafka_brokers_expected"), "not configured: absent");
        // Loaded up: the headroom goes.
        facts.topics[0].partitions[0].stored_next = Some(10);
        export_cluster(&m, &facts, 1_030_000);
        assert!(!m.render().contains("chronos_kafka_retention_headroom_seconds{"));
    }
}

//! Loaders: Kafka → PostgreSQL, exactly once.
//!
//! One consumer in the group `load.group_id` polls on its own thread
//! (`consumer`). Each partition assigned to it gets its own record queue
//! (`partition`) and a supervised `PartitionLoader` (`loader`) on a pool of
//! arbiters: the loader reads its stored offset from `chronos.offsets`
//! (written in the same transactions as the rows), seeks there, and loads.
//! A loader that is busy committing simply does not read its queue, so a
//! slow PostgreSQL slows that partition's fetching and nothing else. On
//! revocation the loaders stop; anything they had not committed is read again
//! by the next owner, and the offset fence keeps a late commit out.

pub mod consumer;
pub mod decode;
pub mod loader;
pub mod partition;
pub mod replay;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{Context as _, Result};
use rdkafka::consumer::Consumer as _;

use self::consumer::LoadContext;
use self::decode::TimePolicy;
use self::loader::{supervise, LoaderShared, PartitionLoader, Stop};
use self::partition::Consumer;
use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::telemetry::Metrics;

/// The running loaders.
pub struct LoaderHandle {
    consumer: Arc<Consumer>,
    stop_polling: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Disconnected once every loader has ended.
    loaders_done: crossbeam_channel::Receiver<()>,
    arbiters: Vec<Arbiter>,
    shutdown_timeout: Duration,
}

impl LoaderHandle {
    /// Asks every loader to commit what it holds — all in parallel, by one
    /// deadline (`load.shutdown_timeout_secs`) — then leaves the group.
    /// What is not committed by then is read again at the next start.
    pub fn shutdown(mut self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.stop_polling.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.consumer.context().stop_all(Stop::Shutdown(deadline));
        // A loader past the deadline gives up on its own; allow it a moment to.
        let ended = !matches!(self.loaders_done.recv_deadline(deadline + Duration::from_secs(2)), Err(crossbeam_channel::RecvTimeoutError::Timeout));
        if !ended {
            tracing::warn!("Some loaders had not stopped by the shutdown deadline; their records are read again at the next start.");
        }
        self.consumer.unsubscribe();
        for a in &self.arbiters {
            a.stop();
        }
        tracing::info!(ended, "Loaders stopped.");
    }
}

/// librdkafka bounds each split partition queue on its own: the configured
/// total, shared by the partitions of both topics this member may be given.
/// A fetch may bring as much per partition (`max.partition.fetch.bytes`; the
/// 1 MiB default held the loaders back in perf/loader.md).
fn prefetch_per_partition_kbytes(config: &Config) -> u32 {
    let partitions = 2 * config.kafka.partitions.max(1) as u32;
    (config.load.prefetch_kbytes / partitions).max(1024)
}

/// Starts the loaders of `config` (call inside an actix System).
pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<LoaderHandle> {
    if config.load.mailbox_capacity.is_some() {
        tracing::warn!("load.mailbox_capacity is no longer used (each loader reads its own partition queue, bounded by load.prefetch_kbytes); remove it from the config file.");
    }
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let shared = Arc::new(LoaderShared {
        session_gap_ms: config.load.session_gap_secs as i64 * 1000,
        catalog,
        policy: TimePolicy { max_past_ms: config.load.max_past_secs as i64 * 1000, max_future_ms: config.load.max_future_secs as i64 * 1000 },
        group: config.load.group_id.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        flush_rows: config.load.flush_rows,
        flush_ms: config.load.flush_ms,
        retry_max_ms: config.load.retry_max_ms,
        pg_url: config.postgres.url.clone(),
        metrics: metrics.clone(),
        views: crate::views::Registry::default(),
    });
    let arbiters: Vec<Arbiter> = (0..crate::config::threads(config.load.threads)).map(|_| Arbiter::new()).collect();
    let mut cc = crate::produce::kafka::base_client_config(&config.kafka);
    cc.set("group.id", &config.load.group_id)
        .set("client.id", "chronosd-loader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.load.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", config.load.max_poll_interval_ms.to_string())
        .set("heartbeat.interval.ms", (config.load.session_timeout_ms / 3).max(100).to_string())
        .set("enable.partition.eof", "false")
        .set("max.partition.fetch.bytes", (prefetch_per_partition_kbytes(config) * 1024).to_string())
        .set("queued.max.messages.kbytes", prefetch_per_partition_kbytes(config).to_string())
        .set("statistics.interval.ms", config.kafka.statistics_interval_ms.to_string());
    let consumer: Arc<Consumer> = Arc::new(cc.create_with_context(LoadContext::new(metrics.clone())).context("creating the loader consumer")?);
    let topics = [config.kafka.topic.as_str(), config.kafka.dead_letter_topic.as_str()];
    consumer.subscribe(&topics).context("subscribing")?;

    let (alive, loaders_done) = crossbeam_channel::bounded::<()>(0);
    let handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
    let next = AtomicUsize::new(0);
    let start_loader = Box::new(move |partition: partition::Partition, stop: tokio::sync::watch::Receiver<Stop>| {
        let arbiter = &handles[next.fetch_add(1, Ordering::Relaxed) % handles.len()];
        let (shared, metrics, alive) = (shared.clone(), metrics.clone(), alive.clone());
        let partition = Arc::new(partition);
        arbiter.spawn(async move {
            let (topic, p) = (partition.topic.clone(), partition.partition);
            let make = || PartitionLoader::new(shared.clone(), partition.clone(), stop.clone()).run();
            supervise(topic, p, metrics, stop.clone(), make).await;
            drop(alive);
        });
    });
    let stop_polling = Arc::new(AtomicBool::new(false));
    let (c, stop) = (consumer.clone(), stop_polling.clone());
    let thread = std::thread::Builder::new().name("chronos-poll".into()).spawn(move || consumer::poll_loop(c, start_loader, stop))?;
    Ok(LoaderHandle {
        consumer,
        stop_polling,
        thread: Some(thread),
        loaders_done,
        arbiters,
        shutdown_timeout: Duration::from_secs(config.load.shutdown_timeout_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_is_shared_by_both_topics_partitions() {
        let mut c = Config::default();
        c.load.prefetch_kbytes = 16_384;
        c.kafka.partitions = 4;
        assert_eq!(prefetch_per_partition_kbytes(&c), 2048);
        c.kafka.partitions = 64;
        assert_eq!(prefetch_per_partition_kbytes(&c), 1024, "at least one fetch's worth per partition");
    }
}

//! The Kafka cluster as Chronos's topics see it, read through the metadata
//! and admin APIs (any Kafka-protocol cluster): brokers, the controller, each
//! partition's leader, replicas and in-sync replicas, the topics'
//! `min.insync.replicas` and `retention.ms`, and, with the offsets stored in
//! PostgreSQL, the loaders' lag and the age of the oldest record not yet
//! loaded. [`gather`] reads; the functions after it judge, without I/O.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;

/// One partition of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionFacts {
    pub id: i32,
    /// -1: no leader.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The earliest offset kept and the next offset to be written.
    pub low: i64,
    pub high: i64,
    /// The loaders' next offset stored in PostgreSQL (`None`: never loaded or unknown).
    pub stored_next: Option<i64>,
    /// Timestamp (ms) of the oldest record kept and not loaded yet.
    pub oldest_unloaded_ms: Option<i64>,
}

/// One of Chronos's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicFacts {
    pub name: String,
    /// The metadata names the topic with partitions.
    pub exists: bool,
    pub partitions: Vec<PartitionFacts>,
    /// The topic's `min.insync.replicas` (`None` when it could not be read).
    pub min_insync: Option<i32>,
    /// `retention.ms`; `None`: kept forever (-1) or not read.
    pub retention_ms: Option<i64>,
}

/// What [`gather`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterFacts {
    /// Broker ids in the metadata.
    pub brokers: Vec<i32>,
    /// The controller the metadata names (`None`: none known).
    pub controller: Option<i32>,
    pub topics: Vec<TopicFacts>,
    /// Why the stored offsets could not be read (then lag is unknown).
    pub offsets_error: Option<String>,
    /// Why the topics' settings could not be read.
    pub configs_error: Option<String>,
}

/// Records not yet loaded in a partition: the high watermark minus the stored
/// next offset (a partition never loaded counts from its low watermark).
pub fn partition_lag(low: i64, high: i64, stored_next: Option<i64>) -> i64 {
    let next = stored_next.unwrap_or(low).max(low);
    (high - next).max(0)
}

impl PartitionFacts {
    pub fn lag(&self) -> i64 {
        partition_lag(self.low, self.high, self.stored_next)
    }
}

/// The loaders' stored offsets: (topic, partition) → next offset.
pub async fn stored_offsets(config: &Config) -> Result<BTreeMap<(String, i32), i64>> {
    let client = crate::store::connect(&config.postgres.url).await?;
    let rows = client
        .query("SELECT topic, partition, next_offset FROM chronos.offsets WHERE consumer_group = $1", &[&config.load.group_id])
        .await
        .context("reading chronos.offsets (run `chronos install-pipeline` if the schema is missing)")?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
}

/// Reads the cluster's metadata, the topics' settings and watermarks, and
/// (from PostgreSQL) the loaders' offsets. Fails only when no broker answers;
/// a part that cannot be read is left empty and said why.
pub async fn gather(config: &Config, timeout: Duration) -> Result<ClusterFacts> {
    let (offsets, offsets_error) = match tokio::time::timeout(timeout, stored_offsets(config)).await {
        Ok(Ok(o)) => (o, None),
        Ok(Err(e)) => (BTreeMap::new(), Some(format!("{e:#}"))),
        Err(_) => (BTreeMap::new(), Some(format!("PostgreSQL did not answer within {timeout:?}"))),
    };
    let have_offsets = offsets_error.is_none();
    let c = config.clone();
    // rdkafka's metadata, watermark and fetch calls block: off the runtime's thread.
    let mut facts = tokio::task::spawn_blocking(move || read_metadata(&c, &offsets, have_offsets, timeout)).await??;
    facts.offsets_error = offsets_error;
    match topic_settings(config, &facts.topics.iter().filter(|t| t.exists).map(|t| t.name.clone()).collect::<Vec<_>>(), timeout).await {
        Ok(settings) => {
            for t in &mut facts.topics {
                if let Some((min_isr, retention)) = settings.get(&t.name) {
                    t.min_insync = *min_isr;
                    t.retention_ms = *retention;
                }
            }
        }
        Err(e) => facts.configs_error = Some(e),
    }
    Ok(facts)
}

fn read_metadata(config: &Config, offsets: &BTreeMap<(String, i32), i64>, have_offsets: bool, timeout: Duration) -> Result<ClusterFacts> {
    let k = &config.kafka;
    let mut cc = crate::produce::kafka::base_client_config(k);
    // assign() needs a group id (librdkafka refuses it without one: UNKNOWN_GROUP);
    // nothing joins or commits in it.
    cc.set("group.id", format!("{}.health", config.load.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // One record per lagging partition is all it reads: small fetches (a
        // first batch larger than this still comes whole), no prefetching.
        .set("max.partition.fetch.bytes", "4096")
        .set("queued.min.messages", "1");
    let consumer: BaseConsumer = cc.create().with_context(|| format!("cannot create a Kafka client for {}", k.brokers))?;
    let mut facts = ClusterFacts::default();
    for name in [&k.topic, &k.dead_letter_topic] {
        let meta = consumer
            .fetch_metadata(Some(name), timeout)
            .with_context(|| format!("no Kafka broker at {} answered (is it running? `chronos start broker`)", k.brokers))?;
        facts.brokers = meta.brokers().iter().map(|b| b.id()).collect();
        facts.brokers.sort_unstable();
        let mut topic = TopicFacts { name: name.clone(), ..Default::default() };
        if let Some(t) = meta.topics().iter().find(|t| t.name() == name.as_str()) {
            topic.exists = !t.partitions().is_empty();
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(name, p.id(), timeout).unwrap_or((0, 0));
                topic.partitions.push(PartitionFacts {
                    id: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                    low,
                    high,
                    stored_next: offsets.get(&(name.clone(), p.id())).copied(),
                    oldest_unloaded_ms: None,
                });
            }
            topic.partitions.sort_by_key(|p| p.id);
        }
        facts.topics.push(topic);
    }
    facts.controller = controller(&consumer, timeout);
    if have_offsets {
        oldest_unloaded(&consumer, &mut facts.topics, timeout);
    }
    Ok(facts)
}

/// The active controller as the metadata names it. rdkafka 0.37 wraps
/// neither DescribeCluster nor the metadata's ControllerId; librdkafka's own
/// `rd_kafka_controllerid` returns the latter (-1 when none is known), from
/// the same Metadata response the calls above used, and needs no admin
/// event plumbing. Under KRaft a broker names an alive broker that forwards
/// to the active quorum controller, so "none" means no broker can reach one.
fn controller(consumer: &BaseConsumer, timeout: Duration) -> Option<i32> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: the client handle is alive for the call; the function only reads its metadata cache.
    let id = unsafe { rdkafka::bindings::rd_kafka_controllerid(consumer.client().native_ptr(), ms) };
    (id >= 0).then_some(id)
}

/// Fills `oldest_unloaded_ms` of each partition with lag: the timestamp of
/// the record at the loaders' stored offset (or the earliest kept). Reads one
/// record per such partition; a partition that gives none in time stays `None`.
fn oldest_unloaded(consumer: &BaseConsumer, topics: &mut [TopicFacts], timeout: Duration) {
    let mut tpl = TopicPartitionList::new();
    let mut wanted = 0;
    for t in topics.iter() {
        for p in t.partitions.iter().filter(|p| p.lag() > 0) {
            let at = p.stored_next.unwrap_or(p.low).max(p.low);
            if tpl.add_partition_offset(&t.name, p.id, Offset::Offset(at)).is_ok() {
                wanted += 1;
            }
        }
    }
    if wanted == 0 || consumer.assign(&tpl).is_err() {
        return;
    }
    let until = Instant::now() + timeout;
    let mut found = 0;
    while found < wanted && Instant::now() < until {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        let Some(ts) = m.timestamp().to_millis() else { continue };
        let Some(t) = topics.iter_mut().find(|t| t.name == m.topic()) else { continue };
        if let Some(p) = t.partitions.iter_mut().find(|p| p.id == m.partition() && p.oldest_unloaded_ms.is_none()) {
            p.oldest_unloaded_ms = Some(ts);
            found += 1;
            // One record is enough: stop fetching this partition.
            let _ = consumer.pause(&one_partition(m.topic(), m.partition()));
        }
    }
    let _ = consumer.unassign();
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

type Settings = BTreeMap<String, (Option<i32>, Option<i64>)>;

/// `min.insync.replicas` and `retention.ms` of each topic, in one request.
async fn topic_settings(config: &Config, topics: &[String], timeout: Duration) -> Result<Settings, String> {
    if topics.is_empty() {
        return Ok(Settings::new());
    }
    let k = &config.kafka;
    let admin: AdminClient<DefaultClientContext> =
        crate::produce::kafka::base_client_config(k).create().map_err(|e| format!("cannot create a Kafka admin client for {}: {e}", k.brokers))?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let specs: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let results = admin.describe_configs(&specs, &opts).await.map_err(|e| format!("the broker at {} did not describe the topics: {e}", k.brokers))?;
    let mut out = Settings::new();
    for (name, r) in topics.iter().zip(results) {
        let Ok(resource) = r else { continue };
        let value = |key: &str| resource.entries.iter().find(|e| e.name == key).and_then(|e| e.value.as_deref()?.parse::<i64>().ok());
        let retention = value("retention.ms").filter(|ms| *ms >= 0);
        out.insert(name.clone(), (value("min.insync.replicas").map(|v| v as i32), retention));
    }
    Ok(out)
}

/// A topic's health, judged from its facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicHealth {
    pub topic: String,
    pub partitions: usize,
    /// The smallest replica count of its partitions.
    pub replication: usize,
    pub under_replicated: usize,
    pub offline: usize,
    pub below_min_isr: usize,
    /// Records not yet loaded (`None`: stored offsets unknown).
    pub lag: Option<i64>,
    /// Seconds until the oldest unloaded record passes `retention.ms`
    /// (minimum over partitions with lag; `None`: no lag, or kept forever).
    pub headroom_secs: Option<i64>,
    /// Age of the oldest unloaded record, in seconds.
    pub oldest_unloaded_secs: Option<i64>,
}

/// Judges one topic at `now_ms`. `have_offsets`: the stored offsets were read.
pub fn topic_health(t: &TopicFacts, have_offsets: bool, now_ms: i64) -> TopicHealth {
    let min_isr = t.min_insync.unwrap_or(1).max(1) as usize;
    let oldest = t.partitions.iter().filter(|p| p.lag() > 0).filter_map(|p| p.oldest_unloaded_ms).min();
    TopicHealth {
        topic: t.name.clone(),
        partitions: t.partitions.len(),
        replication: t.partitions.iter().map(|p| p.replicas.len()).min().unwrap_or(0),
        under_replicated: t.partitions.iter().filter(|p| p.isr.len() < p.replicas.len()).count(),
        offline: t.partitions.iter().filter(|p| p.leader < 0).count(),
        below_min_isr: t.partitions.iter().filter(|p| p.isr.len() < min_isr).count(),
        lag: have_offsets.then(|| t.partitions.iter().map(PartitionFacts::lag).sum()),
        headroom_secs: match (oldest, t.retention_ms) {
            (Some(oldest), Some(retention)) => Some((oldest + retention - now_ms).div_euclid(1000)),
            _ => None,
        },
        oldest_unloaded_secs: oldest.map(|o| (now_ms - o).max(0) / 1000),
    }
}

impl ClusterFacts {
    /// Each topic's health at `now_ms`.
    pub fn health(&self, now_ms: i64) -> Vec<TopicHealth> {
        self.topics.iter().filter(|t| t.exists).map(|t| topic_health(t, self.offsets_error.is_none(), now_ms)).collect()
    }

    /// Lag per (topic, partition); empty when the stored offsets are unknown.
    /// Each partition's lag. When PostgreSQL could not be read, only the
    /// partitions whose loader here knows what it stored (`positions`, from
    /// the health board) have one: the high watermark past that offset.
    pub fn lags(&self, positions: &BTreeMap<(String, i32), i64>) -> BTreeMap<(String, i32), i64> {
        let of = |t: &TopicFacts, p: &PartitionFacts| {
            let key = (t.name.clone(), p.id);
            match self.offsets_error {
                None => Some((key, p.lag())),
                Some(_) => positions.get(&key).map(|&next| (key, (p.high - next.max(p.low)).max(0))),
            }
        };
        self.topics.iter().flat_map(|t| t.partitions.iter().filter_map(move |p| of(t, p))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: i32, leader: i32, replicas: &[i32], isr: &[i32]) -> PartitionFacts {
        PartitionFacts { id, leader, replicas: replicas.to_vec(), isr: isr.to_vec(), ..Default::default() }
    }

    #[test]
    fn lag_counts_from_the_stored_offset_or_the_start_of_the_log() {
        assert_eq!(partition_lag(0, 10, Some(10)), 0);
        assert_eq!(partition_lag(0, 10, Some(4)), 6);
        assert_eq!(partition_lag(3, 10, None), 7, "never loaded: everything retained");
        assert_eq!(partition_lag(8, 10, Some(4)), 2, "records deleted by retention are not lag");
        assert_eq!(partition_lag(0, 10, Some(12)), 0, "never negative");
    }

    #[test]
    fn without_postgresql_the_lag_counts_from_what_the_loaders_here_last_stored() {
        let topic = TopicFacts {
            name: "e".into(),
            exists: true,
            partitions: vec![
                PartitionFacts { id: 0, low: 0, high: 50, stored_next: Some(20), ..Default::default() },
                PartitionFacts { id: 1, low: 30, high: 50, ..Default::default() },
                PartitionFacts { id: 2, low: 0, high: 50, ..Default::default() },
            ],
            ..Default::default()
        };
        let mut facts = ClusterFacts { topics: vec![topic], ..Default::default() };
        let key = |p: i32| ("e".to_string(), p);
        let positions: BTreeMap<_, _> = [(key(0), 45), (key(1), 10)].into_iter().collect();
        assert_eq!(facts.lags(&positions), [(key(0), 30), (key(1), 20), (key(2), 50)].into_iter().collect(), "read: PostgreSQL's offsets");
        facts.offsets_error = Some("connection refused".into());
        // Records keep arriving while PostgreSQL is down: lag from the loaders'
        // own last commit (deleted records are not lag); unknown partitions have none.
        assert_eq!(facts.lags(&positions), [(key(0), 5), (key(1), 20)].into_iter().collect());
    }

    #[test]
    fn replicas_out_of_sync_no_leader_and_too_few_in_sync_are_counted_apart() {
        let t = TopicFacts {
            name: "e".into(),
            exists: true,
            min_insync: Some(2),
            partitions: vec![
                part(0, 1, &[1, 2, 3], &[1, 2, 3]),
                part(1, 2, &[1, 2, 3], &[2, 3]),
                part(2, 3, &[1, 2, 3], &[3]),
                part(3, -1, &[1, 2, 3], &[]),
            ],
            ..Default::default()
        };
        let h = topic_health(&t, true, 0);
        assert_eq!((h.under_replicated, h.offline, h.below_min_isr, h.replication), (3, 1, 2, 3));
    }

    #[test]
    fn headroom_is_the_oldest_unloaded_record_s_time_left_under_retention() {
        let now = 10_000_000;
        let mut t = TopicFacts { name: "e".into(), exists: true, retention_ms: Some(3_600_000), ..Default::default() };
        t.partitions = vec![
            PartitionFacts { id: 0, low: 0, high: 10, stored_next: Some(4), oldest_unloaded_ms: Some(now - 600_000), ..Default::default() },
            PartitionFacts { id: 1, low: 0, high: 10, stored_next: Some(2), oldest_unloaded_ms: Some(now - 1_200_000), ..Default::default() },
            // Loaded up to its end: its old record does not count.
            PartitionFacts { id: 2, low: 0, high: 10, stored_next: Some(10), oldest_unloaded_ms: Some(now - 3_000_000), ..Default::default() },
        ];
        let h = topic_health(&t, true, now);
        assert_eq!(h.headroom_secs, Some(2_400), "3600 s retention − 1200 s of age");
        assert_eq!(h.oldest_unloaded_secs, Some(1_200));
        assert_eq!(h.lag, Some(14));
        // Past retention: negative.
        t.retention_ms = Some(1_000_000);
        assert_eq!(topic_health(&t, true, now).headroom_secs, Some(-200));
        // Kept forever, or no lag: no headroom to speak of.
        t.retention_ms = None;
        assert_eq!(topic_health(&t, true, now).headroom_secs, None);
        assert_eq!(topic_health(&t, false, now).lag, None, "offsets unknown: lag unknown");
    }
}

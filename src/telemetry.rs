//! Metrics (Prometheus text at `/metrics`) and log set-up. Metric names are
//! constants here, all prefixed `chronos_`, with low-cardinality labels. The
//! [`board`] keeps what a metric cannot hold (a partition's last error, the
//! archive's last failure) for `/health` and `chronos doctor`.

pub mod board;

use prometheus::{CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub const HTTP_REQUESTS: &str = "chronos_http_requests_total";
pub const EVENTS_ACCEPTED: &str = "chronos_events_accepted_total";
pub const EVENTS_REJECTED: &str = "chronos_events_rejected_total";
pub const BATCHES_PRODUCED: &str = "chronos_batches_produced_total";
pub const PRODUCE_LATENCY: &str = "chronos_produce_latency_seconds";
pub const PRODUCER_QUEUE_DEPTH: &str = "chronos_producer_queue_messages";
pub const PRODUCER_QUEUE_BYTES: &str = "chronos_producer_queue_bytes";
pub const RECEIPT_MAILBOX_DEPTH: &str = "chronos_receipt_in_flight";
pub const ACTOR_PANICS: &str = "chronos_actor_panics_total";
pub const KAFKA_BROKER_UP: &str = "chronos_kafka_broker_up";
pub const KAFKA_BROKER_RTT: &str = "chronos_kafka_broker_rtt_avg_microseconds";
pub const KAFKA_TX_MESSAGES: &str = "chronos_kafka_tx_messages";
pub const KAFKA_TX_BYTES: &str = "chronos_kafka_tx_bytes";
pub const KAFKA_TX_ERRORS: &str = "chronos_kafka_tx_errors";
pub const KAFKA_PRODUCE_REQUESTS: &str = "chronos_kafka_produce_requests";
pub const LOAD_EVENTS: &str = "chronos_load_events_total";
pub const LOAD_FLUSH_SECONDS: &str = "chronos_load_flush_seconds";
pub const LOAD_WAIT_SECONDS: &str = "chronos_load_wait_seconds_total";
pub const LOAD_FLUSH_RETRIES: &str = "chronos_load_flush_retries_total";
pub const LOAD_CONSUMER_LAG: &str = "chronos_load_consumer_lag_records";
pub const LOAD_RESTARTS: &str = "chronos_load_restarts_total";
pub const TLS_RELOADS: &str = "chronos_http_tls_reloads_total";
pub const BOT_EVENTS: &str = "chronos_bot_events_total";
pub const LOAD_REWINDS: &str = "chronos_load_rewinds_total";
pub const VIEW_GROUPS: &str = "chronos_view_groups_merged_total";
pub const VIEW_SECONDS: &str = "chronos_view_merge_seconds";
pub const LOAD_SET_ASIDE: &str = "chronos_load_set_aside_total";
pub const VIEWS_BROKEN: &str = "chronos_views_broken_total";
pub const KAFKA_BROKERS: &str = "chronos_kafka_brokers";
pub const KAFKA_BROKERS_EXPECTED: &str = "chronos_kafka_brokers_expected";
pub const KAFKA_CONTROLLER_ACTIVE: &str = "chronos_kafka_controller_active";
pub const KAFKA_UNDER_REPLICATED: &str = "chronos_kafka_partitions_under_replicated";
pub const KAFKA_OFFLINE: &str = "chronos_kafka_partitions_offline";
pub const KAFKA_BELOW_MIN_ISR: &str = "chronos_kafka_partitions_below_min_isr";
pub const KAFKA_RETENTION_HEADROOM: &str = "chronos_kafka_retention_headroom_seconds";
pub const LOAD_PARTITION_STALLED: &str = "chronos_load_partition_stalled";
pub const LOAD_LAST_COMMIT: &str = "chronos_load_last_commit_timestamp_seconds";
pub const ARCHIVE_RUNS: &str = "chronos_archive_runs_total";
pub const ARCHIVE_LAST_SUCCESS: &str = "chronos_archive_last_success_timestamp_seconds";

/// Produce latency buckets: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every metric of one chronosd instance, in its own registry.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounter,
    pub batches_produced: IntCounter,
    pub produce_latency: Histogram,
    pub producer_queue_depth: IntGauge,
    pub producer_queue_bytes: IntGauge,
    pub receipt_in_flight: IntGauge,
    pub actor_panics: IntCounterVec,
    pub kafka_broker_up: IntGaugeVec,
    pub kafka_broker_rtt: IntGaugeVec,
    pub kafka_tx_messages: IntGauge,
    pub kafka_tx_bytes: IntGauge,
    pub kafka_tx_errors: IntGauge,
    pub kafka_produce_requests: IntGauge,
    pub load_events: IntCounter,
    pub load_flush_seconds: Histogram,
    /// Seconds the loaders of a topic waited, by what on: `records` (queue empty) or `commit` (buffer due).
    pub load_wait_seconds: CounterVec,
    pub load_flush_retries: IntCounter,
    pub load_consumer_lag: IntGaugeVec,
    pub load_restarts: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub bot_events: IntCounterVec,
    pub load_rewinds: IntCounterVec,
    pub view_groups: IntCounter,
    pub view_seconds: Histogram,
    /// Records a permanent PostgreSQL error was traced to, stored as dead letters instead (by topic).
    pub load_set_aside: IntCounterVec,
    /// Views marked broken by this chronosd (a statement of theirs failed for good).
    pub views_broken: IntCounterVec,
    /// Cluster health (`health::poll`): brokers in the metadata, and the expected count when configured (no labels; absent otherwise).
    pub kafka_brokers: IntGauge,
    pub kafka_brokers_expected: IntGaugeVec,
    pub kafka_controller_active: IntGauge,
    /// Partitions of Chronos's topics by topic: fewer in-sync replicas than replicas, no leader, fewer in-sync than `min.insync.replicas`.
    pub kafka_under_replicated: IntGaugeVec,
    pub kafka_offline: IntGaugeVec,
    pub kafka_below_min_isr: IntGaugeVec,
    /// Seconds until the oldest unloaded record of a topic is past its `retention.ms`.
    pub kafka_retention_headroom: IntGaugeVec,
    pub load_partition_stalled: IntGaugeVec,
    pub load_last_commit: GaugeVec,
    pub archive_runs: IntCounterVec,
    /// No labels; absent until the first successful run.
    pub archive_last_success: GaugeVec,
    /// The loaders' progress and errors, the archive's runs (`/health`).
    pub board: board::Board,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.unwrap();
                registry.register(Box::new(m.clone())).unwrap();
                m
            }};
        }
        Metrics {
            http_requests: reg!(IntCounterVec::new(
                Opts::new(HTTP_REQUESTS, "Batch requests by HTTP status and outcome code."),
                &["status", "code"]
            )),
            events_accepted: reg!(IntCounter::new(EVENTS_ACCEPTED, "Events acknowledged by the broker.")),
            events_rejected: reg!(IntCounter::new(EVENTS_REJECTED, "Events refused by validation (sent to the dead letters).")),
            batches_produced: reg!(IntCounter::new(BATCHES_PRODUCED, "Batch records acknowledged by the broker.")),
            produce_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(PRODUCE_LATENCY, "Time from enqueue to broker acknowledgement.")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            producer_queue_depth: reg!(IntGauge::new(PRODUCER_QUEUE_DEPTH, "Records waiting in the producer (librdkafka msg_cnt).")),
            producer_queue_bytes: reg!(IntGauge::new(PRODUCER_QUEUE_BYTES, "Bytes waiting in the producer (librdkafka msg_size).")),
            receipt_in_flight: reg!(IntGauge::new(RECEIPT_MAILBOX_DEPTH, "Batches queued for or being parsed by the receipt actors.")),
            actor_panics: reg!(IntCounterVec::new(Opts::new(ACTOR_PANICS, "Panics caught in actors (the actor is restarted)."), &["actor"])),
            kafka_broker_up: reg!(IntGaugeVec::new(Opts::new(KAFKA_BROKER_UP, "1 when librdkafka's connection to the broker is UP."), &["broker"])),
            kafka_broker_rtt: reg!(IntGaugeVec::new(Opts::new(KAFKA_BROKER_RTT, "librdkafka's average broker round-trip time."), &["broker"])),
            kafka_tx_messages: reg!(IntGauge::new(KAFKA_TX_MESSAGES, "Messages sent to brokers (librdkafka txmsgs).")),
            kafka_tx_bytes: reg!(IntGauge::new(KAFKA_TX_BYTES, "Message bytes sent to brokers (librdkafka txmsg_bytes).")),
            kafka_tx_errors: reg!(IntGauge::new(KAFKA_TX_ERRORS, "Transmission errors (librdkafka tx errors summed over brokers).")),
            kafka_produce_requests: reg!(IntGauge::new(
                KAFKA_PRODUCE_REQUESTS,
                "Produce requests sent, summed over brokers (librdkafka req.Produce); tx_messages / this = records per request."
            )),
            load_events: reg!(IntCounter::new(LOAD_EVENTS, "Events committed to PostgreSQL by the loaders.")),
            load_flush_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(LOAD_FLUSH_SECONDS, "Duration of one loader transaction (COPY + offsets + commit).")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            load_wait_seconds: reg!(CounterVec::new(
                Opts::new(
                    LOAD_WAIT_SECONDS,
                    "Seconds the loaders spent waiting, summed over loaders: on records (their partition queue empty) or on commit (the buffer due while the commit before it runs or waits to be retried)."
                ),
                &["topic", "on"]
            )),
            load_flush_retries: reg!(IntCounter::new(LOAD_FLUSH_RETRIES, "Loader flushes retried after a PostgreSQL error.")),
            bot_events: reg!(IntCounterVec::new(
                Opts::new(BOT_EVENTS, "Events of batches taken for a bot's: flagged (stored with is_bot) or dropped ([enrich] bots = drop)."),
                &["action"]
            )),
            tls_reloads: reg!(IntCounterVec::new(
                Opts::new(TLS_RELOADS, "Changed HTTPS certificate files loaded (ok) or refused (failed; the previous certificate stays)."),
                &["result"]
            )),
            load_restarts: reg!(IntCounterVec::new(
                Opts::new(LOAD_RESTARTS, "Partition loaders restarted (from the stored offset) after they failed."),
                &["topic", "partition"]
            )),
            load_rewinds: reg!(IntCounterVec::new(
                Opts::new(
                    LOAD_REWINDS,
                    "Flushes dropped before commit and read again from the stored offset: fenced, views (generation moved), duplicates (a batch loaded before), gap, panic."
                ),
                &["reason"]
            )),
            load_consumer_lag: reg!(IntGaugeVec::new(
                Opts::new(LOAD_CONSUMER_LAG, "Records of an assigned partition not yet committed to PostgreSQL (librdkafka consumer_lag)."),
                &["topic", "partition"]
            )),
            view_groups: reg!(IntCounter::new(VIEW_GROUPS, "Continuous-view groups merged (one upserted row each).")),
            view_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(VIEW_SECONDS, "Time of one transaction's view maintenance (aggregate in Rust + upserts).")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            load_set_aside: reg!(IntCounterVec::new(
                Opts::new(
                    LOAD_SET_ASIDE,
                    "Records set aside by the loaders: a permanent PostgreSQL error (data, integrity, program limit) was traced to them; each is a dead letter with its raw bytes and the SQLSTATE."
                ),
                &["topic"]
            )),
            views_broken: reg!(IntCounterVec::new(
                Opts::new(VIEWS_BROKEN, "Continuous views marked broken after one of their statements failed for good (no longer maintained until re-created)."),
                &["view"]
            )),
            kafka_brokers: reg!(IntGauge::new(KAFKA_BROKERS, "Brokers in the cluster's metadata (0 when none answered).")),
            kafka_brokers_expected: reg!(IntGaugeVec::new(Opts::new(KAFKA_BROKERS_EXPECTED, "Brokers the cluster should have (kafka.expected_brokers)."), &[])),
            kafka_controller_active: reg!(IntGauge::new(KAFKA_CONTROLLER_ACTIVE, "1 when the metadata names an active controller, else 0.")),
            kafka_under_replicated: reg!(IntGaugeVec::new(
                Opts::new(KAFKA_UNDER_REPLICATED, "Partitions with fewer in-sync replicas than replicas."),
                &["topic"]
            )),
            kafka_offline: reg!(IntGaugeVec::new(Opts::new(KAFKA_OFFLINE, "Partitions without a leader (neither read nor written)."), &["topic"])),
            kafka_below_min_isr: reg!(IntGaugeVec::new(
                Opts::new(KAFKA_BELOW_MIN_ISR, "Partitions with fewer in-sync replicas than the topic's min.insync.replicas (acks=all writes refused)."),
                &["topic"]
            )),
            kafka_retention_headroom: reg!(IntGaugeVec::new(
                Opts::new(
                    KAFKA_RETENTION_HEADROOM,
                    "Seconds until the oldest record not yet loaded passes the topic's retention.ms (minimum over partitions with lag; negative: past it; absent: no lag or no retention)."
                ),
                &["topic"]
            )),
            load_partition_stalled: reg!(IntGaugeVec::new(
                Opts::new(
                    LOAD_PARTITION_STALLED,
                    "1 when a partition of this chronosd has records waiting and its loader has stored nothing for load.stalled_after_secs."
                ),
                &["topic", "partition"]
            )),
            load_last_commit: reg!(GaugeVec::new(
                Opts::new(LOAD_LAST_COMMIT, "When a partition's loader last committed rows to PostgreSQL (Unix seconds)."),
                &["topic", "partition"]
            )),
            archive_runs: reg!(IntCounterVec::new(
                Opts::new(ARCHIVE_RUNS, "Archive runs of chronosd's schedule: ok, or failed (a day or the archive itself failed)."),
                &["outcome"]
            )),
            archive_last_success: reg!(GaugeVec::new(Opts::new(ARCHIVE_LAST_SUCCESS, "When an archive run last succeeded (Unix seconds)."), &[])),
            board: board::Board::default(),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs to stderr; `RUST_LOG` (or `CHRONOS_LOG`) filters, default `info`.
pub fn init_logging() {
    let filter = std::env::var("CHRONOS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn,tokio_postgres=warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr).try_init();
}

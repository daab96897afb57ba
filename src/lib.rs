//! # Chronos
//!
//! Self-hosted event capture: tracker.js → `chronosd` → Kafka → PostgreSQL.
//!
//! # Layout
//!
//! The modules in layers, each using only the layers below it (no module
//! cycles: `tests/layering.rs` fails when one comes back, and when a module
//! below is missing here):
//!
//! 1. **Leaves**, using no other module:
//!    - [`catalog`]: the event catalog (event types and typed attributes) inside the config.
//!    - [`record`]: the Kafka record v1 defined once — formats, headers, field names, the dead
//!      letters' batch context, and the event `Row` the loaders and views read.
//!    - [`origin`]: write keys' origin patterns and the `Origin` header they match.
//!    - [`secret`]: secret settings (`Secret` never prints; `…_file` settings read at load).
//!    - [`clock`]: the wall clock in ms since the epoch, as records and tables keep it.
//!    - [`watch`]: a file's modification time, what the file watchers compare.
//!    - [`telemetry`]: metric names, the registry, logging, and the health board (loaders'
//!      progress and last errors, archive runs) served at `/health`.
//!    - [`shutdown`]: SIGTERM and SIGINT.
//!    - [`probe`]: GET on chronosd's own port (liveness and readiness probes).
//!    - [`rt`]: `block_on`, a one-off current-thread runtime for synchronous callers (CLI, stack, tests).
//! 2. **Helpers of the config**: [`enrich`] (user agent, GeoIP, bots at receipt), [`tls`] (the
//!    HTTPS certificate, reloaded when it changes), [`systemd`] (`Type=notify`: READY=1,
//!    WATCHDOG=1, STOPPING=1).
//! 3. [`config`]: the one typed configuration (TOML + `CHRONOS_*` env), validated at boot, one
//!    file per section.
//! 4. **The data's path**, each below what uses it:
//!    - [`payload`]: wire format v1 — parse (simd-json), validate, encode the Kafka record.
//!    - [`produce`]: Kafka — producer settings, the `KafkaSink` actor, topic set-up; its own
//!      `ProduceError` (what happened, whether to retry).
//!    - [`store`]: PostgreSQL — schema from the catalog, partitions, COPY BINARY encoding, the
//!      statements a loader transaction runs (`internals`), maintenance.
//!    - [`health`]: the Kafka cluster's health for Chronos's topics (brokers, controller,
//!      replicas against `min.insync.replicas`, retention against the loaders' lag) and
//!      chronosd's poll of it, which also marks stalled partitions.
//!    - [`tracker`]: the browser tracker bundle (built in `tracker/`), configured from the config file.
//!    - [`views`]: the continuous views — their SQL, the in-memory aggregation a loader does in
//!      the walk that builds its COPY rows, their install, and a rebuild's shadow table and fence.
//!    - [`import`]: historical import (`chronos import`, `POST /v1/import`).
//!    - [`lifecycle`]: retention — old days to Parquet (verified), then dropped; list, verify,
//!      restore; export; erasure; reprocess (enrichment run again over stored events); the
//!      rebuild of views from PostgreSQL and the archive (`chronos views rebuild`).
//!    - [`load`]: loaders — the group consumer, one supervised `PartitionLoader` per partition
//!      (its own queue), dead-letter replay.
//!    - [`http`]: receipt — `POST /v1/batch`, auth (write keys, origins; keys stored in
//!      PostgreSQL), limits, the `Receipt` actors, `/healthz`, `/readyz`; `/metrics` on the admin listener; the one
//!      mapping of every failure to a status.
//!    - [`reload`]: the config file watched: changed write keys and `[tracker]` count without a restart.
//! 5. [`doctor`]: `chronos doctor` — reads the cluster, PostgreSQL, chronosd's `/health` and the
//!    state directory's disk, and judges them (pure functions) into faults with their fixes.
//! 6. [`stack`]: the local stack behind `chronos start` (PostgreSQL, broker, chronosd), also what
//!    the integration tests and benchmarks start. Developer tooling: no module above uses it
//!    (the layering test checks that). It stays in this library because the `chronos` CLI,
//!    which shares this package, and the tests and benchmarks all need it; a crate of its own
//!    would need the CLI in a package of its own too.
//! 7. [`fuzz`]: what the fuzz targets (`tests/fuzz`) and `tests/fuzz_corpus.rs` run — client
//!    bytes through receipt, record bytes through the loaders' decode — and a generator of
//!    hostile JSON. Test tooling like [`stack`]: the daemon never calls it.
//!
//! The function [`run`] is the whole daemon; `src/bin/chronosd.rs` only parses arguments and calls it.

pub mod catalog;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod enrich;
pub mod fuzz;
pub mod health;
pub mod http;
pub mod import;
pub mod lifecycle;
pub mod load;
pub mod origin;
pub mod payload;
pub mod probe;
pub mod produce;
pub mod record;
pub mod reload;
pub mod rt;
pub mod secret;
pub mod shutdown;
pub mod stack;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod tracker;
pub mod views;
pub mod watch;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Arbiter, Supervisor};
use actix_web::{web, HttpServer};
use anyhow::Context as _;

use crate::config::Config;
use crate::http::receipt::{ReceiptPool, ReceiptShared};
use crate::http::AppState;
use crate::produce::sink::Flush;
use crate::produce::{create_producer, KafkaSink, ProducerHealth, Sink};
use crate::telemetry::Metrics;

/// With TLS or SASL to Kafka, one connection at start: a refused handshake or
/// login stops chronosd with the setting named; no answer is only a warning.
async fn check_kafka_security(config: &Config) -> anyhow::Result<()> {
    use crate::produce::admin::{check_security, SecurityCheck};
    let kafka = config.kafka.clone();
    if kafka.security_protocol == crate::config::SecurityProtocol::Plaintext {
        return Ok(());
    }
    let protocol = kafka.security_protocol.as_str();
    let brokers = kafka.brokers.clone();
    match actix_web::rt::task::spawn_blocking(move || check_security(&kafka, Duration::from_secs(10))).await? {
        SecurityCheck::Accepted => tracing::info!(%brokers, protocol, "Kafka accepted the connection."),
        SecurityCheck::Refused(why) => anyhow::bail!(why),
        SecurityCheck::Unreachable(why) => tracing::warn!("{why}; starting anyway (batches get 503 until a broker answers)."),
    }
    Ok(())
}

/// Runs chronosd on `listener` until `shutdown` resolves, then drains: stop
/// accepting, finish in-flight requests, flush the producer. Must run inside an
/// actix `System`.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()> + 'static) -> anyhow::Result<()> {
    check_kafka_security(&config).await?;
    let metrics = Arc::new(Metrics::new());
    actix_rt::spawn(crate::health::poll::run(config.clone(), metrics.clone()));
    let loaders = if config.load.enabled { Some(start_loaders(&config, metrics.clone()).await?) } else { None };
    let health = Arc::new(ProducerHealth::default());
    let max_record = produce::kafka::max_record_bytes(config.http.max_decompressed_bytes, config.http.max_events_per_batch);
    let producer = create_producer(&config.kafka, max_record, metrics.clone(), health.clone())
        .with_context(|| format!("creating the Kafka producer for {}", config.kafka.brokers))?;
    let (kafka, m, h) = (config.kafka.clone(), metrics.clone(), health.clone());
    let sink = Sink::Kafka {
        producer,
        factory: Box::new(move || create_producer(&kafka, max_record, m.clone(), h.clone())),
        health: health.clone(),
        topic: config.kafka.topic.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
    };
    let served = serve(config, listener, sink, metrics, health, shutdown).await;
    if let Some(l) = loaders {
        l.shutdown();
    }
    served
}

/// Applies the schema (idempotent: new catalog columns and tables appear),
/// keeps daily partitions ahead and old batch ids pruned, archives and drops
/// days past retention, starts the loaders.
async fn start_loaders(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<load::LoaderHandle> {
    let catalog = catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let exposed = store::tls::prefer_over_network(&config.postgres.url);
    if !exposed.is_empty() {
        tracing::warn!(
            hosts = ?exposed,
            "postgres.url: sslmode=prefer (the default) to a host across a network falls back to plain text without a word and checks no certificate; set sslmode=verify-full (docs/operations.md)."
        );
    }
    let mut client = store::connect(&config.postgres.url).await?;
    install(&mut client, &catalog, &config.load).await?;
    let retention = Duration::from_secs(config.load.seen_batches_retention_hours * 3600);
    let maintenance = store::Maintenance::new(&config.postgres.url, catalog.clone(), config.load.partitions_ahead_days, retention);
    drop(client);
    actix_rt::spawn(maintenance.run(Duration::from_secs(3600)));
    if config.retention.raw_days > 0 {
        actix_rt::spawn(lifecycle::archive::schedule(config.clone(), catalog, metrics.clone()));
    }
    load::start(config, metrics)
}

/// Installs the whole pipeline's schema idempotently: the storage
/// (`store::install_tables`), then the continuous views over it.
pub async fn install(
    client: &mut tokio_postgres::Client,
    catalog: &catalog::EventCatalog,
    load: &config::LoadConfig,
) -> anyhow::Result<store::Installed> {
    let installed = store::install_tables(client, catalog, load).await?;
    let (added, rebuilt) = views::install(client, catalog).await.context("installing the continuous views")?;
    if added > 0 {
        tracing::info!(views = added, "Created the default continuous views.");
    }
    if !rebuilt.is_empty() {
        tracing::warn!(
            views = ?rebuilt,
            "Rebuilt continuous views from the raw tables in PostgreSQL (state table missing or of an older layout); \
             `chronos views rebuild NAME…` counts the archived days too."
        );
    }
    Ok(installed)
}

/// Builds the shared state and actors around a sink (Kafka, or discard for benchmarks).
pub fn build_state(config: &Config, sink: Sink, metrics: Arc<Metrics>, health: Arc<ProducerHealth>) -> (web::Data<AppState>, Arbiter) {
    let shared = Arc::new(ReceiptShared::from_config(config, metrics.clone()));
    match &shared.geo {
        Some(geo) => geo.clone().watch(Duration::from_secs(config.enrich.geoip_reload_secs)),
        None => tracing::info!("No GeoIP database (enrich.geoip_db): the country, region and city columns stay NULL."),
    }
    let (keys, limits, enricher) = (shared.keys.clone(), shared.limits.clone(), shared.enricher.clone());
    let receipts = ReceiptPool::start(shared, config::threads(config.http.receipt_threads), config.http.mailbox_capacity);
    let sink_arbiter = Arbiter::new();
    let mailbox = config.http.mailbox_capacity;
    let sink = Supervisor::start_in_arbiter(&sink_arbiter.handle(), move |_| KafkaSink::new(sink, mailbox));
    let state = web::Data::new(AppState {
        receipts,
        sink,
        keys,
        limits,
        metrics,
        health,
        max_body_bytes: config.http.max_body_bytes,
        body_timeout: Duration::from_secs(config.http.body_timeout_secs),
        bodies: Arc::new(tokio::sync::Semaphore::new(config.http.max_bodies_in_flight)),
        trusted_proxies: config.http.trusted_proxies.clone(),
        produce_deadline: Duration::from_millis(config.http.produce_deadline_ms),
        retry_after: config.http.retry_after_secs,
        queue_max_messages: config.kafka.queue_max_messages,
        stats_max_age_ms: 3 * config.kafka.statistics_interval_ms as i64 + 1000,
        batch_path: config.http.batch_path.clone(),
        tracker_path: config.http.tracker_path.clone(),
        script: web::Data::new(arc_swap::ArcSwap::from_pointee(http::script::Script::build(config))),
        config: Arc::new(config.clone()),
        enricher,
    });
    (state, sink_arbiter)
}

/// Serves HTTP with the given sink until `shutdown`, then drains: the public
/// `listener`, and the operational endpoints on `http.admin_listen` (bound
/// here; a busy address stops chronosd with the key named).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    sink: Sink,
    metrics: Arc<Metrics>,
    health: Arc<ProducerHealth>,
    shutdown: impl Future<Output = ()> + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let admin = std::net::TcpListener::bind(config.http.admin_listen)
        .with_context(|| format!("cannot listen on {} (http.admin_listen)", config.http.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    let (state, sink_arbiter) = build_state(&config, sink, metrics, health);
    if config.http.keys_from_postgres {
        // Stored keys count from the first request on, or chronosd does not start.
        let client = store::connect(&config.postgres.url).await.context("http.keys_from_postgres")?;
        http::stored_keys::install(&client).await?;
        let n = http::stored_keys::reload(&client, &state.keys).await.context("reading the stored write keys (http.keys_from_postgres)")?;
        tracing::info!(keys = n, "Loaded the write keys stored in PostgreSQL.");
        let every = Duration::from_secs(config.http.keys_refresh_secs);
        actix_rt::spawn(http::stored_keys::refresh_loop(config.postgres.url.clone(), state.keys.clone(), every));
    }
    if let (Some(path), secs) = (&config.source, config.http.config_watch_secs) {
        if secs > 0 {
            reload::watch(path.clone(), config.clone(), state.clone().into_inner(), Duration::from_secs(secs));
        }
    }
    let app_state = state.clone();
    let workers = config::threads(config.http.workers);
    let server = HttpServer::new(move || http::public_app(app_state.clone()))
        .workers(workers)
        // actix counts connections per worker; the setting is for all of them.
        .max_connections(config.http.max_connections.div_ceil(workers))
        .disable_signals()
        .shutdown_timeout(config.http.shutdown_grace_secs);
    let https = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = tls::CertStore::open(cert, key).map_err(anyhow::Error::msg)?;
            certs.watch(Duration::from_secs(config.http.tls_reload_secs), state.metrics.tls_reloads.clone());
            Some(certs.acceptor().map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let serves_https = https.is_some();
    let scheme = if serves_https { "https" } else { "http" };
    let server = match https {
        Some(acceptor) => server.listen_openssl(listener, acceptor)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    // One worker: a scrape now and then, from this host.
    let admin_state = state.clone();
    let admin_server = HttpServer::new(move || http::admin_app(admin_state.clone()))
        .workers(1)
        .max_connections(64)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(admin)?
        .run();
    let admin_handle = admin_server.handle();
    actix_rt::spawn(admin_server);
    let mut notifier = systemd::Notifier::start(addr, serves_https);
    actix_rt::spawn(async move {
        shutdown.await;
        notifier.stopping();
        tracing::info!("Stopping: no new connections; finishing requests in flight.");
        handle.stop(true).await;
        admin_handle.stop(true).await;
    });
    let limits = state.limits.clone();
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            limits.forget_idle();
        }
    });
    tracing::info!(%addr, topic = %config.kafka.topic, "Receiving batches at {scheme}://{addr}{}.", config.http.batch_path);
    tracing::info!(%admin_addr, "Serving /metrics and /readyz at http://{admin_addr}.");
    match (config.http.tracker_path.as_str(), state.script.load().as_ref()) {
        ("", _) => {}
        (path, http::script::Script::Ready { .. }) => tracing::info!("Serving the tracker at {scheme}://{addr}{path}."),
        (path, http::script::Script::Unavailable(why)) => tracing::warn!("Not serving the tracker at {path}: {why}."),
    }
    server.await?;

    let flush_for = Duration::from_secs(config.http.shutdown_grace_secs.max(1));
    match state.sink.send(Flush(flush_for)).await {
        Ok(Ok(())) => tracing::info!("Producer flushed; every acknowledged batch is in Kafka."),
        Ok(Err(e)) => tracing::error!(error = %e, "Producer flush incomplete."),
        Err(e) => tracing::error!(error = %e, "Producer actor gone before the flush."),
    }
    state.receipts.stop();
    sink_arbiter.stop();
    Ok(())
}

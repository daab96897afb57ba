//! Loader throughput next to the raw COPY ceiling for the same rows, in one run.
//!
//! Starts PostgreSQL and the broker with the same helpers as the tests, puts
//! N batch records (50 events each, made by the real receipt code) in a topic,
//! then measures:
//!   (a) raw COPY ceiling: the same rows, pre-encoded, COPYed in one transaction;
//!   (b) the loaders (chronos::load) consuming the topic into an empty schema,
//!       from start until every row is committed;
//!   (c) the broker's own consume ceiling: a plain rdkafka consumer reading them.
//! Usage: cargo run --release -p chronos-bench --bin loader_perf -- [batches]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::receipt::{read_batch, Receive, ReceiptShared};
use chronos::load::copy::{HEADER, TRAILER};
use chronos::load::decode::{decode_batch, TimePolicy};
use chronos::load::loader::LoaderShared;
use chronos::stack::broker::{create_topics, BrokerServer};
use chronos::stack::postgres::{block_on, PostgresServer};
use chronos::telemetry::Metrics;
use futures_util::SinkExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn main() -> anyhow::Result<()> {
    let batches: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let dir = tempfile::Builder::new().prefix("chronos-perf-").tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let pg = PostgresServer::start_in(&dir.path().join("pg"))?;
    let broker = BrokerServer::start_in(&dir.path().join("kafka"))?;
    let config = Config::from_toml(&format!(
        "[[keys]]\nid = \"perf\"\nkey = \"wk_perf_0123456789abcdef\"\norigins = [\"shop.example.com\"]\n\
         [limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n\
         [kafka]\nbrokers = \"{}\"\npartitions = 2\nidempotence = false\n[postgres]\nurl = \"{}\"\n",
        broker.bootstrap(),
        pg.url()
    ))?;
    create_topics(&config.kafka, Duration::from_secs(60))?;

    // N records, exactly as receipt encodes them.
    let shared = ReceiptShared::from_config(&config, Arc::new(Metrics::new()));
    let mut records = Vec::with_capacity(batches);
    for i in 0..batches {
        let msg = Receive {
            body: batch_50(i),
            encoding: Encoding::Identity,
            origin: Some("https://shop.example.com".into()),
            client_ip: "203.0.113.0".parse()?,
            user_agent: None,
            received_at: now_ms(),
        };
        let a = read_batch(&shared, msg).map_err(|e| anyhow::anyhow!("{e}"))?;
        records.push((a.batch.session, a.batch.record.unwrap()));
    }
    let rows = (batches * 50) as f64;
    let bytes: usize = records.iter().map(|r| r.1.len()).sum();
    println!("{batches} records, {rows} events, {:.1} MB of JSON", bytes as f64 / 1e6);

    let producer: FutureProducer = chronos::produce::kafka::producer_config(&config.kafka, 16 << 20).create()?;
    let t = Instant::now();
    block_on(async {
        let sends: Vec<_> = records
            .iter()
            .map(|(k, v)| producer.send(FutureRecord::to(&config.kafka.topic).key(k).payload(v), Duration::from_secs(60)))
            .collect();
        for s in futures_util::future::join_all(sends).await {
            s.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })?;
    println!("produce (setup): {:.0} records/s", batches as f64 / t.elapsed().as_secs_f64());

    // (c) The broker's own consume ceiling for these records: plain rdkafka, no Chronos code.
    let consume_secs = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", "perf-ceiling")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..config.kafka.partitions {
            tpl.add_partition_offset(&config.kafka.topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let t = Instant::now();
        let mut n = 0;
        while n < batches {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                m?;
                n += 1;
            }
        }
        t.elapsed().as_secs_f64()
    };
    println!("(c) broker consume ceiling: {:>9.0} events/s ({consume_secs:.3} s, {:.0} records/s)", rows / consume_secs, batches as f64 / consume_secs);

    let catalog = chronos::catalog::EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let statements = LoaderShared::copy_statements(&catalog);
    // (a) The COPY ceiling: same rows, pre-encoded, one transaction, into a copy of the schema.
    let policy = TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
    let mut per_table: Vec<BytesMut> = statements.iter().map(|_| BytesMut::new()).collect();
    for (_, rec) in &records {
        let d = decode_batch(&mut rec.clone(), &catalog, policy).map_err(|e| anyhow::anyhow!(e))?;
        for t in d.tables {
            per_table[t.table].extend_from_slice(&t.tuples);
        }
    }
    let url = pg.url();
    let copy_secs = block_on(async {
        let mut client = chronos::store::connect(&url).await?;
        chronos::store::install(&mut client, &catalog, 1, 1).await?;
        client.batch_execute("CREATE SCHEMA ceiling").await?;
        for ty in catalog.types() {
            client
                .batch_execute(&format!("CREATE TABLE ceiling.{0} (LIKE events.{0} INCLUDING DEFAULTS)", ty.name))
                .await?;
        }
        let t = Instant::now();
        let tx = client.transaction().await?;
        for (i, stmt) in statements.iter().enumerate() {
            let mut data = BytesMut::from(HEADER);
            data.extend_from_slice(&per_table[i]);
            data.extend_from_slice(TRAILER);
            let sink = tx.copy_in::<_, Bytes>(stmt.replace("COPY events.", "COPY ceiling.").as_str()).await?;
            futures_util::pin_mut!(sink);
            sink.send(data.freeze()).await?;
            sink.finish().await?;
        }
        tx.commit().await?;
        anyhow::Ok(t.elapsed().as_secs_f64())
    })?;
    println!("(a) raw COPY ceiling:   {:>9.0} events/s ({copy_secs:.3} s)", rows / copy_secs);

    // (b) The loaders, end to end from the topic.
    let load_secs = actix_rt::System::new().block_on(async {
        let t = Instant::now();
        let handle = chronos::load::start(&config, Arc::new(Metrics::new()))?;
        let client = chronos::store::connect(&url).await?;
        let total = catalog.types().iter().map(|t| format!("(SELECT count(*) FROM events.{})", t.name)).collect::<Vec<_>>().join(" + ");
        let mut first: Option<(Instant, i64)> = None;
        loop {
            let n: i64 = client.query_one(&format!("SELECT {total}"), &[]).await?.get(0);
            if n > 0 && first.is_none() {
                first = Some((Instant::now(), n));
            }
            if n as f64 >= rows {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let (first_at, first_n) = first.unwrap();
        let steady = (rows - first_n as f64) / first_at.elapsed().as_secs_f64();
        handle.shutdown();
        anyhow::Ok((secs, steady, (first_at - t).as_secs_f64()))
    })?;
    let (load_secs, steady, to_first) = load_secs;
    println!("(b) loaders end to end: {:>9.0} events/s ({load_secs:.3} s, of which {to_first:.2} s group join + first flush)", rows / load_secs);
    println!("    loaders after the first commit: {steady:.0} events/s");
    println!("(b)/(a) = {:.2}   (b)/min(a, c) = {:.2}", copy_secs / load_secs, copy_secs.max(consume_secs) / load_secs);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A 50-event batch like the receipt benchmark's (mouse moves dominate).
fn batch_50(i: usize) -> Vec<u8> {
    let t = now_ms() - 10_000;
    let events: Vec<_> = (0..50)
        .map(|j| {
            let t = t + j * 37;
            match j % 10 {
                0 => serde_json::json!(["clicks", t, "BUTTON", 1, 310 + j, 420, "main>div.card>button.buy"]),
                1 => serde_json::json!(["link_clicks", t, "Read the docs", "https://shop.example.com/docs/start"]),
                2 => serde_json::json!(["key_presses", t, null, "INPUT"]),
                3 => serde_json::json!(["pageviews", t, "push", "https://shop.example.com/"]),
                _ => serde_json::json!(["mouse_moves", t, 100 + j * 3, 200 + j * 2]),
            }
        })
        .collect();
    serde_json::json!({
        "v": 1, "key": "wk_perf_0123456789abcdef", "batch": uuid::Uuid::new_v4().to_string(), "sent_at": t + 5000,
        "session": format!("session-{}", i % 64),
        "page": {"url": "https://shop.example.com/cart?step=2", "title": "Your cart – Shop", "language": "en-GB", "cookies_enabled": true},
        "events": events,
    })
    .to_string()
    .into_bytes()
}

//! COPY BINARY encoding on one core: a Kafka record v1 of 50 events (as
//! receipt encodes it) decoded into binary COPY tuples, the loaders' per-record
//! CPU work; and the continuous views' CPU work on the same records.
//! Method and results: perf/loader.md, perf/views.md.

use std::sync::Arc;

use bytes::BytesMut;
use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::receipt::{read_batch, ReceiptShared, Receive};
use chronos::load::decode::{decode_batch, encode_row, walk, DeadLetter, TimePolicy, Visit};
use chronos::record::Row;
use chronos::telemetry::Metrics;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn record_50() -> Vec<u8> {
    let c = Config::from_toml(
        "[limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n\
         [[keys]]\nid = \"b\"\nkey = \"wk_bench_0123456789abcdef\"\norigins = [\"shop.example.com\"]\n",
    )
    .unwrap();
    let shared = ReceiptShared::from_config(&c, Arc::new(Metrics::new()));
    let t = 1_764_000_000_000i64;
    let events: Vec<_> = (0..50)
        .map(|i| match i % 10 {
            0 => serde_json::json!(["clicks", t + i, "BUTTON", 1, 310 + i, 420, "main>div.card>button.buy"]),
            1 => serde_json::json!(["link_clicks", t + i, "Read the docs", "https://shop.example.com/docs/start"]),
            2 => serde_json::json!(["key_presses", t + i, null, "INPUT"]),
            3 => serde_json::json!(["form_submissions", t + i, "signup", "/join", ["email", "plan"]]),
            _ => serde_json::json!(["mouse_moves", t + i, 100 + i * 3, 200 + i * 2]),
        })
        .collect();
    let body = serde_json::json!({
        "v": 1, "key": "wk_bench_0123456789abcdef", "batch": "0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e", "sent_at": t + 5000,
        "session": "6f1c7d1e-98a4-4f7e-a1c2-3b9e2d7f4a10",
        "page": {"url": "https://shop.example.com/cart?step=2", "title": "Your cart – Shop", "language": "en-GB", "cookies_enabled": true},
        "events": events,
    });
    let msg = Receive {
        body: body.to_string().into_bytes(),
        encoding: Encoding::Identity,
        origin: Some("https://shop.example.com".into()),
        client_ip: "203.0.113.0".parse().unwrap(),
        user_agent: None,
        received_at: t + 6000,
    };
    read_batch(&shared, msg).unwrap().batch.record.unwrap()
}

fn bench_decode(cr: &mut Criterion) {
    let c = Config::default();
    let catalog = chronos::catalog::EventCatalog::from_config(&c.events, c.limits.max_string_bytes);
    let record = record_50();
    let policy = TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 };
    let mut g = cr.benchmark_group("copy_encode");
    g.throughput(Throughput::Elements(50));
    g.bench_function("record_50_events", |b| {
        b.iter(|| {
            let d = decode_batch(&mut record.clone(), &catalog, policy).unwrap();
            assert_eq!(d.events, 50);
            d
        })
    });
    g.finish();

    // The continuous views' share of the loader's one walk: 100 records
    // (5000 events) encoded into COPY tuples alone, and encoded while every
    // default view (sql/views/defaults.sql) aggregates them in the same walk.
    let defaults = chronos::views::parse_views(chronos::views::DEFAULTS, &catalog).unwrap();
    let set = std::sync::Arc::new(chronos::views::ViewSet {
        generation: 1,
        views: defaults.into_iter().map(|def| chronos::views::LiveView { upsert: String::new(), def }).collect(),
    });
    let mut g = cr.benchmark_group("views");
    g.throughput(Throughput::Elements(5000));
    g.bench_function("encode_only_100_records", |b| {
        b.iter(|| {
            let mut v = Walk { catalog: &catalog, tuples: BytesMut::new(), pages: Default::default(), views: None };
            for _ in 0..100 {
                walk(&mut record.clone(), &catalog, policy, &mut v).unwrap();
            }
            v.tuples.len()
        })
    });
    g.bench_function("encode_and_default_views_100_records", |b| {
        b.iter(|| {
            let mut v = Walk {
                catalog: &catalog,
                tuples: BytesMut::new(),
                pages: Default::default(),
                views: Some(chronos::views::Accumulator::new(set.clone())),
            };
            for _ in 0..100 {
                walk(&mut record.clone(), &catalog, policy, &mut v).unwrap();
            }
            v.views.map(|a| a.partials.iter().map(|p| p.len()).sum::<usize>())
        })
    });
    g.finish();
}

/// What a loader does with each event of a walk: a COPY tuple, and the views.
struct Walk<'c> {
    catalog: &'c chronos::catalog::EventCatalog,
    tuples: BytesMut,
    /// Each batch's page, as a loader keeps it for `chronos.batches`.
    pages: chronos::store::internals::Pages,
    views: Option<chronos::views::Accumulator>,
}

impl Visit for Walk<'_> {
    fn page(&mut self, page: chronos::load::decode::BatchPage<'_>) {
        self.pages.push(page.batch_id, page.received_at, page.session_id, page.metadata);
    }
    fn event(&mut self, table: usize, row: &Row<'_, '_>, batch_id: uuid::Uuid) {
        encode_row(&mut self.tuples, &self.catalog.types()[table], row, &batch_id);
        if let Some(v) = &mut self.views {
            v.add(table, row);
        }
    }
    fn reject(&mut self, _: DeadLetter) {}
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);

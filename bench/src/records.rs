//! The benchmark's batches and the Kafka records chronosd makes of them.

use std::sync::Arc;

use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::receipt::{read_batch, ReceiptShared, Receive};
use chronos::telemetry::Metrics;
use loadgen::payload::{batch_id, session_id, Mix, Template};

/// The key and origin of every benchmark config.
pub const KEY: &str = "wk_perf_0123456789abcdef";
pub const ORIGIN: &str = "https://shop.example.com";

/// One Kafka record as chronosd produces it: key (session), value, `chronos-key-id` header, receive time.
pub struct BatchRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub received_at: i64,
}

/// `n` bodies of `batch_size` events as loadgen sends them (default mix, 64 pages), fresh ids.
pub fn bodies(n: usize, batch_size: u32) -> Vec<Vec<u8>> {
    let mix = Mix::parse(loadgen::payload::DEFAULT_MIX).expect("the default mix parses");
    let run = fastrand_seed();
    let templates: Vec<Template> = (0..64).map(|i| Template::generate(KEY, ORIGIN, &mix, batch_size, run ^ i)).collect();
    let now = now_ms() as u64;
    (0..n as u64).map(|i| templates[(i % 64) as usize].stamp(&batch_id(run, i), &session_id(run, i % 10_000), now)).collect()
}

/// The records chronosd's receipt makes of `bodies` (parse, validate, encode).
pub fn records(config: &Config, bodies: Vec<Vec<u8>>) -> anyhow::Result<Vec<BatchRecord>> {
    let shared = ReceiptShared::from_config(config, Arc::new(Metrics::new()));
    bodies
        .into_iter()
        .map(|body| {
            let received_at = now_ms();
            let msg = Receive {
                body,
                encoding: Encoding::Identity,
                origin: Some(ORIGIN.into()),
                client_ip: "198.18.0.1".parse()?,
                user_agent: None,
                received_at,
            };
            let a = read_batch(&shared, msg).map_err(|e| anyhow::anyhow!("{e}"))?;
            let value = a.batch.record.ok_or_else(|| anyhow::anyhow!("a benchmark batch had no valid event"))?;
            Ok(BatchRecord { key: a.batch.session, value, received_at })
        })
        .collect()
}

pub use chronos::clock::now_ms;

fn fastrand_seed() -> u64 {
    u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

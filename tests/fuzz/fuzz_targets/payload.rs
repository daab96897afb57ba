//! Fuzz target: any request body, plain or gzip, through the whole receipt
//! (parse, envelope, key, origin, validate, encode) must answer Ok or a
//! specific error, never panic. Run: see perf/receipt.md ("Fuzzing").
#![no_main]

use std::sync::{Arc, OnceLock};

use chronos::config::Config;
use chronos::http::body::Encoding;
use chronos::http::receipt::{read_batch, Receive, ReceiptShared};
use chronos::telemetry::Metrics;
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static ReceiptShared {
    static SHARED: OnceLock<ReceiptShared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let c = Config::from_toml(
            "[limits]\nper_key_per_sec = 1000000000\nper_key_burst = 1000000000\n\
             [[keys]]\nid = \"f\"\nkey = \"wk_fuzz_0123456789abcdef\"\norigins = [\"example.com\"]\nallow_no_origin = true\n",
        )
        .unwrap();
        ReceiptShared::from_config(&c, Arc::new(Metrics::new()))
    })
}

fuzz_target!(|data: &[u8]| {
    let (encoding, body) = match data.split_first() {
        Some((0x1f, _)) => (Encoding::Gzip, data.to_vec()),
        _ => (Encoding::Identity, data.to_vec()),
    };
    let msg = Receive {
        body,
        encoding,
        origin: None,
        client_ip: "203.0.113.0".parse().unwrap(),
        user_agent: None,
        received_at: 1_764_000_000_000,
    };
    if let Ok(accepted) = read_batch(shared(), msg) {
        // Whatever is accepted must encode to JSON any consumer can read.
        if let Some(record) = &accepted.batch.record {
            let v: serde_json::Value = serde_json::from_slice(record).expect("record is JSON");
            assert_eq!(v["events"].as_array().map(|a| a.len()), Some(accepted.summary.accepted));
        }
    }
});

//! Server-side sessions through the real stack: the loaders split a session
//! id into visits at idle gaps (`load.session_gap_secs`) and keep each
//! visit's span, counts, entry and exit URL, referrer, user and enrichment in
//! `chronos.sessions`, in the transaction that stores the events: batches
//! posted twice count once.

mod common;

use std::time::Duration;

use chronos::stack::process::free_port;
use common::*;
use serde_json::json;

const MIN: i64 = 60_000;

/// A 6-event batch of `session` on `url`, its events at `t` (sent now, so the
/// clock correction is a few ms).
fn at(session: &str, url: &str, t: i64) -> serde_json::Value {
    let mut b = batch_at(session, t);
    b["page"]["url"] = json!(url);
    b
}

#[test]
fn visits_split_at_idle_gaps_and_count_each_batch_once() {
    let stack = start_loading(2, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    let t0 = now_ms() - 120 * MIN;
    let visit1 = [at("v-1", "https://shop.example.com/", t0), at("v-1", "https://shop.example.com/cart", t0 + 10 * MIN)];
    let visit2 = at("v-1", "https://shop.example.com/back", t0 + 50 * MIN);
    let other = at("w-1", "https://shop.example.com/w", t0);
    for b in [&visit1[0], &visit1[1], &visit2, &other, &visit1[1], &visit2] {
        let (status, body, _) = post(&c, &d, b, "198.51.100.4");
        assert_eq!(status, 200, "{body}");
    }
    d.wait_until("every batch loaded", Duration::from_secs(60), || count(&url, "SELECT count(*) FROM events.pageviews") == 4);
    let rows = query(
        &url,
        "SELECT session_id, events, pageviews, entry_url, exit_url, round(extract(epoch FROM duration) / 60)::bigint, referrer, browser, is_bot
         FROM chronos.sessions ORDER BY session_id, started_at",
    );
    let got: Vec<(String, i64, i64, Option<String>, Option<String>, i64, Option<String>, Option<String>, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8))).collect();
    let s = |v: &str| Some(v.to_string());
    let referrer = s("https://ref.example.org/");
    assert_eq!(
        got,
        vec![
            ("v-1".into(), 12, 2, s("https://shop.example.com/"), s("https://shop.example.com/cart"), 10, referrer.clone(), s("Firefox"), false),
            ("v-1".into(), 6, 1, s("https://shop.example.com/back"), s("https://shop.example.com/back"), 0, referrer.clone(), s("Firefox"), false),
            ("w-1".into(), 6, 1, s("https://shop.example.com/w"), s("https://shop.example.com/w"), 0, referrer, s("Firefox"), false),
        ],
        "40 minutes idle split v-1; the batches posted twice counted once"
    );
}

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
        let (status, body, _) = post(&c, d, b, "198.51.100.4");
        assert_eq!(status, 200, "{body}");
    }
    d.wait_until("every batch loaded", Duration::from_secs(60), || count(url, "SELECT count(*) FROM events.pageviews") == 4);
    let rows = query(
        url,
        "SELECT session_id, events, pageviews, entry_url, exit_url, round(extract(epoch FROM duration) / 60)::bigint, referrer, browser, is_bot
         FROM chronos.sessions ORDER BY session_id, started_at",
    );
    // The columns, in the order the query selects them.
    #[allow(clippy::type_complexity)]
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

/// Holds `LOCK TABLE chronos.sessions IN EXCLUSIVE MODE` (reads pass, the
/// loaders' `FOR UPDATE` and writes wait) on its own connection until the
/// returned sender is dropped or sent to.
fn hold_sessions_lock(url: &str) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let url = url.to_string();
    std::thread::spawn(move || {
        chronos::rt::block_on(async move {
            let mut client = chronos::store::connect(&url).await.unwrap();
            let tx = client.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE chronos.sessions IN EXCLUSIVE MODE").await.unwrap();
            locked_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || released.recv()).await;
            tx.rollback().await.unwrap();
        })
    });
    locked.recv_timeout(Duration::from_secs(30)).expect("took the lock");
    release
}

/// Backends waiting for a lock they were refused.
fn lock_waits(url: &str) -> i64 {
    count(url, "SELECT count(*) FROM pg_locks WHERE NOT granted")
}

#[test]
fn visits_stay_exact_when_chronosd_dies_mid_visit_and_its_records_are_read_again() {
    let mut toml = String::new();
    let mut stack = start_loading(2, |kafka, url| {
        toml = config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS);
        toml.clone()
    });
    let url = stack.url.clone();
    let c = client();
    let t0 = now_ms() - 120 * MIN;
    let page = |s: usize, k: i64| at(&format!("x-{s}"), &format!("https://shop.example.com/p{k}"), t0 + k * MIN);
    let send = |d: &Chronosd, b: &serde_json::Value| {
        let (status, body, _) = post(&c, d, b, "198.51.100.4");
        assert_eq!(status, 200, "{body}");
    };
    let pageviews = || count(&url, "SELECT count(*) FROM events.pageviews");

    // 1. Three visits, minutes 0–3, stored.
    let first: Vec<_> = (0..3).flat_map(|s| (0..4).map(move |k| (s, k))).map(|(s, k)| page(s, k)).collect();
    for b in &first {
        send(&stack.d, b);
    }
    stack.d.wait_until("the first part loaded", Duration::from_secs(60), || pageviews() == 12);
    assert_eq!(count(&url, "SELECT count(*) FROM chronos.sessions"), 3);

    // 2. Minutes 4–7 reach the loaders, whose transaction then waits for the
    //    sessions table; chronosd dies there, so that transaction never commits
    //    and the restarted loaders read those records again.
    let release = hold_sessions_lock(&url);
    let second: Vec<_> = (0..3).flat_map(|s| (4..8).map(move |k| (s, k))).map(|(s, k)| page(s, k)).collect();
    for b in &second {
        send(&stack.d, b);
    }
    stack.d.wait_until("a loader waiting for the sessions table", Duration::from_secs(60), || lock_waits(&url) > 0);
    stack.d.kill9();
    drop(release);
    stack.d.wait_until("the dead loader's backend to stop waiting", Duration::from_secs(30), || lock_waits(&url) == 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pageviews(), 12, "the interrupted transaction stored nothing (its events come again after the restart)");

    // 3. Restarted: minutes 8–9, a visit after 40 idle minutes, and one batch of
    //    each earlier part posted again (a tracker retry).
    stack.d = Chronosd::start(&toml);
    stack.d.wait_ready(Duration::from_secs(60));
    let mut third: Vec<_> = (0..3).flat_map(|s| (8..10).map(move |k| (s, k))).map(|(s, k)| page(s, k)).collect();
    third.push(at("x-0", "https://shop.example.com/later", t0 + 49 * MIN));
    third.push(first[1].clone());
    third.push(second[2].clone());
    for b in &third {
        send(&stack.d, b);
    }
    stack.d.wait_until("every batch loaded", Duration::from_secs(90), || pageviews() == 31);

    let rows = query(
        &url,
        "SELECT session_id, events, pageviews, entry_url, exit_url, round(extract(epoch FROM duration) / 60)::bigint
         FROM chronos.sessions ORDER BY session_id, started_at",
    );
    // The columns, in the order the query selects them.
    #[allow(clippy::type_complexity)]
    let got: Vec<(String, i64, i64, Option<String>, Option<String>, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect();
    let p = |k: &str| Some(format!("https://shop.example.com/{k}"));
    let whole = |s: &str| (s.to_string(), 60, 10, p("p0"), p("p9"), 9);
    assert_eq!(
        got,
        vec![whole("x-0"), ("x-0".into(), 6, 1, p("later"), p("later"), 0), whole("x-1"), whole("x-2")],
        "each visit counts every batch once across the crash, the re-read and the retries"
    );
    assert_eq!(pageviews(), 31);
}

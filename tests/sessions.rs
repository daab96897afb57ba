//! Server-side sessions through the real stack: the loaders split a session
//! id into visits at idle gaps (`load.session_gap_secs`) and keep each
//! visit's span, counts, entry and exit URL, referrer, user and enrichment in
//! `chronos.sessions`, in the transaction that stores the events: batches
//! posted twice count once, and the visits are the same whatever order the
//! batches arrive in (a late one bridging two visits merges them).

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

    // 1. Three visits, minutes 0–3, stored, and x-3's two visits at 0 and 45.
    let mut first: Vec<_> = (0..3).flat_map(|s| (0..4).map(move |k| (s, k))).map(|(s, k)| page(s, k)).collect();
    first.extend([page(3, 0), page(3, 45)]);
    for b in &first {
        send(&stack.d, b);
    }
    stack.d.wait_until("the first part loaded", Duration::from_secs(60), || pageviews() == 14);
    assert_eq!(count(&url, "SELECT count(*) FROM chronos.sessions"), 5);

    // 2. Minutes 4–7 reach the loaders, whose transaction then waits for the
    //    sessions table; chronosd dies there, so that transaction never commits
    //    and the restarted loaders read those records again. With them, x-3's
    //    minute 20, which bridges its two visits: merged once, whether it was
    //    in that transaction or not.
    let release = hold_sessions_lock(&url);
    let mut second: Vec<_> = (0..3).flat_map(|s| (4..8).map(move |k| (s, k))).map(|(s, k)| page(s, k)).collect();
    second.push(page(3, 20));
    for b in &second {
        send(&stack.d, b);
    }
    stack.d.wait_until("a loader waiting for the sessions table", Duration::from_secs(60), || lock_waits(&url) > 0);
    stack.d.kill9();
    drop(release);
    stack.d.wait_until("the dead loader's backend to stop waiting", Duration::from_secs(30), || lock_waits(&url) == 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pageviews(), 14, "the interrupted transaction stored nothing (its events come again after the restart)");

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
    stack.d.wait_until("every batch loaded", Duration::from_secs(90), || pageviews() == 34);

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
        vec![whole("x-0"), ("x-0".into(), 6, 1, p("later"), p("later"), 0), whole("x-1"), whole("x-2"), ("x-3".into(), 18, 3, p("p0"), p("p45"), 45)],
        "each visit counts every batch once across the crash, the re-read and the retries"
    );
    assert_eq!(pageviews(), 34);
}

/// Every visit of `chronos.sessions` as (session id, row id, its figures as
/// JSON text), times in whole seconds after `t0` (the clock correction adds
/// a few ms per post), in session and time order.
fn visits(url: &str, t0: i64) -> Vec<(String, i64, String)> {
    let sql = format!(
        "SELECT session_id, id, ((to_jsonb(s) - 'id' - 'session_id' - 'started_at' - 'ended_at' - 'duration')
           || jsonb_build_object('start_s', round((extract(epoch FROM started_at) * 1000 - {t0}) / 1000),
                                 'end_s', round((extract(epoch FROM ended_at) * 1000 - {t0}) / 1000)))::text
         FROM chronos.sessions s ORDER BY session_id, started_at"
    );
    query(url, &sql).iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

#[test]
fn visits_are_the_same_whatever_order_their_batches_arrive_in() {
    let stack = start_loading(2, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    let t0 = now_ms() - 180 * MIN;
    // One session's batches, by minute: visits at 0 and 45 (more than the
    // 30-minute gap apart) and a batch at 20, within the gap of both.
    let batches = [(0, "a"), (20, "b"), (45, "c")];
    // Each order its own session id; "o-0" arrives in time order. "n-1" gets
    // a third batch at 37: 37 minutes after the first visit, so two stay.
    let mut sessions: Vec<(String, Vec<(i64, &str)>)> = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
        .iter()
        .enumerate()
        .map(|(k, order)| (format!("o-{k}"), order.iter().map(|i| batches[*i]).collect()))
        .collect();
    sessions.push(("n-1".into(), vec![(0, "a"), (45, "c"), (37, "d")]));
    let mut posted: Vec<serde_json::Value> = Vec::new();
    let post_and_wait = |posted: &mut Vec<serde_json::Value>, bodies: Vec<serde_json::Value>| {
        for b in bodies {
            let (status, body, _) = post(&c, d, &b, "198.51.100.4");
            assert_eq!(status, 200, "{body}");
            posted.push(b);
        }
        let n = posted.len() as i64;
        d.wait_until("every record committed", Duration::from_secs(60), || {
            count(url, "SELECT coalesce(sum(next_offset), 0)::bigint FROM chronos.offsets") == n
        });
    };
    // One round per position in the orders, each committed before the next
    // is posted, so that late batches meet stored visits.
    for round in 0..3 {
        let bodies = sessions.iter().map(|(s, order)| at(s, &format!("https://shop.example.com/{}", order[round].1), t0 + order[round].0 * MIN));
        post_and_wait(&mut posted, bodies.collect());
        if round == 1 {
            let split = count(url, "SELECT count(*) FROM (SELECT session_id FROM chronos.sessions GROUP BY 1 HAVING count(*) = 2) x");
            assert_eq!(split, 3, "o-4, o-5 and n-1 hold the visits at 0 and 45 apart: {:#?}", visits(url, t0));
        }
    }
    let got = visits(url, t0);
    let of = |s: &str| got.iter().filter(|v| v.0 == s).map(|v| v.2.clone()).collect::<Vec<_>>();
    let in_order = of("o-0");
    assert_eq!(in_order.len(), 1, "{got:#?}");
    assert!(in_order[0].contains(r#""events": 18"#) && in_order[0].contains(r#""end_s": 2700"#), "{in_order:?}");
    assert!(in_order[0].contains(r#""entry_url": "https://shop.example.com/a""#), "{in_order:?}");
    assert!(in_order[0].contains(r#""exit_url": "https://shop.example.com/c""#), "{in_order:?}");
    for k in 1..6 {
        assert_eq!(of(&format!("o-{k}")), in_order, "order {k} against time order");
    }
    assert_eq!(of("n-1").len(), 2, "a batch within the gap of one visit only bridges nothing: {got:#?}");
    assert_eq!(got.len(), 8);

    // Every batch of the last round and the first posted again (tracker
    // retries, a re-read after a rewind): skipped with their batch ids.
    let again: Vec<serde_json::Value> = posted[posted.len() - 7..].iter().chain(&posted[..1]).cloned().collect();
    post_and_wait(&mut posted, again);
    assert_eq!(visits(url, t0), got, "the same batches again change nothing, ids included");
    assert_eq!(count(url, "SELECT count(*) FROM events.pageviews"), 21);
}

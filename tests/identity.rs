//! Identity through the real stack: a batch's `user` (the tracker's
//! `chronos.identify`) lands in every event's `user_id`, and the loaders keep
//! `chronos.identities` (session → user, first and last seen) exactly once,
//! whatever is posted twice; a bad user id is refused naming the field; in
//! headless Chromium, `identify` and `reset` do what they say.

mod common;

use std::time::Duration;

use chronos::stack::process::free_port;
use common::*;
use serde_json::json;

fn with_user(session: &str, user: Option<&str>, t: i64) -> serde_json::Value {
    let mut b = batch_at(session, t);
    if let Some(u) = user {
        b["user"] = json!(u);
    }
    b
}

#[test]
fn users_land_on_every_event_and_identities_are_kept_once() {
    let stack = start_loading(2, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    let t0 = now_ms() - 60_000;
    let anonymous = with_user("s-1", None, t0);
    let first = with_user("s-1", Some("u_42"), t0 + 1_000);
    let last = with_user("s-1", Some("u_42"), t0 + 9_000);
    let other = with_user("s-2", Some("u_7"), t0 + 5_000);
    for b in [&anonymous, &first, &last, &other, &first, &last] {
        let (status, body, _) = post(&c, d, b, "198.51.100.4");
        assert_eq!(status, 200, "{body}");
    }
    d.wait_until("every batch loaded", Duration::from_secs(60), || count(url, "SELECT count(*) FROM events.pageviews") == 4);
    let users = query(url, "SELECT session_id, user_id, count(*) FROM events.clicks GROUP BY 1, 2 ORDER BY 1, 2");
    let got: Vec<(String, Option<String>, i64)> = users.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![("s-1".into(), Some("u_42".into()), 2), ("s-1".into(), None, 1), ("s-2".into(), Some("u_7".into()), 1)]);
    let rows = query(url, "SELECT session_id, user_id, first_seen::text, last_seen::text FROM chronos.identities ORDER BY 1");
    let ids: Vec<(String, String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    // First and last seen are the user's first and last stored event times (corrected), each batch counted once.
    let span = |session: &str, user: &str| -> (String, String) {
        let all: Vec<String> = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"]
            .iter()
            .map(|t| format!("SELECT time FROM events.{t} WHERE session_id = '{session}' AND user_id = '{user}'"))
            .collect();
        let r = &query(url, &format!("SELECT min(time)::text, max(time)::text FROM ({}) e", all.join(" UNION ALL ")))[0];
        (r.get(0), r.get(1))
    };
    let (f1, l1) = span("s-1", "u_42");
    let (f2, l2) = span("s-2", "u_7");
    assert_eq!(ids, vec![("s-1".into(), "u_42".into(), f1, l1), ("s-2".into(), "u_7".into(), f2, l2)]);
    assert_eq!(
        count(url, "SELECT round(extract(epoch FROM last_seen - first_seen))::bigint FROM chronos.identities WHERE session_id = 's-1'"),
        8,
        "the two batches, 8 s apart"
    );

    // A user id the server would refuse names the field, and nothing is kept.
    let mut bad = with_user("s-3", Some("has space"), t0);
    let (status, body, _) = post(&c, d, &bad, "198.51.100.4");
    assert_eq!((status, body["error"]["path"].as_str()), (400, Some("user")), "{body}");
    bad["user"] = json!("x".repeat(200));
    let (status, body, _) = post(&c, d, &bad, "198.51.100.4");
    assert_eq!((status, body["error"]["path"].as_str()), (400, Some("user")), "{body}");
}

#[test]
fn identify_and_reset_in_chromium() {
    let site_port = free_port();
    let extra = format!(
        "[[keys]]\nid = \"browser\"\nkey = \"wk_identity_0123456789ab\"\norigins = [\"http://127.0.0.1:{site_port}\"]\n\n[tracker]\nkey_id = \"browser\"\nflush_interval_ms = 500\n\n\
         [events.identify]\nattributes = [{{ name = \"plan\", type = \"text\", max_len = 32 }}]\n"
    );
    let mut toml = String::new();
    let s = start_loading(1, |kafka, url| {
        toml = config_toml_with_pg(kafka, free_port(), url, "", &extra);
        toml.clone()
    });
    let (d, url) = (&s.d, &s.url);
    let dir = temp_dir();
    let bundle = dir.path().join("chronos.js");
    std::fs::write(&bundle, client().get(d.url("/chronos.js")).send().unwrap().text().unwrap()).unwrap();
    let options = chronos::tracker::init_options(&chronos::config::Config::from_toml(&toml).unwrap()).unwrap();
    let result = run_pageview(d, &bundle, &options, site_port, &[("IDENTIFY", "u_browser_1"), ("IDENTIFY_TRAITS", r#"{"plan":"pro"}"#)]);
    let (first, identified, after) =
        (result["session"].as_str().unwrap(), result["identified_session"].as_str().unwrap(), result["reset_session"].as_str().unwrap());
    assert_eq!(first, identified, "identify keeps the session");
    assert_ne!(identified, after, "reset starts a new session");
    assert!(result["user_after_reset"].is_null(), "{result}");
    d.wait_until("the clicks of both sessions", Duration::from_secs(60), || {
        count(url, &format!("SELECT count(*) FROM events.clicks WHERE session_id IN ('{first}', '{after}')")) >= 3
    });
    let by = |sql: &str| query(url, sql).iter().map(|r| r.get::<_, Option<String>>(0)).collect::<Vec<_>>();
    assert_eq!(
        by(&format!("SELECT user_id FROM events.clicks WHERE session_id = '{first}' ORDER BY time")),
        vec![None, Some("u_browser_1".to_string())],
        "the click before identify has no user"
    );
    assert_eq!(by(&format!("SELECT user_id FROM events.clicks WHERE session_id = '{after}'")), vec![None], "after reset: no user");
    assert_eq!(count(url, &format!("SELECT count(*) FROM chronos.identities WHERE session_id = '{first}' AND user_id = 'u_browser_1'")), 1);
    assert_eq!(count(url, &format!("SELECT count(*) FROM chronos.identities WHERE session_id = '{after}'")), 0);
    let traits = query(url, "SELECT session_id, user_id, plan FROM events.identify");
    let traits: Vec<(String, Option<String>, Option<String>)> = traits.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        traits,
        vec![(first.to_string(), Some("u_browser_1".into()), Some("pro".into()))],
        "identify's traits, one event of the identified user"
    );
}

#[test]
fn erase_by_user_removes_each_of_its_sessions_whole_and_its_identities() {
    let stack = start_loading(1, |kafka, url| config_toml_with_pg(kafka, free_port(), url, "", FAST_IPS));
    let (d, url) = (&stack.d, &stack.url);
    let c = client();
    let t = now_ms() - 10_000;
    // u_9 in two sessions (one with an anonymous batch before identify), u_1 in a third.
    for b in [with_user("a-1", None, t), with_user("a-1", Some("u_9"), t), with_user("a-2", Some("u_9"), t), with_user("b-1", Some("u_1"), t)] {
        let (status, body, _) = post(&c, d, &b, "198.51.100.4");
        assert_eq!(status, 200, "{body}");
    }
    d.wait_until("every batch loaded", Duration::from_secs(60), || count(url, "SELECT count(*) FROM events.pageviews") == 4);
    assert_eq!(count(url, "SELECT count(*) FROM chronos.batches WHERE session_id IN ('a-1', 'a-2')"), 3);
    let out = chronos_cli(&d.config_path(), &["erase", "--user", "u_9", "--by", "dpo@example.com"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("user u_9: 2 sessions") && text.contains("erased sessions: 18 raw events"), "{text}");
    assert!(text.contains("2 identities (session → user), 2 visits, 3 batch pages"), "{text}");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.batches WHERE session_id IN ('a-1', 'a-2')"), 0, "their pages (URLs, titles) too");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.batches WHERE session_id = 'b-1'"), 1);
    assert_eq!(count(url, "SELECT count(*) FROM chronos.sessions WHERE session_id IN ('a-1', 'a-2')"), 0, "their visits too");
    assert_eq!(count(url, "SELECT count(*) FROM events.clicks WHERE session_id IN ('a-1', 'a-2')"), 0, "the anonymous batch of a-1 too");
    assert_eq!(count(url, "SELECT count(*) FROM chronos.identities WHERE user_id = 'u_9'"), 0);
    assert_eq!(count(url, "SELECT count(*) FROM events.clicks WHERE session_id = 'b-1' AND user_id = 'u_1'"), 1, "other users stay");
    let audit = query(url, "SELECT subject, raw_rows, requested_by FROM chronos.erasures");
    assert_eq!(
        (audit[0].get::<_, String>(0), audit[0].get::<_, i64>(1), audit[0].get::<_, String>(2)),
        ("user".into(), 18, "dpo@example.com".into())
    );
    // Neither id is kept by the audit.
    assert_eq!(
        count(
            url,
            "SELECT count(*) FROM chronos.erasures WHERE row_to_json(erasures)::text LIKE '%u_9%' OR row_to_json(erasures)::text LIKE '%a-1%'"
        ),
        0
    );
    // Both flags together, or none, are refused naming them.
    let out = chronos_cli(&d.config_path(), &["erase", "--user", "u_1", "--session", "b-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let out = chronos_cli(&d.config_path(), &["erase"]);
    assert!(output_text(&out).contains("--session") && output_text(&out).contains("--user"), "{}", output_text(&out));
    let again = chronos_cli(&d.config_path(), &["erase", "--user", "u_9"]);
    assert!(output_text(&again).contains("user u_9: 0 sessions"), "{}", output_text(&again));
}

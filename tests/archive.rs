//! Retention and cold storage against real PostgreSQL (both table layouts):
//! old days go to Parquet, verified, then leave PostgreSQL; `chronos archive`
//! lists, verifies and restores them exactly once; a run cut at any step
//! (as `kill -9` would) is finished by the next.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chronos::stack::process::free_port;
use common::*;
use serde_json::json;

struct Setup {
    _pg: chronos::stack::postgres::PostgresServer,
    _dir: tempfile::TempDir,
    url: String,
    config: PathBuf,
    archive: PathBuf,
    today: i64,
}

const RAW_DAYS: i64 = 3;

/// PostgreSQL in `layout` with the schema installed, and a config keeping
/// `RAW_DAYS` days, archiving into a temp dir.
fn setup(layout: Layout) -> Setup {
    let dir = temp_dir();
    let pg = layout.postgres(&dir.path().join("pg"));
    let url = pg.url();
    let archive = dir.path().join("archive");
    let config = dir.path().join("chronos.toml");
    std::fs::write(&config, config_text(layout, &url, &archive, "")).unwrap();
    let out = chronos_cli(&config, &["install-pipeline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    layout.assert_tables(&url);
    let today = chronos::store::today();
    Setup { _pg: pg, _dir: dir, url, config, archive, today }
}

/// `[load]` keys of every config here: events up to a day old, partitions 12 days back.
const LOAD: &str = "max_past_secs = 86400\npartitions_past_days = 12";

/// A chronosd config with loaders on `kafka`, this setup's retention, and `retention` keys.
fn live_config(s: &Setup, layout: Layout, kafka: &Kafka, retention: &str) -> String {
    let extra = format!("[retention]\nraw_days = {RAW_DAYS}\narchive = \"{}\"\n{retention}\n", s.archive.display());
    config_toml_with_pg(kafka, free_port(), &s.url, &layout.load(LOAD), &extra)
}

fn config_text(layout: Layout, url: &str, archive: &Path, extra: &str) -> String {
    format!(
        "[[keys]]\nid = \"k\"\nkey = \"{KEY}\"\norigins = [\"shop.example.com\"]\n[kafka]\nbrokers = \"127.0.0.1:{}\"\n\
         [postgres]\nurl = \"{url}\"\n[load]\n{}\n[retention]\nraw_days = {RAW_DAYS}\narchive = \"{}\"\n{extra}",
        free_port(),
        layout.load(LOAD),
        archive.display()
    )
}

/// Inserts `n` clicks and `n` form submissions on day `today - ago`, with
/// values that must survive the trip (NULLs, quotes, non-ASCII, JSON, arrays).
fn insert_day(url: &str, today: i64, ago: i64, n: i64) {
    let day = chronos::lifecycle::day_str(today - ago);
    query(
        url,
        &format!(
            "INSERT INTO events.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip, metadata,
                                        element, buttons, x, y, selector)
             SELECT t, t - interval '1 ms', t + interval '20 ms', i % 7 = 0, 's-' || (i % 13), md5('{day}' || (i / 10))::uuid, (i % 10)::int, 'k',
                    CASE WHEN i % 3 = 0 THEN NULL ELSE '198.51.100.' || (i % 250) END,
                    jsonb_build_object('url', 'https://shop.example.com/p/' || i, 'title', 'Café \"{day}\"', 'n', i),
                    'BUTTON', i % 5, i * 3, -i, CASE WHEN i % 2 = 0 THEN NULL ELSE 'main > button[data-x=''' || i || ''']' END
             FROM generate_series(0, {n} - 1) i, LATERAL (SELECT timestamptz '{day} 00:00:00+00' + i * interval '1.234567 second') s(t)"
        ),
    );
    query(
        url,
        &format!(
            "INSERT INTO events.form_submissions (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip, metadata,
                                                  form_id, action, fields)
             SELECT t, t, t, false, 's', md5('f{day}' || i)::uuid, 0, 'k', NULL, '{{}}'::jsonb, NULL, '/signup',
                    ARRAY['email', NULL, 'näme \"x\"', ''] || ARRAY[i::text]
             FROM generate_series(0, {n} - 1) i, LATERAL (SELECT timestamptz '{day} 12:00:00+00' + i * interval '1 ms') s(t)"
        ),
    );
}

/// Every row of `table` on day `today - ago`, as JSON text, in a fixed order.
fn snapshot(url: &str, table: &str, today: i64, ago: i64) -> Vec<String> {
    let d = chronos::lifecycle::day_str(today - ago);
    query(
        url,
        &format!(
            "SELECT row_to_json(t)::text FROM events.{table} t WHERE time >= timestamptz '{d} 00:00:00+00' AND time < timestamptz '{d} 00:00:00+00' + interval '1 day'
             ORDER BY batch_id, position"
        ),
    )
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn rows_on(url: &str, table: &str, today: i64, ago: i64) -> i64 {
    snapshot(url, table, today, ago).len() as i64
}

fn cli(s: &Setup, args: &[&str]) -> (bool, String) {
    let out = chronos_cli(&s.config, args);
    (out.status.success(), output_text(&out))
}

fn archive_file(s: &Setup, table: &str, ago: i64) -> PathBuf {
    s.archive.join(table).join(format!("{}.parquet", chronos::lifecycle::day_str(s.today - ago)))
}

fn old_day_relations(s: &Setup, layout: Layout, ago: i64) -> i64 {
    let d = chronos::lifecycle::day_str(s.today - ago);
    match layout {
        Layout::Native => count(&s.url, &format!("SELECT count(*) FROM pg_tables WHERE schemaname = 'events_raw' AND tablename = 'clicks_p{}'", d.replace('-', ""))),
        Layout::Hypertable => count(
            &s.url,
            &format!("SELECT count(*) FROM show_chunks('events_raw.clicks', older_than => timestamptz '{d} 00:00:00+00' + interval '1 day', newer_than => timestamptz '{d} 00:00:00+00')"),
        ),
    }
}

fn archived_then_verified_listed_and_restored_exactly_once(layout: Layout) {
    let s = setup(layout);
    // 4 and 5 days ago: daily partitions (native); 15: the default partition; 1: kept.
    for ago in [4, 5, 15, 1] {
        insert_day(&s.url, s.today, ago, 500);
    }
    let before: Vec<Vec<String>> = [4, 5, 15].iter().map(|&ago| snapshot(&s.url, "clicks", s.today, ago)).collect();
    let forms_before = snapshot(&s.url, "form_submissions", s.today, 4);
    assert_eq!(before[0].len(), 500);
    assert_eq!(old_day_relations(&s, layout, 4), 1, "the day has its partition or chunk before");

    // A view filled before the archive run keeps its aggregates after it.
    let kept_view = s.config.with_file_name("kept.sql");
    std::fs::write(&kept_view, "CREATE VIEW clicks_before AS SELECT date_trunc('day', time) AS day, count(*) AS n FROM clicks GROUP BY 1;").unwrap();
    let (ok, out) = cli(&s, &["views", "add", kept_view.to_str().unwrap(), "--backfill"]);
    assert!(ok && !out.contains("note:"), "{out}");
    let view_rows = "SELECT string_agg(day::text || '=' || n, ',' ORDER BY day) FROM views.clicks_before";
    let view_before: String = query(&s.url, view_rows)[0].get(0);
    assert_eq!(count(&s.url, "SELECT sum(n)::bigint FROM views.clicks_before"), 2000);

    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok, "{out}");
    assert_eq!(query(&s.url, view_rows)[0].get::<_, String>(0), view_before, "views keep their aggregates");
    // The pages of batches no row is left of are deleted (the run allows for
    // events up to load.max_future_secs after receipt, and a day).
    let pages_on = |ago: i64| {
        let d = chronos::lifecycle::day_str(s.today - ago);
        count(&s.url, &format!("SELECT count(*) FROM chronos.batches WHERE received_at >= timestamptz '{d} 00:00:00+00' AND received_at < timestamptz '{d} 00:00:00+00' + interval '1 day'"))
    };
    assert!(out.contains("chronos.batches: 550 pages of batches received before"), "{out}");
    assert_eq!(pages_on(15), 0, "no row of them is left");
    assert_eq!((pages_on(5), pages_on(4), pages_on(1)), (550, 550, 550), "within a day of the oldest row allowed for: kept");
    assert!(out.contains(&format!("events.clicks {}: 500 rows archived to", chronos::lifecycle::day_str(s.today - 4))), "{out}");
    for ago in [4, 5, 15] {
        assert_eq!(rows_on(&s.url, "clicks", s.today, ago), 0, "{ago} days ago left PostgreSQL");
        assert!(archive_file(&s, "clicks", ago).exists(), "{out}");
    }
    assert_eq!(old_day_relations(&s, layout, 4), 0, "its partition or chunk dropped");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 1), 500, "a day inside retention is kept");
    // Native: empty past partitions are dropped too, recorded without a file.
    let empty = count(&s.url, "SELECT count(*) FROM chronos.archives WHERE rows = 0 AND location = ''");
    assert_eq!(empty > 0, layout == Layout::Native, "{empty} empty days");

    // The file: typed columns, zstd, metadata as JSON text, its manifest beside it.
    let f = archive_file(&s, "clicks", 4);
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(&reader);
    assert_eq!(meta.file_metadata().num_rows(), 500);
    let col = meta.row_group(0).column(0);
    assert!(matches!(col.compression(), parquet::basic::Compression::ZSTD(_)), "{:?}", col.compression());
    let schema = parquet::arrow::parquet_to_arrow_schema(meta.file_metadata().schema_descr(), meta.file_metadata().key_value_metadata()).unwrap();
    assert_eq!(schema.field_with_name("time").unwrap().data_type().to_string(), "Timestamp(Microsecond, Some(\"UTC\"))");
    assert_eq!(schema.field_with_name("x").unwrap().data_type().to_string(), "Int64");
    assert_eq!(schema.field_with_name("metadata").unwrap().data_type().to_string(), "Utf8");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(f.with_extension("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 500);
    assert_eq!(manifest["bytes"].as_u64(), Some(std::fs::metadata(&f).unwrap().len()));
    assert_eq!(manifest["schema_version"], 1);

    // A view backfilled now counts the archived days too, read from their files.
    let views = s.config.with_file_name("views.sql");
    std::fs::write(&views, "CREATE VIEW clicks_by_day AS SELECT date_trunc('day', time) AS day, count(*) AS n FROM clicks GROUP BY 1;").unwrap();
    let (ok, out) = cli(&s, &["views", "add", views.to_str().unwrap(), "--backfill"]);
    assert!(ok && out.contains("rebuilt clicks_by_day: 500 events from PostgreSQL") && out.contains("1500 from the archive (3 files"), "{out}");
    assert_eq!(query(&s.url, view_rows)[0].get::<_, String>(0), view_before.clone(), "same days as the view filled before");
    let by_day = "SELECT string_agg(day::text || '=' || n, ',' ORDER BY day) FROM views.clicks_by_day";
    assert_eq!(query(&s.url, by_day)[0].get::<_, String>(0), view_before, "every day, archived or not");
    // --from/--to replaces the groups of those days only: an archived day's
    // group set wrong by hand stays wrong, the kept day's follows its rows.
    let (kept, archived) = (chronos::lifecycle::day_str(s.today - 1), chronos::lifecycle::day_str(s.today - 4));
    query(&s.url, &format!("DELETE FROM events.clicks WHERE time >= '{kept}' AND time < '{kept}'::date + 1 AND position = 0"));
    query(&s.url, &format!("UPDATE views.clicks_by_day_mrel SET n = n + 1000 WHERE day = '{archived}'"));
    let day_n = |day: &str| count(&s.url, &format!("SELECT n FROM views.clicks_by_day WHERE day = '{day}'"));
    let (ok, out) = cli(&s, &["views", "rebuild", "clicks_by_day", "--from", &kept, "--to", &kept]);
    assert!(ok && out.contains("450 events from PostgreSQL") && out.contains("0 from the archive"), "{out}");
    assert_eq!((day_n(&kept), day_n(&archived)), (450, 1500), "{out}");
    let (ok, out) = cli(&s, &["views", "rebuild", "clicks_by_day", "--from", &archived, "--to", &archived]);
    assert!(ok && out.contains("500 from the archive (1 files"), "{out}");
    assert_eq!((day_n(&kept), day_n(&archived)), (450, 500), "{out}");
    // A view whose groups span days is rebuilt whole.
    let (ok, out) = cli(&s, &["views", "rebuild", "element_counts", "--from", &kept]);
    assert!(!ok && out.contains("view `element_counts` has no time bucket of a day or less"), "{out}");

    // A second run has nothing to do.
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok && out.contains("0 days archived, 0 dropped"), "{out}");

    let (ok, out) = cli(&s, &["archive", "list"]);
    assert!(ok && out.lines().any(|l| l.starts_with("clicks") && l.contains("500 rows") && l.contains("dropped")), "{out}");

    // verify re-reads every file; a damaged one is named.
    let (ok, out) = cli(&s, &["archive", "verify"]);
    assert!(ok && out.contains("archived files verified"), "{out}");
    let good = std::fs::read(&f).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&f, &bad).unwrap();
    let (ok, out) = cli(&s, &["archive", "verify"]);
    assert!(!ok && out.contains(&format!("FAILED  clicks {}", chronos::lifecycle::day_str(s.today - 4))) && out.contains("1 of"), "{out}");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &chronos::lifecycle::day_str(s.today - 4)]);
    assert!(!ok && out.contains("not restored"), "a damaged file is not restored: {out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 0);
    std::fs::write(&f, &good).unwrap();

    // restore: every value back, once, however often it runs.
    let (from, to) = (chronos::lifecycle::day_str(s.today - 5), chronos::lifecycle::day_str(s.today - 4));
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &from, "--to", &to]);
    assert!(ok && out.contains("500 of 500 rows restored"), "{out}");
    assert_eq!(snapshot(&s.url, "clicks", s.today, 4), before[0], "every value as it was");
    assert_eq!(snapshot(&s.url, "clicks", s.today, 5), before[1]);
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &from, "--to", &to]);
    assert!(ok && out.contains("0 of 500 rows restored"), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 500, "no duplicate");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "form_submissions", "--from", &to]);
    assert!(ok, "{out}");
    assert_eq!(snapshot(&s.url, "form_submissions", s.today, 4), forms_before, "text arrays with NULLs and quotes");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &chronos::lifecycle::day_str(s.today - 15)]);
    assert!(ok, "{out}");
    assert_eq!(snapshot(&s.url, "clicks", s.today, 15), before[2]);
    assert_eq!(pages_on(15), 50, "the restored rows' pages are back");

    // Restored days are kept by the schedule until restore_keep_days passes.
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok && out.contains(&format!("events.clicks {to}: restored, kept until")), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 500);
    assert_eq!(pages_on(15), 50, "a restored day keeps its pages");
    query(&s.url, "UPDATE chronos.archives SET restored_until = now() - interval '1 second' WHERE restored_until IS NOT NULL");
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok && out.contains(&format!("events.clicks {to}: 500 rows dropped (archived before)")), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 0);
    assert_eq!(rows_on(&s.url, "form_submissions", s.today, 4), 0);

    // Bad input is named and changes nothing.
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", "2025-02-30"]);
    assert!(!ok && out.contains("--from 2025-02-30: not a day (YYYY-MM-DD)"), "{out}");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "nope", "--from", &from]);
    assert!(!ok && out.contains("--table nope: not an event type"), "{out}");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &to, "--to", &from]);
    assert!(!ok && out.contains("is before --from"), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 0);

    // Rows arriving for a day already archived: the day is archived again with them.
    query(
        &s.url,
        &format!(
            "INSERT INTO events.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, metadata, element, buttons, x, y)
             SELECT timestamptz '{to} 23:00:00+00', now(), now(), true, 'late', gen_random_uuid(), i, 'k', '{{}}', 'A', 0, i, i FROM generate_series(1, 7) i"
        ),
    );
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok && out.contains(&format!("events.clicks {to}: 7 rows arrived after it was archived; archived again (507 rows), dropped")), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 0);
    let (ok, out) = cli(&s, &["archive", "verify"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &to]);
    assert!(ok && out.contains("507 of 507 rows restored"), "{out}");
    let back = snapshot(&s.url, "clicks", s.today, 4);
    assert!(before[0].iter().all(|r| back.contains(r)) && back.len() == 507, "the archived rows and the late ones");
}

/// The steps of archiving one day, in order; the run aborts right after one.
const STEPS: [&str; 7] = ["written", "upload", "fsync", "verify", "rename", "manifest", "recorded"];

fn a_run_cut_after_any_step_is_finished_exactly_by_the_next(layout: Layout) {
    let s = setup(layout);
    // Everything older than retention is done first (native: the empty past
    // partitions), so each step's day, older still, is the only one left.
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok, "{out}");
    for (i, step) in STEPS.iter().enumerate() {
        let ago = 30 + i as i64;
        insert_day(&s.url, s.today, ago, 300);
        let want = snapshot(&s.url, "clicks", s.today, ago);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
            .arg("--config")
            .arg(&s.config)
            .args(["archive", "run"])
            .env("CHRONOS_FAILPOINT", format!("archive:{step}"))
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(!out.status.success() && text.contains(&format!("CHRONOS_FAILPOINT=archive:{step}: aborting")), "{step}: {text}");
        assert_eq!(rows_on(&s.url, "clicks", s.today, ago), 300, "cut after {step}: nothing dropped yet");

        let (ok, out) = cli(&s, &["archive", "run"]);
        assert!(ok, "after {step}: {out}");
        assert_eq!(rows_on(&s.url, "clicks", s.today, ago), 0, "after {step}: {out}");
        let day = chronos::lifecycle::day_str(s.today - ago);
        assert_eq!(
            count(
                &s.url,
                &format!(
                    "SELECT count(*) FROM chronos.archives WHERE table_name = 'clicks' AND day = '{day}' AND rows = 300 AND dropped_at IS NOT NULL"
                )
            ),
            1
        );
        assert!(!archive_file(&s, "clicks", ago).with_extension("parquet.tmp").exists(), "after {step}: no temporary file left");
        let (ok, out) = cli(&s, &["archive", "verify"]);
        assert!(ok, "after {step}: {out}");
        // And the rows are the ones that were there.
        let (ok, out) = cli(&s, &["archive", "restore", "--table", "clicks", "--from", &day]);
        assert!(ok && out.contains("300 of 300 rows restored"), "after {step}: {out}");
        assert_eq!(snapshot(&s.url, "clicks", s.today, ago), want, "after {step}");
        query(&s.url, &format!("UPDATE chronos.archives SET restored_until = now() - interval '1 second' WHERE day = '{day}'"));
        let (ok, out) = cli(&s, &["archive", "run"]);
        assert!(ok && rows_on(&s.url, "clicks", s.today, ago) == 0, "{out}");
    }
}

fn chronosd_archives_on_its_schedule(layout: Layout) {
    let s = setup(layout);
    insert_day(&s.url, s.today, 6, 200);
    let kafka = Kafka::start(1);
    let toml = live_config(&s, layout, &kafka, "every_secs = 1");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let until = Instant::now() + Duration::from_secs(60);
    while rows_on(&s.url, "clicks", s.today, 6) > 0 {
        assert!(Instant::now() < until, "chronosd never archived the day\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(archive_file(&s, "clicks", 6).exists());
    while !d.log_text().contains(&format!("Archive: events.clicks {}: 200 rows archived to", chronos::lifecycle::day_str(s.today - 6))) {
        assert!(Instant::now() < until, "the run is not logged\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn export_to(s: &Setup, from: i64, to: i64, format: &str, out: &str, types: &str) -> (bool, String, String) {
    let (from, to) = (chronos::lifecycle::day_str(s.today - from), chronos::lifecycle::day_str(s.today - to));
    let mut args = vec!["export", "--from", &from, "--to", &to, "--format", format, "--out", out];
    if !types.is_empty() {
        args.extend(["--types", types]);
    }
    let o = chronos_cli(&s.config, &args);
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn exports_read_postgres_and_the_archive_alike(layout: Layout) {
    let s = setup(layout);
    for ago in [4, 1] {
        insert_day(&s.url, s.today, ago, 400);
    }
    let dir = s.config.with_file_name("export");
    // Before archiving: both days from PostgreSQL.
    let (ok, _, err) = export_to(&s, 4, 1, "jsonl", dir.join("before").to_str().unwrap(), "clicks,form_submissions");
    assert!(ok && err.contains("exported 1600 events (8 table-days, 0 of them from the archive)"), "{err}");
    let (ok, csv_before, err) = export_to(&s, 4, 4, "csv", "-", "clicks");
    assert!(ok, "{err}");

    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok, "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 4), 0);

    // After: day 4 from the archive, the same bytes out.
    let (ok, _, err) = export_to(&s, 4, 1, "jsonl", dir.join("after").to_str().unwrap(), "clicks,form_submissions");
    assert!(ok && err.contains("exported 1600 events (8 table-days, 2 of them from the archive)"), "{err}");
    for t in ["clicks", "form_submissions"] {
        let before = std::fs::read_to_string(dir.join("before").join(format!("{t}.jsonl"))).unwrap();
        let after = std::fs::read_to_string(dir.join("after").join(format!("{t}.jsonl"))).unwrap();
        assert_eq!(before.lines().count(), 800);
        assert_eq!(before, after, "{t}: the archive exports what PostgreSQL did");
    }
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(dir.join("after/clicks.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "clicks");
    assert_eq!(first["metadata"]["n"], 0, "metadata as JSON: {first}");
    assert!(first["time"].as_str().unwrap().ends_with("T00:00:00.000000Z"), "{first}");
    let (ok, csv_after, err) = export_to(&s, 4, 4, "csv", "-", "clicks");
    assert!(ok, "{err}");
    assert_eq!(csv_before, csv_after);
    let mut r = csv::Reader::from_reader(csv_after.as_bytes());
    assert_eq!(r.headers().unwrap().iter().take(3).collect::<Vec<_>>(), ["time", "client_time", "received_at"]);
    assert_eq!(r.records().count(), 400);

    // Parquet: one file per table and day, the rows of both sources.
    let pq = dir.join("pq");
    let (ok, _, err) = export_to(&s, 4, 1, "parquet", pq.to_str().unwrap(), "");
    assert!(ok, "{err}");
    let rows_in = |p: PathBuf| {
        let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap();
        parquet::file::reader::FileReader::metadata(&r).file_metadata().num_rows()
    };
    for ago in [4, 1] {
        assert_eq!(rows_in(pq.join("clicks").join(format!("{}.parquet", chronos::lifecycle::day_str(s.today - ago)))), 400);
    }

    // Bad input is named.
    let (ok, _, err) = export_to(&s, 4, 1, "parquet", "-", "");
    assert!(!ok && err.contains("give --out DIR, not -"), "{err}");
    let (ok, _, err) = export_to(&s, 4, 1, "csv", "-", "clicks,pageviews");
    assert!(!ok && err.contains("takes one event type (--types); 2 given"), "{err}");
    let (ok, _, err) = export_to(&s, 4, 1, "csv", "-", "nope");
    assert!(!ok && err.contains("--types nope: not an event type"), "{err}");
    let (ok, _, err) = export_to(&s, 1, 4, "csv", "-", "clicks");
    assert!(!ok && err.contains("is before --from"), "{err}");
}

fn keeping_everything_and_dropping_without_an_archive_are_explicit(layout: Layout) {
    let s = setup(layout);
    insert_day(&s.url, s.today, 6, 100);
    // raw_days = 0: nothing leaves PostgreSQL.
    let forever = s.config.with_file_name("forever.toml");
    std::fs::write(&forever, config_text(layout, &s.url, &s.archive, "").replace(&format!("raw_days = {RAW_DAYS}"), "raw_days = 0")).unwrap();
    let o = chronos_cli(&forever, &["archive", "run"]);
    assert!(o.status.success() && output_text(&o).contains("retention.raw_days = 0: raw events are kept forever"), "{}", output_text(&o));
    assert_eq!(rows_on(&s.url, "clicks", s.today, 6), 100);
    // archive = "off": old days are dropped, recorded as such, no file written.
    let off = s.config.with_file_name("off.toml");
    std::fs::write(&off, config_text(layout, &s.url, Path::new("off"), "")).unwrap();
    let o = chronos_cli(&off, &["archive", "run"]);
    let out = output_text(&o);
    assert!(o.status.success() && out.contains("archive: off (old days are dropped without archiving)"), "{out}");
    assert!(out.contains(&format!("events.clicks {}: 100 rows dropped (archiving off)", chronos::lifecycle::day_str(s.today - 6))), "{out}");
    assert_eq!(rows_on(&s.url, "clicks", s.today, 6), 0);
    assert!(!s.archive.exists() || std::fs::read_dir(&s.archive).unwrap().next().is_none(), "no archive written");
    assert_eq!(count(&s.url, "SELECT count(*) FROM chronos.archives WHERE location = 'off' AND rows = 100"), 2, "clicks and form submissions");
    let o = chronos_cli(&off, &["archive", "restore", "--table", "clicks", "--from", &chronos::lifecycle::day_str(s.today - 6)]);
    assert!(!o.status.success() && output_text(&o).contains("retention.archive is \"off\": there is no archive"), "{}", output_text(&o));
}

const ERASED: &str = "erase-me-5d1c9a";

/// Total rows of every event table with `session_id = session`.
fn rows_of_session(url: &str, session: &str) -> i64 {
    let tables = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"];
    let sql = tables.iter().map(|t| format!("(SELECT count(*) FROM events.{t} WHERE session_id = '{session}')")).collect::<Vec<_>>().join(" + ");
    count(url, &format!("SELECT {sql}"))
}

/// Every row of every archive file with `session_id = session`, and whether
/// any file's bytes hold the session id at all.
fn session_in_archive(dir: &Path, session: &str) -> (i64, bool) {
    let (mut rows, mut bytes) = (0, false);
    for t in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(t.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let raw = std::fs::read(&p).unwrap();
            bytes |= raw.windows(session.len()).any(|w| w == session.as_bytes());
            if p.extension().is_some_and(|e| e == "parquet") {
                let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap();
                for b in builder.build().unwrap() {
                    let b = b.unwrap();
                    let col = arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name("session_id").unwrap());
                    rows += col.iter().filter(|v| *v == Some(session)).count() as i64;
                }
            }
        }
    }
    (rows, bytes)
}

/// Clicks on a BUTTON by a browser (not a bot) in the archive files, read with the parquet crate.
fn archived_buttons(dir: &Path) -> i64 {
    let mut n = 0;
    for f in std::fs::read_dir(dir.join("clicks")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "parquet") {
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap();
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                let element = arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name("element").unwrap());
                let bot = arrow_array::cast::AsArray::as_boolean(b.column_by_name("is_bot").unwrap());
                n += (0..b.num_rows()).filter(|&i| element.value(i) == "BUTTON" && !arrow_array::Array::is_null(bot, i) && !bot.value(i)).count()
                    as i64;
            }
        }
    }
    n
}

fn erase_leaves_no_trace_of_the_session_anywhere(layout: Layout) {
    let s = setup(layout);
    let kafka = Kafka::start(1);
    let toml = live_config(&s, layout, &kafka, "");
    let config = s.config.with_file_name("live.toml");
    std::fs::write(&config, &toml).unwrap();
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(30));
    let c = client();
    // Live events of the session and of others, and a dead letter of the session.
    for session in [ERASED, "keep-1", ERASED, "keep-2"] {
        let (st, body, _) = post(&c, &d, &batch(session, 12), "198.51.100.7");
        assert_eq!(st, 200, "{body}");
    }
    let mut bad = batch(ERASED, 2);
    bad["events"][1] = json!(["mouse_moves", now_ms(), "left", 4]);
    let (st, body, _) = post(&c, &d, &bad, "198.51.100.7");
    assert_eq!(st, 200, "{body}");
    // A view keyed by session.
    let views = s.config.with_file_name("by_session.sql");
    std::fs::write(&views, "CREATE VIEW clicks_by_session AS SELECT session_id, count(*) AS n FROM clicks GROUP BY session_id;").unwrap();
    let o = chronos_cli(&config, &["views", "add", views.to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    let (st, body, _) = post(&c, &d, &batch(ERASED, 12), "198.51.100.7");
    assert_eq!(st, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    while rows_of_session(&s.url, ERASED) < 12 * 3 + 1 || count(&s.url, "SELECT count(*) FROM chronos.dead_letters") < 1 {
        assert!(Instant::now() < until, "not loaded\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(count(&s.url, &format!("SELECT count(*) FROM views.clicks_by_session WHERE session_id = '{ERASED}'")) > 0);
    // Archived days holding the session, and others.
    insert_day(&s.url, s.today, 5, 300);
    query(
        &s.url,
        &format!("UPDATE events.clicks SET session_id = '{ERASED}' WHERE session_id IN ('s-3', 's-4') AND time < now() - interval '4 days'"),
    );
    query(&s.url, &format!("UPDATE events.form_submissions SET session_id = '{ERASED}' WHERE position = 0 AND time < now() - interval '4 days' AND metadata = '{{}}' AND fields[5]::int % 10 = 0"));
    let old_erased = count(&s.url, &format!("SELECT count(*) FROM events.clicks WHERE session_id = '{ERASED}' AND time < now() - interval '4 days'"));
    assert!(old_erased > 0);
    let (ok, out) = cli(&s, &["archive", "run"]);
    assert!(ok, "{out}");
    assert!(session_in_archive(&s.archive, ERASED).0 > 0);
    // Values of the session's own in the views: a link text, a page title.
    let mut own = batch(ERASED, 6);
    own["events"][2][2] = json!(format!("secret {ERASED}"));
    own["page"]["title"] = json!(format!("Title of {ERASED}"));
    let (st, body, _) = post(&c, &d, &own, "198.51.100.7");
    assert_eq!(st, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    while count(&s.url, &format!("SELECT count(*) FROM events.link_clicks WHERE link_text = 'secret {ERASED}'")) == 0 {
        assert!(Instant::now() < until, "not loaded\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every view counts every stored event (the archived days were inserted
    // without the loaders): rebuilt from PostgreSQL and the archive.
    let names: Vec<String> = query(&s.url, "SELECT name FROM chronos.views ORDER BY name").iter().map(|r| r.get(0)).collect();
    // What an erasure cut short leaves: a list of the groups it was correcting.
    query(&s.url, "CREATE TABLE views.link_text_counts_mrel_grp (link_text text)");
    query(&s.url, "INSERT INTO views.link_text_counts_mrel_grp VALUES ('left by a cut erasure')");
    let mut args = vec!["views", "rebuild"];
    args.extend(names.iter().map(String::as_str));
    let o = chronos_cli(&config, &args);
    assert!(o.status.success() && output_text(&o).contains("from the archive (2 files"), "{}", output_text(&o));
    assert!(count(&s.url, &format!("SELECT count(*) FROM views.link_text_counts WHERE link_text = 'secret {ERASED}'")) == 1);
    assert_eq!(count(&s.url, "SELECT count(*) FROM pg_tables WHERE tablename = 'link_text_counts_mrel_grp'"), 0, "the next rebuild drops it");
    let element_before = count(&s.url, "SELECT count FROM views.element_counts WHERE element = 'BUTTON'");
    let others_before = count(&s.url, &format!("SELECT count(*) FROM events.clicks WHERE session_id <> '{ERASED}'"));
    let archived_before: i64 = count(&s.url, "SELECT sum(rows)::bigint FROM chronos.archives");
    let live_erased = rows_of_session(&s.url, ERASED);

    let o = chronos_cli(&config, &["erase", "--session", ERASED, "--by", "dpo@example.com"]);
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("erased session: {live_erased} raw events")), "{out}");
    assert!(out.contains("1 dead letters") && out.contains("rows of view clicks_by_session (keyed by session_id)"), "{out}");
    assert!(out.contains(&format!("Kafka topic {}: the session's records stay until its retention passes (retention.ms = ", kafka.topic)), "{out}");
    assert!(!out.contains("continuous views") && out.contains("backups you made"), "views are no longer among what is not erased: {out}");
    assert!(out.contains("recomputed without them in views ") && out.contains("link_text_counts"), "{out}");
    let files: i64 = out.lines().find(|l| l.contains("archived events in")).unwrap().split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(files, 2, "the clicks and form_submissions files of that day: {out}");

    // Nothing of the session anywhere: tables, archive files, a dump.
    assert_eq!(rows_of_session(&s.url, ERASED), 0);
    assert_eq!(count(&s.url, &format!("SELECT count(*) FROM chronos.dead_letters WHERE context->>'session_id' = '{ERASED}'")), 0);
    assert_eq!(count(&s.url, &format!("SELECT count(*) FROM views.clicks_by_session WHERE session_id = '{ERASED}'")), 0);
    assert_eq!(session_in_archive(&s.archive, ERASED), (0, false), "no row and no byte of it in the archive");
    let dump = std::process::Command::new(chronos::stack::postgres::bindir().join("pg_dump")).arg(&s.url).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(dump.stdout.len() > 10_000 && !String::from_utf8_lossy(&dump.stdout).contains(ERASED), "pg_dump holds no trace");
    // The views: the session's groups gone, the groups it shared recounted
    // without it, exactly as the events left (in PostgreSQL and the archive) give.
    let schema =
        std::process::Command::new(chronos::stack::postgres::bindir().join("pg_dump")).args(["--schema", "views"]).arg(&s.url).output().unwrap();
    assert!(schema.status.success() && schema.stdout.len() > 1000, "{}", String::from_utf8_lossy(&schema.stderr));
    assert!(!String::from_utf8_lossy(&schema.stdout).contains(ERASED), "no value of the session's in any view");
    assert_eq!(count(&s.url, &format!("SELECT count(*) FROM views.link_text_counts WHERE link_text LIKE '%{ERASED}%'")), 0);
    let link_texts = "SELECT coalesce(string_agg(link_text || '=' || count, ',' ORDER BY link_text), '') FROM";
    assert_eq!(
        query(&s.url, &format!("{link_texts} views.link_text_counts"))[0].get::<_, String>(0),
        query(&s.url, &format!("{link_texts} (SELECT link_text, count(*) FROM events.link_clicks WHERE NOT is_bot GROUP BY 1) e"))[0]
            .get::<_, String>(0)
    );
    let buttons_left = count(&s.url, "SELECT count(*) FROM events.clicks WHERE element = 'BUTTON' AND NOT is_bot") + archived_buttons(&s.archive);
    assert!(buttons_left < element_before, "the session's clicks were counted before");
    assert_eq!(count(&s.url, "SELECT count FROM views.element_counts WHERE element = 'BUTTON'"), buttons_left, "PostgreSQL + a Parquet read");
    assert_views_equal_fresh_copies(&s.url, &config, &[]);
    // Everyone else is intact, archived days still verify, the audit keeps no value.
    assert_eq!(count(&s.url, &format!("SELECT count(*) FROM events.clicks WHERE session_id <> '{ERASED}'")), others_before);
    let archived_after: i64 = count(&s.url, "SELECT sum(rows)::bigint FROM chronos.archives");
    let erased_archived: i64 = out.lines().find(|l| l.contains("archived events in")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(archived_after, archived_before - erased_archived);
    let (ok, out) = cli(&s, &["archive", "verify"]);
    assert!(ok, "{out}");
    let audit = query(&s.url, "SELECT requested_by, subject, raw_rows, files_rewritten, dead_letters FROM chronos.erasures");
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].get::<_, String>(0), audit[0].get::<_, String>(1)), ("dpo@example.com".into(), "session".into()));
    assert_eq!(audit[0].get::<_, i64>(2), live_erased);
    // Erasing again finds nothing more.
    let o = chronos_cli(&config, &["erase", "--session", ERASED, "--by", "dpo@example.com"]);
    assert!(o.status.success() && output_text(&o).contains("erased session: 0 raw events"), "{}", output_text(&o));
}

/// `erase --session 7` deletes the dead letters whose session field is `7`
/// (the batch facts, or the raw record's `session_id` when that is all a
/// dead letter holds), not every one whose text holds a "7"; its sweep of
/// stale archive objects deletes only names Chronos writes for catalog
/// tables, not a foreign object under the archive's root.
#[test]
fn erase_matches_dead_letters_by_session_and_sweeps_only_its_own_objects() {
    let s = setup(Layout::Native);
    let letter = |reason: &str, event: &str, context: &str, raw: &str| {
        query(
            &s.url,
            &format!(
                "INSERT INTO chronos.dead_letters (stage, reason, topic, partition, \"offset\", event, context, raw)
                 VALUES ('load', '{reason}', 'chronos.dead_letters', 0, 7, {event}, {context}, {raw})"
            ),
        );
    };
    let erased = ["subject, by its batch facts", "subject, by its raw record"];
    letter(erased[0], r#"'["clicks", 1, "x"]'"#, r#"'{"session_id": "7"}'"#, "NULL");
    letter(
        erased[1],
        "NULL",
        "NULL",
        r#"convert_to('{"v":1,"batch_id":"00000000-0000-0000-0000-000000000007","session_id":"7","events":[]}', 'UTF8')"#,
    );
    letter("other session, a 7 in its event", r#"'["clicks", 7, "7", "session_id: 7"]'"#, r#"'{"session_id": "s-17"}'"#, "NULL");
    letter("other session, its event names session 7", r#"'["clicks", 1, {"session_id": "7"}]'"#, r#"'{"session_id": "keep"}'"#, "NULL");
    letter(
        "other session, its raw record holds 7s",
        "NULL",
        "NULL",
        r#"convert_to('{"v":1,"session_id":"abc","page":{"url":"https://x/?session_id=7"},"events":[["clicks",7,"7"]]}', 'UTF8')"#,
    );
    letter("no session at all", "NULL", "NULL", r#"'\x7b2273657373696f6e5f6964223a37ff'::bytea"#);
    let others = count(&s.url, "SELECT count(*) FROM chronos.dead_letters") - 2;

    let ours = ["clicks/2025-01-02.parquet", "clicks/2025-01-02.manifest.json", "pageviews/2025-01-03-0123456789ab.parquet.tmp"];
    let foreign = [
        "clicks/notes.txt",
        "clicks/2025-01-02.parquet.bak",
        "clicks/2025-01-02-final.parquet",
        "reports/2025-01-02.parquet",
        "reports/summary.manifest.json",
        "orders/2025-01-02.parquet",
    ];
    for name in ours.iter().chain(&foreign) {
        let p = s.archive.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"7").unwrap();
    }

    let o = chronos_cli(&s.config, &["erase", "--session", "7", "--by", "dpo@example.com"]);
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("  2 dead letters\n"), "{out}");
    assert!(out.contains("  1 dead letters that name no session"), "{out}");
    assert!(out.contains(&format!("  {} stale archive objects deleted", ours.len())), "{out}");
    let left: Vec<String> = query(&s.url, "SELECT reason FROM chronos.dead_letters ORDER BY id").iter().map(|r| r.get(0)).collect();
    assert_eq!(left.len() as i64, others, "{left:?}");
    assert!(erased.iter().all(|e| !left.iter().any(|l| l == e)), "{left:?}");
    for name in ours {
        assert!(!s.archive.join(name).exists(), "{name}: a stale object Chronos wrote, deleted");
    }
    for name in foreign {
        assert!(s.archive.join(name).exists(), "{name}: not Chronos', kept");
    }
}

/// `chronos dead-letters list` prints what clients chose (a reason naming
/// their type, the event as sent) with control characters escaped: no escape
/// sequence reaches the operator's terminal. (Here for the PostgreSQL-only
/// setup this file has.)
#[test]
fn dead_letters_list_prints_client_control_characters_escaped() {
    let s = setup(Layout::Native);
    // ESC ] 0 ; … BEL retitles the window, ESC [ 2 J clears it, CR overwrites the line.
    query(
        &s.url,
        r#"INSERT INTO chronos.dead_letters (stage, reason, topic, partition, "offset", event)
           VALUES ('receipt', E'events[0]: unknown type `x\u001b]0;owned\u0007\u001b[2J`\rall good', 't', 0, 0,
                   jsonb_build_array(E'\u001b[31mred', E'\u009b1m', 'ok'))"#,
    );
    let o = chronos_cli(&s.config, &["dead-letters", "list"]);
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "no control character but line ends: {out:?}");
    assert!(out.contains(r"unknown type `x\u{1b}]0;owned\u{7}\u{1b}[2J`\u{d}all good"), "{out}");
    assert!(out.contains(r#"\u001b[31mred"#) && out.contains(r"\u{9b}1m"), "the event: {out}");
}

on_both_layouts!(
    archived_then_verified_listed_and_restored_exactly_once,
    a_run_cut_after_any_step_is_finished_exactly_by_the_next,
    chronosd_archives_on_its_schedule,
    exports_read_postgres_and_the_archive_alike,
    erase_leaves_no_trace_of_the_session_anywhere,
    keeping_everything_and_dropping_without_an_archive_are_explicit,
);

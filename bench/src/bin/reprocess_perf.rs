//! `reprocess_perf [rows]`: how fast `chronos reprocess` re-enriches stored
//! events, in PostgreSQL (in place, in transactions of 50,000 events) and in
//! an archived day's Parquet file (rewritten), dry and for real, on both
//! table layouts in one run on one PostgreSQL. Method and results:
//! perf/enrichment.md ("Reprocessing stored events").

use std::time::Instant;

use anyhow::{Context, Result};
use chronos::catalog::EventCatalog;
use chronos::config::{Config, Timescale};
use chronos::lifecycle::archive::Archiver;
use chronos::lifecycle::day_str;
use chronos::lifecycle::reprocess::{self, rules::Stages, Options, Report};
use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use tokio_postgres::Client;

/// Rows inserted per statement (progress is shown between them).
const STEP: i64 = 250_000;

/// The user agents of the batches (one in eight each): six browsers, a crawler, a tool.
const AGENTS: [&str; 8] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
];

/// A City database placing 198.51.0.0/17 (half the stored addresses here) by /20.
fn write_geoip(path: &std::path::Path) -> Result<()> {
    let mut w = mmdb_writer::Writer::new("GeoLite2-City");
    for (i, country) in ["NL", "FR", "DE", "BE"].iter().cycle().take(8).enumerate() {
        let net: ipnet::IpNet = format!("198.51.{}.0/20", i * 16).parse()?;
        w.insert(net, &serde_json::json!({"country": {"iso_code": country}, "city": {"names": {"en": format!("City {i}")}}}))?;
    }
    std::fs::write(path, w.to_bytes()?)?;
    Ok(())
}

/// `rows` clicks on `day` in 25-event batches, each batch's page (with its user agent) once.
async fn insert(client: &Client, name: &str, day: i64, rows: i64) -> Result<()> {
    let start = format!("timestamptz '{} 00:00:00+00'", day_str(day));
    let agents = AGENTS.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    let mut done = 0;
    while done < rows {
        let n = STEP.min(rows - done);
        client
            .batch_execute(&format!(
                "INSERT INTO events_raw.clicks (time, client_time, received_at, time_flagged, session_id, batch_id, position, key_id, client_ip,
                                                element, buttons, x, y, selector)
                 SELECT t, t, t, false, md5('s{day}' || (i / 50)), md5('{day}' || (i / 25))::uuid, (i % 25)::int, 'web',
                        '198.51.' || (i / 50 % 250) || '.0', 'BUTTON', 1, (random() * 1280)::int, (random() * 800)::int, 'main > button'
                 FROM generate_series({done}, {done} + {n} - 1) i, LATERAL (SELECT {start} + i * interval '1 second' * 86399 / {rows}) s(t);
                 INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
                 SELECT md5('{day}' || b)::uuid, {start} + b * 25 * interval '1 second' * 86399 / {rows}, md5('s{day}' || (b / 2)),
                        jsonb_build_object('url', 'https://shop.example.com/', 'user_agent', (ARRAY[{agents}])[1 + (hashint4(b) & 7)])
                 FROM generate_series({done} / 25, ({done} + {n} - 1) / 25) b
                 ON CONFLICT DO NOTHING"
            ))
            .await?;
        done += n;
        eprint!("\r{name}: {done} of {rows} rows inserted on {}", day_str(day));
    }
    eprintln!();
    client.batch_execute("VACUUM ANALYZE events_raw.clicks").await?;
    client.batch_execute("VACUUM ANALYZE chronos.batches").await?;
    Ok(())
}

/// One reprocess of `day` with `config`'s rules; prints its row and returns its report.
async fn timed(client: &mut Client, config: &Config, what: &str, day: i64, dry_run: bool) -> Result<Report> {
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let archiver = Archiver::new(config)?;
    let rules = reprocess::rules(config, Stages::ALL)?;
    let opts = Options { from: day, to: day, stages: Stages::ALL, dry_run, rows_per_tx: reprocess::postgres::ROWS_PER_TX, by: "perf".into() };
    let t = Instant::now();
    let report = reprocess::run(client, config, &archiver, &catalog, &rules, &opts, |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    let events = report.total.events as f64;
    println!(
        "| {what} | {} | {} | {} | {:.1} | {:.0} | {:.1} |",
        if dry_run { "dry run" } else { "run" },
        report.total.events,
        report.total.changed,
        secs - report.views_secs,
        events / (secs - report.views_secs),
        report.views_secs
    );
    Ok(report)
}

async fn layout(pg: &PostgresServer, dir: &std::path::Path, name: &str, mode: Timescale, rows: i64) -> Result<()> {
    let admin = chronos::store::connect(&pg.url()).await?;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let mut config = Config::default();
    config.postgres.url = format!("{}/{name}", pg.url().rsplit_once('/').unwrap().0);
    config.load.timescaledb = mode;
    config.load.max_past_secs = 86_400;
    config.load.partitions_past_days = 6;
    config.retention.raw_days = 3;
    config.retention.archive = dir.join(format!("archive-{name}")).display().to_string();
    let catalog = EventCatalog::from_config(&config.events, config.limits.max_string_bytes);
    let mut client = chronos::store::connect(&config.postgres.url).await?;
    chronos::install(&mut client, &catalog, &config.load).await?;
    let today = chronos::store::today();
    let (old, recent) = (today - 5, today - 1);
    insert(&client, name, old, rows).await?;
    timed(&mut client, &config, &format!("{name}, PostgreSQL, first fill"), old, false).await?;
    Archiver::new(&config)?.run(&mut client, &catalog, today).await?.context("the archive lock is free")?;
    insert(&client, name, recent, rows).await?;
    timed(&mut client, &config, &format!("{name}, PostgreSQL, first fill"), recent, false).await?;
    // Today's rules: Firefox taken for a bot, a GeoIP database.
    config.enrich.extra_bot_patterns = vec!["firefox/".into()];
    config.enrich.geoip_db = Some(dir.join("city.mmdb"));
    for (place, day) in [("PostgreSQL", recent), ("archive", old)] {
        let what = format!("{name}, {place}, new rules");
        let dry = timed(&mut client, &config, &what, day, true).await?;
        let run = timed(&mut client, &config, &what, day, false).await?;
        anyhow::ensure!(dry.total == run.total, "{what}: the dry run counted {:?}, the run {:?}", dry.total, run.total);
    }
    Ok(())
}

fn main() -> Result<()> {
    let rows = chronos_bench::stack::rows_arg()?;
    let dir = chronos_bench::stack::perf_dir("chronos-reprocess-perf-")?;
    write_geoip(&dir.path().join("city.mmdb"))?;
    let pg = PostgresServer::start_in(&dir.path().join("pg"))?;
    println!("{rows} clicks a day, PostgreSQL at {}", pg.url());
    println!("| layout, where, rules | mode | events | changed | seconds | events/s | views rebuilt (s) |");
    println!("|---|---|---|---|---|---|---|");
    block_on(async {
        for (name, mode) in [("native", Timescale::Never), ("hypertable", Timescale::Always)] {
            layout(&pg, dir.path(), name, mode, rows).await?;
        }
        anyhow::Ok(())
    })
}

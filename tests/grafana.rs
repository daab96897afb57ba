//! Every panel of every dashboard in `docker/grafana/dashboards` runs against
//! real PostgreSQL filled by chronosd's loaders from real posted events, with
//! Grafana's template variables and PostgreSQL macros expanded the way
//! Grafana expands them, as the read-only role Grafana uses
//! (`docker/timescaledb/grafana-reader.psql`). A panel whose SQL fails, or
//! that shows nothing over the data just posted, fails the test. Prometheus
//! panels are checked against chronosd's own `/metrics`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chronos::probe::http_get;
use chronos::rt::block_on;
use chronos::stack::postgres::PostgresServer;
use chronos::stack::process::free_port;
use common::*;
use serde_json::{json, Value};
use tokio_postgres::SimpleQueryMessage;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---- Grafana's expansion -------------------------------------------------

/// A dashboard time range, in milliseconds since the epoch.
#[derive(Clone, Copy, Debug)]
struct Range {
    from_ms: i64,
    to_ms: i64,
}

/// RFC 3339 in UTC, as Grafana's `time.RFC3339Nano` prints a millisecond time.
fn rfc3339(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if milli == 0 { String::new() } else { format!(".{milli:03}").trim_end_matches('0').to_string() };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Grafana's interval syntax (`30s`, `1m`, `1h`, `1d`, `1w`; quotes trimmed), in seconds.
fn parse_interval(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_matches('\'');
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("interval `{text}` has no unit"))?;
    let n: u64 = t[..split].parse().map_err(|_| format!("interval `{text}` has no number"))?;
    let unit = match &t[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        u => return Err(format!("interval `{text}`: unit `{u}` not supported")),
    };
    Ok(n * unit)
}

fn format_interval(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `$__interval`: the range over the panel's data points, rounded as
/// Grafana's `roundInterval` does, never below the datasource's `timeInterval`.
fn auto_interval(r: Range, max_data_points: i64, min_secs: u64) -> u64 {
    // (up to this many ms, use this many seconds)
    const ROUND: [(i64, u64); 23] = [
        (1_500, 1),
        (3_500, 2),
        (7_500, 5),
        (12_500, 10),
        (17_500, 15),
        (25_000, 20),
        (45_000, 30),
        (90_000, 60),
        (210_000, 120),
        (450_000, 300),
        (750_000, 600),
        (1_050_000, 900),
        (1_500_000, 1200),
        (2_700_000, 1800),
        (5_400_000, 3600),
        (9_000_000, 7200),
        (16_200_000, 10_800),
        (32_400_000, 21_600),
        (86_400_000, 43_200),
        (604_800_000, 86_400),
        (1_814_400_000, 604_800),
        (3_628_800_000, 2_592_000),
        (i64::MAX, 31_536_000),
    ];
    let raw_ms = (r.to_ms - r.from_ms) / max_data_points.max(1);
    let rounded = ROUND.iter().find(|(up_to, _)| raw_ms <= *up_to).map(|(_, s)| *s).unwrap_or(31_536_000);
    rounded.max(min_secs)
}

/// Dashboard variables: `$name`, `${name}`, `${name:sqlstring}` (single value).
fn interpolate(sql: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = sql.to_string();
    for (name, value) in vars {
        let quoted = format!("'{}'", value.replace('\'', "''"));
        out = out.replace(&format!("${{{name}:sqlstring}}"), &quoted);
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("[[{name}]]"), value);
        // `$name` not followed by more identifier characters.
        let mut replaced = String::with_capacity(out.len());
        let mut rest = out.as_str();
        let token = format!("${name}");
        while let Some(i) = rest.find(&token) {
            let after = &rest[i + token.len()..];
            replaced.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                replaced.push_str(&token);
            } else {
                replaced.push_str(value);
            }
            rest = after;
        }
        replaced.push_str(rest);
        out = replaced;
    }
    out
}

/// The PostgreSQL datasource's macro engine: `$__name(args)`, arguments up to
/// the first `)` split on commas (Grafana's `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`).
fn expand_macros(sql: &str, r: Range, timescaledb: bool) -> Result<String, String> {
    let (from, to) = (format!("'{}'", rfc3339(r.from_ms)), format!("'{}'", rfc3339(r.to_ms)));
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find("$__") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..name_len];
        let Some(args_text) = after[name_len..].strip_prefix('(') else {
            return Err(format!("`$__{name}` is not a macro call (a variable left unexpanded?)"));
        };
        let close = args_text.find(')').ok_or_else(|| format!("`$__{name}(` is not closed"))?;
        let raw_args = &args_text[..close];
        let args: Vec<&str> = if raw_args.trim().is_empty() { vec![] } else { raw_args.split(',').map(str::trim).collect() };
        let want = |n: usize| if args.len() >= n { Ok(()) } else { Err(format!("`$__{name}` needs {n} argument(s), got `{raw_args}`")) };
        let group = |args: &[&str]| -> Result<String, String> {
            let secs = parse_interval(args[1])?;
            Ok(if timescaledb {
                format!("time_bucket('{secs}s',{})", args[0])
            } else {
                format!("floor(extract(epoch from {})/{secs})*{secs}", args[0])
            })
        };
        let expanded = match name {
            "time" => want(1).map(|_| format!("{} AS \"time\"", args[0]))?,
            "timeEpoch" => want(1).map(|_| format!("extract(epoch from {}) as \"time\"", args[0]))?,
            "timeFilter" => want(1).map(|_| format!("{} BETWEEN {from} AND {to}", args[0]))?,
            "timeFrom" => from.clone(),
            "timeTo" => to.clone(),
            "timeGroup" => want(2).and_then(|_| group(&args))?,
            "timeGroupAlias" => want(2).and_then(|_| group(&args))? + " AS \"time\"",
            "unixEpochFilter" => want(1).map(|_| format!("{c} >= {} AND {c} <= {}", r.from_ms / 1000, r.to_ms / 1000, c = args[0]))?,
            "unixEpochFrom" => (r.from_ms / 1000).to_string(),
            "unixEpochTo" => (r.to_ms / 1000).to_string(),
            other => return Err(format!("undefined macro: $__{other}")),
        };
        out.push_str(&expanded);
        rest = &args_text[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---- Files ---------------------------------------------------------------

/// The datasources provisioned for Grafana: uid → (type, jsonData).
fn datasources() -> BTreeMap<String, (String, serde_yaml::Value)> {
    let path = repo("docker/grafana/provisioning/datasources/chronos.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc["apiVersion"].as_u64(), Some(1), "{}: apiVersion", path.display());
    doc["datasources"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: no datasources list", path.display()))
        .iter()
        .map(|d| {
            let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{}: a datasource without uid", path.display()));
            (uid.to_string(), (d["type"].as_str().unwrap_or_default().to_string(), d["jsonData"].clone()))
        })
        .collect()
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo("docker/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "dashboards in {}: {files:?}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

/// Panels, including those nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("dashboard has panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

const PG_TYPES: [&str; 2] = ["grafana-postgresql-datasource", "postgres"];

// ---- Running -------------------------------------------------------------

struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

fn run(url: &str, sql: &str) -> Result<Answer, String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    block_on(async move {
        let client = chronos::store::connect(&url).await.map_err(|e| format!("{e:#}"))?;
        let messages = client.simple_query(&sql).await.map_err(|e| format!("{e}: {}", e.as_db_error().map(|d| d.message()).unwrap_or("")))?;
        let mut answer = Answer { columns: vec![], rows: vec![] };
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => answer.columns = cols.iter().map(|c| c.name().to_string()).collect(),
                SimpleQueryMessage::Row(row) => {
                    if answer.columns.is_empty() {
                        answer.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                    }
                    answer.rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
                }
                _ => {}
            }
        }
        Ok(answer)
    })
}

fn sql_count(url: &str, sql: &str) -> i64 {
    run(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}")).rows[0][0].as_deref().unwrap_or("0").parse().unwrap()
}

#[test]
fn macro_expansion_matches_grafana() {
    let r = Range { from_ms: 1_492_750_877_000, to_ms: 1_492_750_877_500 };
    assert_eq!(rfc3339(r.from_ms), "2017-04-21T05:01:17Z");
    assert_eq!(rfc3339(r.to_ms), "2017-04-21T05:01:17.5Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    let sql = "SELECT $__timeGroupAlias(t, '5m'), $__time(t) WHERE $__timeFilter(t) AND x > $__timeFrom() AND $__unixEpochFilter(e)";
    assert_eq!(
        expand_macros(sql, r, false).unwrap(),
        "SELECT floor(extract(epoch from t)/300)*300 AS \"time\", t AS \"time\" WHERE t BETWEEN '2017-04-21T05:01:17Z' AND \
         '2017-04-21T05:01:17.5Z' AND x > '2017-04-21T05:01:17Z' AND e >= 1492750877 AND e <= 1492750877"
    );
    assert_eq!(expand_macros("$__timeGroup(t, 1h)", r, true).unwrap(), "time_bucket('3600s',t)");
    assert!(expand_macros("$__timeFilterr(t)", r, false).unwrap_err().contains("undefined macro"));
    assert!(expand_macros("$__timeGroup(t)", r, false).unwrap_err().contains("needs 2"));
    assert!(expand_macros("$__interval", r, false).is_err(), "a variable left over is an error");
    let vars = BTreeMap::from([("page".to_string(), "it's".to_string())]);
    assert_eq!(interpolate("a = ${page:sqlstring} OR b = '$page' OR $pages", &vars), "a = 'it''s' OR b = 'it's' OR $pages");
    let six_hours = Range { from_ms: 0, to_ms: 6 * 3_600_000 };
    assert_eq!(format_interval(auto_interval(six_hours, 1000, 60)), "1m");
    assert_eq!(format_interval(auto_interval(Range { from_ms: 0, to_ms: 7 * 86_400_000 }, 1000, 60)), "10m");
    assert_eq!(format_interval(auto_interval(Range { from_ms: 0, to_ms: 30 * 86_400_000 }, 1000, 60)), "30m");
    assert_eq!(format_interval(auto_interval(Range { from_ms: 0, to_ms: 3_600_000 }, 1000, 1)), "5s");
}

#[test]
fn every_dashboard_panel_runs_on_posted_events() {
    let sources = datasources();
    let (pg_uid, (_, pg_json)) = sources.iter().find(|(_, (t, _))| PG_TYPES.contains(&t.as_str())).expect("a PostgreSQL datasource");
    let timescaledb = pg_json["timescaledb"].as_bool().unwrap_or(false);
    let min_interval = pg_json["timeInterval"].as_str().map(|i| parse_interval(i).unwrap()).unwrap_or(1);

    let pg_dir = temp_dir();
    let pg = PostgresServer::start_in(pg_dir.path()).expect("start PostgreSQL");
    let owner_url = pg.url();
    // The role Grafana reads as, made before chronosd creates its tables (as in docker).
    let reader_sql = std::fs::read_to_string(repo("docker/timescaledb/grafana-reader.psql")).unwrap();
    assert!(reader_sql.contains(":'reader_password'"));
    run(&owner_url, &reader_sql.replace(":'reader_password'", "'reader-test'")).expect("grafana-reader.psql");
    let reader_url = owner_url.replacen("postgres://chronos@", "postgres://grafana_reader:reader-test@", 1);
    assert_ne!(reader_url, owner_url);

    let kafka = Kafka::start(2);
    let toml = config_toml_with_pg(&kafka, free_port(), &owner_url, "", "");
    let d = Chronosd::start(&toml);
    d.wait_ready(Duration::from_secs(60));

    let c = client();
    let sessions = 8;
    for s in 0..sessions {
        let (status, body, _) = post(&c, &d, &batch(&format!("grafana-{s}"), 60), "198.51.100.7");
        assert_eq!(status, 200, "{body}");
    }
    // One refused event: a dead letter for the pipeline panels.
    let mut bad = batch("grafana-bad", 6);
    bad["events"][3] = json!(["mouse_moves", now_ms(), "left", 4]);
    let (status, body, _) = post(&c, &d, &bad, "198.51.100.7");
    assert_eq!(status, 200, "{body}");

    let per_type = sessions * 10;
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let loaded = ["pageviews", "clicks", "link_clicks", "key_presses", "form_submissions"]
            .iter()
            .all(|t| sql_count(&owner_url, &format!("SELECT count(*) FROM events.{t}")) >= per_type as i64)
            && sql_count(&owner_url, "SELECT count(*) FROM chronos.dead_letters") >= 1
            && sql_count(&owner_url, "SELECT coalesce(sum(moves), 0) FROM views.mouse_heat") >= per_type as i64;
        if loaded {
            break;
        }
        assert!(Instant::now() < until, "events not loaded in 90 s\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }

    let now = now_ms();
    let ranges = [
        ("last 3 hours", Range { from_ms: now - 3 * 3_600_000, to_ms: now + 600_000 }),
        ("last 7 days", Range { from_ms: now - 7 * 86_400_000, to_ms: now + 600_000 }),
    ];
    let metrics = match http_get(d.admin, "/metrics", Duration::from_secs(5)) {
        Ok((200, text)) => text,
        other => panic!("/metrics: {other:?}"),
    };

    let mut failures = Vec::new();
    let mut ran = 0;
    for (path, dash) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()), "{file}: no uid");
        // Query variables, each set to its first value as Grafana does on load.
        let mut vars = BTreeMap::new();
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap().to_string();
            assert_eq!(v["type"], "query", "{file}: variable {name}: only query variables are checked");
            assert_eq!(v["datasource"]["uid"].as_str(), Some(pg_uid.as_str()), "{file}: variable {name}");
            let sql = expand_macros(v["query"].as_str().unwrap(), ranges[0].1, timescaledb).unwrap();
            let answer = run(&reader_url, &sql).unwrap_or_else(|e| panic!("{file}: variable {name}: {e}\n{sql}"));
            let first = answer.rows.first().and_then(|r| r[0].clone()).unwrap_or_else(|| panic!("{file}: variable {name} has no values"));
            vars.insert(name, first);
        }
        let mut ids = std::collections::HashSet::new();
        for panel in panels(&dash) {
            let title = format!("{file}: panel {} \"{}\"", panel["id"], panel["title"].as_str().unwrap_or(""));
            assert!(ids.insert(panel["id"].as_i64().unwrap_or_else(|| panic!("{title}: no id"))), "{title}: id used twice");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
            assert!(!targets.is_empty(), "{title}: no targets");
            for target in targets {
                let ds = if target["datasource"].is_object() { &target["datasource"] } else { &panel["datasource"] };
                let uid = ds["uid"].as_str().unwrap_or_else(|| panic!("{title}: no datasource uid"));
                let (kind, _) = sources.get(uid).unwrap_or_else(|| panic!("{title}: datasource {uid} is not provisioned"));
                assert_eq!(ds["type"].as_str(), Some(kind.as_str()), "{title}: datasource type");
                if kind == "prometheus" {
                    check_promql(&title, target["expr"].as_str().unwrap_or_else(|| panic!("{title}: no expr")), &metrics);
                    ran += 1;
                    continue;
                }
                let raw = target["rawSql"].as_str().unwrap_or_else(|| panic!("{title}: no rawSql"));
                let format = target["format"].as_str().unwrap_or("time_series");
                for (range_name, range) in ranges {
                    let mut vars = vars.clone();
                    let interval = auto_interval(range, panel["maxDataPoints"].as_i64().unwrap_or(1000), min_interval);
                    vars.insert("__interval".into(), format_interval(interval));
                    vars.insert("__interval_ms".into(), (interval * 1000).to_string());
                    let sql = match expand_macros(&interpolate(raw, &vars), range, timescaledb) {
                        Ok(s) => s,
                        Err(e) => {
                            failures.push(format!("{title}: {e}"));
                            continue;
                        }
                    };
                    ran += 1;
                    match run(&reader_url, &sql) {
                        Err(e) => failures.push(format!("{title} ({range_name}): {e}\n{sql}")),
                        Ok(a) if a.rows.is_empty() => failures.push(format!("{title} ({range_name}): no rows over the posted events\n{sql}")),
                        Ok(a) if a.rows.iter().all(|r| r.iter().all(Option::is_none)) => {
                            failures.push(format!("{title} ({range_name}): only NULLs\n{sql}"))
                        }
                        Ok(a) if format == "time_series" && !a.columns.iter().any(|c| c == "time") => {
                            failures.push(format!("{title} ({range_name}): time series without a `time` column: {:?}", a.columns))
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} panel queries failed:\n\n{}", failures.len(), failures.join("\n\n"));
    assert!(ran >= 20, "only {ran} queries ran");
}

/// Metric names and `by (…)` labels of a PromQL expression exist in chronosd's `/metrics`.
fn check_promql(title: &str, expr: &str, metrics: &str) {
    let names: Vec<&str> = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("chronos_")).collect();
    assert!(!names.is_empty(), "{title}: no chronos_ metric in `{expr}`");
    for name in &names {
        let base = name.trim_end_matches("_bucket");
        assert!(metrics.lines().any(|l| l.starts_with(&format!("# TYPE {base} "))), "{title}: `{name}` is not exported by chronosd's /metrics");
    }
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let close = rest[i..].find(')').unwrap() + i;
        for label in rest[i + 4..close].split(',').map(str::trim).filter(|l| *l != "le") {
            let found = metrics.lines().filter(|l| names.iter().any(|n| l.starts_with(n))).any(|l| l.contains(&format!("{label}=\"")));
            assert!(found, "{title}: label `{label}` of `{expr}` is on none of {names:?} in /metrics");
        }
        rest = &rest[close..];
    }
}

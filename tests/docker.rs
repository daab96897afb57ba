//! The docker stack's files, checked without a container engine:
//! `docker/compose.yaml` (services, ports, volumes, healthchecks, start-up
//! conditions, KRaft settings), chronosd's config in it (loaded by chronosd's
//! own loader with the environment compose gives it), the Grafana
//! provisioning it mounts, the Prometheus alert rules it mounts (every alert
//! named, documented and unit-tested, on metrics chronosd exports), and
//! `docker/Dockerfile` (multi-stage, non-root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let mut v: Value = serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    v.apply_merge().unwrap();
    v
}

/// `docker/.env.example`: the variables compose needs.
fn env_example() -> BTreeMap<String, String> {
    read("docker/.env.example")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("docker/.env.example: `{l}` is not NAME=value"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Compose's interpolation: `${NAME}`, `${NAME:?message}`, `${NAME:-default}`, `$$`.
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('{') {
            let close = a.find('}').ok_or_else(|| format!("unclosed ${{ in `{text}`"))?;
            let expr = &a[..close];
            let name_end = expr.find([':', '-', '?']).unwrap_or(expr.len());
            let name = &expr[..name_end];
            let value = match (env.get(name), &expr[name_end..]) {
                (Some(v), _) if !v.is_empty() => v.clone(),
                (_, m) if m.starts_with(":-") => m[2..].to_string(),
                (_, m) if m.starts_with(":?") => return Err(format!("{name} is required: {}", &m[2..])),
                _ => return Err(format!("{name} is not set in docker/.env.example")),
            };
            out.push_str(&value);
            rest = &a[close + 1..];
        } else {
            return Err(format!("bare `$` in `{text}`: write ${{NAME}} or $$"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn compose() -> Value {
    yaml("docker/compose.yaml")
}

fn services(c: &Value) -> &serde_yaml::Mapping {
    c["services"].as_mapping().expect("compose.yaml: services")
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

/// A service's environment as strings (map or `KEY=value` list).
fn environment(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (s(k, "env key").to_string(), v)
            })
            .collect(),
        Value::Sequence(l) => l
            .iter()
            .map(|e| {
                let (k, v) = s(e, "env entry").split_once('=').expect("KEY=value");
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment {other:?}"),
    }
}

/// `(host side, container path)` of a service's volumes.
fn volumes(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| {
            let parts: Vec<&str> = s(v, "volume").split(':').collect();
            assert!(parts.len() >= 2, "volume `{v:?}` is not source:target[:mode]");
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

fn depends_on(svc: &Value) -> BTreeMap<String, String> {
    svc["depends_on"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (s(k, "depends_on").to_string(), s(&v["condition"], "depends_on condition").to_string()))
        .collect()
}

/// The container port published for `port`, if any.
fn published(svc: &Value, port: u16) -> Option<u16> {
    svc["ports"].as_sequence().into_iter().flatten().find_map(|p| {
        let text = s(p, "port");
        let parts: Vec<&str> = text.split(':').collect();
        let container: u16 = parts.last()?.parse().ok()?;
        (container == port).then(|| parts[parts.len() - 2].parse().unwrap())
    })
}

const KAFKA: [&str; 3] = ["kafka-1", "kafka-2", "kafka-3"];

#[test]
fn compose_has_every_service_with_healthchecks_and_start_order() {
    let c = compose();
    let names: BTreeSet<&str> = services(&c).keys().map(|k| s(k, "service")).collect();
    let want: BTreeSet<&str> =
        ["kafka-1", "kafka-2", "kafka-3", "kafka-topics", "timescaledb", "chronosd", "prometheus", "grafana"].into_iter().collect();
    assert_eq!(names, want);
    let declared: BTreeSet<String> = c["volumes"].as_mapping().expect("top-level volumes").keys().map(|k| s(k, "volume").to_string()).collect();

    for (name, svc) in services(&c) {
        let name = s(name, "service");
        // Long-running services have a health check and restart; the one-shot does neither.
        if name == "kafka-topics" {
            assert_eq!(svc["restart"].as_str(), Some("no"), "{name}");
        } else {
            let test = svc["healthcheck"]["test"].as_sequence().unwrap_or_else(|| panic!("{name}: no healthcheck test list"));
            assert!(matches!(test[0].as_str(), Some("CMD" | "CMD-SHELL")) && test.len() >= 2, "{name}: healthcheck {test:?}");
            assert!(svc["healthcheck"]["interval"].is_string() && svc["healthcheck"]["retries"].is_u64(), "{name}: interval and retries");
            assert_eq!(svc["restart"].as_str(), Some("unless-stopped"), "{name}");
        }
        for (source, target) in volumes(svc) {
            assert!(target.starts_with('/'), "{name}: volume target {target}");
            if source.starts_with("./") || source.starts_with("../") {
                assert!(repo("docker").join(&source).exists(), "{name}: bind mount {source} does not exist in docker/");
            } else {
                assert!(declared.contains(&source), "{name}: named volume {source} not declared under volumes:");
            }
        }
        // Every ${VAR} has a value in .env.example.
        let text = serde_yaml::to_string(svc).unwrap();
        interpolate(&text, &env_example()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (dep, condition) in depends_on(svc) {
            assert!(want.contains(dep.as_str()), "{name} depends on unknown {dep}");
            let expected = if dep == "kafka-topics" { "service_completed_successfully" } else { "service_healthy" };
            assert_eq!(condition, expected, "{name} → {dep}");
        }
    }
    let svcs = services(&c);
    let deps = |n: &str| depends_on(&svcs[n]);
    for k in KAFKA {
        assert!(deps("kafka-topics").contains_key(k), "kafka-topics waits for {k}");
        assert!(deps("chronosd").contains_key(k), "chronosd waits for {k}");
    }
    assert_eq!(deps("chronosd").get("kafka-topics").map(String::as_str), Some("service_completed_successfully"));
    assert_eq!(deps("chronosd").get("timescaledb").map(String::as_str), Some("service_healthy"));
    assert!(deps("grafana").contains_key("timescaledb") && deps("grafana").contains_key("prometheus"));
    assert!(deps("prometheus").contains_key("chronosd"));

    // Persistent data on named volumes.
    let on_volume = |n: &str, path: &str| volumes(&svcs[n]).iter().any(|(src, t)| t == path && declared.contains(src));
    assert!(on_volume("timescaledb", "/home/postgres/pgdata"), "TimescaleDB data on a volume");
    assert!(on_volume("grafana", "/var/lib/grafana"));
    assert!(on_volume("prometheus", "/prometheus"));

    // Published ports.
    assert_eq!(published(&svcs["chronosd"], 8080), Some(8080));
    assert_eq!(published(&svcs["grafana"], 3000), Some(3000));
    assert_eq!(published(&svcs["timescaledb"], 5432), Some(5432));
}

#[test]
fn kafka_brokers_form_one_kraft_quorum_with_replication_3_min_isr_2() {
    let c = compose();
    let svcs = services(&c);
    let envs: Vec<BTreeMap<String, String>> = KAFKA.iter().map(|k| environment(&svcs[*k])).collect();
    let voters: Vec<String> = KAFKA.iter().enumerate().map(|(i, k)| format!("{}@{k}:9093", i + 1)).collect();
    let mut ids = BTreeSet::new();
    let mut external = BTreeSet::new();
    for (k, env) in KAFKA.iter().zip(&envs) {
        let get = |key: &str| env.get(key).unwrap_or_else(|| panic!("{k}: {key} not set")).as_str();
        let image = s(&svcs[*k]["image"], "image");
        assert_eq!(image, format!("apache/kafka:{}", chronos::stack::broker::KAFKA_VERSION), "{k}: the Apache Kafka release the tests run");
        let roles: BTreeSet<&str> = get("KAFKA_PROCESS_ROLES").split(',').collect();
        assert_eq!(roles, ["broker", "controller"].into_iter().collect(), "{k}: KRaft combined mode");
        assert!(!env.keys().any(|key| key.contains("ZOOKEEPER")), "{k}: no ZooKeeper in KRaft mode");
        assert!(ids.insert(get("KAFKA_NODE_ID").to_string()), "{k}: node id reused");
        assert_eq!(get("KAFKA_CONTROLLER_QUORUM_VOTERS"), voters.join(","), "{k}: the voters are the three brokers");
        assert_eq!(get("CLUSTER_ID"), envs[0]["CLUSTER_ID"], "{k}: one cluster id");
        assert_eq!(get("CLUSTER_ID").len(), 22, "{k}: CLUSTER_ID is a base64 UUID (22 characters)");
        assert_eq!(get("KAFKA_DEFAULT_REPLICATION_FACTOR"), "3", "{k}");
        assert_eq!(get("KAFKA_MIN_INSYNC_REPLICAS"), "2", "{k}");
        assert_eq!(get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3", "{k}: consumer offsets survive a broker");
        assert_eq!(get("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"), "2", "{k}");
        assert_eq!(get("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"), "false", "{k}: no data loss on failover");
        // Listeners: the controller listener is named and not advertised; the
        // broker advertises its service name inside the network.
        assert_eq!(get("KAFKA_CONTROLLER_LISTENER_NAMES"), "CONTROLLER");
        assert!(get("KAFKA_LISTENERS").contains("CONTROLLER://:9093"), "{k}");
        let advertised = get("KAFKA_ADVERTISED_LISTENERS");
        assert!(advertised.split(',').any(|l| l == format!("PLAINTEXT://{k}:9092")), "{k}: advertised {advertised}");
        assert!(!advertised.contains("CONTROLLER"), "{k}: the controller listener is not advertised");
        let map = get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP");
        for name in get("KAFKA_LISTENERS").split(',').map(|l| l.split("://").next().unwrap()) {
            assert!(map.split(',').any(|m| m.starts_with(&format!("{name}:"))), "{k}: listener {name} has no protocol");
        }
        // The host-facing listener is published on the port it advertises.
        let ext = advertised.split(',').find_map(|l| l.strip_prefix("EXTERNAL://localhost:")).unwrap_or_else(|| panic!("{k}: no EXTERNAL listener"));
        let port: u16 = ext.parse().unwrap();
        assert_eq!(published(&svcs[*k], port), Some(port), "{k}: EXTERNAL port published");
        assert!(external.insert(port), "{k}: external port {port} reused");
        let log_dir = get("KAFKA_LOG_DIRS");
        assert!(volumes(&svcs[*k]).iter().any(|(_, t)| t == log_dir), "{k}: {log_dir} on a volume");
    }
}

/// chronosd's config as chronosd loads it in the container: the mounted file
/// plus compose's `CHRONOS_*` environment (with .env.example's values).
fn chronosd_config(service: &str) -> chronos::config::Config {
    let c = compose();
    let svc = &services(&c)[service];
    let mount = volumes(svc)
        .into_iter()
        .find(|(_, t)| t == "/etc/chronos/chronos.toml")
        .unwrap_or_else(|| panic!("{service}: no config mounted at /etc/chronos/chronos.toml"));
    let file = repo("docker").join(&mount.0).canonicalize().unwrap();
    let env: Vec<(String, String)> = environment(svc)
        .into_iter()
        .filter(|(k, _)| k.starts_with("CHRONOS_"))
        .map(|(k, v)| {
            let v = interpolate(&v, &env_example()).unwrap_or_else(|e| panic!("{service}: {k}: {e}"));
            (k, v)
        })
        .collect();
    let mut out = None;
    // figment's own error type, returned by its closure.
    #[allow(clippy::result_large_err)]
    figment::Jail::expect_with(|jail| {
        for (k, v) in &env {
            jail.set_env(k, v);
        }
        out = Some(chronos::config::Config::load(Some(&file)).map_err(|e| format!("{}: {e}", file.display()))?);
        Ok(())
    });
    out.unwrap()
}

#[test]
fn chronosd_config_in_the_stack_is_valid_and_matches_the_services() {
    let config = chronosd_config("chronosd");
    let c = compose();
    let svcs = services(&c);

    // Brokers: exactly the three services' internal listeners.
    let brokers: BTreeSet<&str> = config.kafka.brokers.split(',').collect();
    let want: BTreeSet<String> = KAFKA.iter().map(|k| format!("{k}:9092")).collect();
    assert_eq!(brokers, want.iter().map(String::as_str).collect());
    assert_eq!(config.kafka.replication, 3, "topics replicated to the three brokers");
    assert!(config.kafka.idempotence, "idempotent producer with Apache Kafka");
    assert_eq!(config.kafka.topic_min_insync_replicas(), 2, "topics created with min.insync.replicas 2");
    assert_eq!(config.kafka.compression, chronos::config::KafkaConfig::default().compression, "the tested default compression");

    // PostgreSQL: the timescaledb service, its user and database, the password from .env.
    let url = url::Url::parse(&config.postgres.url).unwrap();
    let db_env = environment(&svcs["timescaledb"]);
    assert_eq!(url.host_str(), Some("timescaledb"));
    assert_eq!(url.port(), Some(5432));
    assert_eq!(url.username(), db_env["POSTGRES_USER"]);
    assert_eq!(url.path().trim_start_matches('/'), db_env["POSTGRES_DB"]);
    assert_eq!(url.password(), Some(env_example()["POSTGRES_PASSWORD"].as_str()));
    assert!(config.load.enabled, "the loaders fill TimescaleDB");

    // HTTP: listens on every interface, on the published and health-checked port.
    assert!(config.http.listen.ip().is_unspecified(), "listen {} is unreachable from outside the container", config.http.listen);
    let port = config.http.listen.port();
    assert_eq!(published(&svcs["chronosd"], port), Some(port));
    let health = serde_yaml::to_string(&svcs["chronosd"]["healthcheck"]["test"]).unwrap();
    assert!(health.contains(&format!("/dev/tcp/127.0.0.1/{port}")) && health.contains("/readyz"), "healthcheck: {health}");
    // Prometheus scrapes the admin listener, which is on the compose network and not published.
    let admin = config.http.admin_listen;
    assert!(admin.ip().is_unspecified(), "admin_listen {admin} is unreachable from Prometheus' container");
    assert_eq!(published(&svcs["chronosd"], admin.port()), None, "the admin port is not published");
    let prom = read("docker/prometheus/prometheus.yml");
    assert!(prom.contains(&format!("chronosd:{}", admin.port())), "prometheus scrapes chronosd:{}", admin.port());

    // docker stop waits for the whole drain.
    let grace = s(&svcs["chronosd"]["stop_grace_period"], "stop_grace_period");
    let secs: u64 = grace.strip_suffix('s').unwrap().parse().unwrap();
    assert!(secs >= 2 * config.http.shutdown_grace_secs + 10, "stop_grace_period {grace} shorter than the drain");
    assert_eq!(svcs["chronosd"]["read_only"].as_bool(), Some(true));

    // The topics job uses the same config file.
    let topics = chronosd_config("kafka-topics");
    assert_eq!((topics.kafka.topic, topics.kafka.dead_letter_topic), (config.kafka.topic.clone(), config.kafka.dead_letter_topic.clone()));
    let cmd = serde_yaml::to_string(&svcs["kafka-topics"]["command"]).unwrap();
    assert!(cmd.contains("install-kafka"), "kafka-topics runs `chronos install-kafka`: {cmd}");
}

#[test]
fn an_invalid_config_is_refused_by_the_same_loader() {
    // The check above must be able to fail: the same file with a bad value.
    let text = read("docker/chronosd/chronos.toml").replace("replication = 3", "replication = \"three\"");
    let err = chronos::config::Config::from_toml(&text).expect_err("a string replication is refused");
    assert!(err.to_string().contains("replication"), "{err}");
}

#[test]
fn grafana_mounts_its_provisioning_and_dashboards() {
    let c = compose();
    let svcs = services(&c);
    let mounts: BTreeMap<String, String> = volumes(&svcs["grafana"]).into_iter().map(|(s, t)| (t, s)).collect();
    assert_eq!(mounts.get("/etc/grafana/provisioning").map(String::as_str), Some("./grafana/provisioning"));
    let provider = yaml("docker/grafana/provisioning/dashboards/chronos.yaml");
    let path = s(&provider["providers"][0]["options"]["path"], "provider path");
    assert_eq!(mounts.get(path).map(String::as_str), Some("./grafana/dashboards"), "dashboards mounted where the provider reads");
    let home = environment(&svcs["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    let file = home.strip_prefix(&format!("{path}/")).expect("home dashboard under the provider path");
    assert!(repo("docker/grafana/dashboards").join(file).exists(), "home dashboard {file}");

    let ds = yaml("docker/grafana/provisioning/datasources/chronos.yaml");
    let db_env = environment(&svcs["timescaledb"]);
    let grafana_env = environment(&svcs["grafana"]);
    for d in ds["datasources"].as_sequence().unwrap() {
        let url = s(&d["url"], "datasource url");
        let host = url.trim_start_matches("http://").split([':', '/']).next().unwrap();
        assert!(svcs.contains_key(host), "datasource {url}: no service {host}");
        if d["type"] == "grafana-postgresql-datasource" {
            assert_eq!(s(&d["jsonData"]["database"], "database"), db_env["POSTGRES_DB"]);
            // The password is read from Grafana's environment, which compose sets.
            let var = s(&d["secureJsonData"]["password"], "password").trim_start_matches('$').trim_matches(['{', '}']);
            assert!(grafana_env.contains_key(var), "grafana's environment lacks {var}");
            assert!(db_env.contains_key(var), "the database's init script needs {var} too");
            assert_eq!(s(&d["user"], "user"), "grafana_reader");
            assert!(read("docker/timescaledb/grafana-reader.psql").contains("CREATE ROLE grafana_reader"));
        }
    }
    let init: Vec<String> =
        volumes(&svcs["timescaledb"]).into_iter().filter(|(_, t)| t.starts_with("/docker-entrypoint-initdb.d/")).map(|(s, _)| s).collect();
    assert!(init.iter().any(|s| s.ends_with(".sh")) && init.iter().any(|s| s.ends_with("grafana-reader.psql")), "{init:?}");
}

/// The alerts issue 30 asks for, each under the name the docs and tests use.
const REQUIRED_ALERTS: [&str; 9] = [
    "ChronosdDown",
    "ChronosLoaderStalled",
    "ChronosConsumerLagGrowing",
    "ChronosPartitionsUnderReplicated",
    "ChronosPartitionsOffline",
    "ChronosDeadLettersRising",
    "ChronosHttp5xxShareHigh",
    "ChronosProduceLatencyHigh",
    "ChronosArchiveFailing",
];

/// The `chronos_*` metric names an expression reads (histogram series by their family's name).
fn chronos_metrics(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("chronos_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        // `chronosd` (the job) is not a metric.
        if !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') && name.len() > "chronos_".len() {
            let family = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            out.insert(family.to_string());
        }
        rest = &rest[i + name.len().max(1)..];
    }
    out
}

#[test]
fn prometheus_loads_the_alert_rules_compose_mounts() {
    let c = compose();
    let svc = &services(&c)["prometheus"];
    let mounts: BTreeMap<String, String> = volumes(svc).into_iter().map(|(s, t)| (t, s)).collect();
    let command = serde_yaml::to_string(&svc["command"]).unwrap();
    let config_path = command.split("--config.file=").nth(1).and_then(|r| r.split(['"', '\'', '\n', ' ']).next()).expect("--config.file in command");
    assert_eq!(mounts.get(config_path).map(String::as_str), Some("./prometheus/prometheus.yml"), "prometheus.yml mounted at {config_path}");
    let prom = yaml("docker/prometheus/prometheus.yml");
    let files: Vec<&str> = prom["rule_files"].as_sequence().expect("rule_files in prometheus.yml").iter().map(|f| s(f, "rule file")).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let source = mounts.get(files[0]).unwrap_or_else(|| panic!("rule file {} is not mounted into the prometheus service", files[0]));
    assert_eq!(source, "./prometheus/alerts.yml");
    // The rules select the job the scrape config names.
    let jobs: Vec<&str> = prom["scrape_configs"].as_sequence().unwrap().iter().map(|j| s(&j["job_name"], "job_name")).collect();
    assert_eq!(jobs, ["chronosd"]);

    let rules = yaml("docker/prometheus/alerts.yml");
    let telemetry = read("src/telemetry.rs");
    let tests = read("docker/prometheus/alerts.test.yml");
    let docs = read("docs/operations.md");
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = s(&rule["alert"], "alert name");
            assert!(names.insert(name), "alert {name} defined twice");
            let expr = s(&rule["expr"], "expr");
            assert!(expr.contains("up{job=\"chronosd\"}") || !chronos_metrics(expr).is_empty(), "{name}: reads no chronosd metric");
            for metric in chronos_metrics(expr) {
                assert!(telemetry.contains(&format!("\"{metric}\"")), "{name}: {metric} is not a metric chronosd exports (src/telemetry.rs)");
            }
            assert!(matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")), "{name}: severity");
            for a in ["summary", "description"] {
                assert!(rule["annotations"][a].as_str().is_some_and(|t| !t.is_empty()), "{name}: no {a}");
            }
            assert!(tests.contains(&format!("alertname: {name}\n")), "{name}: no unit test in alerts.test.yml");
            assert!(docs.contains(&format!("### {name}\n")), "{name}: not in docs/operations.md's Alerts section");
        }
    }
    for want in REQUIRED_ALERTS {
        assert!(names.contains(want), "alerts.yml lacks {want}");
    }
}

#[test]
fn rule_expressions_name_the_metrics_they_read() {
    let e = "sum by (job) (rate(chronos_produce_latency_seconds_bucket[5m])) / chronos_events_accepted_total and up{job=\"chronosd\"}";
    let got: Vec<String> = chronos_metrics(e).into_iter().collect();
    assert_eq!(got, ["chronos_events_accepted_total", "chronos_produce_latency_seconds"]);
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = read("docker/Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let froms: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "first stage named build: {}", froms[0]);
    let last = froms.last().unwrap();
    assert!(last.contains("-slim") || last.contains("distroless"), "small runtime base: {last}");
    // The build stage's Rust is at least the crate's rust-version.
    let rust = froms[0].split_whitespace().nth(1).unwrap().strip_prefix("rust:").expect("rust image");
    let minor = |v: &str| -> u32 { v.split(['.', '-']).nth(1).unwrap().parse().unwrap() };
    let manifest = read("Cargo.toml");
    let wanted = manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    assert!(minor(rust) >= minor(wanted), "rust:{rust} older than rust-version {wanted}");

    let runtime_start = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[runtime_start..];
    let user = runtime.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {user}");
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=build")), "binaries copied from the build stage");
    assert!(!runtime.iter().any(|l| l.contains("cargo ")), "no cargo in the runtime stage");
    assert!(lines.iter().any(|l| l.contains("--locked")), "builds the committed Cargo.lock");
    assert!(runtime.iter().any(|l| l.starts_with("EXPOSE 8080")));
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/chronosd\"]")));
    // The config the image carries validates.
    let copied = runtime.iter().find_map(|l| l.strip_prefix("COPY docker/chronosd/chronos.toml ")).expect("config copied");
    assert_eq!(copied, "/etc/chronos/chronos.toml");
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"), ".dockerignore keeps target/ out of the context");
}

#[test]
fn compose_interpolation_rules() {
    let env = BTreeMap::from([("A".to_string(), "x".to_string()), ("E".to_string(), String::new())]);
    assert_eq!(interpolate("p-${A}-${B:-d}-$$", &env).unwrap(), "p-x-d-$");
    assert!(interpolate("${E:?needed}", &env).unwrap_err().contains("needed"));
    assert!(interpolate("${C}", &env).is_err());
    assert!(interpolate("$A", &env).is_err());
}

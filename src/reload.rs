//! The config file, watched while chronosd runs: when it changes and still
//! loads, its `[[keys]]` replace the config keys in the ring (a key added,
//! rotated or removed counts without a restart, like `chronos keys`), and the
//! tracker bundle served at `http.tracker_path` is rebuilt from its
//! `[tracker]` and keys. Every other setting takes effect at the next
//! restart, and the log says so. A file that does not load changes nothing:
//! the error is logged and the running config stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::http::script::Script;
use crate::http::AppState;
use crate::watch::modified;

/// What a changed file changes in the running chronosd.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub keys_changed: bool,
    pub tracker_changed: bool,
    /// Sections that differ but need a restart (`http`, `kafka`, …).
    pub needs_restart: Vec<String>,
}

/// The running config with `new`'s keys and `[tracker]`, and what differs.
pub fn merge(running: &Config, new: &Config) -> (Config, Applied) {
    let as_json = |c: &Config| serde_json::to_value(c).unwrap_or_default();
    let (old_v, new_v) = (as_json(running), as_json(new));
    let mut needs_restart: Vec<String> = Vec::new();
    if let (Some(o), Some(n)) = (old_v.as_object(), new_v.as_object()) {
        for (section, value) in n {
            if section != "keys" && section != "tracker" && o.get(section) != Some(value) {
                needs_restart.push(section.clone());
            }
        }
    }
    // The Kafka passwords are not serialised: compared apart.
    let (k, nk) = (&running.kafka, &new.kafka);
    let kafka_secrets = k.sasl_password != nk.sasl_password || k.ssl_key_password != nk.ssl_key_password;
    if kafka_secrets && !needs_restart.iter().any(|s| s == "kafka") {
        needs_restart.push("kafka".into());
    }
    let keys_changed = running.keys != new.keys;
    let tracker_changed = running.tracker != new.tracker;
    let mut applied = running.clone();
    applied.keys = new.keys.clone();
    applied.tracker = new.tracker.clone();
    (applied, Applied { keys_changed, tracker_changed, needs_restart })
}

/// Checks `path` every `every` on a thread of its own, for the life of the process.
pub fn watch(path: PathBuf, running: Config, state: Arc<AppState>, every: Duration) {
    let spawned = std::thread::Builder::new().name("config-watch".into()).spawn(move || {
        let mut running = running;
        let mut seen = modified(&path);
        loop {
            std::thread::sleep(every);
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let new = match Config::load(Some(&path)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{} changed but does not load; keeping the running config. {e}", path.display());
                    continue;
                }
            };
            let (applied_config, applied) = merge(&running, &new);
            if applied.keys_changed {
                state.keys.set_config(&applied_config.keys);
            }
            if applied.keys_changed || applied.tracker_changed {
                state.script.store(Arc::new(Script::build(&applied_config)));
            }
            tracing::info!(
                keys = applied.keys_changed,
                tracker = applied.tracker_changed,
                "{} changed: write keys and [tracker] applied.",
                path.display()
            );
            if !applied.needs_restart.is_empty() {
                tracing::warn!(
                    sections = ?applied.needs_restart,
                    "{} changed other settings too; they take effect at the next restart.",
                    path.display()
                );
            }
            running = applied_config;
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot watch the config file; changes need a restart.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "[[keys]]\nid = \"site\"\nkey = \"wk_0123456789abcdef\"\norigins = [\"example.com\"]\n";

    #[test]
    fn keys_and_tracker_apply_and_the_rest_waits_for_a_restart() {
        let running = Config::from_toml(KEYS).unwrap();
        let same = Config::from_toml(KEYS).unwrap();
        let (_, applied) = merge(&running, &same);
        assert_eq!(applied, Applied { keys_changed: false, tracker_changed: false, needs_restart: vec![] });

        let text = format!("{KEYS}[[keys]]\nid = \"site-2\"\nkey = \"wk_fedcba9876543210\"\norigins = [\"example.com\"]\n[tracker]\nkey_id = \"site-2\"\n[kafka]\nlinger_ms = 7\n");
        let new = Config::from_toml(&text).unwrap();
        let (merged, applied) = merge(&running, &new);
        assert!(applied.keys_changed && applied.tracker_changed);
        assert_eq!(applied.needs_restart, ["kafka"]);
        assert_eq!(merged.keys.len(), 2);
        assert_eq!(merged.tracker.key_id, "site-2");
        assert_eq!(merged.kafka.linger_ms, running.kafka.linger_ms, "kafka is not applied");
    }
}

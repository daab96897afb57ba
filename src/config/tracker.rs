//! `[tracker]`: what `chronos tracker build` puts into the browser bundle.

use serde::{Deserialize, Serialize};

use super::Config;

/// `[tracker]`: what `chronos tracker build` puts into the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// URL at which browsers reach chronosd (`https://chronos.example.com`);
    /// empty = `http://<http.listen>` when that is a specific address.
    pub endpoint: String,
    /// `id` of the write key the tracker sends; empty = the first key with origins.
    pub key_id: String,
    /// Interval at which the pointer position is sampled (only when it moved), in ms.
    pub mouse_interval_ms: u32,
    /// Interval at which the buffer is sent, in ms (it is also sent when full and on navigation).
    pub flush_interval_ms: u32,
    /// Events in the buffer that trigger a send; at most `http.max_events_per_batch`.
    pub max_events: u32,
    /// Capture nothing when the browser sends Do-Not-Track or Global Privacy Control.
    pub respect_dnt: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            endpoint: String::new(),
            key_id: String::new(),
            mouse_interval_ms: 100,
            flush_interval_ms: 5000,
            max_events: 500,
            respect_dnt: true,
        }
    }
}

/// Why `tracker.key_id` may not name a server key.
pub fn server_key(id: &str) -> String {
    format!("tracker.key_id: `{id}` is a server key; the tracker ships its key to every page, so it takes a browser key (kind = \"browser\")")
}

/// Errors in `[tracker]`, each naming its key.
pub(super) fn errors(config: &Config) -> Vec<String> {
    let t = &config.tracker;
    let mut errors = Vec::new();
    let http = t.endpoint.starts_with("http://") || t.endpoint.starts_with("https://");
    if !t.endpoint.is_empty() && !http {
        errors.push(format!("tracker.endpoint: `{}` must start with http:// or https://", t.endpoint));
    }
    if !t.key_id.is_empty() {
        match config.keys.iter().find(|k| k.id == t.key_id) {
            None => errors.push(format!("tracker.key_id: no [[keys]] entry has id `{}`", t.key_id)),
            Some(k) if k.kind == super::KeyKind::Server => errors.push(server_key(&t.key_id)),
            Some(_) => {}
        }
    }
    if !(10..=60_000).contains(&t.mouse_interval_ms) {
        errors.push("tracker.mouse_interval_ms: must be 10 to 60000".into());
    }
    if !(100..=600_000).contains(&t.flush_interval_ms) {
        errors.push("tracker.flush_interval_ms: must be 100 to 600000".into());
    }
    if t.max_events == 0 || t.max_events as usize > config.http.max_events_per_batch {
        errors.push(format!("tracker.max_events: must be 1 to http.max_events_per_batch ({})", config.http.max_events_per_batch));
    }
    errors
}

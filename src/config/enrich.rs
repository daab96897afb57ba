//! `[enrich]`: what chronosd adds to a batch at receipt (user agent, GeoIP, bots).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::positive;

/// Enrichment at receipt (docs/enrichment.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Off: no bot detection, user-agent parsing or GeoIP (the columns stay
    /// false/NULL); for measuring what enrichment costs.
    pub enabled: bool,
    /// `flag` (default): bots' events are stored with `is_bot` and
    /// `bot_reason`; `drop`: they are answered 200 and not stored.
    pub bots: BotPolicy,
    /// Distinct user agents whose parse is kept (bounded cache).
    pub ua_cache_entries: usize,
    /// A MaxMind-format City database (GeoLite2-City.mmdb): country, region
    /// and city of the client IP, looked up before it is anonymised. None:
    /// those columns stay NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<PathBuf>,
    /// How often the database file is checked for a new version, in seconds.
    pub geoip_reload_secs: u64,
    /// Regular expressions added to the bot list (the `isbot` crate's),
    /// matched case-insensitively against the user agent, e.g. `"acme-monitor/"`.
    /// `chronos reprocess` applies a changed list to stored events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_bot_patterns: Vec<String>,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            enabled: true,
            bots: BotPolicy::Flag,
            ua_cache_entries: 10_000,
            geoip_db: None,
            geoip_reload_secs: 60,
            extra_bot_patterns: Vec::new(),
        }
    }
}

/// What happens to a bot's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotPolicy {
    Flag,
    Drop,
}

impl EnrichConfig {
    /// The enricher these settings ask for: the `isbot` list with
    /// `extra_bot_patterns` added (each checked by [`EnrichConfig::errors`]).
    pub fn enricher(&self) -> crate::enrich::Enricher {
        crate::enrich::Enricher::with_bot_patterns(self.ua_cache_entries, &self.extra_bot_patterns)
    }

    /// What is wrong with `[enrich]`, each naming its key.
    pub(super) fn errors(&self, errors: &mut Vec<String>) {
        positive(errors, [("enrich.ua_cache_entries", self.ua_cache_entries as u64), ("enrich.geoip_reload_secs", self.geoip_reload_secs)]);
        for p in &self.extra_bot_patterns {
            if let Err(e) = regex::Regex::new(&p.to_ascii_lowercase()) {
                errors.push(format!("enrich.extra_bot_patterns: {p:?} is not a regular expression: {e}"));
            }
        }
        if let Some(db) = &self.geoip_db {
            if let Err(e) = crate::enrich::GeoIp::open(db) {
                errors.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_bot_pattern_that_does_not_compile_is_named() {
        let mut c = EnrichConfig { extra_bot_patterns: vec!["acme-monitor/".into(), "^probe(".into()], ..EnrichConfig::default() };
        let mut errors = Vec::new();
        c.errors(&mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("enrich.extra_bot_patterns: \"^probe(\" is not a regular expression"), "{errors:?}");
        c.extra_bot_patterns.pop();
        let mut errors = Vec::new();
        c.errors(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        // What the validated list then does at receipt.
        let ua = Some("Mozilla/5.0 (X11; Linux x86_64) AcmeProbe/2.0");
        assert_eq!(crate::enrich::Enricher::new(10).agent(ua, false).bot, None);
        c.extra_bot_patterns = vec!["acmeprobe/".into()];
        assert_eq!(c.enricher().agent(ua, false).bot, Some(crate::enrich::reason::USER_AGENT));
    }
}

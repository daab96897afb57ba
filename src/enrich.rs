//! Enrichment at receipt, once per batch: is the sender a bot, and what does
//! its user agent say (browser, OS, device). Bots are flagged, not dropped
//! (`[enrich] bots = "flag"`, the default): their events are stored with
//! `is_bot` and `bot_reason`, so what was set aside can be seen and counted.
//!
//! - Bot patterns: the `isbot` crate (one compiled regular expression of 300+
//!   patterns, tested by its authors on 12 k bot and 180 k browser user
//!   agents, so real browsers are not taken for bots).
//! - User agents: the `woothee` crate (Project Woothee's dataset compiled in:
//!   nothing to load at start; `uaparser` needs the uap-core regexes file at
//!   run time and, in woothee's own published benchmark, parses ~40× slower;
//!   not compared here).
//! - A bounded cache (`quick_cache`) keeps the answer for repeated user agents:
//!   one site's visitors send a few hundred distinct strings.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::watch::modified;

/// Why a batch is taken for a bot's (stored as `bot_reason`).
pub mod reason {
    /// The tracker reported `navigator.webdriver` (Selenium, Playwright, Puppeteer).
    pub const WEBDRIVER: &str = "webdriver";
    /// A headless browser's user agent (`HeadlessChrome`, PhantomJS…).
    pub const HEADLESS: &str = "headless";
    /// No `User-Agent` header at all: no browser sends none.
    pub const NO_USER_AGENT: &str = "no_user_agent";
    /// The user agent matches a known crawler, tool or library.
    pub const USER_AGENT: &str = "user_agent";
}

/// Tokens of headless browsers and automation kept apart from crawlers.
const HEADLESS_TOKENS: [&str; 4] = ["HeadlessChrome", "PhantomJS", "SlimerJS", "Electron/"];

/// What a batch's user agent (and the tracker's signals) come to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Agent {
    /// Why this is a bot; `None` for a browser.
    #[serde(skip)]
    pub bot: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// `desktop`, `mobile`, `feature_phone`, `appliance`, `crawler` or `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'static str>,
}

impl Agent {
    /// Whether any parsed field is known (the record's `agent` object is left out otherwise).
    pub fn is_known(&self) -> bool {
        self.browser.is_some() || self.os.is_some() || self.device.is_some()
    }
}

/// Bot detection and user-agent parsing with a bounded cache; shared by the receipt threads.
pub struct Enricher {
    bots: isbot::Bots,
    parser: woothee::parser::Parser,
    cache: quick_cache::sync::Cache<Box<str>, Arc<Agent>>,
    /// What every batch without a `User-Agent` gets.
    no_user_agent: Arc<Agent>,
}

impl Enricher {
    /// An enricher caching up to `cache_entries` distinct user agents.
    pub fn new(cache_entries: usize) -> Self {
        Self::with_bot_patterns(cache_entries, &[])
    }

    /// An enricher whose bot list is `isbot`'s plus `extra` (regular
    /// expressions, matched case-insensitively; each must compile).
    pub fn with_bot_patterns(cache_entries: usize, extra: &[String]) -> Self {
        let mut bots = isbot::Bots::default();
        if !extra.is_empty() {
            bots.append(&extra.iter().map(String::as_str).collect::<Vec<_>>());
        }
        Enricher {
            bots,
            parser: woothee::parser::Parser::new(),
            cache: quick_cache::sync::Cache::new(cache_entries.max(1)),
            no_user_agent: Arc::new(Agent { bot: Some(reason::NO_USER_AGENT), ..Agent::default() }),
        }
    }

    /// The agent of a batch sent with `user_agent` (`None`: no header) whose
    /// tracker reported `webdriver`.
    pub fn agent(&self, user_agent: Option<&str>, webdriver: bool) -> Arc<Agent> {
        let parsed = match user_agent {
            None => self.no_user_agent.clone(),
            Some(ua) => match self.cache.get(ua) {
                Some(a) => a,
                None => {
                    let a = Arc::new(self.parse(ua));
                    self.cache.insert(ua.into(), a.clone());
                    a
                }
            },
        };
        if webdriver {
            return Arc::new(Agent { bot: Some(reason::WEBDRIVER), ..(*parsed).clone() });
        }
        parsed
    }

    fn parse(&self, ua: &str) -> Agent {
        let known = |s: &str| (!s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN).then(|| s.to_string());
        let mut agent = match self.parser.parse(ua) {
            Some(r) => Agent {
                bot: None,
                browser: known(r.name),
                browser_version: known(r.version),
                os: known(r.os),
                os_version: known(&r.os_version),
                device: Some(match r.category {
                    "pc" => "desktop",
                    "smartphone" => "mobile",
                    "mobilephone" => "feature_phone",
                    "appliance" => "appliance",
                    "crawler" => "crawler",
                    _ => "other",
                }),
            },
            None => Agent::default(),
        };
        agent.bot = if HEADLESS_TOKENS.iter().any(|t| ua.contains(t)) {
            Some(reason::HEADLESS)
        } else if self.bots.is_bot(ua) || agent.device == Some("crawler") {
            Some(reason::USER_AGENT)
        } else {
            None
        };
        agent
    }
}

/// Where a client IP is, from a MaxMind-format database (GeoLite2-City or GeoIP2-City).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Place {
    /// ISO 3166-1 alpha-2 (`FR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The most specific subdivision's English name (`Île-de-France`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The city's English name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
}

/// The part of a City record read (serde: any other field is skipped).
#[derive(serde::Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
}

#[derive(serde::Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

impl Named<'_> {
    fn english(&self) -> Option<String> {
        self.names.as_ref().and_then(|n| n.get("en")).map(|s| s.to_string())
    }
}

/// A GeoIP database file, read once and again whenever it changes (the
/// weekly GeoLite2 update replaces it in place).
pub struct GeoIp {
    path: PathBuf,
    reader: ArcSwapOption<maxminddb::Reader<Vec<u8>>>,
    loaded: std::sync::Mutex<Option<SystemTime>>,
}

impl GeoIp {
    /// Opens `path` (`enrich.geoip_db`); an unreadable file is an error naming it.
    pub fn open(path: &Path) -> Result<Self, String> {
        let geo = GeoIp { path: path.to_path_buf(), reader: ArcSwapOption::empty(), loaded: std::sync::Mutex::new(None) };
        geo.load()?;
        Ok(geo)
    }

    fn load(&self) -> Result<(), String> {
        let stamp = modified(&self.path);
        let reader = maxminddb::Reader::open_readfile(&self.path)
            .map_err(|e| format!("enrich.geoip_db: {}: not a MaxMind DB file: {e}", self.path.display()))?;
        self.reader.store(Some(Arc::new(reader)));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
        Ok(())
    }

    /// Reads the file again if it changed since it was loaded; a file that
    /// does not read keeps the previous database (and says why).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = modified(&self.path);
        if now.is_none() || now == *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        self.load().map(|()| true)
    }

    /// Where `ip` (the full address: call before anonymising) is; `None` when
    /// the database does not know it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Place> {
        let reader = self.reader.load_full()?;
        let found = reader.lookup(ip).ok()?;
        let record: CityRecord<'_> = found.decode().ok()??;
        let place = Place {
            country: record.country.and_then(|c| c.iso_code).map(str::to_string),
            region: record.subdivisions.as_ref().and_then(|s| s.last()).and_then(Named::english),
            city: record.city.as_ref().and_then(Named::english),
        };
        (place != Place::default()).then_some(place)
    }

    /// Where every address of the block `ip`/`prefix_len` is (an address
    /// stored anonymised: the block's first address): `Some` when the database
    /// gives the whole block one answer (its network for `ip` is the block or
    /// wider; `Some(None)`: it knows none of it), `None` when it splits the
    /// block, so the place of the address that was anonymised cannot be told.
    pub fn lookup_block(&self, ip: IpAddr, prefix_len: u8) -> Option<Option<Place>> {
        let reader = self.reader.load_full()?;
        let found = reader.lookup(ip).ok()?;
        if found.network().ok()?.prefix() > prefix_len {
            return None;
        }
        let Ok(Some(record)) = found.decode::<CityRecord<'_>>() else { return Some(None) };
        let place = Place {
            country: record.country.and_then(|c| c.iso_code).map(str::to_string),
            region: record.subdivisions.as_ref().and_then(|s| s.last()).and_then(Named::english),
            city: record.city.as_ref().and_then(Named::english),
        };
        Some((place != Place::default()).then_some(place))
    }

    /// Checks the file every `every` on a thread of its own, for the life of the process.
    pub fn watch(self: Arc<Self>, every: Duration) {
        let spawned = std::thread::Builder::new().name("geoip-watch".into()).spawn(move || loop {
            std::thread::sleep(every);
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(path = %self.path.display(), "GeoIP database reloaded."),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "GeoIP database changed but does not read; the previous one stays."),
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start the GeoIP watcher; the database will not be reloaded.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User agents as crawlers, tools and browsers send them.
    const CRAWLERS: [&str; 8] = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "curl/8.5.0",
        "python-requests/2.31.0",
        "Go-http-client/1.1",
    ];
    const BROWSERS: [&str; 5] = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    ];

    #[test]
    fn crawlers_are_flagged_and_browsers_are_not() {
        let e = Enricher::new(100);
        for ua in CRAWLERS {
            assert_eq!(e.agent(Some(ua), false).bot, Some(reason::USER_AGENT), "{ua}");
        }
        for ua in BROWSERS {
            assert_eq!(e.agent(Some(ua), false).bot, None, "{ua}");
        }
        assert_eq!(e.agent(None, false).bot, Some(reason::NO_USER_AGENT));
        let headless = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36";
        assert_eq!(e.agent(Some(headless), false).bot, Some(reason::HEADLESS));
        // A real browser driven by automation says so through the tracker.
        assert_eq!(e.agent(Some(BROWSERS[0]), true).bot, Some(reason::WEBDRIVER));
        assert_eq!(e.agent(Some(BROWSERS[0]), false).bot, None, "the cached answer is not changed by a webdriver batch");
    }

    #[test]
    fn user_agents_parse_into_browser_os_and_device() {
        let e = Enricher::new(100);
        let chrome = e.agent(Some(BROWSERS[0]), false);
        assert_eq!((chrome.browser.as_deref(), chrome.os.as_deref(), chrome.device), (Some("Chrome"), Some("Windows 10"), Some("desktop")));
        assert_eq!(chrome.browser_version.as_deref(), Some("131.0.0.0"));
        let iphone = e.agent(Some(BROWSERS[2]), false);
        assert_eq!((iphone.browser.as_deref(), iphone.os.as_deref(), iphone.device), (Some("Safari"), Some("iPhone"), Some("mobile")));
        let firefox = e.agent(Some(BROWSERS[1]), false);
        assert_eq!((firefox.browser.as_deref(), firefox.os.as_deref()), (Some("Firefox"), Some("Linux")));
        assert!(!e.agent(None, false).is_known());
    }

    #[test]
    fn the_cache_is_bounded_and_answers_the_same() {
        let e = Enricher::new(2);
        let first = e.agent(Some(BROWSERS[0]), false);
        for ua in BROWSERS.iter().chain(CRAWLERS.iter()) {
            e.agent(Some(ua), false);
        }
        assert!(e.cache.len() <= 2, "{} entries", e.cache.len());
        assert_eq!(*e.agent(Some(BROWSERS[0]), false), *first);
    }
}

//! Today's enrichment applied to one stored event (pure): what its bot flag,
//! user agent and place come to from what was stored — the batch page's
//! `user_agent` and the anonymised `client_ip` — and what cannot be told again.

use std::net::IpAddr;

use crate::enrich::{reason, Enricher, GeoIp};

/// The enrichment columns of an event table, in this order (`Enrichment`'s fields).
pub const COLUMNS: [&str; 10] =
    ["is_bot", "bot_reason", "browser", "browser_version", "os", "os_version", "device_type", "country", "region", "city"];

/// The stages `--only` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stages {
    pub bots: bool,
    pub agent: bool,
    pub geo: bool,
}

impl Stages {
    pub const ALL: Stages = Stages { bots: true, agent: true, geo: true };

    /// `bots,agent,geo` (any of them, in any order).
    pub fn parse(s: &str) -> Result<Stages, String> {
        let mut st = Stages::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "bots" => st.bots = true,
                "agent" => st.agent = true,
                "geo" => st.geo = true,
                other => return Err(format!("--only: unknown stage {other:?}; the stages are bots, agent, geo")),
            }
        }
        if st == Stages::default() {
            return Err("--only: name at least one stage (bots, agent, geo)".into());
        }
        Ok(st)
    }

    pub fn names(&self) -> Vec<&'static str> {
        [(self.bots, "bots"), (self.agent, "agent"), (self.geo, "geo")].into_iter().filter(|(on, _)| *on).map(|(_, n)| n).collect()
    }
}

/// An event's enrichment columns ([`COLUMNS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Enrichment {
    pub is_bot: bool,
    pub bot_reason: Option<String>,
    pub browser: Option<String>,
    pub browser_version: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub device_type: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

impl Enrichment {
    fn agent(&self) -> [&Option<String>; 5] {
        [&self.browser, &self.browser_version, &self.os, &self.os_version, &self.device_type]
    }

    fn place(&self) -> [&Option<String>; 3] {
        [&self.country, &self.region, &self.city]
    }
}

/// What reprocessing found and changed, in events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: i64,
    /// Events with any column changed.
    pub changed: i64,
    /// Events whose `is_bot` or `bot_reason` changed; of them, newly flagged and no longer flagged.
    pub bot: i64,
    pub flagged: i64,
    pub cleared: i64,
    /// Events whose browser, OS or device (or a version) changed.
    pub agent: i64,
    /// Events whose country, region or city changed.
    pub geo: i64,
    /// Events whose batch page holds no `user_agent`: bot flag and agent kept.
    pub no_user_agent: i64,
    /// Events without a stored address, or whose /24 (/48) the database splits: place kept.
    pub no_place: i64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        for (a, b) in self.fields_mut().into_iter().zip(o.fields()) {
            *a += b;
        }
    }

    /// The counts in `chronos.reprocess_steps`' column order (`events` … `no_place`).
    pub fn fields(&self) -> [i64; 9] {
        [self.events, self.changed, self.bot, self.flagged, self.cleared, self.agent, self.geo, self.no_user_agent, self.no_place]
    }

    fn fields_mut(&mut self) -> [&mut i64; 9] {
        [
            &mut self.events,
            &mut self.changed,
            &mut self.bot,
            &mut self.flagged,
            &mut self.cleared,
            &mut self.agent,
            &mut self.geo,
            &mut self.no_user_agent,
            &mut self.no_place,
        ]
    }

    pub fn from_fields(f: [i64; 9]) -> Counts {
        let mut c = Counts::default();
        for (a, b) in c.fields_mut().into_iter().zip(f) {
            *a = b;
        }
        c
    }
}

/// The columns of `chronos.reprocess_steps` that [`Counts::fields`] fills.
pub const COUNT_COLUMNS: [&str; 9] = ["events", "changed", "bot", "flagged", "cleared", "agent", "geo", "no_user_agent", "no_place"];

/// Today's rules: the bot list and user-agent parser, the GeoIP database.
pub struct Rules {
    pub stages: Stages,
    enricher: Enricher,
    geo: Option<GeoIp>,
}

impl Rules {
    /// `geo` is None without `enrich.geoip_db` (the geo stage is then off).
    pub fn new(stages: Stages, enricher: Enricher, geo: Option<GeoIp>) -> Rules {
        let stages = Stages { geo: stages.geo && geo.is_some(), ..stages };
        Rules { stages, enricher, geo }
    }

    /// `old` re-enriched, for `n` events of a batch whose page had
    /// `user_agent` and whose stored (anonymised) address is `client_ip`;
    /// counted into `counts`.
    pub fn apply(&self, old: &Enrichment, user_agent: Option<&str>, client_ip: Option<&str>, n: i64, counts: &mut Counts) -> Enrichment {
        let mut new = old.clone();
        counts.events += n;
        if self.stages.bots || self.stages.agent {
            self.agent_of(old, user_agent, n, counts, &mut new);
        }
        if self.stages.geo {
            match self.place_of(client_ip) {
                Some(place) => [new.country, new.region, new.city] = place,
                None => counts.no_place += n,
            }
        }
        count_change(old, &new, n, counts);
        new
    }

    fn agent_of(&self, old: &Enrichment, user_agent: Option<&str>, n: i64, counts: &mut Counts, new: &mut Enrichment) {
        // No User-Agent header at receipt: nothing was parsed then, and the
        // page's string is not what the request sent.
        if old.bot_reason.as_deref() == Some(reason::NO_USER_AGENT) {
            return;
        }
        let Some(ua) = user_agent else {
            counts.no_user_agent += n;
            return;
        };
        // Cut as receipt cuts the header.
        let ua = match ua.char_indices().nth(crate::payload::MAX_USER_AGENT_CHARS) {
            Some((at, _)) => &ua[..at],
            None => ua,
        };
        // The tracker's webdriver report is kept only as the reason.
        let agent = self.enricher.agent(Some(ua), old.bot_reason.as_deref() == Some(reason::WEBDRIVER));
        if self.stages.bots {
            new.is_bot = agent.bot.is_some();
            new.bot_reason = agent.bot.map(str::to_string);
        }
        if self.stages.agent {
            new.browser.clone_from(&agent.browser);
            new.browser_version.clone_from(&agent.browser_version);
            new.os.clone_from(&agent.os);
            new.os_version.clone_from(&agent.os_version);
            new.device_type = agent.device.map(str::to_string);
        }
    }

    /// Country, region, city of the stored block; None when that cannot be told.
    fn place_of(&self, client_ip: Option<&str>) -> Option<[Option<String>; 3]> {
        let ip: IpAddr = client_ip?.parse().ok()?;
        // What receipt keeps: /24 of an IPv4 address, /48 of an IPv6 one.
        let block = if ip.is_ipv4() { 24 } else { 48 };
        let place = self.geo.as_ref()?.lookup_block(ip, block)?.unwrap_or_default();
        Some([place.country, place.region, place.city])
    }
}

fn count_change(old: &Enrichment, new: &Enrichment, n: i64, counts: &mut Counts) {
    if old == new {
        return;
    }
    counts.changed += n;
    if (old.is_bot, &old.bot_reason) != (new.is_bot, &new.bot_reason) {
        counts.bot += n;
        match (old.is_bot, new.is_bot) {
            (false, true) => counts.flagged += n,
            (true, false) => counts.cleared += n,
            _ => {}
        }
    }
    if old.agent() != new.agent() {
        counts.agent += n;
    }
    if old.place() != new.place() {
        counts.geo += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn chrome() -> Enrichment {
        let s = |v: &str| Some(v.to_string());
        Enrichment {
            browser: s("Chrome"),
            browser_version: s("131.0.0.0"),
            os: s("Windows 10"),
            device_type: s("desktop"),
            os_version: s("NT 10.0"),
            ..Enrichment::default()
        }
    }

    #[test]
    fn the_columns_are_the_tables_enrichment_columns() {
        let base: Vec<&str> = crate::store::schema::BASE_COLUMNS[crate::store::schema::ENRICHMENT_COLUMNS].iter().map(|(n, _)| *n).collect();
        assert_eq!(&base[..COLUMNS.len()], COLUMNS, "user_id (after them) is not enrichment");
    }

    #[test]
    fn a_new_bot_pattern_flags_stored_events_and_counts_them() {
        let rules = Rules::new(Stages::ALL, Enricher::with_bot_patterns(10, &["windows nt".into()]), None);
        let mut c = Counts::default();
        let new = rules.apply(&chrome(), Some(CHROME), Some("203.0.113.0"), 6, &mut c);
        assert_eq!((new.is_bot, new.bot_reason.as_deref(), new.browser.as_deref()), (true, Some("user_agent"), Some("Chrome")));
        assert_eq!(c, Counts { events: 6, changed: 6, bot: 6, flagged: 6, ..Counts::default() }, "geo is off without a database");
        // The same list again changes nothing.
        let mut again = Counts::default();
        assert_eq!(rules.apply(&new, Some(CHROME), None, 6, &mut again), new);
        assert_eq!(again, Counts { events: 6, ..Counts::default() });
        // Without it the flag is cleared.
        let mut back = Counts::default();
        assert_eq!(Rules::new(Stages::ALL, Enricher::new(10), None).apply(&new, Some(CHROME), None, 2, &mut back), chrome());
        assert_eq!((back.bot, back.cleared, back.agent), (2, 2, 0));
    }

    #[test]
    fn what_was_not_stored_is_kept_and_counted() {
        let rules = Rules::new(Stages::ALL, Enricher::with_bot_patterns(10, &["windows nt".into()]), None);
        let mut c = Counts::default();
        // No page user agent: nothing to parse again.
        assert_eq!(rules.apply(&chrome(), None, None, 3, &mut c), chrome());
        // No User-Agent header at receipt: the flag stays, the page's string is not read.
        let no_ua = Enrichment { is_bot: true, bot_reason: Some(reason::NO_USER_AGENT.into()), ..Enrichment::default() };
        assert_eq!(rules.apply(&no_ua, Some(CHROME), None, 4, &mut c), no_ua);
        assert_eq!(c, Counts { events: 7, no_user_agent: 3, ..Counts::default() });
        // A webdriver batch stays a bot's for that reason, its agent re-read.
        let webdriver = Enrichment { is_bot: true, bot_reason: Some(reason::WEBDRIVER.into()), ..Enrichment::default() };
        let new = rules.apply(&webdriver, Some(CHROME), None, 1, &mut c);
        assert_eq!((new.bot_reason.as_deref(), new.browser.as_deref()), (Some("webdriver"), Some("Chrome")));
    }

    #[test]
    fn only_the_stages_asked_change() {
        let rules = Rules::new(Stages::parse("agent").unwrap(), Enricher::with_bot_patterns(10, &["windows nt".into()]), None);
        let mut c = Counts::default();
        let old = Enrichment { browser: Some("Old".into()), ..Enrichment::default() };
        let new = rules.apply(&old, Some(CHROME), None, 1, &mut c);
        assert_eq!(new, chrome(), "the bot flag is not the agent stage's");
        assert_eq!((c.agent, c.bot), (1, 0));
        assert!(Stages::parse("bots,nope").unwrap_err().contains("unknown stage \"nope\""));
        assert!(Stages::parse(",").is_err());
        assert_eq!(Stages::parse("geo, bots").unwrap().names(), ["bots", "geo"]);
    }

    /// A City database of `(network, country)`, written to a temp file.
    fn city_db(dir: &std::path::Path, entries: &[(&str, &str)]) -> GeoIp {
        let mut w = mmdb_writer::Writer::new("GeoLite2-City");
        for (net, country) in entries {
            let record = serde_json::json!({"country": {"iso_code": country}, "city": {"names": {"en": format!("{country} city")}}});
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record).unwrap();
        }
        let path = dir.join("city.mmdb");
        std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
        GeoIp::open(&path).unwrap()
    }

    #[test]
    fn the_place_is_recomputed_only_where_the_database_gives_the_stored_block_one_answer() {
        let dir = tempfile::tempdir().unwrap();
        let db = city_db(dir.path(), &[("198.51.100.0/23", "NL"), ("203.0.113.64/28", "FR"), ("2001:db8::/32", "DE")]);
        let rules = Rules::new(Stages::parse("geo").unwrap(), Enricher::new(10), Some(db));
        let old = Enrichment { country: Some("XX".into()), ..Enrichment::default() };
        let place = |ip: Option<&str>, c: &mut Counts| rules.apply(&old, None, ip, 1, c).country;
        let mut c = Counts::default();
        assert_eq!(place(Some("198.51.100.0"), &mut c).as_deref(), Some("NL"), "a /23 holds the whole /24");
        assert_eq!(place(Some("2001:db8:1::"), &mut c).as_deref(), Some("DE"), "a /32 holds the whole /48");
        assert_eq!(place(Some("192.0.2.0"), &mut c), None, "the database knows none of that /24: NULL, as receipt would store");
        assert_eq!((c.geo, c.no_place), (3, 0));
        // 203.0.113.0/24 is split (.64/28 is FR, the rest unknown): which address was stored is not known.
        assert_eq!(place(Some("203.0.113.0"), &mut c).as_deref(), Some("XX"));
        assert_eq!(place(None, &mut c).as_deref(), Some("XX"));
        assert_eq!(place(Some("not an address"), &mut c).as_deref(), Some("XX"));
        assert_eq!((c.geo, c.no_place, c.no_user_agent), (3, 3, 0), "the geo stage reads no user agent");
    }

    #[test]
    fn a_long_user_agent_is_cut_as_receipt_cuts_it() {
        let rules = Rules::new(Stages::ALL, Enricher::with_bot_patterns(10, &["tailmarker".into()]), None);
        let long = format!("{CHROME}{}tailmarker", " ".repeat(600));
        let mut c = Counts::default();
        assert!(!rules.apply(&chrome(), Some(&long), None, 1, &mut c).is_bot, "the pattern is past 512 characters");
    }
}

//! Encodes the Kafka record v1 of an accepted batch and the dead-letter record
//! of its rejected events (docs/kafka-record.md). Plain JSON, so that any
//! Kafka consumer can read it without Chronos code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use super::{Envelope, Validated};
use crate::catalog::EventCatalog;

/// Drops the host part: the last octet of IPv4 (/24), all but the first 48 bits of IPv6.
pub fn anonymise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => anonymise(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

/// Facts the server adds to every record.
#[derive(Debug, Clone)]
pub struct ServerFacts<'a> {
    /// Receive time at chronosd, ms since the Unix epoch.
    pub received_at: i64,
    /// Client IP, already anonymised (`None`: an imported event without one).
    pub client_ip: Option<IpAddr>,
    /// Public id of the write key used (never the key itself).
    pub key_id: &'a str,
    /// `User-Agent` request header, truncated.
    pub user_agent: Option<&'a str>,
    /// Historical import: the loaders keep its times as given and its batch id for good.
    pub imported: bool,
    /// What the user agent and the tracker's signals say (`None`: not enriched).
    pub agent: Option<&'a crate::enrich::Agent>,
    /// Where the client IP is (looked up before it was anonymised).
    pub place: Option<&'a crate::enrich::Place>,
}

#[derive(Serialize)]
struct Common<'a> {
    v: u8,
    batch_id: uuid::fmt::Hyphenated,
    session_id: &'a str,
    /// The user the site named (`chronos.identify`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    key_id: &'a str,
    sent_at: i64,
    received_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    page: &'a Value<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    imported: bool,
    /// Why the sender is taken for a bot; absent for a browser.
    #[serde(skip_serializing_if = "Option::is_none")]
    bot: Option<&'a str>,
    /// Browser, OS and device parsed from `user_agent`, when any is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a crate::enrich::Agent>,
    /// Country, region and city of the client IP, when the GeoIP database knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    geo: Option<&'a crate::enrich::Place>,
}

impl<'a> Common<'a> {
    fn new(env: &'a Envelope<'a>, facts: &'a ServerFacts<'a>) -> Self {
        Common {
            v: 1,
            batch_id: env.batch_id.hyphenated(),
            session_id: env.session,
            user_id: env.user,
            key_id: facts.key_id,
            sent_at: env.sent_at,
            received_at: facts.received_at,
            client_ip: facts.client_ip,
            user_agent: facts.user_agent,
            page: env.page,
            imported: facts.imported,
            bot: facts.agent.and_then(|a| a.bot),
            agent: facts.agent.filter(|a| a.is_known()),
            geo: facts.place,
        }
    }
}

#[derive(Serialize)]
struct RecordV1<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    schema: Schema<'a>,
    events: Subset<'a>,
}

/// The accepted events, in batch order.
struct Subset<'a> {
    events: &'a [Value<'a>],
    positions: &'a [u32],
}

impl Serialize for Subset<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.positions.len()))?;
        for &i in self.positions {
            seq.serialize_element(&self.events[i as usize])?;
        }
        seq.end()
    }
}

/// Attribute names of each event type present, so the record is self-describing.
struct Schema<'a> {
    catalog: &'a EventCatalog,
    types: Vec<&'a str>,
}

impl Serialize for Schema<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.types.len()))?;
        for name in &self.types {
            let ty = self.catalog.get(name).expect("accepted events have catalog types");
            let names: Vec<&str> = ty.attributes.iter().map(|a| &*a.name).collect();
            map.serialize_entry(name, &names)?;
        }
        map.end()
    }
}

/// The record of the accepted events of a batch (`None` when none was accepted).
pub fn encode_record(env: &Envelope<'_>, validated: &Validated, facts: &ServerFacts<'_>, catalog: &EventCatalog) -> Option<Vec<u8>> {
    if validated.accepted.is_empty() {
        return None;
    }
    let mut types: Vec<&str> = Vec::with_capacity(catalog.types().len());
    for &i in &validated.accepted {
        let name = env.events[i as usize].get_idx(0).and_then(|v| v.as_str()).expect("validated");
        if !types.contains(&name) {
            types.push(name);
        }
    }
    let record = RecordV1 {
        common: Common::new(env, facts),
        schema: Schema { catalog, types },
        events: Subset { events: env.events, positions: &validated.accepted },
    };
    let mut out = Vec::with_capacity(256 + env.events.len() * 48);
    serde_json::to_writer(&mut out, &record).expect("serialising to a Vec cannot fail");
    Some(out)
}

#[derive(Serialize)]
struct DeadLetterV1<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    stage: &'static str,
    rejected: Rejected<'a>,
}

struct Rejected<'a> {
    events: &'a [Value<'a>],
    validated: &'a Validated,
}

impl Serialize for Rejected<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Item<'a> {
            position: usize,
            reason: &'a str,
            event: &'a Value<'a>,
        }
        let mut seq = s.serialize_seq(Some(self.validated.rejected.len()))?;
        for r in &self.validated.rejected {
            seq.serialize_element(&Item { position: r.index, reason: &r.reason, event: &self.events[r.index] })?;
        }
        seq.end()
    }
}

/// The dead-letter record of the rejected events of a batch (`None` when none was rejected).
pub fn encode_dead_letter(env: &Envelope<'_>, validated: &Validated, facts: &ServerFacts<'_>) -> Option<Vec<u8>> {
    if validated.rejected.is_empty() {
        return None;
    }
    let record = DeadLetterV1 { common: Common::new(env, facts), stage: "receipt", rejected: Rejected { events: env.events, validated } };
    Some(serde_json::to_vec(&record).expect("serialising to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;
    use crate::payload::{parse, validate_events, PayloadLimits};

    #[test]
    fn record_and_dead_letter_round_trip_as_plain_json() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let limits = PayloadLimits { max_events: 10, max_string_bytes: 100, max_session_bytes: 64, max_page_keys: 8 };
        let text = r#"{"v":1,"key":"k","batch":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","sent_at":1764000000500,
            "session":"s-1","page":{"url":"https://x.test/\u00e9","title":"Tab \"1\""},
            "events":[["mouse_moves",1764000000000,1,2],["mouse_moves",1764000000001,"bad",2],["clicks",1764000000002,"A",0,5,6,null]]}"#;
        let mut buf = text.as_bytes().to_vec();
        let root = parse(&mut buf).unwrap();
        let env = Envelope::from_value(&root, &limits).unwrap();
        let validated = validate_events(env.events, &catalog);
        let facts = ServerFacts {
            received_at: 1_764_000_001_000,
            client_ip: Some("203.0.113.0".parse().unwrap()),
            key_id: "site",
            user_agent: Some("UA"),
            imported: false,
            agent: None,
            place: None,
        };
        let record = encode_record(&env, &validated, &facts, &catalog).unwrap();
        // The fields present come in `record::COMMON`'s order, then schema and events.
        let text = std::str::from_utf8(&record).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":"));
        let order: Vec<usize> = crate::record::COMMON.iter().chain(&["schema", "events"]).filter_map(|k| at(k)).collect();
        assert_eq!(order.len(), 11, "{text}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "fields out of order: {text}");
        let r: serde_json::Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(r["v"], 1);
        assert_eq!(r["batch_id"], "0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e");
        assert_eq!(r["session_id"], "s-1");
        assert_eq!(r["client_ip"], "203.0.113.0");
        assert_eq!(r["received_at"], 1_764_000_001_000i64);
        assert_eq!(r["page"]["url"], "https://x.test/é");
        assert_eq!(r["page"]["title"], "Tab \"1\"");
        assert_eq!(r["events"], serde_json::json!([["mouse_moves", 1764000000000i64, 1, 2], ["clicks", 1764000000002i64, "A", 0, 5, 6, null]]));
        assert_eq!(r["schema"]["mouse_moves"], serde_json::json!(["x", "y"]));
        assert_eq!(r["schema"]["clicks"][0], "element");

        let dl: serde_json::Value = serde_json::from_slice(&encode_dead_letter(&env, &validated, &facts).unwrap()).unwrap();
        assert_eq!(dl["rejected"][0]["position"], 1);
        assert_eq!(dl["rejected"][0]["event"][2], "bad");
        assert!(dl["rejected"][0]["reason"].as_str().unwrap().starts_with("events[1][2] `x`"));
    }
}

//! Batches exactly as the tracker sends them (wire payload v1), pre-generated
//! as templates and stamped per request with a batch id, session and times.
//!
//! A template is the JSON body with fixed-width holes (batch id 36 bytes,
//! session 18 bytes, every time 13 digits), so stamping a request is a copy
//! plus a few in-place writes: no JSON encoding on the send path.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// The built-in event types (docs/wire-format.md, `built_in_events()`).
pub const EVENT_TYPES: [&str; 6] = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"];

/// The default mix: a browsing session is mostly mouse moves.
pub const DEFAULT_MIX: &str = "mouse_moves=55,clicks=15,key_presses=15,pageviews=5,link_clicks=5,form_submissions=5";

/// Relative weight of each event type in the generated batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(&'static str, u32)>);

impl Mix {
    /// Parses `pageviews=50,clicks=20,…` (built-in types only; weights are integers).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected type=weight"))?;
            let ty = EVENT_TYPES
                .iter()
                .find(|t| **t == name.trim())
                .ok_or_else(|| format!("`{name}` is not a built-in event type ({})", EVENT_TYPES.join(", ")))?;
            let w: u32 = weight.trim().parse().map_err(|_| format!("`{part}`: weight must be a non-negative integer"))?;
            if out.iter().any(|(t, _)| t == ty) {
                return Err(format!("`{name}` is listed twice"));
            }
            if w > 0 {
                out.push((*ty, w));
            }
        }
        if out.is_empty() {
            return Err("the mix has no event type with a weight above 0".into());
        }
        Ok(Mix(out))
    }

    /// The event types that can appear (their tables are the ones to verify).
    pub fn types(&self) -> Vec<&'static str> {
        self.0.iter().map(|(t, _)| *t).collect()
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> &'static str {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut r = rng.u32(0..total);
        for (t, w) in &self.0 {
            if r < *w {
                return t;
            }
            r -= w;
        }
        unreachable!("weights sum to total")
    }
}

/// Width of a time in ms since the epoch between 2001 and 2286.
const TIME_DIGITS: usize = 13;
const UUID_LEN: usize = 36;
/// `s_` and 16 hex digits.
pub const SESSION_LEN: usize = 18;

/// One pre-encoded batch body with the offsets of its holes.
#[derive(Debug, Clone)]
pub struct Template {
    body: Vec<u8>,
    batch_at: usize,
    session_at: usize,
    sent_at_at: usize,
    /// (offset of the time, ms before `sent_at`), one per event.
    times: Vec<(usize, u32)>,
    /// Events in the batch.
    pub events: u32,
}

impl Template {
    /// A batch of `events` events of `mix` on one page of `origin`, seeded by `seed`.
    pub fn generate(key: &str, origin: &str, mix: &Mix, events: u32, seed: u64) -> Template {
        let mut rng = fastrand::Rng::with_seed(seed);
        let page = page(origin, &mut rng);
        let mut body = String::with_capacity(96 + events as usize * 48);
        body.push_str("{\"v\":1,\"key\":");
        body.push_str(&Value::from(key).to_string());
        body.push_str(",\"batch\":\"");
        let batch_at = body.len();
        body.push_str(&"0".repeat(UUID_LEN));
        body.push_str("\",\"sent_at\":");
        let sent_at_at = body.len();
        body.push_str(&"1".repeat(TIME_DIGITS));
        body.push_str(",\"session\":\"");
        let session_at = body.len();
        body.push_str(&"s".repeat(SESSION_LEN));
        body.push_str("\",\"page\":");
        body.push_str(&page.to_string());
        body.push_str(",\"events\":[");
        // Events spread over the seconds before the send, oldest first.
        let mut ago: u32 = 500 + events * rng.u32(40..400);
        let mut times = Vec::with_capacity(events as usize);
        for i in 0..events {
            if i > 0 {
                body.push(',');
            }
            let ty = mix.pick(&mut rng);
            let _ = write!(body, "[\"{ty}\",");
            times.push((body.len(), ago));
            body.push_str(&"1".repeat(TIME_DIGITS));
            for a in attributes(ty, origin, &mut rng) {
                body.push(',');
                body.push_str(&a.to_string());
            }
            body.push(']');
            ago = ago.saturating_sub(rng.u32(20..400)).max(1);
        }
        body.push_str("]}");
        Template { body: body.into_bytes(), batch_at, session_at, sent_at_at, times, events }
    }

    /// The body of one request: this template with its holes filled.
    pub fn stamp(&self, batch_id: &uuid::Uuid, session: &[u8; SESSION_LEN], sent_at_ms: u64) -> Vec<u8> {
        let mut b = self.body.clone();
        batch_id.hyphenated().encode_lower(&mut b[self.batch_at..self.batch_at + UUID_LEN]);
        b[self.session_at..self.session_at + SESSION_LEN].copy_from_slice(session);
        write_digits(&mut b[self.sent_at_at..self.sent_at_at + TIME_DIGITS], sent_at_ms);
        for &(at, ago) in &self.times {
            write_digits(&mut b[at..at + TIME_DIGITS], sent_at_ms - ago as u64);
        }
        b
    }

    /// Bytes of a stamped body.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// Writes `v` as exactly `out.len()` decimal digits (zero-padded).
fn write_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A session id, `s_` and 16 hex digits, fixed for (`run`, `n`).
pub fn session_id(run: u64, n: u64) -> [u8; SESSION_LEN] {
    let mut out = [0u8; SESSION_LEN];
    out[..2].copy_from_slice(b"s_");
    let h = splitmix(run ^ splitmix(n));
    for (i, d) in out[2..].iter_mut().enumerate() {
        *d = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A version-4 UUID unique to (`run`, `n`), so the accepted batches of a run
/// are known from their numbers alone.
pub fn batch_id(run: u64, n: u64) -> uuid::Uuid {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&run.to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const PATHS: [&str; 8] =
    ["/", "/pricing", "/docs/start", "/blog/2026/11/launch", "/cart?step=2", "/products/42", "/search?q=shoes", "/account/settings"];
const TITLES: [&str; 8] =
    ["Home – Shop", "Pricing", "Getting started", "We launched", "Your cart – Shop", "Trail shoe 42", "Search: shoes", "Settings"];
const LANGUAGES: [&str; 5] = ["en-GB", "en-US", "de-DE", "fr-FR", "ja-JP"];
const ELEMENTS: [&str; 6] = ["BUTTON", "A", "DIV", "SPAN", "INPUT", "IMG"];
const SELECTORS: [&str; 4] = ["main>section.plans>button.buy", "nav>ul>li:nth-child(3)>a", "#search>input", "div.card>div.body>span.price"];
const KEYS: [&str; 6] = ["Enter", "Tab", "Escape", "ArrowDown", "Backspace", "ArrowUp"];

/// Page metadata as the tracker sends it (url, title, language, cookies_enabled).
fn page(origin: &str, rng: &mut fastrand::Rng) -> Value {
    let i = rng.usize(0..PATHS.len());
    json!({
        "url": format!("{origin}{}", PATHS[i]),
        "title": TITLES[i],
        "language": LANGUAGES[rng.usize(0..LANGUAGES.len())],
        "cookies_enabled": rng.u8(0..10) > 0,
    })
}

/// The attributes of one event of type `ty`, in catalog order, valid per the catalog.
fn attributes(ty: &str, origin: &str, rng: &mut fastrand::Rng) -> Vec<Value> {
    let coord = |rng: &mut fastrand::Rng, max: i64| Value::from(rng.i64(0..max));
    match ty {
        "pageviews" => {
            let nav = ["load", "push", "pop", "replace"][rng.usize(0..4)];
            let referrer = if rng.bool() { Value::Null } else { format!("{origin}{}", PATHS[rng.usize(0..PATHS.len())]).into() };
            vec![nav.into(), referrer]
        }
        "clicks" => {
            let selector = if rng.u8(0..4) == 0 { Value::Null } else { SELECTORS[rng.usize(0..SELECTORS.len())].into() };
            vec![ELEMENTS[rng.usize(0..ELEMENTS.len())].into(), rng.i64(0..3).into(), coord(rng, 1920), coord(rng, 4000), selector]
        }
        "link_clicks" => {
            let text: Value = ["Docs", "Read more", "Pricing", "Sign in"][rng.usize(0..4)].into();
            // Trailing nullable attributes may be omitted, as the tracker does for in-page links.
            if rng.u8(0..4) == 0 {
                vec![text]
            } else {
                vec![text, format!("{origin}{}", PATHS[rng.usize(0..PATHS.len())]).into()]
            }
        }
        "mouse_moves" => vec![coord(rng, 1920), coord(rng, 4000)],
        // Only non-character keys are recorded (privacy): null stands for a typed character.
        "key_presses" => {
            let key = if rng.bool() { Value::Null } else { KEYS[rng.usize(0..KEYS.len())].into() };
            vec![key, ["INPUT", "TEXTAREA"][rng.usize(0..2)].into()]
        }
        "form_submissions" => vec!["signup".into(), "/join".into(), json!(["email", "plan", "newsletter"])],
        other => unreachable!("`{other}` is not a built-in type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_refuses_unknown_types() {
        let m = Mix::parse("pageviews=50, clicks=20,mouse_moves=0").unwrap();
        assert_eq!(m.0, vec![("pageviews", 50), ("clicks", 20)]);
        assert!(Mix::parse("nope=1").unwrap_err().contains("nope"));
        assert!(Mix::parse("clicks=1,clicks=2").is_err());
        assert!(Mix::parse("clicks=0").is_err());
        assert!(Mix::parse("clicks").is_err());
    }

    #[test]
    fn stamped_bodies_are_wire_v1_with_the_mix_and_the_holes_filled() {
        let mix = Mix::parse("clicks=1,link_clicks=1").unwrap();
        let t = Template::generate("wk_0123456789abcdef", "https://shop.example.com", &mix, 50, 7);
        let id = batch_id(3, 99);
        let body = t.stamp(&id, &session_id(3, 5), 1_764_000_005_000);
        let v: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(v["v"], 1);
        assert_eq!(v["key"], "wk_0123456789abcdef");
        assert_eq!(v["batch"], id.to_string());
        assert_eq!(v["sent_at"], 1_764_000_005_000u64);
        assert_eq!(v["session"].as_str().unwrap().len(), SESSION_LEN);
        assert!(v["page"]["url"].as_str().unwrap().starts_with("https://shop.example.com/"));
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 50);
        let mut last = 0;
        for e in events {
            let ty = e[0].as_str().unwrap();
            assert!(ty == "clicks" || ty == "link_clicks", "{ty}");
            let t = e[1].as_u64().unwrap();
            assert!(t < 1_764_000_005_000 && t >= last, "times ascend and precede sent_at");
            last = t;
        }
    }

    #[test]
    fn batch_ids_are_unique_version_4() {
        let a = batch_id(1, 0);
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, batch_id(1, 1));
        assert_ne!(a, batch_id(2, 0));
        assert_eq!(session_id(1, 2), session_id(1, 2));
        assert_ne!(session_id(1, 2), session_id(1, 3));
    }
}

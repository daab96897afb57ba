//! The batch envelope: version, key, batch id, send time, session, page, events.

use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;
use uuid::Uuid;

use super::{PayloadLimits, MAX_PLAUSIBLE_MS, MIN_PLAUSIBLE_MS};

/// Why a whole batch was refused (400); nothing of it is kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed JSON at byte {offset}: {message}")]
    Malformed { offset: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// Refused before parsing: no value tree is built for it.
    #[error("JSON nested deeper than {limit} levels at byte {offset} (a v1 batch needs at most {limit})")]
    TooDeep { offset: usize, limit: usize },
}

fn invalid(path: &str, message: impl Into<String>) -> PayloadError {
    PayloadError::Invalid { path: path.to_string(), message: message.into() }
}

/// The checked envelope of one batch; borrows from the parsed buffer.
#[derive(Debug)]
pub struct Envelope<'v> {
    pub key: &'v str,
    pub batch_id: Uuid,
    pub sent_at: i64,
    pub session: &'v str,
    /// The page metadata object (scalars only, checked).
    pub page: &'v Value<'v>,
    pub events: &'v [Value<'v>],
    /// The tracker found `navigator.webdriver` set (an automated browser).
    pub webdriver: bool,
    /// The user the site named with `chronos.identify` (same rules as `session`).
    pub user: Option<&'v str>,
}

const FIELDS: [&str; 9] = ["v", "key", "batch", "sent_at", "session", "page", "events", "webdriver", "user"];

impl<'v> Envelope<'v> {
    /// Checks the envelope of a parsed batch. Events are checked one by one later.
    pub fn from_value(root: &'v Value<'v>, limits: &PayloadLimits) -> Result<Self, PayloadError> {
        let obj = root.as_object().ok_or_else(|| invalid("$", "a batch must be a JSON object"))?;
        if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_ref())) {
            // Echoed in the 400: at most 64 bytes of a name the client chose.
            return Err(invalid(truncate(k, 64), format!("unknown field (a v1 batch has {})", FIELDS.join(", "))));
        }
        if let Some(k) = first_duplicate(obj.keys().map(|k| k.as_ref())) {
            return Err(invalid(truncate(k, 64), "appears twice"));
        }
        let field = |name: &str| obj.get(name).ok_or_else(|| invalid(name, "missing"));

        match field("v")?.as_u64() {
            Some(1) => {}
            _ => return Err(invalid("v", "unsupported version; this server reads version 1")),
        }
        let key = field("key")?.as_str().ok_or_else(|| invalid("key", "expected a string"))?;
        if key.is_empty() {
            return Err(invalid("key", "must not be empty"));
        }
        let batch = field("batch")?.as_str().ok_or_else(|| invalid("batch", "expected a UUID string"))?;
        let batch_id = Uuid::try_parse(batch).map_err(|_| invalid("batch", "expected a UUID string"))?;
        let sent_at = plausible_ms(field("sent_at")?).map_err(|m| invalid("sent_at", m))?;
        let session = id_field("session", field("session")?, limits)?;
        let page = field("page")?;
        check_page(page, limits)?;
        let events = field("events")?.as_array().ok_or_else(|| invalid("events", "expected an array"))?;
        if events.is_empty() {
            return Err(invalid("events", "must hold at least one event"));
        }
        if events.len() > limits.max_events {
            return Err(invalid("events", format!("{} events is over the limit of {} per batch", events.len(), limits.max_events)));
        }
        let user = obj.get("user").map(|v| id_field("user", v, limits)).transpose()?;
        let webdriver = match obj.get("webdriver") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| invalid("webdriver", "expected true or false"))?,
        };
        Ok(Envelope { key, batch_id, sent_at, session, page, events: events.as_slice(), webdriver, user })
    }
}

/// A session or user id: 1 to `max_session_bytes` bytes of printable ASCII.
fn id_field<'v>(path: &str, v: &'v Value<'v>, limits: &PayloadLimits) -> Result<&'v str, PayloadError> {
    let id = v.as_str().ok_or_else(|| invalid(path, "expected a string"))?;
    if id.is_empty() || id.len() > limits.max_session_bytes {
        return Err(invalid(path, format!("must be 1 to {} bytes", limits.max_session_bytes)));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(path, "must be printable ASCII"));
    }
    Ok(id)
}

/// A time in ms since the epoch between 2000 and 2100.
pub fn plausible_ms(v: &Value<'_>) -> Result<i64, String> {
    let ms = v.as_i64().ok_or_else(|| "expected an integer time in ms since the Unix epoch".to_string())?;
    if !(MIN_PLAUSIBLE_MS..MAX_PLAUSIBLE_MS).contains(&ms) {
        return Err(format!("{ms} is not a plausible time in ms since the Unix epoch (years 2000-2099)"));
    }
    Ok(ms)
}

fn check_page(page: &Value<'_>, limits: &PayloadLimits) -> Result<(), PayloadError> {
    let obj = page.as_object().ok_or_else(|| invalid("page", "expected an object"))?;
    if obj.len() > limits.max_page_keys {
        return Err(invalid("page", format!("{} keys is over the limit of {}", obj.len(), limits.max_page_keys)));
    }
    if let Some(k) = first_duplicate(obj.keys().map(|k| k.as_ref())) {
        return Err(invalid(&format!("page.{}", truncate(k, 64)), "appears twice"));
    }
    match obj.get("url").and_then(|u| u.as_str()) {
        Some(u) if !u.is_empty() => {}
        _ => return Err(invalid("page.url", "missing or not a non-empty string")),
    }
    for (k, v) in obj.iter() {
        if k.contains('\0') || matches!(v, Value::String(s) if s.contains('\0')) {
            // PostgreSQL jsonb cannot hold NUL.
            return Err(invalid(&format!("page.{}", truncate(&k.replace('\0', "\\u0000"), 64)), "contains a NUL character"));
        }
        if k.is_empty() || k.len() > 64 {
            return Err(invalid("page", format!("key `{}` must be 1 to 64 bytes", truncate(k, 64))));
        }
        let ok = match v {
            Value::String(s) => s.len() <= limits.max_string_bytes,
            Value::Static(s) => s.as_f64().is_none_or(f64::is_finite),
            _ => false,
        };
        if !ok {
            return Err(invalid(
                &format!("page.{k}"),
                format!("must be a string of at most {} bytes, a number, a boolean or null", limits.max_string_bytes),
            ));
        }
    }
    Ok(())
}

/// The first key seen twice (objects here are small: a quadratic scan beats hashing).
fn first_duplicate<'k>(keys: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let mut seen: Vec<&'k str> = Vec::with_capacity(8);
    for k in keys {
        if seen.contains(&k) {
            return Some(k);
        }
        seen.push(k);
    }
    None
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::parse;

    fn limits() -> PayloadLimits {
        PayloadLimits { max_events: 3, max_string_bytes: 32, max_session_bytes: 16, max_page_keys: 4 }
    }

    const GOOD: &str = r#"{"v":1,"key":"k","batch":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","sent_at":1764000000000,"session":"s1","page":{"url":"https://x.test/"},"events":[["clicks",1764000000000]]}"#;

    fn check(json: &str) -> Result<(), PayloadError> {
        let mut buf = json.as_bytes().to_vec();
        let v = parse(&mut buf)?;
        Envelope::from_value(&v, &limits()).map(|_| ())
    }

    fn path_of(json: &str) -> String {
        match check(json) {
            Err(PayloadError::Invalid { path, .. }) => path,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn good_envelope() {
        let mut buf = GOOD.as_bytes().to_vec();
        let v = parse(&mut buf).unwrap();
        let e = Envelope::from_value(&v, &limits()).unwrap();
        assert_eq!(e.session, "s1");
        assert_eq!(e.sent_at, 1_764_000_000_000);
        assert_eq!(e.events.len(), 1);
    }

    #[test]
    fn malformed_json_names_the_offset() {
        match check(r#"{"v":1,"key":}"#) {
            Err(PayloadError::Malformed { offset, .. }) => assert!((7..=14).contains(&offset), "offset {offset}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_past_the_envelope_is_refused_before_parsing() {
        // A text_list attribute is the deepest a batch goes (4 levels).
        let list = GOOD.replace(r#"["clicks",1764000000000]"#, r#"["form_submissions",1764000000000,null,null,["a"]]"#);
        assert!(check(&list).is_ok(), "{:?}", check(&list));
        let deeper = GOOD.replace(r#"["clicks",1764000000000]"#, r#"["form_submissions",1764000000000,null,null,[["a"]]]"#);
        assert!(matches!(check(&deeper), Err(PayloadError::TooDeep { limit: 4, .. })), "{:?}", check(&deeper));
        let bomb = "[".repeat(500_000);
        assert_eq!(check(&bomb), Err(PayloadError::TooDeep { offset: 4, limit: 4 }));
    }

    #[test]
    fn an_unknown_field_is_echoed_truncated() {
        let long = "x".repeat(10_000);
        let path = path_of(&GOOD.replace(r#""v":1"#, &format!(r#""v":1,"{long}":0"#)));
        assert_eq!(path.len(), 64);
    }

    #[test]
    fn each_field_is_named() {
        assert_eq!(path_of(&GOOD.replace(r#""v":1"#, r#""v":2"#)), "v");
        assert_eq!(path_of(&GOOD.replace(r#""key":"k""#, r#""key":7"#)), "key");
        assert_eq!(path_of(&GOOD.replace("0b6f5e2c-", "zz")), "batch");
        assert_eq!(path_of(&GOOD.replace(r#""sent_at":1764000000000"#, r#""sent_at":17"#)), "sent_at");
        assert_eq!(path_of(&GOOD.replace(r#""s1""#, r#""0123456789abcdefg""#)), "session");
        assert_eq!(path_of(&GOOD.replace(r#""url":"https://x.test/""#, r#""title":"t""#)), "page.url");
        assert_eq!(path_of(&GOOD.replace(r#"{"url""#, r#"{"nested":{},"url""#)), "page.nested");
        assert_eq!(path_of(&GOOD.replace(r#"[["clicks",1764000000000]]"#, "[]")), "events");
        assert_eq!(path_of(&GOOD.replace(r#"[["clicks",1764000000000]]"#, "[1,2,3,4]")), "events");
        assert_eq!(path_of(&GOOD.replace(r#""v":1"#, r#""v":1,"extra":0"#)), "extra");
        assert_eq!(path_of("[1]"), "$");
        assert_eq!(path_of(&GOOD.replace(r#""url":"https://x.test/""#, r#""url":"https://x.test/","title":"a\u0000""#)), "page.title");
        assert_eq!(path_of(&GOOD.replace(r#""session":"s1""#, r#""session":"s1","session":"s2""#)), "session");
        assert_eq!(path_of(&GOOD.replace(r#"{"url":"https://x.test/""#, r#"{"url":"https://x.test/","url":"""#)), "page.url");
    }
}

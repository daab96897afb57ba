//! The event catalog: which event types are captured and their typed attributes.
//!
//! The catalog is part of the configuration (`[events.<name>]`). It drives
//! validation of incoming events, the attribute order on the wire and, later,
//! table DDL and the COPY column order. Names are validated once, at boot:
//! nothing taken from a request ever becomes an identifier.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Columns every event table has; attributes may not reuse these names.
pub const RESERVED_COLUMNS: &[&str] = &[
    "time",
    "client_time",
    "received_at",
    "sent_at",
    "session_id",
    "batch_id",
    "position",
    "metadata",
    "key_id",
    "client_ip",
    "time_flagged",
    "event_type",
    "is_bot",
    "bot_reason",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device_type",
    "country",
    "region",
    "city",
    "user_id",
];

/// Names of the six event types the tracker captures on its own.
pub const BUILT_IN: [&str; 6] = ["pageviews", "clicks", "link_clicks", "mouse_moves", "key_presses", "form_submissions"];

/// Type of one event attribute (the SQL type follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrType {
    /// UTF-8 string, at most `max_len` bytes. SQL `text`.
    Text,
    /// Integer within `[min, max]`. SQL `bigint`.
    Int,
    /// Finite number within `[min, max]`. SQL `double precision`.
    Float,
    /// `true`/`false`. SQL `boolean`.
    Bool,
    /// Array of strings (at most `max_items`, each at most `max_len` bytes). SQL `text[]`.
    TextList,
}

/// One typed attribute of an event type, as written in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeConfig {
    /// Column name: lower-case letters, digits and `_`, starting with a letter.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub ty: AttrType,
    /// Whether `null` (or omission at the end of the event array) is allowed.
    #[serde(default)]
    pub nullable: bool,
    /// Longest string in bytes (text, text_list); defaults to `limits.max_string_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u32>,
    /// Smallest accepted number (int, float); defaults to -2^53.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest accepted number (int, float); defaults to 2^53.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Most items in a text_list; defaults to 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u32>,
}

/// One event type of the catalog, as written in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeConfig {
    /// Captured (true) or refused as unknown (false).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Attributes in wire order: event arrays are `[type, client_time_ms, attr1, attr2, …]`.
    /// New attributes are only ever appended, so older trackers stay valid.
    #[serde(default)]
    pub attributes: Vec<AttributeConfig>,
}

fn yes() -> bool {
    true
}

fn attr(name: &str, ty: AttrType, nullable: bool, max_len: Option<u32>) -> AttributeConfig {
    AttributeConfig { name: name.into(), ty, nullable, max_len, min: None, max: None, max_items: None }
}

fn coord(name: &str) -> AttributeConfig {
    AttributeConfig { min: Some(-1_000_000.0), max: Some(10_000_000.0), ..attr(name, AttrType::Int, false, None) }
}

/// The built-in catalog: the six event types the tracker captures.
pub fn built_in_events() -> BTreeMap<String, EventTypeConfig> {
    use AttrType::*;
    let on = |attributes| EventTypeConfig { enabled: true, attributes };
    let mut m = BTreeMap::new();
    m.insert("pageviews".into(), on(vec![attr("navigation", Text, false, Some(16)), attr("referrer", Text, true, Some(2048))]));
    m.insert(
        "clicks".into(),
        on(vec![
            attr("element", Text, false, Some(64)),
            AttributeConfig { min: Some(0.0), max: Some(31.0), ..attr("buttons", Int, false, None) },
            coord("x"),
            coord("y"),
            attr("selector", Text, true, Some(512)),
        ]),
    );
    m.insert("link_clicks".into(), on(vec![attr("link_text", Text, true, Some(512)), attr("target_url", Text, true, Some(2048))]));
    m.insert("mouse_moves".into(), on(vec![coord("x"), coord("y")]));
    m.insert("key_presses".into(), on(vec![attr("key", Text, true, Some(32)), attr("element", Text, false, Some(64))]));
    m.insert(
        "form_submissions".into(),
        on(vec![
            attr("form_id", Text, true, Some(256)),
            attr("action", Text, true, Some(2048)),
            AttributeConfig { max_items: Some(256), ..attr("fields", TextList, false, Some(256)) },
        ]),
    );
    m
}

/// A validated attribute with every bound resolved.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: Box<str>,
    pub ty: AttrType,
    pub nullable: bool,
    pub max_len: usize,
    pub min: f64,
    pub max: f64,
    pub max_items: usize,
}

/// A validated, enabled event type.
#[derive(Debug, Clone)]
pub struct EventType {
    pub name: Box<str>,
    pub attributes: Vec<Attribute>,
}

/// The runtime catalog: enabled event types, looked up by wire name.
#[derive(Debug, Clone)]
pub struct EventCatalog {
    types: Vec<EventType>,
    /// `limits.max_string_bytes`: the longest page value.
    page_value_bytes: usize,
    /// `limits.max_session_bytes`: the longest session or user id (128 unless set).
    id_bytes: usize,
}

/// Largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INT: f64 = 9_007_199_254_740_991.0;

impl EventCatalog {
    /// Builds the runtime catalog from validated config (see `Config::validate`).
    pub fn from_config(events: &BTreeMap<String, EventTypeConfig>, max_string_bytes: u32) -> Self {
        let types = events
            .iter()
            .filter(|(_, t)| t.enabled)
            .map(|(name, t)| EventType {
                name: name.as_str().into(),
                attributes: t
                    .attributes
                    .iter()
                    .map(|a| Attribute {
                        name: a.name.as_str().into(),
                        ty: a.ty,
                        nullable: a.nullable,
                        max_len: a.max_len.unwrap_or(max_string_bytes) as usize,
                        min: a.min.unwrap_or(-MAX_SAFE_INT),
                        max: a.max.unwrap_or(MAX_SAFE_INT),
                        max_items: a.max_items.unwrap_or(64) as usize,
                    })
                    .collect(),
            })
            .collect();
        EventCatalog { types, page_value_bytes: max_string_bytes as usize, id_bytes: 128 }
    }

    /// The same catalog, knowing `limits.max_session_bytes` (for the bounds of view keys).
    pub fn with_id_bytes(mut self, id_bytes: u32) -> Self {
        self.id_bytes = id_bytes as usize;
        self
    }

    /// The longest page value (`limits.max_string_bytes`).
    pub fn page_value_bytes(&self) -> usize {
        self.page_value_bytes
    }

    /// The longest session or user id (`limits.max_session_bytes`).
    pub fn id_bytes(&self) -> usize {
        self.id_bytes
    }

    /// The enabled event type called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.types.iter().find(|t| &*t.name == name)
    }

    /// Enabled event types, by name.
    pub fn types(&self) -> &[EventType] {
        &self.types
    }
}

/// Checks a catalog identifier (event type or attribute name).
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("`{name}` is not a valid name: use lower-case letters, digits and `_`, starting with a letter"));
    }
    if name.len() > 48 {
        return Err(format!("`{name}` is longer than 48 bytes"));
    }
    Ok(())
}

/// Validates the catalog section; each error names the key (`events.<type>.attributes[i].…`).
pub fn validate_events(events: &BTreeMap<String, EventTypeConfig>) -> Vec<String> {
    let mut errors = Vec::new();
    if !events.values().any(|t| t.enabled) {
        errors.push("events: no event type is enabled".to_string());
    }
    for (name, t) in events {
        if let Err(e) = check_identifier(name) {
            errors.push(format!("events.{name}: {e}"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in t.attributes.iter().enumerate() {
            let key = format!("events.{name}.attributes[{i}]");
            if let Err(e) = check_identifier(&a.name) {
                errors.push(format!("{key}.name: {e}"));
            }
            if RESERVED_COLUMNS.contains(&a.name.as_str()) {
                errors.push(format!("{key}.name: `{}` is reserved for a column every event table has", a.name));
            }
            if !seen.insert(a.name.as_str()) {
                errors.push(format!("{key}.name: `{}` appears twice in `{name}`", a.name));
            }
            let numeric = matches!(a.ty, AttrType::Int | AttrType::Float);
            let stringy = matches!(a.ty, AttrType::Text | AttrType::TextList);
            if !numeric && (a.min.is_some() || a.max.is_some()) {
                errors.push(format!("{key}: min/max apply only to int and float attributes"));
            }
            if !stringy && a.max_len.is_some() {
                errors.push(format!("{key}.max_len: applies only to text and text_list attributes"));
            }
            if a.ty != AttrType::TextList && a.max_items.is_some() {
                errors.push(format!("{key}.max_items: applies only to text_list attributes"));
            }
            if let (Some(lo), Some(hi)) = (a.min, a.max) {
                if lo > hi {
                    errors.push(format!("{key}: min ({lo}) is greater than max ({hi})"));
                }
            }
            for (k, v) in [("min", a.min), ("max", a.max)] {
                if let Some(v) = v {
                    if !v.is_finite() || v.abs() > MAX_SAFE_INT {
                        errors.push(format!("{key}.{k}: must be a finite number within ±2^53"));
                    }
                }
            }
            if a.max_len == Some(0) {
                errors.push(format!("{key}.max_len: must be at least 1"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_valid_and_complete() {
        let events = built_in_events();
        assert!(validate_events(&events).is_empty(), "{:?}", validate_events(&events));
        for name in BUILT_IN {
            assert!(events.contains_key(name), "missing {name}");
        }
    }

    #[test]
    fn bad_identifiers_are_named() {
        let mut events = built_in_events();
        events.get_mut("clicks").unwrap().attributes[0].name = "Drop Table".into();
        events.insert("1bad".into(), EventTypeConfig { enabled: true, attributes: vec![] });
        let errors = validate_events(&events);
        assert!(errors.iter().any(|e| e.starts_with("events.clicks.attributes[0].name:")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("events.1bad:")), "{errors:?}");
    }

    #[test]
    fn reserved_and_duplicate_names_are_refused() {
        let mut events = built_in_events();
        let attrs = &mut events.get_mut("mouse_moves").unwrap().attributes;
        attrs[0].name = "time".into();
        attrs[1].name = "time".into();
        let errors = validate_events(&events);
        assert!(errors.iter().any(|e| e.contains("reserved")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("appears twice")), "{errors:?}");
    }

    #[test]
    fn disabled_types_are_not_in_the_runtime_catalog() {
        let mut events = built_in_events();
        events.get_mut("mouse_moves").unwrap().enabled = false;
        let catalog = EventCatalog::from_config(&events, 1024);
        assert!(catalog.get("mouse_moves").is_none());
        assert_eq!(catalog.get("clicks").unwrap().attributes.len(), 5);
    }
}

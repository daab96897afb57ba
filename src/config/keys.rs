//! `[[keys]]`: write keys, and the rules every key follows, whether it is
//! in the config file or stored in PostgreSQL (`chronos keys add`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::origin::OriginPattern;

/// A write key: what the tracker sends in `key`, and where it may be used.
/// `Debug` never shows `key` (a server key is a secret).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteKeyConfig {
    /// Short public name of the key, recorded with every batch (never the secret).
    pub id: String,
    /// The key itself (at least 16 characters).
    #[serde(default)]
    pub key: String,
    /// A file holding the key instead (systemd `LoadCredential=`, Docker secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Allowed page origins: `example.com`, `*.example.com`, `https://example.com:8443`.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Accept requests without an `Origin` header (server-side senders, curl).
    #[serde(default)]
    pub allow_no_origin: bool,
    /// `browser` (default): for pages, checked against `origins`; `server`:
    /// for back ends and `POST /v1/import`, never from a page (a request
    /// with an `Origin` header is refused).
    #[serde(default)]
    pub kind: KeyKind,
}

impl std::fmt::Debug for WriteKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKeyConfig")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("key_file", &self.key_file)
            .field("origins", &self.origins)
            .field("allow_no_origin", &self.allow_no_origin)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Who may use a write key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    #[default]
    Browser,
    Server,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Browser => "browser",
            KeyKind::Server => "server",
        }
    }
}

/// A key id's problem, if any: 1-64 letters, digits, `-`, `_`, `.`.
pub fn id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    (!ok).then(|| format!("`{id}` must be 1-64 letters, digits, - _ ."))
}

/// A key secret's problem, if any: 16-256 printable ASCII characters.
pub fn secret_problem(key: &str) -> Option<&'static str> {
    let ok = (16..=256).contains(&key.len()) && key.chars().all(|c| c.is_ascii_graphic());
    (!ok).then_some("must be 16-256 printable ASCII characters")
}

/// What can be wrong with a key's origins (each caller names its own setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginsProblem {
    /// A server key with origins: pages send an Origin, and server keys are refused from pages.
    ServerKeyWithOrigins,
    /// A browser key with no origin that does not allow requests without one: never usable.
    Unusable,
    /// Entry `index` does not parse.
    Pattern { index: usize, error: String },
}

/// The problems of a key's `origins` for its `kind`.
pub fn origins_problems(kind: KeyKind, origins: &[String], allow_no_origin: bool) -> Vec<OriginsProblem> {
    let mut problems = Vec::new();
    if kind == KeyKind::Server && !origins.is_empty() {
        problems.push(OriginsProblem::ServerKeyWithOrigins);
    } else if kind == KeyKind::Browser && origins.is_empty() && !allow_no_origin {
        problems.push(OriginsProblem::Unusable);
    }
    for (index, o) in origins.iter().enumerate() {
        if let Err(error) = OriginPattern::parse(o) {
            problems.push(OriginsProblem::Pattern { index, error });
        }
    }
    problems
}

/// What is wrong with `[[keys]]`, each naming its entry and key.
pub(super) fn errors(keys: &[WriteKeyConfig], errors: &mut Vec<String>) {
    let mut ids = std::collections::HashSet::new();
    let mut secrets = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        if let Some(p) = id_problem(&key.id) {
            errors.push(format!("{at}.id: {p}"));
        }
        if !ids.insert(&key.id) {
            errors.push(format!("{at}.id: `{}` is used by another key", key.id));
        }
        if let Some(p) = secret_problem(&key.key) {
            errors.push(format!("{at}.key: {p}"));
        }
        if !secrets.insert(&key.key) {
            errors.push(format!("{at}.key: the same key is listed twice"));
        }
        for p in origins_problems(key.kind, &key.origins, key.allow_no_origin) {
            errors.push(match p {
                OriginsProblem::ServerKeyWithOrigins => {
                    format!("{at}.origins: a server key takes no origins (it is refused from pages, which send an Origin)")
                }
                OriginsProblem::Unusable => format!("{at}.origins: empty and allow_no_origin = false, so this key can never be used"),
                OriginsProblem::Pattern { index, error } => format!("{at}.origins[{index}]: {error}"),
            });
        }
    }
}

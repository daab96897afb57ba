//! Write keys and their origin allowlists.
//!
//! A write key is public (it ships inside tracker.js), so it only says which
//! site a batch claims to come from; the origin allowlist is what keeps other
//! pages from writing with it. Requests without an `Origin` header (curl,
//! server-side senders) are refused unless the key allows them explicitly.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{KeyKind, WriteKeyConfig};
use crate::origin::{Origin, OriginPattern};

/// A write key ready for lookups.
#[derive(Debug, Clone)]
pub struct WriteKey {
    pub id: String,
    /// SHA-256 of the secret: the ring never holds a secret itself, and
    /// PostgreSQL stores only this (`chronos.write_keys.key_sha256`).
    digest: [u8; 32],
    origins: Vec<OriginPattern>,
    allow_no_origin: bool,
    pub kind: KeyKind,
    /// Stable per key (the per-key rate limit's bucket): config keys by
    /// position, stored keys after them by their row's slot.
    pub slot: usize,
}

impl WriteKey {
    /// A key with its origin patterns (config and stored keys were checked
    /// before; a pattern that no longer parses is skipped).
    fn new(id: String, digest: [u8; 32], origins: &[String], allow_no_origin: bool, kind: KeyKind, slot: usize) -> Self {
        let origins = origins.iter().filter_map(|o| OriginPattern::parse(o).ok()).collect();
        WriteKey { id, digest, origins, allow_no_origin, kind, slot }
    }

    /// A key from `chronos.write_keys` (its secret's SHA-256), by its row's slot.
    pub fn stored(id: String, digest: [u8; 32], origins: &[String], allow_no_origin: bool, kind: KeyKind, slot: usize) -> Self {
        WriteKey::new(id, digest, origins, allow_no_origin, kind, STORED_SLOTS + slot)
    }
}

/// SHA-256 of a key's secret. Keys are long and random (`wk_` + 128 random
/// bits from `chronos keys create`, at least 16 characters in any case), so a
/// plain digest is what is stored and compared, as for API tokens elsewhere;
/// a slow password hash would only cost every request.
pub fn key_digest(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// Slots below this are config keys; stored keys' slots start here.
const STORED_SLOTS: usize = 1 << 32;

/// Why a key may not be used from where the request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    Missing,
    NotAllowed,
    /// A server key used from a page.
    ServerKey,
}

impl WriteKey {
    /// Checks the request's `Origin` header against this key's allowlist.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), OriginRefusal> {
        if self.kind == KeyKind::Server {
            return if origin.is_some() { Err(OriginRefusal::ServerKey) } else { Ok(()) };
        }
        match origin {
            None if self.allow_no_origin => Ok(()),
            None => Err(OriginRefusal::Missing),
            Some(o) => match Origin::parse(o) {
                Some(o) if self.origins.iter().any(|p| p.matches(&o)) => Ok(()),
                _ => Err(OriginRefusal::NotAllowed),
            },
        }
    }
}

/// All valid write keys (several at once during a rotation): those of the
/// config, and those stored in PostgreSQL (`chronos keys`), which
/// [`KeyRing::set_stored`] replaces while chronosd runs. Clones share the
/// stored set.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    config: Arc<ArcSwap<Vec<Arc<WriteKey>>>>,
    stored: Arc<ArcSwap<Vec<Arc<WriteKey>>>>,
}

fn config_keys(keys: &[WriteKeyConfig]) -> Vec<Arc<WriteKey>> {
    keys.iter()
        .enumerate()
        .map(|(slot, k)| Arc::new(WriteKey::new(k.id.clone(), key_digest(&k.key), &k.origins, k.allow_no_origin, k.kind, slot)))
        .collect()
}

impl KeyRing {
    /// Builds the ring from validated config.
    pub fn from_config(keys: &[WriteKeyConfig]) -> Self {
        KeyRing { config: Arc::new(ArcSwap::from_pointee(config_keys(keys))), stored: Arc::default() }
    }

    /// Replaces the config file's keys (the file changed while chronosd runs).
    pub fn set_config(&self, keys: &[WriteKeyConfig]) {
        self.config.store(Arc::new(config_keys(keys)));
    }

    /// Replaces the stored keys (a revoked key stops working at once).
    pub fn set_stored(&self, keys: Vec<WriteKey>) {
        self.stored.store(Arc::new(keys.into_iter().map(Arc::new).collect()));
    }

    /// The key whose secret is `secret`.
    pub fn find(&self, secret: &str) -> Option<Arc<WriteKey>> {
        let digest = key_digest(secret);
        let matches = |k: &&Arc<WriteKey>| constant_time_eq(&k.digest, &digest);
        match self.config.load().iter().find(matches) {
            Some(k) => Some(k.clone()),
            None => self.stored.load().iter().find(matches).cloned(),
        }
    }

    /// Whether some key allows this origin (CORS preflight comes before the key is known).
    pub fn any_allows(&self, origin: &str) -> bool {
        let allows = |k: &Arc<WriteKey>| k.check_origin(Some(origin)).is_ok();
        self.config.load().iter().any(allows) || self.stored.load().iter().any(allows)
    }

    pub fn len(&self) -> usize {
        self.config.load().len() + self.stored.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_key_is_refused_from_pages_and_needs_no_origin() {
        let ring = KeyRing::from_config(&[WriteKeyConfig {
            id: "backend".into(),
            key: "0123456789abcdef".into(),
            key_file: None,
            origins: vec![],
            allow_no_origin: false,
            kind: KeyKind::Server,
        }]);
        let k = ring.find("0123456789abcdef").unwrap();
        assert_eq!(k.check_origin(None), Ok(()));
        assert_eq!(k.check_origin(Some("https://example.com")), Err(OriginRefusal::ServerKey));
        assert!(!ring.any_allows("https://example.com"), "no CORS preflight for a server key");
    }

    #[test]
    fn missing_origin_needs_explicit_permission() {
        let mk = |allow| {
            KeyRing::from_config(&[WriteKeyConfig {
                id: "a".into(),
                key: "0123456789abcdef".into(),
                key_file: None,
                origins: vec!["example.com".into()],
                allow_no_origin: allow,
                kind: KeyKind::Browser,
            }])
        };
        let strict = mk(false);
        let k = strict.find("0123456789abcdef").unwrap();
        assert_eq!(k.check_origin(None), Err(OriginRefusal::Missing));
        assert_eq!(k.check_origin(Some("null")), Err(OriginRefusal::NotAllowed));
        assert_eq!(k.check_origin(Some("https://example.com")), Ok(()));
        let lax = mk(true);
        assert_eq!(lax.find("0123456789abcdef").unwrap().check_origin(None), Ok(()));
        assert!(lax.find("0123456789abcdeF").is_none());
    }
}

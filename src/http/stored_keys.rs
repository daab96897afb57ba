//! Write keys kept in PostgreSQL (`chronos.write_keys`), managed with
//! `chronos keys create|list|revoke` while chronosd runs: chronosd reloads
//! them every `http.keys_refresh_secs`, so a new key works and a revoked one
//! stops working without a restart (rotation without downtime). Keys in the
//! config file are always valid as well.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::auth::{KeyRing, WriteKey};
use crate::config::{id_problem, origins_problems, secret_problem, KeyKind, OriginsProblem};

/// The table (made by the first `chronos keys` command or chronosd start). It
/// holds each key's SHA-256, never the key: `chronos keys create` prints the
/// key once. A table from before keys were hashed is converted in place.
pub const DDL: &str = "CREATE SCHEMA IF NOT EXISTS chronos;
CREATE TABLE IF NOT EXISTS chronos.write_keys (
    slot bigserial UNIQUE,
    id text PRIMARY KEY,
    key_sha256 bytea NOT NULL UNIQUE,
    origins text[] NOT NULL,
    allow_no_origin boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'chronos' AND table_name = 'write_keys' AND column_name = 'key') THEN
        ALTER TABLE chronos.write_keys ADD COLUMN IF NOT EXISTS key_sha256 bytea UNIQUE;
        UPDATE chronos.write_keys SET key_sha256 = sha256(convert_to(key, 'UTF8')) WHERE key_sha256 IS NULL;
        ALTER TABLE chronos.write_keys ALTER COLUMN key_sha256 SET NOT NULL, DROP COLUMN key;
    END IF;
END $$;
ALTER TABLE chronos.write_keys ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'browser' CHECK (kind IN ('browser', 'server'));";

/// One row of `chronos.write_keys`.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: String,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    pub origins: Vec<String>,
    pub allow_no_origin: bool,
    pub kind: KeyKind,
    pub created_at: String,
    pub revoked_at: Option<String>,
    slot: i64,
}

/// A new key: `wk_` and 32 random hex digits.
pub fn generate() -> String {
    format!("wk_{}", uuid::Uuid::new_v4().simple())
}

/// Checks a key before it is stored, with the rules of `[[keys]]` in the
/// config (`config::id_problem`, …), phrased for `chronos keys add`.
pub fn check(id: &str, key: &str, origins: &[String], allow_no_origin: bool, kind: KeyKind) -> Result<(), String> {
    if let Some(p) = id_problem(id) {
        return Err(format!("id {p}"));
    }
    if let Some(p) = secret_problem(key) {
        return Err(format!("the key {p}"));
    }
    match origins_problems(kind, origins, allow_no_origin).into_iter().next() {
        None => Ok(()),
        Some(OriginsProblem::ServerKeyWithOrigins) => Err("a server key takes no --origin (it is refused from pages, which send an Origin)".into()),
        Some(OriginsProblem::Unusable) => Err("no --origin and no --allow-no-origin: this key could never be used".into()),
        Some(OriginsProblem::Pattern { index, error }) => Err(format!("origin `{}`: {error}", origins[index])),
    }
}

/// Creates the table if missing: once per `chronos keys` command and at chronosd
/// start, not on every reload.
pub async fn install(client: &Client) -> Result<()> {
    client.batch_execute(DDL).await.context("creating chronos.write_keys")
}

/// Every stored key, revoked ones included, oldest first.
pub async fn list(client: &Client) -> Result<Vec<StoredKey>> {
    let rows = client
        .query(
            "SELECT id, key_sha256, origins, allow_no_origin, created_at::text, revoked_at::text, slot, kind
             FROM chronos.write_keys ORDER BY slot",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredKey {
            id: r.get(0),
            digest: r.get::<_, Vec<u8>>(1).try_into().unwrap_or([0; 32]),
            origins: r.get(2),
            allow_no_origin: r.get(3),
            created_at: r.get(4),
            revoked_at: r.get(5),
            slot: r.get(6),
            kind: if r.get::<_, &str>(7) == "server" { KeyKind::Server } else { KeyKind::Browser },
        })
        .collect())
}

/// Stores a new key. `config_ids` are the config file's key ids (an id names one key).
pub async fn create(
    client: &Client,
    id: &str,
    key: &str,
    origins: &[String],
    allow_no_origin: bool,
    kind: KeyKind,
    config_ids: &[&str],
) -> Result<()> {
    check(id, key, origins, allow_no_origin, kind).map_err(anyhow::Error::msg)?;
    if config_ids.contains(&id) {
        anyhow::bail!("id `{id}` is a key of the config file; choose another id");
    }
    let inserted = client
        .execute(
            "INSERT INTO chronos.write_keys (id, key_sha256, origins, allow_no_origin, kind) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&id, &super::auth::key_digest(key).as_slice(), &origins, &allow_no_origin, &kind.as_str()],
        )
        .await?;
    if inserted == 0 {
        anyhow::bail!("a key with id `{id}` (or the same secret) already exists; `chronos keys list` shows them");
    }
    Ok(())
}

/// Revokes a stored key; true when it was active.
pub async fn revoke(client: &Client, id: &str, config_ids: &[&str]) -> Result<()> {
    if config_ids.contains(&id) {
        anyhow::bail!("`{id}` is a key of the config file: remove its [[keys]] entry and restart chronosd");
    }
    let n = client.execute("UPDATE chronos.write_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", &[&id]).await?;
    if n == 0 {
        let exists = client.query_opt("SELECT 1 FROM chronos.write_keys WHERE id = $1", &[&id]).await?.is_some();
        if exists {
            anyhow::bail!("key `{id}` is already revoked");
        }
        anyhow::bail!("no stored key `{id}`; `chronos keys list` shows them");
    }
    Ok(())
}

/// Loads the active stored keys into the ring; returns how many.
pub async fn reload(client: &Client, ring: &KeyRing) -> Result<usize> {
    let keys: Vec<WriteKey> = list(client)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| WriteKey::stored(k.id, k.digest, &k.origins, k.allow_no_origin, k.kind, k.slot as usize))
        .collect();
    let n = keys.len();
    ring.set_stored(keys);
    Ok(n)
}

/// Reloads the stored keys every `every` until the process ends; a failed
/// reload keeps the keys it had (logged), and the next one tries again.
pub async fn refresh_loop(url: String, ring: KeyRing, every: Duration) {
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match crate::store::connect(&url).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "Cannot reload the stored write keys; keeping the current ones.");
                    continue;
                }
            }
        }
        if let Err(e) = reload(client.as_ref().unwrap(), &ring).await {
            tracing::warn!(error = %format!("{e:#}"), "Cannot reload the stored write keys; keeping the current ones.");
            client = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_and_distinct() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(check("site", &a, &["example.com".into()], false, KeyKind::Browser).is_ok());
        assert_eq!(a.len(), 35);
    }

    #[test]
    fn bad_keys_say_why() {
        assert!(check("a b", &generate(), &["example.com".into()], false, KeyKind::Browser).unwrap_err().contains("id"));
        assert!(check("a", "short", &["example.com".into()], false, KeyKind::Browser).unwrap_err().contains("16-256"));
        assert!(check("a", &generate(), &[], false, KeyKind::Browser).unwrap_err().contains("never be used"));
        assert!(check("a", &generate(), &["*.".into()], false, KeyKind::Browser).unwrap_err().contains("origin `*.`"));
        assert!(check("a", &generate(), &[], true, KeyKind::Browser).is_ok());
        assert!(check("a", &generate(), &[], false, KeyKind::Server).is_ok(), "a server key needs no origin");
        assert!(check("a", &generate(), &["example.com".into()], false, KeyKind::Server).unwrap_err().contains("server key takes no --origin"));
    }

    #[test]
    fn stored_keys_join_the_ring_and_leave_it() {
        let ring = KeyRing::from_config(&[]);
        let clone = ring.clone();
        let secret = generate();
        assert!(ring.find(&secret).is_none());
        ring.set_stored(vec![WriteKey::stored(
            "new".into(),
            super::super::auth::key_digest(&secret),
            &["example.com".into()],
            false,
            KeyKind::Browser,
            1,
        )]);
        let key = clone.find(&secret).expect("a clone sees the stored keys");
        assert_eq!(key.id, "new");
        assert!(key.slot > 1000, "stored slots never collide with config positions");
        assert!(clone.any_allows("https://example.com"));
        ring.set_stored(vec![]);
        assert!(clone.find(&secret).is_none(), "revoked");
    }
}

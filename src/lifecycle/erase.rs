//! `chronos erase --session ID | --user ID`: one person's events out of everything
//! Chronos keeps that can forget them — the raw tables, the dead letters, the
//! groups of the continuous views their events fed (recomputed without them),
//! and the archive files (rewritten: the new file is verified and recorded
//! before the old one is deleted) — with an audit row that never holds the
//! erased value, and a list of what cannot forget (Kafka until its
//! retention passes; backups).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::archive::{self, Archiver, Manifest};
use super::file;
use crate::catalog::EventCatalog;
use crate::config::Config;
use crate::store::schema::ident;

/// What an erasure did.
#[derive(Debug, Default)]
pub struct Erased {
    /// (table, rows deleted) per event table.
    pub raw: Vec<(String, u64)>,
    pub dead_letters: u64,
    /// Dead letters that name no session (no batch facts, and a raw record
    /// whose `session_id` cannot be read): left, since no field says whose.
    pub dead_letters_unattributed: u64,
    /// (view, rows deleted) for views with a `session_id` key.
    pub view_rows: Vec<(String, u64)>,
    /// Views whose groups the erased events fed were recomputed without them.
    pub views_corrected: Vec<String>,
    /// Archive files rewritten without the session, and the rows left out.
    pub files: Vec<String>,
    pub archived_rows: u64,
    /// Archive objects no record names (left by a run cut short), deleted.
    pub stale_deleted: Vec<String>,
    /// Sessions erased (one for `--session`; a user's, for `--user`).
    pub sessions: usize,
    /// Rows of `chronos.identities` deleted.
    pub identities: u64,
    /// Rows of `chronos.sessions` (visits) deleted.
    pub visits: u64,
    /// Batch pages (`chronos.batches`: the URLs and titles the rows showed) deleted.
    pub pages: u64,
}

/// Whose events to erase.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// One session.
    Session(&'a str),
    /// Every session the site named this user in (`chronos.identify`), whole:
    /// its events before the `identify` call are that person's too.
    User(&'a str),
}

/// Erases the rows of session `session`; `by` names who asked (the audit).
pub async fn erase_session(
    config: &Config,
    client: &mut Client,
    archiver: &Archiver,
    catalog: &EventCatalog,
    session: &str,
    by: &str,
    progress: impl FnMut(&str),
) -> Result<Erased> {
    erase(config, client, archiver, catalog, Subject::Session(session), by, progress).await
}

/// Erases the rows of `subject`; `by` names who asked (the audit). Holds the
/// archive lock, so no archive run writes meanwhile. Running it again
/// finishes one that was cut short.
pub async fn erase(
    config: &Config,
    client: &mut Client,
    archiver: &Archiver,
    catalog: &EventCatalog,
    subject: Subject<'_>,
    by: &str,
    mut progress: impl FnMut(&str),
) -> Result<Erased> {
    match subject {
        Subject::Session("") => anyhow::bail!("--session: empty"),
        Subject::User("") => anyhow::bail!("--user: empty"),
        _ => {}
    }
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&archive::RUN_LOCK]).await?.get(0);
    if !locked {
        anyhow::bail!("an archive run holds the archive lock (chronosd's schedule?); try again when it ends");
    }
    let result = erase_locked(config, client, archiver, catalog, subject, by, &mut progress).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&archive::RUN_LOCK]).await?;
    result
}

/// The sessions of `subject`: for a user, those `chronos.identities` names and
/// any whose events carry the user id.
async fn sessions_of(client: &Client, catalog: &EventCatalog, subject: Subject<'_>) -> Result<Vec<String>> {
    let user = match subject {
        Subject::Session(s) => return Ok(vec![s.to_string()]),
        Subject::User(u) => u,
    };
    let mut parts = vec!["SELECT session_id FROM chronos.identities WHERE user_id = $1".to_string()];
    parts.extend(catalog.types().iter().map(|t| format!("SELECT session_id FROM {} WHERE user_id = $1", crate::store::schema::table(t))));
    let rows = client.query(&format!("SELECT DISTINCT session_id FROM ({}) s ORDER BY 1", parts.join(" UNION ")), &[&user]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn erase_locked(
    config: &Config,
    client: &mut Client,
    archiver: &Archiver,
    catalog: &EventCatalog,
    subject: Subject<'_>,
    by: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Erased> {
    let mut done = Erased::default();
    let sessions = sessions_of(client, catalog, subject).await?;
    done.sessions = sessions.len();
    let set: std::collections::HashSet<String> = sessions.iter().cloned().collect();
    // The views first, while the events still say which groups they fed: a
    // run cut short after it finds them again and recomputes them again.
    let jobs = super::rebuild::list_groups(config, catalog, client, &sessions).await?;
    let corrected = super::rebuild::correct_groups(config, catalog, client, jobs, &sessions, |p| progress(&format!("views: {}", p.step))).await?;
    done.views_corrected = corrected.views;
    // Then the archive: a cut-short erasure leaves the raw rows to find again.
    erase_archived(client, archiver, catalog, &set, &mut done, progress).await?;
    let user = match subject {
        Subject::User(u) => Some(u),
        Subject::Session(_) => None,
    };
    let tx = client.transaction().await?;
    delete_rows(&tx, catalog, &sessions, user, &mut done, progress).await?;
    let raw: u64 = done.raw.iter().map(|(_, n)| n).sum();
    let views: u64 = done.view_rows.iter().map(|(_, n)| n).sum();
    tx.execute(
        "INSERT INTO chronos.erasures (requested_by, subject, raw_rows, archived_rows, files_rewritten, dead_letters, view_rows)
         VALUES ($1, $7, $2, $3, $4, $5, $6)",
        &[
            &by,
            &(raw as i64),
            &(done.archived_rows as i64),
            &(done.files.len() as i32),
            &(done.dead_letters as i64),
            &(views as i64),
            &if user.is_some() { "user" } else { "session" },
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(done)
}

/// Rewrites the archive files that hold rows of `sessions` without them, and
/// deletes the objects of catalog tables that no record names (earlier
/// versions whose deletion was cut short).
async fn erase_archived(
    client: &mut Client,
    archiver: &Archiver,
    catalog: &EventCatalog,
    sessions: &std::collections::HashSet<String>,
    done: &mut Erased,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    let Ok(target) = archiver.target() else { return Ok(()) };
    let records = archive::list(&*client).await?;
    // A user with no session has nothing in any file.
    let files: Vec<&Manifest> = records.iter().map(|r| &r.manifest).filter(|m| m.has_file() && !sessions.is_empty()).collect();
    for (i, m) in files.iter().enumerate() {
        progress(&format!("archive file {} of {}: {}", i + 1, files.len(), m.location));
        if let Some(removed) = rewrite(client, archiver, m, sessions).await.with_context(|| format!("rewriting {}", target.display(&m.location)))? {
            done.archived_rows += removed;
            done.files.push(m.location.clone());
        }
    }
    done.stale_deleted = archive::delete_unrecorded(&*client, target, catalog).await?;
    Ok(())
}

/// Deletes the rows of `sessions` (and of `user`'s identities and visits)
/// from the raw tables, the batch pages, the dead letters and the views.
async fn delete_rows(
    tx: &tokio_postgres::Transaction<'_>,
    catalog: &EventCatalog,
    sessions: &[String],
    user: Option<&str>,
    done: &mut Erased,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    for ty in catalog.types() {
        progress(&format!("events.{}", ty.name));
        let n = tx.execute(&format!("DELETE FROM {} WHERE session_id = ANY($1)", crate::store::schema::table(ty)), &[&sessions]).await?;
        done.raw.push((ty.name.to_string(), n));
    }
    done.pages = tx.execute("DELETE FROM chronos.batches WHERE session_id = ANY($1)", &[&sessions]).await?;
    delete_dead_letters(tx, sessions, done).await?;
    done.identities = tx.execute("DELETE FROM chronos.identities WHERE session_id = ANY($1) OR user_id = $2", &[&sessions, &user]).await?;
    done.visits = tx.execute("DELETE FROM chronos.sessions WHERE session_id = ANY($1) OR user_id = $2", &[&sessions, &user]).await?;
    let keyed = tx
        .query(
            "SELECT table_name::text FROM information_schema.columns WHERE table_schema = 'views' AND column_name = 'session_id'
               AND table_name IN (SELECT table_name FROM information_schema.tables WHERE table_schema = 'views' AND table_type = 'BASE TABLE')
             ORDER BY 1",
            &[],
        )
        .await?;
    for r in keyed {
        let t: String = r.get(0);
        let n = tx.execute(&format!("DELETE FROM views.{} WHERE session_id = ANY($1)", ident(&t)), &[&sessions]).await?;
        done.view_rows.push((t.trim_end_matches("_mrel").to_string(), n));
    }
    Ok(())
}

/// Dead letters read per query while looking for the sessions' raw records.
const DEAD_LETTER_PAGE: i64 = 1000;

/// Deletes the dead letters of `sessions`, matched by field, never by
/// substring: the session of the batch facts a dead letter keeps
/// (`context`), else the `session_id` of the raw Kafka record it holds,
/// decoded ([`raw_session_ids`]). One that has neither names no session and
/// is counted, not deleted.
async fn delete_dead_letters(tx: &tokio_postgres::Transaction<'_>, sessions: &[String], done: &mut Erased) -> Result<()> {
    done.dead_letters = tx.execute("DELETE FROM chronos.dead_letters WHERE context->>'session_id' = ANY($1)", &[&sessions]).await?;
    let wanted: std::collections::HashSet<&str> = sessions.iter().map(String::as_str).collect();
    let (mut after, mut matched) = (0i64, Vec::new());
    loop {
        let rows = tx
            .query(
                "SELECT id, raw FROM chronos.dead_letters WHERE context->>'session_id' IS NULL AND id > $1 ORDER BY id LIMIT $2",
                &[&after, &DEAD_LETTER_PAGE],
            )
            .await?;
        for r in &rows {
            let ids = r.get::<_, Option<&[u8]>>(1).map(raw_session_ids).unwrap_or_default();
            if ids.iter().any(|s| wanted.contains(s.as_str())) {
                matched.push(r.get::<_, i64>(0));
            } else if ids.is_empty() {
                done.dead_letters_unattributed += 1;
            }
        }
        match rows.last() {
            Some(r) if rows.len() as i64 == DEAD_LETTER_PAGE => after = r.get(0),
            _ => break,
        }
    }
    done.dead_letters += tx.execute("DELETE FROM chronos.dead_letters WHERE id = ANY($1)", &[&matched]).await?;
    Ok(())
}

/// The top-level `session_id` values of a raw Kafka record (JSON; several
/// when the key repeats), read field by field: those read before a fault
/// (a record cut short, bytes that are not UTF-8, nesting past serde_json's
/// depth limit) are kept, so a damaged record of the session is still its.
/// Nothing when the record is not a JSON object.
pub fn raw_session_ids(raw: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Top<'a>(&'a mut Vec<String>);
    impl<'de> DeserializeSeed<'de> for Top<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Kafka record (a JSON object)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == crate::record::field::SESSION_ID {
                    // A session id that is not a string is no session.
                    if let serde_json::Value::String(s) = map.next_value()? {
                        self.0.push(s);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(raw);
    let _ = Top(&mut found).deserialize(&mut de);
    found
}

/// Rewrites one archive file without the session's rows, when it has any:
/// the new file (a new name) is uploaded and verified, its manifest written,
/// its record updated, and only then the old file and manifest deleted.
/// Returns the rows left out.
async fn rewrite(client: &Client, archiver: &Archiver, m: &Manifest, sessions: &std::collections::HashSet<String>) -> Result<Option<u64>> {
    let target = archiver.target()?;
    let local = archiver.fetch(m, "rewritten").await?;
    let out = tempfile::Builder::new().prefix("chronos-erase-").suffix(".parquet").tempfile_in(&archiver.spool)?;
    let Some((s, removed)) = file::rewrite_without(local.path(), out.path(), "session_id", sessions)? else {
        return Ok(None);
    };
    let new = m.rewritten(&s);
    new.upload(target, out.path()).await?;
    client
        .execute(
            "UPDATE chronos.archives SET location = $3, rows = $4, bytes = $5, sha256 = $6,
               min_time = timestamptz 'epoch' + $7::bigint * interval '1 microsecond',
               max_time = timestamptz 'epoch' + $8::bigint * interval '1 microsecond'
             WHERE table_name = $1 AND day = ($2::text)::date",
            &[&m.table, &m.day, &new.location, &new.rows, &new.bytes, &new.sha256, &new.min_time, &new.max_time],
        )
        .await?;
    target.delete(&m.location).await?;
    target.delete(&m.manifest_name()).await?;
    Ok(Some(removed))
}

/// What an erasure cannot reach, in words: records in Kafka until the
/// topics' retention passes, and backups.
pub async fn not_erased(config: &crate::config::Config) -> Vec<String> {
    let mut lines = Vec::new();
    for topic in [&config.kafka.topic, &config.kafka.dead_letter_topic] {
        let line = match crate::produce::admin::retention_ms(&config.kafka, topic, std::time::Duration::from_secs(5)).await {
            Ok(Some(ms)) => format!(
                "Kafka topic {topic}: the session's records stay until its retention passes (retention.ms = {ms}, {:.1} days after each was written)",
                ms as f64 / 86_400_000.0
            ),
            Ok(None) => {
                format!("Kafka topic {topic}: retention.ms = -1, its records are kept forever: delete the topic's old segments or set a retention")
            }
            Err(e) => format!("Kafka topic {topic}: the session's records stay until the topic's retention.ms passes (not read: {e})"),
        };
        lines.push(line);
    }
    lines.push("backups you made (pg_dump, copies of the archive directory) are yours to handle".into());
    lines
}

#[cfg(test)]
mod tests {
    use super::raw_session_ids;

    #[test]
    fn a_raw_record_is_matched_by_its_session_field_not_by_its_text() {
        let ids = |raw: &[u8]| raw_session_ids(raw);
        let record = br#"{"v":1,"batch_id":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","session_id":"s-7","page":{"url":"https://x/7"},
                        "events":[["clicks",7,"session_id","7"]],"note":{"session_id":"7"}}"#;
        assert_eq!(ids(record), ["s-7"], "only the top-level field counts");
        assert_eq!(ids(br#"{"session\u005fid":"7"}"#), ["7"], "the key decoded, as PostgreSQL and Kafka readers see it");
        assert_eq!(ids(br#"{"session_id":"a\"b\u0000"}"#), ["a\"b\0"]);
        assert_eq!(ids(br#"{"session_id":"7","session_id":"8"}"#), ["7", "8"], "a repeated key: each value");
        assert_eq!(ids(br#"{"v":1,"session_id":"7","events":[["clicks",1,"#), ["7"], "a record cut short after its session");
        assert_eq!(ids(b"{\"session_id\":\"7\",\"page\":\"\xff\xfe\"}"), ["7"], "invalid UTF-8 after the session");
        let deep = format!(r#"{{"session_id":"7","events":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(ids(deep.as_bytes()), ["7"], "nesting past the depth limit, without a stack overflow");
        for none in [&b"7"[..], b"", b"not json 7", br#"["session_id","7"]"#, br#"{"session_id":7}"#, br#"{"events":[],"x":"session_id:7"}"#] {
            assert!(ids(none).is_empty(), "{}", String::from_utf8_lossy(none));
        }
    }
}

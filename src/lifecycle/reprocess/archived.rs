//! Reprocessing an archived day: its Parquet file read through, each event
//! re-enriched from what the file holds (the page's `user_agent` in
//! `metadata`, the anonymised `client_ip`), and, when any changed, written
//! again exactly as erasure rewrites one: a new file under a new name,
//! uploaded and verified, its manifest written, its record (and the step)
//! updated in one transaction, and only then the old file and manifest deleted.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{BooleanBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_postgres::Client;

use super::super::archive::{Archiver, Manifest};
use super::super::file::{self, Summary};
use super::rules::{Counts, Enrichment, Rules, COLUMNS};
use super::steps::{self, Step};

/// What one archived day came to.
pub enum Outcome {
    Done(Counts),
    /// The file has no enrichment columns (archived before they existed): left as it is.
    NoColumns,
}

/// Reprocesses the file of `m`; with `run` None (a dry run) only counts.
pub async fn day(client: &mut Client, archiver: &Archiver, rules: &Rules, m: &Manifest, step: &Step, run: Option<i64>) -> Result<Outcome> {
    let target = archiver.target()?;
    let local = archiver.fetch(m, "reprocessed").await?;
    let out = tempfile::Builder::new().prefix("chronos-reprocess-").suffix(".parquet").tempfile_in(&archiver.spool)?;
    let write = run.map(|_| out.path());
    let Some((counts, summary)) = rewrite(local.path(), write, rules).with_context(|| target.display(&m.location))? else {
        return Ok(Outcome::NoColumns);
    };
    let Some(run) = run else { return Ok(Outcome::Done(counts)) };
    let Some(s) = summary.filter(|_| counts.changed > 0) else {
        steps::record(&*client, run, step, &counts, 0, true).await?;
        return Ok(Outcome::Done(counts));
    };
    let new = m.rewritten(&s);
    new.upload(target, out.path()).await?;
    super::failpoint("reprocess:uploaded");
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE chronos.archives SET location = $3, bytes = $4, sha256 = $5 WHERE table_name = $1 AND day = ($2::text)::date AND location = $6",
            &[&m.table, &m.day, &new.location, &new.bytes, &new.sha256, &m.location],
        )
        .await?;
    if n != 1 {
        anyhow::bail!("chronos.archives no longer names {} (changed meanwhile?); run chronos reprocess again", m.location);
    }
    steps::record(&tx, run, step, &counts, 0, true).await?;
    tx.commit().await?;
    super::failpoint("reprocess:recorded");
    target.delete(&m.location).await?;
    target.delete(&m.manifest_name()).await?;
    Ok(Outcome::Done(counts))
}

/// The page's `user_agent` in a row's `metadata` (JSON text), when it is a string.
fn user_agent_of(metadata: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        user_agent: Option<serde_json::Value>,
    }
    serde_json::from_str::<Page>(metadata).ok()?.user_agent?.as_str().map(str::to_string)
}

/// Reads `from` and counts what today's rules change; with `to`, writes it
/// there with the new values (same schema, metadata and row order), fsynced
/// and read back. None when the file has no enrichment columns.
fn rewrite(from: &Path, to: Option<&Path>, rules: &Rules) -> Result<Option<(Counts, Option<Summary>)>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(from)?)?;
    let schema = builder.schema().clone();
    let Ok(idx) = COLUMNS.iter().map(|c| schema.index_of(c)).collect::<Result<Vec<usize>, _>>() else { return Ok(None) };
    let (meta, ip) = (schema.index_of("metadata").ok(), schema.index_of("client_ip").ok());
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned();
    let mut writer = to.map(|p| file::create(p, schema.clone(), kv)).transpose()?;
    let (mut counts, mut written) = (Counts::default(), 0i64);
    for batch in builder.with_batch_size(file::BATCH_ROWS).build()? {
        let batch = batch?;
        let new = reenrich(&batch, &idx, meta, ip, rules, &mut counts);
        if let Some(w) = writer.as_mut() {
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            for (i, array) in idx.iter().zip(new) {
                columns[*i] = array;
            }
            w.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
            written += batch.num_rows() as i64;
        }
    }
    let summary = match writer {
        Some(w) => Some(file::seal(w, to.expect("a writer has a path"), written)?),
        None => None,
    };
    Ok(Some((counts, summary)))
}

/// The new enrichment columns of one record batch (in [`COLUMNS`] order).
fn reenrich(batch: &RecordBatch, idx: &[usize], meta: Option<usize>, ip: Option<usize>, rules: &Rules, counts: &mut Counts) -> Vec<ArrayRef> {
    let text = |i: usize| batch.column(i).as_string::<i32>();
    let old_bot = batch.column(idx[0]).as_boolean();
    let old_text: Vec<&StringArray> = idx[1..].iter().map(|i| text(*i)).collect();
    let (meta, ip) = (meta.map(text), ip.map(text));
    let value = |a: &StringArray, r: usize| (!a.is_null(r)).then(|| a.value(r).to_string());
    let mut pages: HashMap<&str, Option<String>> = HashMap::new();
    let mut bot = BooleanBuilder::with_capacity(batch.num_rows());
    let mut texts: Vec<StringBuilder> = (1..COLUMNS.len()).map(|_| StringBuilder::new()).collect();
    for r in 0..batch.num_rows() {
        let t = |i: usize| value(old_text[i], r);
        let old = Enrichment {
            is_bot: !old_bot.is_null(r) && old_bot.value(r),
            bot_reason: t(0),
            browser: t(1),
            browser_version: t(2),
            os: t(3),
            os_version: t(4),
            device_type: t(5),
            country: t(6),
            region: t(7),
            city: t(8),
        };
        let page = meta.filter(|m| !m.is_null(r)).map(|m| m.value(r));
        let ua = page.and_then(|p| pages.entry(p).or_insert_with(|| user_agent_of(p)).as_deref());
        let address = ip.and_then(|a| (!a.is_null(r)).then(|| a.value(r)));
        let new = rules.apply(&old, ua, address, 1, counts);
        bot.append_value(new.is_bot);
        let values = [new.bot_reason, new.browser, new.browser_version, new.os, new.os_version, new.device_type, new.country, new.region, new.city];
        for (b, v) in texts.iter_mut().zip(values) {
            b.append_option(v);
        }
    }
    let mut out: Vec<ArrayRef> = vec![Arc::new(bot.finish())];
    out.extend(texts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_agent_is_read_from_the_page_only_when_it_is_a_string() {
        assert_eq!(user_agent_of(r#"{"url":"u","user_agent":"Mozilla/5.0 (X)"}"#).as_deref(), Some("Mozilla/5.0 (X)"));
        assert_eq!(user_agent_of(r#"{"url":"u","user_agent":5}"#), None);
        assert_eq!(user_agent_of(r#"{"url":"u"}"#), None);
        assert_eq!(user_agent_of("not json"), None);
    }
}

//! Parquet files of raw events: written from a PostgreSQL row stream in
//! bounded row groups, read back batch by batch (verify, restore, erase).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use futures_util::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::format::KeyValue;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::columns::{self, Column, Kind};

/// Version of the file layout (columns as `columns` maps them).
pub const SCHEMA_VERSION: i32 = 1;
/// Rows per record batch (and the memory a writer holds at most).
pub(super) const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 262_144;

/// What a written (or re-read) file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rows: i64,
    /// Microseconds since the epoch; None without rows.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub bytes: u64,
    pub sha256: String,
}

/// One column's builder.
enum Builder {
    Timestamp(TimestampMicrosecondBuilder),
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Text(StringBuilder),
    TextList(ListBuilder<StringBuilder>),
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        match kind {
            Kind::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
            Kind::Int32 => Builder::Int32(Int32Builder::new()),
            Kind::Int64 => Builder::Int64(Int64Builder::new()),
            Kind::Float64 => Builder::Float64(Float64Builder::new()),
            Kind::Text => Builder::Text(StringBuilder::new()),
            Kind::TextList => Builder::TextList(ListBuilder::new(StringBuilder::new())),
        }
    }

    /// Appends column `i` of `row` (selected with `Column::select_expr`).
    fn push(&mut self, row: &Row, i: usize) -> Result<(), tokio_postgres::Error> {
        match self {
            Builder::Timestamp(b) => b.append_option(row.try_get::<_, Option<i64>>(i)?),
            Builder::Bool(b) => b.append_option(row.try_get::<_, Option<bool>>(i)?),
            Builder::Int32(b) => b.append_option(row.try_get::<_, Option<i32>>(i)?),
            Builder::Int64(b) => b.append_option(row.try_get::<_, Option<i64>>(i)?),
            Builder::Float64(b) => b.append_option(row.try_get::<_, Option<f64>>(i)?),
            Builder::Text(b) => b.append_option(row.try_get::<_, Option<&str>>(i)?),
            Builder::TextList(b) => match row.try_get::<_, Option<Vec<Option<&str>>>>(i)? {
                Some(items) => {
                    for item in items {
                        b.values().append_option(item);
                    }
                    b.append(true);
                }
                None => b.append_null(),
            },
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::TextList(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Builder::Timestamp(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Int32(b) => b.len(),
            Builder::Int64(b) => b.len(),
            Builder::Float64(b) => b.len(),
            Builder::Text(b) => b.len(),
            Builder::TextList(b) => b.len(),
        }
    }
}

/// Writes the rows of `rows` (a stream of `SELECT <select_expr…>`) as a
/// zstd Parquet file at `path`, fsyncs it, and reads it back: the summary's
/// row count is the one decoded from the file, its checksum that of the
/// bytes on disk.
pub async fn write(
    path: &Path,
    columns: &[Column],
    metadata: Vec<(String, String)>,
    rows: impl futures_util::Stream<Item = Result<Row, tokio_postgres::Error>>,
) -> Result<Summary> {
    let schema = Arc::new(columns::arrow_schema(columns));
    let kv = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let mut writer = create(path, schema.clone(), Some(kv))?;
    let mut builders: Vec<Builder> = columns.iter().map(|c| Builder::new(c.kind)).collect();
    let mut written = 0i64;
    futures_util::pin_mut!(rows);
    loop {
        let row = rows.try_next().await?;
        if let Some(row) = &row {
            for (i, b) in builders.iter_mut().enumerate() {
                b.push(row, i)?;
            }
            written += 1;
        }
        let pending = builders.first().map_or(0, Builder::len);
        if pending >= BATCH_ROWS || (row.is_none() && pending > 0) {
            let arrays: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
            writer.write(&RecordBatch::try_new(schema.clone(), arrays)?)?;
        }
        if row.is_none() {
            break;
        }
    }
    seal(writer, path, written)
}

/// A Parquet writer at `path`: zstd, bounded row groups, `kv` metadata.
pub(super) fn create(path: &Path, schema: arrow_schema::SchemaRef, kv: Option<Vec<KeyValue>>) -> Result<ArrowWriter<File>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .set_key_value_metadata(kv)
        .build();
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(ArrowWriter::try_new(file, schema, Some(props))?)
}

/// Closes a writer, fsyncs its file and reads it back: `written` rows must be there.
pub(super) fn seal(writer: ArrowWriter<File>, path: &Path, written: i64) -> Result<Summary> {
    writer.into_inner()?.sync_all()?;
    let back = summarize(path)?;
    if back.rows != written {
        anyhow::bail!("{}: {written} rows written but {} read back", path.display(), back.rows);
    }
    Ok(back)
}

/// Reads a file through: its checksum and size, and its rows decoded (every
/// row group, every column: a damaged page fails here), with their time range.
pub fn summarize(path: &Path) -> Result<Summary> {
    let (sha256, bytes) = sha256_of(path)?;
    let (columns, batches) = reader(path)?;
    let time = columns.iter().position(|c| c.name == "time" && c.kind == Kind::Timestamp);
    let (mut rows, mut min_time, mut max_time) = (0i64, None::<i64>, None::<i64>);
    for batch in batches {
        let batch = batch?;
        rows += batch.num_rows() as i64;
        if let Some(t) = time {
            for v in batch.column(t).as_primitive::<TimestampMicrosecondType>().iter().flatten() {
                min_time = Some(min_time.map_or(v, |m: i64| m.min(v)));
                max_time = Some(max_time.map_or(v, |m: i64| m.max(v)));
            }
        }
    }
    Ok(Summary { rows, min_time, max_time, bytes, sha256 })
}

/// The checksum (hex) and size of a file.
pub fn sha256_of(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut hasher, mut buf, mut bytes) = (Sha256::new(), vec![0u8; 1 << 16], 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex(&hasher.finalize()), bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The columns of a file and its batches.
pub fn reader(path: &Path) -> Result<(Vec<Column>, parquet::arrow::arrow_reader::ParquetRecordBatchReader)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| format!("{} is not a Parquet file", path.display()))?;
    let columns = columns::from_arrow(builder.schema()).with_context(|| path.display().to_string())?;
    Ok((columns, builder.with_batch_size(8192).build()?))
}

/// One value of a decoded row, as `restore`'s staging table takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL of a column of this kind.
    Null(Kind),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float64(f64),
    Text(String),
    TextList(Vec<Option<String>>),
}

impl Value {
    pub fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Null(Kind::Bool) => &None::<bool>,
            Value::Null(Kind::Int32) => &None::<i32>,
            Value::Null(Kind::Timestamp | Kind::Int64) => &None::<i64>,
            Value::Null(Kind::Float64) => &None::<f64>,
            Value::Null(Kind::Text) => &None::<String>,
            Value::Null(Kind::TextList) => &None::<Vec<String>>,
            Value::Bool(v) => v,
            Value::Int32(v) => v,
            Value::Int64(v) => v,
            Value::Float64(v) => v,
            Value::Text(v) => v,
            Value::TextList(v) => v,
        }
    }
}

impl Value {
    /// Column `i` of a PostgreSQL row selected with `Column::select_expr`.
    pub fn of_row(row: &Row, i: usize, kind: Kind) -> Result<Value, tokio_postgres::Error> {
        Ok(match kind {
            Kind::Timestamp | Kind::Int64 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int64),
            Kind::Bool => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
            Kind::Int32 => row.try_get::<_, Option<i32>>(i)?.map(Value::Int32),
            Kind::Float64 => row.try_get::<_, Option<f64>>(i)?.map(Value::Float64),
            Kind::Text => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
            Kind::TextList => row.try_get::<_, Option<Vec<Option<String>>>>(i)?.map(Value::TextList),
        }
        .unwrap_or(Value::Null(kind)))
    }

    /// The value as CSV text: empty for NULL, RFC 3339 for times, a JSON
    /// array for text lists.
    pub fn to_text(&self, kind: Kind) -> String {
        match self {
            Value::Null(_) => String::new(),
            Value::Int64(v) if kind == Kind::Timestamp => rfc3339(*v),
            Value::Bool(v) => v.to_string(),
            Value::Int32(v) => v.to_string(),
            Value::Int64(v) => v.to_string(),
            Value::Float64(v) => v.to_string(),
            Value::Text(v) => v.clone(),
            Value::TextList(v) => serde_json::to_string(v).expect("strings serialize"),
        }
    }

    /// The value as JSON: jsonb columns as the JSON they hold.
    pub fn to_json(&self, column: &Column) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null(_) => J::Null,
            Value::Int64(v) if column.kind == Kind::Timestamp => J::String(rfc3339(*v)),
            Value::Bool(v) => J::Bool(*v),
            Value::Int32(v) => J::from(*v),
            Value::Int64(v) => J::from(*v),
            Value::Float64(v) => J::from(*v),
            Value::Text(v) if column.pg_type == "jsonb" => serde_json::from_str(v).unwrap_or_else(|_| J::String(v.clone())),
            Value::Text(v) => J::String(v.clone()),
            Value::TextList(v) => J::from(v.iter().map(|s| s.clone().map_or(J::Null, J::String)).collect::<Vec<_>>()),
        }
    }
}

/// Microseconds since the epoch as RFC 3339 in UTC (`2026-11-27T08:00:01.234567Z`).
pub fn rfc3339(micros: i64) -> String {
    let (secs, us) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (day, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::store::schema::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z", s / 3600, s / 60 % 60, s % 60)
}

/// The rows of a batch as values (column order of the file).
pub fn rows_of(batch: &RecordBatch, columns: &[Column]) -> Vec<Vec<Value>> {
    (0..batch.num_rows())
        .map(|r| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let a = batch.column(i);
                    if a.is_null(r) {
                        return Value::Null(c.kind);
                    }
                    match c.kind {
                        Kind::Timestamp => Value::Int64(a.as_primitive::<TimestampMicrosecondType>().value(r)),
                        Kind::Bool => Value::Bool(a.as_boolean().value(r)),
                        Kind::Int32 => Value::Int32(a.as_primitive::<Int32Type>().value(r)),
                        Kind::Int64 => Value::Int64(a.as_primitive::<Int64Type>().value(r)),
                        Kind::Float64 => Value::Float64(a.as_primitive::<Float64Type>().value(r)),
                        Kind::Text => Value::Text(a.as_string::<i32>().value(r).to_string()),
                        Kind::TextList => {
                            let items = a.as_list::<i32>().value(r);
                            let s = items.as_string::<i32>();
                            Value::TextList((0..s.len()).map(|j| (!s.is_null(j)).then(|| s.value(j).to_string())).collect())
                        }
                    }
                })
                .collect()
        })
        .collect()
}

/// Writes `from` to `to` without the rows whose text column `column` equals
/// `value` (erasure), keeping the schema and the key-value metadata; fsyncs
/// and re-reads it. Returns the new file's summary and the rows left out, or
/// None (and no file) when no row matched.
pub fn rewrite_without(from: &Path, to: &Path, column: &str, values: &std::collections::HashSet<String>) -> Result<Option<(Summary, u64)>> {
    let file = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let schema = builder.schema().clone();
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned();
    let idx = schema.index_of(column).with_context(|| format!("{} has no column {column}", from.display()))?;
    let mut writer = create(to, schema, kv)?;
    let (mut removed, mut kept) = (0u64, 0i64);
    for batch in builder.with_batch_size(BATCH_ROWS).build()? {
        let batch = batch?;
        let col = batch.column(idx).as_string::<i32>();
        let keep: arrow_array::BooleanArray = (0..batch.num_rows()).map(|r| Some(col.is_null(r) || !values.contains(col.value(r)))).collect();
        removed += keep.false_count() as u64;
        let batch = arrow_select::filter::filter_record_batch(&batch, &keep)?;
        kept += batch.num_rows() as i64;
        writer.write(&batch)?;
    }
    if removed == 0 {
        drop(writer);
        std::fs::remove_file(to)?;
        return Ok(None);
    }
    Ok(Some((seal(writer, to, kept)?, removed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_that_names_an_unknown_type_names_the_file_and_the_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2025-12-02.parquet");
        let evil = "text); DROP TABLE chronos.archives; --";
        let cols = vec![Column { name: "element".into(), pg_type: evil.into(), kind: Kind::Text, nullable: true }];
        let schema = Arc::new(columns::arrow_schema(&cols));
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema.clone(), None).unwrap();
        w.write(&RecordBatch::new_empty(schema)).unwrap();
        w.close().unwrap();
        let e = format!("{:#}", reader(&path).map(|_| ()).unwrap_err());
        assert!(e.contains(&path.display().to_string()) && e.contains(&format!("{evil:?}")), "{e}");
    }
}

//! `chronos export`: raw events of a range of days, from PostgreSQL and, for
//! days that left it, from the archive, as Parquet, CSV or JSON lines, for
//! moving to another tool. Streams: memory is bounded by one record batch,
//! whatever the range.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::archive::{self, day_range, day_str, Archiver};
use super::columns::{self, Column, Kind};
use super::file::{self, Value};
use crate::store::schema::ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One Parquet file per table and day (`DIR/<table>/<day>.parquet`).
    Parquet,
    /// One CSV file per table (`DIR/<table>.csv`), with a header line.
    Csv,
    /// One JSON object per line (`DIR/<table>.jsonl`), with a "type" key.
    Jsonl,
}

/// Where the export goes.
#[derive(Debug, Clone)]
pub enum Out {
    Dir(PathBuf),
    Stdout,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Spec {
    pub from: i64,
    pub to: i64,
    pub tables: Vec<String>,
    pub format: Format,
    pub out: Out,
}

/// Where a day's rows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Postgres,
    Archive,
}

/// One table's day, exported.
#[derive(Debug, Clone)]
pub struct Exported {
    pub table: String,
    pub day: String,
    pub rows: u64,
    pub source: Source,
}

/// A CSV or JSON-lines sink for one table.
enum Lines {
    /// Boxed: a CSV writer is ten times the size of the JSON one.
    Csv(Box<csv::Writer<Box<dyn Write>>>),
    Json(std::io::BufWriter<Box<dyn Write>>),
}

impl Lines {
    fn row(&mut self, table: &str, header: &[Column], columns: &[Column], values: &[Value]) -> Result<()> {
        // Columns by the table's current header; a column an older file lacks is empty.
        let find = |c: &Column| columns.iter().position(|f| f.name == c.name);
        match self {
            Lines::Csv(w) => {
                let fields: Vec<String> = header.iter().map(|c| find(c).map_or(String::new(), |i| csv_cell(&values[i], c.kind))).collect();
                w.write_record(&fields)?;
            }
            Lines::Json(w) => {
                let mut obj = serde_json::Map::new();
                obj.insert("type".into(), table.into());
                for (c, v) in columns.iter().zip(values) {
                    obj.insert(c.name.clone(), v.to_json(c));
                }
                serde_json::to_writer(&mut *w, &obj)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Lines::Csv(mut w) => w.flush()?,
            Lines::Json(mut w) => w.flush()?,
        }
        Ok(())
    }
}

/// First characters that make a spreadsheet read a cell as a formula (or,
/// tab and carriage return, shift it to one): OWASP's CSV injection list.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A value as a CSV cell a spreadsheet shows and does not run: text that
/// starts like a formula gets a leading `'` (OWASP's advice). Only text:
/// numbers, times and lists (JSON arrays) are Chronos' own rendering.
fn csv_cell(value: &Value, kind: Kind) -> String {
    match value {
        Value::Text(t) if t.starts_with(FORMULA_STARTS) => format!("'{t}"),
        v => v.to_text(kind),
    }
}

fn sink(out: &Out, name: &str) -> Result<Box<dyn Write>> {
    Ok(match out {
        Out::Stdout => Box::new(std::io::stdout().lock()),
        Out::Dir(dir) => {
            let path = dir.join(name);
            Box::new(std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?))
        }
    })
}

/// Exports the spec's tables and days; `progress` hears each day done.
pub async fn export(client: &Client, archiver: &Archiver, spec: &Spec, mut progress: impl FnMut(&Exported)) -> Result<Vec<Exported>> {
    if let Out::Dir(dir) = &spec.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut done = Vec::new();
    for table in &spec.tables {
        let header = columns::of_table(client, table).await?;
        let archived: std::collections::HashMap<String, archive::Record> = archive::records(client, table, spec.from, spec.to)
            .await?
            .into_iter()
            .filter(|r| r.dropped && r.restored_until.is_none())
            .map(|r| (r.manifest.day.clone(), r))
            .collect();
        let mut lines = match spec.format {
            Format::Parquet => None,
            Format::Csv => {
                let mut w = csv::Writer::from_writer(sink(&spec.out, &format!("{table}.csv"))?);
                w.write_record(header.iter().map(|c| c.name.as_str()))?;
                Some(Lines::Csv(Box::new(w)))
            }
            Format::Jsonl => Some(Lines::Json(std::io::BufWriter::new(sink(&spec.out, &format!("{table}.jsonl"))?))),
        };
        for day in spec.from..=spec.to {
            let d = day_str(day);
            let (rows, source) = match archived.get(&d) {
                Some(r) if !r.manifest.has_file() => (0, Source::Archive),
                Some(r) => (from_archive(archiver, table, &r.manifest, &header, spec, lines.as_mut()).await?, Source::Archive),
                None => (from_postgres(client, table, day, &header, spec, lines.as_mut()).await?, Source::Postgres),
            };
            let e = Exported { table: table.clone(), day: d, rows, source };
            progress(&e);
            done.push(e);
        }
        if let Some(l) = lines {
            l.finish()?;
        }
    }
    Ok(done)
}

fn parquet_path(spec: &Spec, table: &str, day: &str) -> Result<PathBuf> {
    let Out::Dir(dir) = &spec.out else { anyhow::bail!("--format parquet writes one file per table and day: give --out DIR") };
    let d = dir.join(table);
    std::fs::create_dir_all(&d)?;
    Ok(d.join(format!("{day}.parquet")))
}

async fn from_postgres(client: &Client, table: &str, day: i64, header: &[Column], spec: &Spec, lines: Option<&mut Lines>) -> Result<u64> {
    let select: Vec<String> = header.iter().map(Column::select_expr).collect();
    let sql = format!("SELECT {} FROM events.{} WHERE {} ORDER BY time, batch_id, position", select.join(", "), ident(table), day_range(day));
    let rows = client.query_raw(sql.as_str(), std::iter::empty::<&(dyn ToSql + Sync)>()).await?;
    match lines {
        None => {
            // A day without rows gets no file.
            let path = parquet_path(spec, table, &day_str(day))?;
            let meta = vec![("chronos.table".to_string(), table.to_string()), ("chronos.day".to_string(), day_str(day))];
            let written = file::write(&path, header, meta, rows).await?.rows;
            if written == 0 {
                std::fs::remove_file(&path)?;
                let _ = std::fs::remove_dir(path.parent().expect("DIR/<table>"));
                // only when empty
            }
            Ok(written as u64)
        }
        Some(lines) => {
            futures_util::pin_mut!(rows);
            let mut n = 0;
            while let Some(row) = rows.try_next().await? {
                let values = header.iter().enumerate().map(|(i, c)| Value::of_row(&row, i, c.kind)).collect::<Result<Vec<_>, _>>()?;
                lines.row(table, header, header, &values)?;
                n += 1;
            }
            Ok(n)
        }
    }
}

async fn from_archive(
    archiver: &Archiver,
    table: &str,
    m: &archive::Manifest,
    header: &[Column],
    spec: &Spec,
    lines: Option<&mut Lines>,
) -> Result<u64> {
    let local = archiver.fetch(m, "exported").await?;
    match lines {
        None => {
            let to = parquet_path(spec, table, &m.day)?;
            std::fs::copy(local.path(), &to).with_context(|| format!("writing {}", to.display()))?;
            Ok(m.rows as u64)
        }
        Some(lines) => {
            let (columns, batches) = file::reader(local.path())?;
            let mut n = 0;
            for batch in batches {
                for values in file::rows_of(&batch?, &columns) {
                    lines.row(table, header, &columns, &values)?;
                    n += 1;
                }
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_prefixed() {
        let text = |t: &str| csv_cell(&Value::Text(t.into()), Kind::Text);
        for formula in ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\r=1"] {
            assert_eq!(text(formula), format!("'{formula}"), "{formula:?}");
        }
        for plain in ["", "BUTTON", "a=b", " =1", "'quoted", "https://x/?a=-1", "\n=1"] {
            assert_eq!(text(plain), plain, "{plain:?}");
        }
        assert_eq!(csv_cell(&Value::Int64(-5), Kind::Int64), "-5", "a number is not text");
        assert_eq!(csv_cell(&Value::Float64(-0.5), Kind::Float64), "-0.5");
        assert_eq!(csv_cell(&Value::TextList(vec![Some("=1".into())]), Kind::TextList), "[\"=1\"]");
        assert_eq!(csv_cell(&Value::Null(Kind::Text), Kind::Text), "");
    }
}

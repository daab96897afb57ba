//! `--verify`: waits until every accepted event is in PostgreSQL, then counts
//! missing and duplicated events by (batch_id, position).

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::report::Verification;

/// A batch the run sent: its id and how many of its events the server accepted
/// (0 when it got no 2xx: its rows, if any, are not expected), with its HTTP
/// status (0: no answer) and when the answer came, ms after the run started.
#[derive(Debug, Clone, Copy)]
pub struct SentBatch {
    pub id: uuid::Uuid,
    pub accepted: u32,
    pub status: u16,
    pub done_ms: u32,
}

/// Checks `events.<type>` for each of `types` against `batches`: waits (at most
/// `timeout`) until every accepted batch is loaded, counts, then waits `settle`
/// and counts again so late duplicates show.
pub async fn verify(
    url: &str,
    types: &[&str],
    batches: &[SentBatch],
    timeout: Duration,
    settle: Duration,
) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let conn = tokio::spawn(connection);
    client
        .batch_execute("CREATE TEMP TABLE loadgen_sent (batch_id uuid PRIMARY KEY, accepted integer NOT NULL)")
        .await?;
    let mut data = String::with_capacity(batches.len() * 48);
    for b in batches {
        data.push_str(&format!("{}\t{}\n", b.id, b.accepted));
    }
    {
        use futures_util::SinkExt;
        let sink = client.copy_in::<_, bytes::Bytes>("COPY loadgen_sent FROM STDIN").await?;
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        sink.as_mut().finish().await?;
    }
    client.batch_execute("ANALYZE loadgen_sent").await?;
    let expected: i64 = client.query_one("SELECT coalesce(sum(accepted), 0)::bigint FROM loadgen_sent", &[]).await?.get(0);
    let union = types
        .iter()
        .map(|t| format!("SELECT batch_id, position FROM events.\"{t}\""))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let sql = format!(
        "SELECT count(*)::bigint, count(DISTINCT (u.batch_id, u.position))::bigint, \
                count(DISTINCT (u.batch_id, u.position)) FILTER (WHERE u.position >= 0 AND u.position < s.accepted)::bigint \
         FROM ({union}) u JOIN loadgen_sent s USING (batch_id)"
    );
    let count = || async {
        let row = client.query_one(sql.as_str(), &[]).await?;
        let (rows, distinct, in_range): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        anyhow::Ok(Verification {
            expected: expected as u64,
            missing: (expected - in_range) as u64,
            duplicated: (rows - distinct) as u64,
            unacknowledged_stored: (distinct - in_range) as u64,
            wait_secs: started.elapsed().as_secs_f64(),
        })
    };
    // Waiting costs the pipeline nothing: the loaders record every loaded batch id in
    // `chronos.seen_batches` (primary key) in the same transaction as its rows, so an
    // index lookup of the accepted ids says when everything is in; the row check runs
    // once that is so (or the wait gave up). Without that table, poll the rows.
    let seen_table: bool = client
        .query_one("SELECT to_regclass('chronos.seen_batches') IS NOT NULL", &[])
        .await?
        .get(0);
    let v = if seen_table {
        let accepted: i64 = client.query_one("SELECT count(*) FROM loadgen_sent WHERE accepted > 0", &[]).await?.get(0);
        let all_in = loop {
            let seen: i64 = client
                .query_one(
                    "SELECT count(*) FROM loadgen_sent s JOIN chronos.seen_batches b USING (batch_id) WHERE s.accepted > 0",
                    &[],
                )
                .await?
                .get(0);
            if seen >= accepted || started.elapsed() >= timeout {
                break started.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut v = count().await?;
        v.wait_secs = all_in;
        v
    } else {
        let mut v = count().await?;
        while v.missing > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(250)).await;
            v = count().await?;
        }
        v
    };
    let wait_secs = v.wait_secs;
    tokio::time::sleep(settle).await;
    let mut v = count().await?;
    v.wait_secs = wait_secs;
    drop(client);
    let _ = conn.await;
    Ok(v)
}

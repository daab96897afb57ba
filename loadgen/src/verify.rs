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

/// Accepted batch ids the wait probes per statement: the oldest still pending.
/// Loaders take each partition in order, so the oldest are loaded first and a
/// probe finds most of a chunk loaded or little of it; one that is not loaded
/// yet costs an index probe, and a chunk costs a millisecond or two.
const WAIT_CHUNK: i64 = 500;

/// Checks `events.<type>` for each of `types` against `batches`: waits (at most
/// `timeout`) until every accepted batch is loaded, counts, then waits `settle`
/// and counts again so late duplicates show.
pub async fn verify(url: &str, types: &[&str], batches: &[SentBatch], timeout: Duration, settle: Duration) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let conn = tokio::spawn(connection);
    // `seq`: the order the answers came in (the wait below probes in it).
    client.batch_execute("CREATE TEMP TABLE loadgen_sent (batch_id uuid PRIMARY KEY, accepted integer NOT NULL, seq integer NOT NULL)").await?;
    let mut answered: Vec<&SentBatch> = batches.iter().collect();
    answered.sort_by_key(|b| b.done_ms);
    let mut data = String::with_capacity(batches.len() * 56);
    for (seq, b) in answered.iter().enumerate() {
        data.push_str(&format!("{}\t{}\t{seq}\n", b.id, b.accepted));
    }
    copy_in(&client, "COPY loadgen_sent FROM STDIN", data).await?;
    client.batch_execute("ANALYZE loadgen_sent").await?;
    let expected: i64 = client.query_one("SELECT coalesce(sum(accepted), 0)::bigint FROM loadgen_sent", &[]).await?.get(0);
    let union = types.iter().map(|t| format!("SELECT batch_id, position FROM events.\"{t}\"")).collect::<Vec<_>>().join(" UNION ALL ");
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
    // The wait must cost the pipeline next to nothing: it runs on the same
    // PostgreSQL while the loaders work. The loaders record every loaded batch
    // id in `chronos.seen_batches` (primary key) in the same transaction as its
    // rows, so the wait probes that index for the accepted ids in the order they were answered,
    // a chunk at a time from the oldest still pending (see `WAIT_CHUNK`), and
    // the row check runs once none is left (or the wait gave up). Joining all
    // accepted ids against the table on every poll instead took a quarter of a
    // core in `perf/pipeline` (d). Without that table, poll the rows.
    let seen_table: bool = client.query_one("SELECT to_regclass('chronos.seen_batches') IS NOT NULL", &[]).await?.get(0);
    let v = if seen_table {
        let mut pending =
            client.execute("CREATE TEMP TABLE loadgen_pending AS SELECT seq, batch_id FROM loadgen_sent WHERE accepted > 0", &[]).await? as i64;
        client
            .batch_execute(
                "ALTER TABLE loadgen_pending ADD PRIMARY KEY (seq); ANALYZE loadgen_pending;
                 SET enable_hashjoin = off; SET enable_mergejoin = off",
            )
            .await?;
        let probe = client
            .prepare(&format!(
                "DELETE FROM loadgen_pending p \
                 WHERE p.seq IN (SELECT seq FROM loadgen_pending ORDER BY seq LIMIT {WAIT_CHUNK}) \
                   AND EXISTS (SELECT 1 FROM chronos.seen_batches b WHERE b.batch_id = p.batch_id)"
            ))
            .await?;
        let all_in = loop {
            if pending == 0 || started.elapsed() >= timeout {
                break started.elapsed().as_secs_f64();
            }
            let loaded = client.execute(&probe, &[]).await? as i64;
            pending -= loaded;
            // A whole chunk loaded: the next one may be too, probe it now.
            if loaded < WAIT_CHUNK && pending > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        client.batch_execute("RESET enable_hashjoin; RESET enable_mergejoin").await?;
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

/// Sends `data` (COPY text format) with `statement`.
async fn copy_in(client: &tokio_postgres::Client, statement: &str, data: String) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let sink = client.copy_in::<_, bytes::Bytes>(statement).await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from(data)).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

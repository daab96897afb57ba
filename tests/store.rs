//! The loaders' statements (`store::internals`) and the maintenance task,
//! each on its own against a real PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chronos::catalog::{built_in_events, EventCatalog};
use chronos::load::decode::{decode_batch, TimePolicy};
use chronos::stack::postgres::PostgresServer;
use chronos::store::internals::{stored_offset, DeadLetter, Internals};
use tokio_postgres::Client;
use uuid::Uuid;

fn catalog() -> EventCatalog {
    EventCatalog::from_config(&built_in_events(), 2048)
}

/// Runs `f` on one runtime (connections live as long as it) against a fresh
/// PostgreSQL with the schema installed (native daily partitions: the
/// partition upkeep below is theirs; the loaders and views suites cover
/// hypertables); `f` keeps the server alive.
fn with_schema<F, Fut>(f: F)
where
    F: FnOnce(PostgresServer, Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = common::temp_dir();
    let server = PostgresServer::start_in(dir.path()).expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = chronos::store::connect(&server.url()).await.unwrap();
        chronos::install(
            &mut client,
            &catalog(),
            &chronos::config::LoadConfig { timescaledb: chronos::config::Timescale::Never, ..Default::default() },
        )
        .await
        .unwrap();
        f(server, client).await;
    });
}

#[test]
fn a_batch_id_is_claimed_once_and_a_retry_finds_it_taken() {
    with_schema(|pg, mut client| async move {
        let _pg = pg; // runs as long as the test
        let internals = Internals::prepare(&client, &catalog()).await.unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let none = HashSet::new();
        let tx = client.transaction().await.unwrap();
        assert_eq!(internals.claim_batches(&tx, &[a], &none).await.unwrap().len(), 1);
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let fresh = internals.claim_batches(&tx, &[a, b], &none).await.unwrap();
        assert_eq!(fresh.into_iter().collect::<Vec<_>>(), vec![b], "`a` was loaded before");
        tx.rollback().await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert!(internals.claim_batches(&tx, &[b], &none).await.unwrap().contains(&b), "a rolled-back claim claims nothing");
        assert!(internals.claim_batches(&tx, &[], &none).await.unwrap().is_empty());
    });
}

#[test]
fn an_imported_batch_id_outlives_the_pruning_of_seen_ids() {
    with_schema(|pg, mut client| async move {
        let _pg = pg; // runs as long as the test
        let internals = Internals::prepare(&client, &catalog()).await.unwrap();
        let (live, imported) = (Uuid::new_v4(), Uuid::new_v4());
        let tx = client.transaction().await.unwrap();
        let fresh = internals.claim_batches(&tx, &[live, imported], &HashSet::from([imported])).await.unwrap();
        assert_eq!(fresh.len(), 2);
        tx.commit().await.unwrap();
        client.execute("UPDATE chronos.seen_batches SET seen_at = now() - interval '30 days'", &[]).await.unwrap();
        let pruned = chronos::store::prune_seen_batches(&client, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(pruned, 1, "only the live batch's id is pruned");
        let tx = client.transaction().await.unwrap();
        let fresh = internals.claim_batches(&tx, &[live, imported], &HashSet::new()).await.unwrap();
        assert_eq!(fresh.into_iter().collect::<Vec<_>>(), vec![live], "the import's id is still claimed");
    });
}

/// One transaction moving partition 3 of topic `t` for group `g`.
async fn advance(client: &mut Client, internals: &Internals, expected: Option<i64>, next: i64) -> bool {
    let tx = client.transaction().await.unwrap();
    let moved = internals.advance_offset(&tx, "g", "t", 3, expected, next).await.unwrap();
    tx.commit().await.unwrap();
    moved
}

#[test]
fn the_offset_moves_only_from_the_offset_the_loader_expected() {
    with_schema(|pg, mut client| async move {
        let _pg = pg; // runs as long as the test
        let internals = Internals::prepare(&client, &catalog()).await.unwrap();
        assert!(advance(&mut client, &internals, None, 5).await, "the first commit of a partition");
        assert!(!advance(&mut client, &internals, None, 7).await, "a loader that read no offset is fenced once one is stored");
        assert!(!advance(&mut client, &internals, Some(4), 7).await, "a loader that read another offset is fenced");
        assert!(advance(&mut client, &internals, Some(5), 9).await);
        assert_eq!(stored_offset(&client, "g", "t", 3).await.unwrap(), Some(9));
        assert_eq!(stored_offset(&client, "g", "t", 4).await.unwrap(), None, "partitions are apart");
        assert_eq!(stored_offset(&client, "other", "t", 3).await.unwrap(), None, "groups are apart");
    });
}

#[test]
fn copy_rows_loads_decoded_tuples_into_their_table() {
    with_schema(|pg, mut client| async move {
        let _pg = pg; // runs as long as the test
        let catalog = catalog();
        let internals = Internals::prepare(&client, &catalog).await.unwrap();
        let now = common::now_ms();
        let record = serde_json::json!({
            "v": 1, "batch_id": Uuid::new_v4().to_string(), "session_id": "s", "key_id": "k",
            "sent_at": now, "received_at": now, "client_ip": "203.0.113.0", "page": {"url": "https://x.example/"},
            "schema": {"clicks": ["element", "buttons", "x", "y", "selector"]},
            "events": [["clicks", now, "BUTTON", 0, 1, 2, "main>b"], ["clicks", now, "A", 1, 3, 4, null]],
        });
        let mut buf = record.to_string().into_bytes();
        let decoded = decode_batch(&mut buf, &catalog, TimePolicy { max_past_ms: 86_400_000, max_future_ms: 86_400_000 }).unwrap();
        let t = &decoded.tables[0];
        let tx = client.transaction().await.unwrap();
        // The batch's page once, then its rows.
        let mut pages = chronos::store::internals::Pages::default();
        pages.push(decoded.batch_id, now, "s", decoded.page.clone().unwrap());
        assert_eq!(internals.store_pages(&tx, &pages).await.unwrap(), 1);
        assert_eq!(internals.store_pages(&tx, &pages).await.unwrap(), 0, "a page stored before is kept");
        assert_eq!(internals.copy_rows(&tx, t.table, &t.tuples).await.unwrap(), 2);
        tx.commit().await.unwrap();
        assert_eq!(
            client.query_one("SELECT (extract(epoch FROM received_at) * 1000)::bigint FROM chronos.batches", &[]).await.unwrap().get::<_, i64>(0),
            now,
            "received_at to the millisecond"
        );
        let rows = client.query("SELECT element, x, selector, metadata->>'url' FROM events.clicks ORDER BY x", &[]).await.unwrap();
        let got: Vec<(String, i64, Option<String>, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        assert_eq!(
            got,
            vec![("BUTTON".into(), 1, Some("main>b".into()), "https://x.example/".into()), ("A".into(), 3, None, "https://x.example/".into())]
        );
    });
}

#[test]
fn a_dead_letter_of_a_retried_batch_is_written_once() {
    with_schema(|pg, mut client| async move {
        let _pg = pg; // runs as long as the test
        let internals = Internals::prepare(&client, &catalog()).await.unwrap();
        let batch = Uuid::new_v4();
        let letter = |position: i32| DeadLetter {
            stage: "load",
            reason: format!("events[{position}]: bad"),
            batch_id: Some(batch),
            position: Some(position),
            event: Some("[\"clicks\",1]".into()),
            raw: None,
            context: Some("{\"session_id\":\"s\"}".into()),
            sqlstate: None,
        };
        let raw = DeadLetter {
            stage: "load",
            reason: "not JSON".into(),
            batch_id: None,
            position: None,
            event: None,
            raw: Some(b"{oops".to_vec()),
            context: None,
            sqlstate: None,
        };
        for _ in 0..2 {
            let tx = client.transaction().await.unwrap();
            internals.insert_dead_letters(&tx, "t", 1, &[(7, letter(0)), (7, letter(2)), (8, raw.clone())]).await.unwrap();
            tx.commit().await.unwrap();
        }
        let rows = client
            .query("SELECT position, \"offset\", reason, raw, context->>'session_id' FROM chronos.dead_letters ORDER BY id", &[])
            .await
            .unwrap();
        let positions: Vec<Option<i32>> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(positions, vec![Some(0), Some(2), None, None], "events once; an undecodable record each time it is read");
        assert_eq!(rows[1].get::<_, i64>(1), 7);
        assert_eq!(rows[2].get::<_, Option<Vec<u8>>>(3).as_deref(), Some(&b"{oops"[..]));
        assert_eq!(rows[0].get::<_, Option<String>>(4).as_deref(), Some("s"));
    });
}

#[test]
fn maintenance_reconnects_after_postgres_restarts() {
    with_schema(|mut pg, client| async move {
        let catalog = catalog();
        let mut m = chronos::store::Maintenance::new(&pg.url(), catalog, 2, Duration::from_secs(3600));
        client
            .batch_execute("INSERT INTO chronos.seen_batches (batch_id, seen_at) VALUES (gen_random_uuid(), now() - interval '2 hours')")
            .await
            .unwrap();
        assert_eq!(m.run_once().await.unwrap(), 1, "the old batch id pruned");
        pg.restart().expect("restart PostgreSQL");
        let client = chronos::store::connect(&pg.url()).await.unwrap();
        // Tomorrow's partition lost (empty, so dropping it loses nothing): upkeep makes it again.
        let tomorrow: String =
            client.query_one("SELECT 'clicks_p' || to_char((now() AT TIME ZONE 'UTC')::date + 1, 'YYYYMMDD')", &[]).await.unwrap().get(0);
        client.batch_execute(&format!("DROP TABLE events_raw.{tomorrow}")).await.unwrap();
        client
            .batch_execute("INSERT INTO chronos.seen_batches (batch_id, seen_at) VALUES (gen_random_uuid(), now() - interval '2 hours')")
            .await
            .unwrap();
        assert_eq!(m.run_once().await.expect("the maintenance connection is opened again"), 1);
        let back = client.query_opt("SELECT 1 FROM pg_tables WHERE schemaname = 'events_raw' AND tablename = $1", &[&tomorrow]).await.unwrap();
        assert!(back.is_some(), "{tomorrow} created again after the restart");
    });
}

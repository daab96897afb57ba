//! DDL from the catalog, applied idempotently: schema `events_raw` (one table
//! per event type, partitioned by day on `time` — native partitions, or
//! TimescaleDB hypertables — plus a default partition so no row is ever
//! refused for its time), schema `events` (one view per type presenting its
//! raw table with each batch's page, `chronos.present_event_table`) and schema
//! `chronos` (offsets, seen batch ids, batches' pages, dead letters, visits,
//! views, archives). New attributes become new nullable columns online; nothing
//! is ever dropped.

use std::fmt::Write as _;

use crate::catalog::{AttrType, EventCatalog, EventType};

/// Columns every event table has, in COPY order, before the attributes.
pub const BASE_COLUMNS: &[(&str, &str)] = &[
    ("time", "timestamptz NOT NULL"),
    ("client_time", "timestamptz NOT NULL"),
    ("received_at", "timestamptz NOT NULL"),
    ("time_flagged", "boolean NOT NULL"),
    ("session_id", "text NOT NULL"),
    ("batch_id", "uuid NOT NULL"),
    ("position", "integer NOT NULL"),
    ("key_id", "text NOT NULL"),
    ("client_ip", "text"),
    // Enrichment at receipt (`crate::enrich`); tables made before get them by
    // `ALTER TABLE … ADD COLUMN` (`ENRICHMENT_COLUMNS`).
    ("is_bot", "boolean NOT NULL DEFAULT false"),
    ("bot_reason", "text"),
    ("browser", "text"),
    ("browser_version", "text"),
    ("os", "text"),
    ("os_version", "text"),
    ("device_type", "text"),
    ("country", "text"),
    ("region", "text"),
    ("city", "text"),
    // The user the site named with `chronos.identify`.
    ("user_id", "text"),
];

/// The base columns added after the first release: added online to tables
/// made before (old rows read `false` / NULL).
pub const ENRICHMENT_COLUMNS: std::ops::Range<usize> = 9..20;

/// The schema of the raw event tables (what the loaders COPY into).
pub const RAW_SCHEMA: &str = "events_raw";

/// The columns of the presented tables `events."<type>"` before the
/// attributes: the raw table's base columns with the batch's page
/// (`metadata`, from `chronos.batches`) after `client_ip`, where the raw
/// tables of earlier versions held it in every row.
pub fn presented_base_columns() -> Vec<&'static str> {
    let mut cols: Vec<&str> = BASE_COLUMNS.iter().map(|(n, _)| *n).collect();
    let at = cols.iter().position(|c| *c == "client_ip").expect("client_ip is a base column") + 1;
    cols.insert(at, "metadata");
    cols
}

/// SQL type of an attribute.
pub fn sql_type(ty: AttrType) -> &'static str {
    match ty {
        AttrType::Text => "text",
        AttrType::Int => "bigint",
        AttrType::Float => "double precision",
        AttrType::Bool => "boolean",
        AttrType::TextList => "text[]",
    }
}

/// `"name"`: identifiers come only from the validated catalog, quoted anyway.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `events_raw."<type>"`: the raw table (COPY target, partitions, chunks).
pub fn table(ty: &EventType) -> String {
    raw(&ty.name)
}

/// `events_raw."<name>"`: a raw table or one of its partitions, by name.
pub fn raw(name: &str) -> String {
    format!("{RAW_SCHEMA}.{}", ident(name))
}

/// `events."<type>"`: the raw table with each row's page, as users query it.
pub fn view(ty: &EventType) -> String {
    format!("events.{}", ident(&ty.name))
}

/// The internal tables (schema `chronos`).
pub const INTERNALS: &str = r#"
CREATE SCHEMA IF NOT EXISTS events;
CREATE SCHEMA IF NOT EXISTS events_raw;
CREATE SCHEMA IF NOT EXISTS chronos;
-- Each loaded batch's page, once: the raw rows of events_raw do not repeat it
-- (it was the largest part of a row's cost, perf/loader.md), and the tables
-- users query, events."<type>", join it back (chronos.present_event_table).
-- Pruned by retention once no raw row can be of the batch (src/lifecycle).
CREATE TABLE IF NOT EXISTS chronos.batches (
    batch_id uuid PRIMARY KEY,
    received_at timestamptz NOT NULL,
    session_id text NOT NULL,
    metadata jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_received_at ON chronos.batches USING brin (received_at);
-- Writes to a presented table go to its raw table and its batch's page:
-- INSERT, UPDATE and DELETE on events."<type>" keep working.
CREATE OR REPLACE FUNCTION chronos.write_event_row() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
    raw text := format('events_raw.%I', TG_TABLE_NAME);
    cols text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        EXECUTE format('DELETE FROM %s WHERE time = $1 AND batch_id = $2 AND position = $3', raw) USING OLD.time, OLD.batch_id, OLD.position;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
        VALUES (NEW.batch_id, NEW.received_at, NEW.session_id, coalesce(NEW.metadata, '{}'))
        ON CONFLICT (batch_id) DO UPDATE SET metadata = EXCLUDED.metadata
        WHERE TG_OP = 'UPDATE' AND chronos.batches.metadata IS DISTINCT FROM EXCLUDED.metadata;
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
        FROM pg_attribute WHERE attrelid = raw::regclass AND attnum > 0 AND NOT attisdropped;
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_record(NULL::%s, $1)', raw, cols, cols, raw) USING to_jsonb(NEW);
    RETURN NEW;
END $f$;
-- events."<type>": the raw table's columns in its order, with the page
-- (metadata) after client_ip; made again only when the raw table gained a
-- column (a view is replaced under a lock every reader waits for).
CREATE OR REPLACE FUNCTION chronos.present_event_table(name text) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    raw regclass := format('events_raw.%I', name)::regclass;
    want text[];
    have text[];
    cols text;
BEGIN
    SELECT array_agg(attname::text ORDER BY attnum) INTO want FROM pg_attribute WHERE attrelid = raw AND attnum > 0 AND NOT attisdropped;
    want := array_cat(want[:array_position(want, 'client_ip')], ARRAY['metadata']) || want[array_position(want, 'client_ip') + 1:];
    SELECT array_agg(attname::text ORDER BY attnum) INTO have FROM pg_attribute
        WHERE attrelid = to_regclass(format('events.%I', name)) AND attnum > 0 AND NOT attisdropped;
    IF have IS NOT DISTINCT FROM want THEN
        RETURN;
    END IF;
    SELECT string_agg(CASE WHEN c = 'metadata' THEN 'b.metadata' ELSE 'r.' || quote_ident(c) END, ', ') INTO cols FROM unnest(want) AS c;
    EXECUTE format('CREATE OR REPLACE VIEW events.%I AS SELECT %s FROM events_raw.%I r LEFT JOIN chronos.batches b ON b.batch_id = r.batch_id', name, cols, name);
    EXECUTE format('ALTER VIEW events.%I ALTER COLUMN is_bot SET DEFAULT false', name);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = format('events.%I', name)::regclass AND tgname = 'write_through') THEN
        EXECUTE format('CREATE TRIGGER write_through INSTEAD OF INSERT OR UPDATE OR DELETE ON events.%I FOR EACH ROW EXECUTE FUNCTION chronos.write_event_row()', name);
    END IF;
END $f$;
-- Event tables of versions before chronos.batches (events."<type>" tables
-- with the page in every row) move to events_raw, their pages to
-- chronos.batches, and their metadata column is dropped; their native
-- partitions move with them. Does nothing when there are none.
CREATE OR REPLACE FUNCTION chronos.move_event_tables() RETURNS integer LANGUAGE plpgsql AS $f$
DECLARE
    t record;
    p record;
    moved integer := 0;
BEGIN
    FOR t IN SELECT c.oid, c.relname::text AS name FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
             WHERE s.nspname = 'events' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'metadata' AND NOT a.attisdropped)
    LOOP
        FOR p IN SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace s ON s.oid = c.relnamespace
                 WHERE i.inhparent = t.oid AND s.nspname = 'events'
        LOOP
            EXECUTE format('ALTER TABLE events.%I SET SCHEMA events_raw', p.name);
        END LOOP;
        EXECUTE format('ALTER TABLE events.%I SET SCHEMA events_raw', t.name);
        EXECUTE format('INSERT INTO chronos.batches (batch_id, received_at, session_id, metadata)
                        SELECT DISTINCT ON (batch_id) batch_id, received_at, session_id, metadata FROM events_raw.%I
                        ORDER BY batch_id, time ON CONFLICT DO NOTHING', t.name);
        EXECUTE format('ALTER TABLE events_raw.%I DROP COLUMN metadata', t.name);
        RAISE NOTICE 'moved events.% to events_raw.% (pages to chronos.batches)', t.name, t.name;
        moved := moved + 1;
    END LOOP;
    RETURN moved;
END $f$;
CREATE TABLE IF NOT EXISTS chronos.offsets (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
CREATE TABLE IF NOT EXISTS chronos.seen_batches (
    batch_id uuid PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
-- kept: an imported batch's id, never pruned, so a re-run of an import stores nothing twice.
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'chronos.seen_batches'::regclass AND attname = 'kept' AND NOT attisdropped) THEN
    ALTER TABLE chronos.seen_batches ADD COLUMN kept boolean NOT NULL DEFAULT false; END IF; END $$;
CREATE INDEX IF NOT EXISTS seen_batches_seen_at ON chronos.seen_batches (seen_at);
CREATE TABLE IF NOT EXISTS chronos.dead_letters (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    stage text NOT NULL,
    reason text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    batch_id uuid,
    position integer,
    event jsonb,
    raw bytea,
    context jsonb,
    replayed_at timestamptz
);
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'chronos.dead_letters'::regclass AND attname = 'context' AND NOT attisdropped) THEN
    ALTER TABLE chronos.dead_letters ADD COLUMN context jsonb; END IF; END $$;
-- sqlstate: PostgreSQL's code when a permanent error was traced to the record
-- (its raw bytes in raw), set aside so that its partition goes on loading.
ALTER TABLE chronos.dead_letters ADD COLUMN IF NOT EXISTS sqlstate text;
-- Which user (chronos.identify) each session was, from first to last event
-- seen; the loaders keep it in the transaction that stores the events.
CREATE TABLE IF NOT EXISTS chronos.identities (
    session_id text NOT NULL,
    user_id text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (session_id, user_id)
);
CREATE INDEX IF NOT EXISTS identities_user ON chronos.identities (user_id);
-- Visits: a session id split at idle gaps (load.session_gap_secs), kept by the
-- loaders in the transaction that stores the events (src/store/sessions.rs).
CREATE TABLE IF NOT EXISTS chronos.sessions (
    id bigserial PRIMARY KEY,
    session_id text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    duration interval GENERATED ALWAYS AS (ended_at - started_at) STORED,
    events bigint NOT NULL,
    pageviews bigint NOT NULL,
    entry_url text,
    exit_url text,
    referrer text,
    user_id text,
    is_bot boolean NOT NULL,
    browser text,
    os text,
    device_type text,
    country text,
    region text,
    city text
);
CREATE INDEX IF NOT EXISTS sessions_session ON chronos.sessions (session_id, ended_at);
CREATE INDEX IF NOT EXISTS sessions_started ON chronos.sessions USING brin (started_at);
-- A retried batch (same batch id) dead-letters the same event once.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_once ON chronos.dead_letters (stage, batch_id, position)
    WHERE batch_id IS NOT NULL AND position IS NOT NULL;
-- Continuous views (src/views): definitions, and a generation moved by every
-- add or drop; each view's state table and companion view live in `views`.
CREATE SCHEMA IF NOT EXISTS views;
CREATE TABLE IF NOT EXISTS chronos.views (
    name text PRIMARY KEY,
    source text NOT NULL,
    definition text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    backfilled boolean NOT NULL
);
-- broken: why a view stopped being maintained (one of its statements failed
-- for good); NULL while it is maintained. Drop and add it again once fixed.
ALTER TABLE chronos.views ADD COLUMN IF NOT EXISTS broken text;
ALTER TABLE chronos.views ADD COLUMN IF NOT EXISTS broken_at timestamptz;
-- rebuilding: when a rebuild (src/lifecycle/rebuild.rs) began filling the
-- view's shadow table views."<name>_mrel_new", which loaders also write meanwhile.
ALTER TABLE chronos.views ADD COLUMN IF NOT EXISTS rebuilding timestamptz;
CREATE TABLE IF NOT EXISTS chronos.view_generation (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation bigint NOT NULL
);
INSERT INTO chronos.view_generation (generation) VALUES (0) ON CONFLICT DO NOTHING;
-- Raw days archived (src/lifecycle/archive.rs): one row per event table and UTC day, written
-- once the archive file is verified; dropped_at once the day left PostgreSQL.
-- location is the object path under retention.archive ('' for a day without
-- rows, 'off' for a day dropped with archiving off).
CREATE TABLE IF NOT EXISTS chronos.archives (
    table_name text NOT NULL,
    day date NOT NULL,
    location text NOT NULL,
    rows bigint NOT NULL,
    min_time timestamptz,
    max_time timestamptz,
    bytes bigint NOT NULL,
    sha256 text NOT NULL,
    schema_version integer NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    dropped_at timestamptz,
    restored_until timestamptz,
    PRIMARY KEY (table_name, day)
);
-- `chronos erase` (src/lifecycle/erase.rs): who erased what kind of subject,
-- when, and how much; never the erased values.
CREATE TABLE IF NOT EXISTS chronos.erasures (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL,
    subject text NOT NULL,
    raw_rows bigint NOT NULL,
    archived_rows bigint NOT NULL,
    files_rewritten integer NOT NULL,
    dead_letters bigint NOT NULL,
    view_rows bigint NOT NULL
);
-- `chronos reprocess` (src/lifecycle/reprocess/): each run (who, when, the
-- days and stages asked, the views it rebuilt), and its steps — a
-- table's day in PostgreSQL or in the archive, a day's visits — with what
-- each changed, written in the transaction that made the change, so a run
-- cut short is finished, and counted, exactly by the next.
CREATE TABLE IF NOT EXISTS chronos.reprocessings (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    requested_by text NOT NULL,
    from_day date NOT NULL,
    to_day date NOT NULL,
    stages text[] NOT NULL,
    views_rebuilt text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS chronos.reprocess_steps (
    run_id bigint NOT NULL REFERENCES chronos.reprocessings (id) ON DELETE CASCADE,
    place text NOT NULL,
    table_name text NOT NULL,
    day date NOT NULL,
    done boolean NOT NULL DEFAULT false,
    done_until timestamptz,
    events bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL DEFAULT 0,
    bot bigint NOT NULL DEFAULT 0,
    flagged bigint NOT NULL DEFAULT 0,
    cleared bigint NOT NULL DEFAULT 0,
    agent bigint NOT NULL DEFAULT 0,
    geo bigint NOT NULL DEFAULT 0,
    no_user_agent bigint NOT NULL DEFAULT 0,
    no_place bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, place, table_name, day)
);
"#;

/// Runs `chronos.move_event_tables()` (defined by `INTERNALS`): after
/// `INTERNALS`, before the event tables' DDL. Returns the tables moved.
pub const MOVE_EVENT_TABLES: &str = "SELECT chronos.move_event_tables();\n";

/// How event tables are split by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Native range partitions per day (created ahead) plus a default partition.
    Native,
    /// TimescaleDB hypertables; TimescaleDB creates their chunks, of this
    /// many hours (applied to new chunks of existing hypertables too).
    Hypertable { chunk_hours: u32 },
}

/// DDL for one event table: create if missing, then add any missing attribute column.
pub fn event_table_ddl(ty: &EventType) -> String {
    event_table_ddl_as(ty, Layout::Native)
}

/// `event_table_ddl` for a layout.
pub fn event_table_ddl_as(ty: &EventType, layout: Layout) -> String {
    let t = table(ty);
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {t} (\n");
    for (name, decl) in BASE_COLUMNS {
        let _ = writeln!(sql, "    {} {decl},", ident(name));
    }
    for a in &ty.attributes {
        let _ = writeln!(sql, "    {} {},", ident(&a.name), sql_type(a.ty));
    }
    sql.truncate(sql.trim_end_matches([',', '\n']).len());
    match layout {
        Layout::Native => {
            sql.push_str("\n) PARTITION BY RANGE (time);\n");
            let _ = writeln!(sql, "CREATE TABLE IF NOT EXISTS {} PARTITION OF {t} DEFAULT;", raw(&format!("{}_default", ty.name)));
        }
        Layout::Hypertable { chunk_hours } => {
            sql.push_str("\n);\n");
            // Chunks are made by TimescaleDB for any time: no row is refused for its time.
            // Both calls lock the table, so each runs only when it changes something.
            let regclass = t.replace('\'', "''");
            let name = ty.name.replace('\'', "''");
            let _ = writeln!(
                sql,
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = '{RAW_SCHEMA}' AND hypertable_name = '{name}') THEN \
                 PERFORM create_hypertable('{regclass}', 'time', chunk_time_interval => interval '{chunk_hours} hours', create_default_indexes => false); END IF; END $$;"
            );
            let _ = writeln!(
                sql,
                "DO $$ BEGIN IF (SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_schema = '{RAW_SCHEMA}' AND hypertable_name = '{name}' AND column_name = 'time') \
                 IS DISTINCT FROM interval '{chunk_hours} hours' THEN PERFORM set_chunk_time_interval('{regclass}', interval '{chunk_hours} hours'); END IF; END $$;"
            );
        }
    }
    // Schema evolution: columns added to the catalog (and base columns added
    // since) appear online; old rows read NULL (is_bot: false).
    for (name, decl) in &BASE_COLUMNS[ENRICHMENT_COLUMNS] {
        sql.push_str(&add_column_if_missing(&t, name, decl));
    }
    for a in &ty.attributes {
        sql.push_str(&add_column_if_missing(&t, &a.name, sql_type(a.ty)));
    }
    // BRIN, not B-tree: rows arrive in time order (give or take a clock's
    // error), so block ranges summarise them well, and a row costs the index
    // almost nothing, where a B-tree insert cost PostgreSQL about as much as
    // the rest of the row (perf/loader.md). Tables made before keep their index.
    let _ = writeln!(sql, "CREATE INDEX IF NOT EXISTS {} ON {t} USING brin (time);", ident(&format!("{}_time", ty.name)));
    let _ = writeln!(sql, "SELECT chronos.present_event_table('{}');", ty.name.replace('\'', "''"));
    sql
}

/// `ALTER TABLE … ADD COLUMN` of a column `table` lacks, as a statement that
/// does nothing when it has it. (`ADD COLUMN IF NOT EXISTS` takes the
/// table's ACCESS EXCLUSIVE lock even then, so every start would queue behind
/// and block every reader, and deadlock with a query reading several tables.)
fn add_column_if_missing(table: &str, column: &str, decl: &str) -> String {
    let (t, c) = (table.replace('\'', "''"), column.replace('\'', "''"));
    format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = '{c}' AND NOT attisdropped) THEN \
         ALTER TABLE {table} ADD COLUMN {} {decl}; END IF; END $$;\n",
        ident(column)
    )
}

/// DDL creating the daily partition of `day` (days since the Unix epoch) for one table,
/// unless it exists. Rows for that day already in the default partition would make
/// this fail, so partitions are created ahead of time.
pub fn day_partition_ddl(ty: &EventType, day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    let (y2, m2, d2) = civil_from_days(day + 1);
    let name = day_partition_name(&ty.name, day);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ('{y:04}-{m:02}-{d:02} 00:00:00+00') TO ('{y2:04}-{m2:02}-{d2:02} 00:00:00+00');",
        raw(&name),
        table(ty)
    )
}

/// The name of `table`'s native partition for `day`: `<table>_pYYYYMMDD`.
pub fn day_partition_name(table: &str, day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{table}_p{y:04}{m:02}{d:02}")
}

/// The schema of a catalog without its daily partitions (those depend on the
/// day they are created): what sql/schema.sql holds for the built-in catalog.
pub fn static_sql(catalog: &EventCatalog) -> String {
    let mut sql = String::from(INTERNALS);
    sql.push_str(MOVE_EVENT_TABLES);
    for ty in catalog.types() {
        sql.push_str(&event_table_ddl(ty));
    }
    sql
}

/// Whole schema for a catalog, with daily partitions for `[today - past, today + ahead]`
/// (native layout) or as hypertables.
pub fn install_sql(catalog: &EventCatalog, today: i64, past_days: i64, ahead_days: i64, layout: Layout) -> String {
    let mut sql = String::from(INTERNALS);
    sql.push_str(MOVE_EVENT_TABLES);
    sql.push_str(&tables_sql(catalog, today, past_days, ahead_days, layout));
    sql
}

/// `install_sql` without `INTERNALS`: the event tables and their presented views.
pub fn tables_sql(catalog: &EventCatalog, today: i64, past_days: i64, ahead_days: i64, layout: Layout) -> String {
    let mut sql = String::new();
    let native = layout == Layout::Native;
    if !native {
        sql.push_str("CREATE EXTENSION IF NOT EXISTS timescaledb;\n");
    }
    for ty in catalog.types() {
        sql.push_str(&event_table_ddl_as(ty, layout));
        if !native {
            continue;
        }
        for day in today - past_days..=today + ahead_days {
            sql.push_str(&day_partition_ddl(ty, day));
            sql.push('\n');
        }
    }
    sql
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;

    #[test]
    fn sql_schema_file_is_the_generated_schema_of_the_built_in_catalog() {
        let catalog = EventCatalog::from_config(&built_in_events(), 2048);
        assert_eq!(
            static_sql(&catalog),
            include_str!("../../sql/schema.sql"),
            "regenerate with `chronos install-pipeline --print-sql > sql/schema.sql`"
        );
    }

    #[test]
    fn hypertable_layout_makes_plain_tables_with_the_configured_chunks_and_no_partitions() {
        let catalog = EventCatalog::from_config(&built_in_events(), 2048);
        let sql = install_sql(&catalog, 20_418, 8, 7, Layout::Hypertable { chunk_hours: 6 });
        assert!(sql.contains("CREATE EXTENSION IF NOT EXISTS timescaledb;"));
        assert!(!sql.contains("PARTITION"), "{sql}");
        assert!(sql.contains("\"selector\" text\n);\nDO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = 'events_raw' AND hypertable_name = 'clicks') THEN"), "{sql}");
        assert!(sql.contains("PERFORM create_hypertable('events_raw.\"clicks\"', 'time', chunk_time_interval => interval '6 hours', create_default_indexes => false)"), "{sql}");
        assert!(
            sql.contains("IS DISTINCT FROM interval '6 hours' THEN PERFORM set_chunk_time_interval('events_raw.\"clicks\"', interval '6 hours')"),
            "{sql}"
        );
        assert_eq!(sql.matches("create_hypertable(").count(), catalog.types().len());
        let native = install_sql(&catalog, 20_418, 8, 7, Layout::Native);
        assert!(!native.contains("timescaledb") && native.contains("PARTITION OF events_raw.\"clicks\" DEFAULT"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn table_ddl_has_every_column_in_order() {
        let catalog = EventCatalog::from_config(&built_in_events(), 100);
        let clicks = catalog.get("clicks").unwrap();
        let ddl = event_table_ddl(clicks);
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS events_raw.\"clicks\" (\n    \"time\" timestamptz NOT NULL,"), "{ddl}");
        assert!(ddl.contains("\"selector\" text\n) PARTITION BY RANGE (time);"), "{ddl}");
        assert!(ddl.contains("attrelid = 'events_raw.\"clicks\"'::regclass AND attname = 'buttons' AND NOT attisdropped) THEN ALTER TABLE events_raw.\"clicks\" ADD COLUMN \"buttons\" bigint; END IF;"), "{ddl}");
        assert!(ddl.contains("ALTER TABLE events_raw.\"clicks\" ADD COLUMN \"is_bot\" boolean NOT NULL DEFAULT false;"), "{ddl}");
        assert!(!ddl.contains("IF NOT EXISTS \"buttons\""), "no ALTER that locks the table when the column is there");
        assert!(day_partition_ddl(clicks, 20_418).contains("FROM ('2025-11-26 00:00:00+00') TO ('2025-11-27 00:00:00+00')"));
    }
}


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
SELECT chronos.move_event_tables();
CREATE TABLE IF NOT EXISTS events_raw."clicks" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "element" text,
    "buttons" bigint,
    "x" bigint,
    "y" bigint,
    "selector" text
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."clicks_default" PARTITION OF events_raw."clicks" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'element' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "element" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'buttons' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "buttons" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'x' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "x" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'y' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "y" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."clicks"'::regclass AND attname = 'selector' AND NOT attisdropped) THEN ALTER TABLE events_raw."clicks" ADD COLUMN "selector" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "clicks_time" ON events_raw."clicks" USING brin (time);
SELECT chronos.present_event_table('clicks');
CREATE TABLE IF NOT EXISTS events_raw."form_submissions" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "form_id" text,
    "action" text,
    "fields" text[]
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."form_submissions_default" PARTITION OF events_raw."form_submissions" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'form_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "form_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'action' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "action" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."form_submissions"'::regclass AND attname = 'fields' AND NOT attisdropped) THEN ALTER TABLE events_raw."form_submissions" ADD COLUMN "fields" text[]; END IF; END $$;
CREATE INDEX IF NOT EXISTS "form_submissions_time" ON events_raw."form_submissions" USING brin (time);
SELECT chronos.present_event_table('form_submissions');
CREATE TABLE IF NOT EXISTS events_raw."key_presses" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "key" text,
    "element" text
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."key_presses_default" PARTITION OF events_raw."key_presses" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'key' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "key" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."key_presses"'::regclass AND attname = 'element' AND NOT attisdropped) THEN ALTER TABLE events_raw."key_presses" ADD COLUMN "element" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "key_presses_time" ON events_raw."key_presses" USING brin (time);
SELECT chronos.present_event_table('key_presses');
CREATE TABLE IF NOT EXISTS events_raw."link_clicks" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "link_text" text,
    "target_url" text
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."link_clicks_default" PARTITION OF events_raw."link_clicks" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'link_text' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "link_text" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."link_clicks"'::regclass AND attname = 'target_url' AND NOT attisdropped) THEN ALTER TABLE events_raw."link_clicks" ADD COLUMN "target_url" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "link_clicks_time" ON events_raw."link_clicks" USING brin (time);
SELECT chronos.present_event_table('link_clicks');
CREATE TABLE IF NOT EXISTS events_raw."mouse_moves" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "x" bigint,
    "y" bigint
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."mouse_moves_default" PARTITION OF events_raw."mouse_moves" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'x' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "x" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."mouse_moves"'::regclass AND attname = 'y' AND NOT attisdropped) THEN ALTER TABLE events_raw."mouse_moves" ADD COLUMN "y" bigint; END IF; END $$;
CREATE INDEX IF NOT EXISTS "mouse_moves_time" ON events_raw."mouse_moves" USING brin (time);
SELECT chronos.present_event_table('mouse_moves');
CREATE TABLE IF NOT EXISTS events_raw."pageviews" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "is_bot" boolean NOT NULL DEFAULT false,
    "bot_reason" text,
    "browser" text,
    "browser_version" text,
    "os" text,
    "os_version" text,
    "device_type" text,
    "country" text,
    "region" text,
    "city" text,
    "user_id" text,
    "navigation" text,
    "referrer" text
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS events_raw."pageviews_default" PARTITION OF events_raw."pageviews" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'navigation' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "navigation" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events_raw."pageviews"'::regclass AND attname = 'referrer' AND NOT attisdropped) THEN ALTER TABLE events_raw."pageviews" ADD COLUMN "referrer" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "pageviews_time" ON events_raw."pageviews" USING brin (time);
SELECT chronos.present_event_table('pageviews');

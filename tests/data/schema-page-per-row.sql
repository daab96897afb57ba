-- sql/schema.sql of commit 9295fcc, the last version that stored the page (metadata)
-- in every row of events."<type>": what tests/loaders.rs migrates from.

CREATE SCHEMA IF NOT EXISTS events;
CREATE SCHEMA IF NOT EXISTS chronos;
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
CREATE TABLE IF NOT EXISTS chronos.view_generation (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation bigint NOT NULL
);
INSERT INTO chronos.view_generation (generation) VALUES (0) ON CONFLICT DO NOTHING;
-- Raw days archived (src/archive): one row per event table and UTC day, written
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
CREATE TABLE IF NOT EXISTS events."clicks" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."clicks_default" PARTITION OF events."clicks" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'element' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "element" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'buttons' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "buttons" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'x' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "x" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'y' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "y" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."clicks"'::regclass AND attname = 'selector' AND NOT attisdropped) THEN ALTER TABLE events."clicks" ADD COLUMN "selector" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "clicks_time" ON events."clicks" USING brin (time);
CREATE TABLE IF NOT EXISTS events."form_submissions" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."form_submissions_default" PARTITION OF events."form_submissions" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'form_id' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "form_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'action' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "action" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."form_submissions"'::regclass AND attname = 'fields' AND NOT attisdropped) THEN ALTER TABLE events."form_submissions" ADD COLUMN "fields" text[]; END IF; END $$;
CREATE INDEX IF NOT EXISTS "form_submissions_time" ON events."form_submissions" USING brin (time);
CREATE TABLE IF NOT EXISTS events."key_presses" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."key_presses_default" PARTITION OF events."key_presses" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'key' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "key" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."key_presses"'::regclass AND attname = 'element' AND NOT attisdropped) THEN ALTER TABLE events."key_presses" ADD COLUMN "element" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "key_presses_time" ON events."key_presses" USING brin (time);
CREATE TABLE IF NOT EXISTS events."link_clicks" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."link_clicks_default" PARTITION OF events."link_clicks" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'link_text' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "link_text" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."link_clicks"'::regclass AND attname = 'target_url' AND NOT attisdropped) THEN ALTER TABLE events."link_clicks" ADD COLUMN "target_url" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "link_clicks_time" ON events."link_clicks" USING brin (time);
CREATE TABLE IF NOT EXISTS events."mouse_moves" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."mouse_moves_default" PARTITION OF events."mouse_moves" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'x' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "x" bigint; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."mouse_moves"'::regclass AND attname = 'y' AND NOT attisdropped) THEN ALTER TABLE events."mouse_moves" ADD COLUMN "y" bigint; END IF; END $$;
CREATE INDEX IF NOT EXISTS "mouse_moves_time" ON events."mouse_moves" USING brin (time);
CREATE TABLE IF NOT EXISTS events."pageviews" (
    "time" timestamptz NOT NULL,
    "client_time" timestamptz NOT NULL,
    "received_at" timestamptz NOT NULL,
    "time_flagged" boolean NOT NULL,
    "session_id" text NOT NULL,
    "batch_id" uuid NOT NULL,
    "position" integer NOT NULL,
    "key_id" text NOT NULL,
    "client_ip" text,
    "metadata" jsonb NOT NULL,
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
CREATE TABLE IF NOT EXISTS events."pageviews_default" PARTITION OF events."pageviews" DEFAULT;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'is_bot' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "is_bot" boolean NOT NULL DEFAULT false; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'bot_reason' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "bot_reason" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'browser' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "browser" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'browser_version' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "browser_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'os' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "os" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'os_version' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "os_version" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'device_type' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "device_type" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'country' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "country" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'region' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "region" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'city' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "city" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'user_id' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "user_id" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'navigation' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "navigation" text; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events."pageviews"'::regclass AND attname = 'referrer' AND NOT attisdropped) THEN ALTER TABLE events."pageviews" ADD COLUMN "referrer" text; END IF; END $$;
CREATE INDEX IF NOT EXISTS "pageviews_time" ON events."pageviews" USING brin (time);

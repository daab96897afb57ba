-- Continuous views created by `chronos install-pipeline` on a fresh install
-- (with backfill from the raw tables). Read them with
--   SELECT * FROM views.<name>;
-- Drop one with `chronos views drop <name>`; add it back with
--   chronos views add sql/views/defaults.sql   (after removing the others from a copy)
-- Syntax and what is supported: docs/views.md. Time buckets are UTC.
-- They leave out bots' events (is_bot: docs/enrichment.md); a view of your
-- own counts them unless it says WHERE NOT is_bot.

-- What the original Chronos had (its PipelineDB views).
CREATE CONTINUOUS VIEW element_counts AS
  SELECT element, count(*) FROM clicks WHERE NOT is_bot GROUP BY element;

CREATE CONTINUOUS VIEW link_text_counts AS
  SELECT link_text, count(*) FROM link_clicks WHERE NOT is_bot GROUP BY link_text;

CREATE CONTINUOUS VIEW key_press_counts AS
  SELECT key, count(*) FROM key_presses WHERE NOT is_bot GROUP BY key;

CREATE CONTINUOUS VIEW mouse_move_counts AS
  SELECT metadata->>'url' AS url, count(*) FROM mouse_moves WHERE NOT is_bot GROUP BY url;

CREATE CONTINUOUS VIEW page_title_views AS
  SELECT metadata->>'title' AS title, count(*) FROM pageviews WHERE NOT is_bot GROUP BY title;

-- And more.
CREATE CONTINUOUS VIEW events_per_minute AS
  SELECT type, date_trunc('minute', time) AS minute, count(*) AS events
  FROM events WHERE NOT is_bot GROUP BY type, minute;

CREATE CONTINUOUS VIEW pageviews_hourly AS
  SELECT metadata->>'url' AS url, date_trunc('hour', time) AS hour,
         count(*) AS views, count(DISTINCT session_id) AS sessions
  FROM pageviews WHERE NOT is_bot GROUP BY url, hour;

CREATE CONTINUOUS VIEW form_submissions_hourly AS
  SELECT form_id, action, date_trunc('hour', time) AS hour,
         count(*) AS submissions, count(DISTINCT session_id) AS sessions
  FROM form_submissions WHERE NOT is_bot GROUP BY form_id, action, hour;

-- Mouse positions binned into 50 px cells per page: a heat grid.
CREATE CONTINUOUS VIEW mouse_heat AS
  SELECT metadata->>'url' AS url, x / 50 * 50 AS cell_x, y / 50 * 50 AS cell_y, count(*) AS moves
  FROM mouse_moves WHERE NOT is_bot GROUP BY url, cell_x, cell_y;

-- Unique sessions per minute, for sliding windows (docs/views.md).
CREATE CONTINUOUS VIEW sessions_per_minute AS
  SELECT date_trunc('minute', time) AS minute, count(DISTINCT session_id) AS sessions, count(*) AS events
  FROM events WHERE NOT is_bot GROUP BY minute;

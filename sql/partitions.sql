-- sim_runs' day partitions (migration 0015, store/partitions.py): made ahead by housekeeping,
-- dropped by retention. Where a partition's name is part of a statement, store/partitions.py
-- puts it in as a quoted identifier, after checking it is one of sim_runs_day_partitions().

-- add_partitions --
-- Day partitions through $1 days after today (UTC); how many were made.
SELECT sim_runs_add_partitions($1::int)

-- horizon --
-- The end of the newest day partition (NULL: none), the default's bound, and whether that
-- bound is validated (a prune leaves it NOT VALID for a moment; housekeeping validates it).
SELECT (SELECT max(ends) FROM sim_runs_day_partitions()) AS horizon,
       sim_runs_default_bound() AS default_bound,
       (SELECT convalidated FROM pg_constraint
         WHERE conrelid = 'sim_runs_default'::regclass AND conname = 'sim_runs_default_bound')
         AS bound_valid

-- ended_partitions --
-- The day partitions whose day is over, oldest first: what a prune may drop.
SELECT name, starts, ends FROM sim_runs_day_partitions() WHERE ends <= now() ORDER BY starts

-- changes_seen --
-- The change log's position for runs: a drop stops if anything changed a run since it looked.
SELECT coalesce(max(id), 0) FROM sim_history_changes WHERE tbl = 'sim_runs'

-- partition_rows --
-- One partition's rows in ($1, $2] as canonical lines (sql/history.sql rows_sim_runs, the same
-- text: tests/integration/test_partitions.py compares them), by tableoid: ids of neighbouring
-- days interleave, each partition's primary key answers the range.
SELECT id, user_id,
       concat_ws('|', id, user_id,
                 to_char(scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                 to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                 coalesce(to_char(finished_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '\N'),
                 outcome, trades_count) AS line
  FROM sim_runs
 WHERE tableoid = $3::regclass AND id > $1 AND id <= $2
 ORDER BY id

-- validate_bound --
-- SHARE UPDATE EXCLUSIVE on the default only: the engine's inserts and reads go on meanwhile.
ALTER TABLE sim_runs_default VALIDATE CONSTRAINT sim_runs_default_bound

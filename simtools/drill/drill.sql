-- Named queries of the chaos drill (run.py, queries.py beside this file). They run only against the
-- drill's own throw-away cluster: its bookkeeping lives in schema `drill`, never in a real
-- database. The invariants are judged here, by SQL alone, from what the engine committed.

-- drill_schema --
-- What the drill did, written once the faults are over (Postgres itself was one of the faults):
-- each user's first slot and interval as seeded, every `simctl run` it issued, every fault.
CREATE SCHEMA IF NOT EXISTS drill;
CREATE TABLE IF NOT EXISTS drill.first_slots (
    user_id bigint PRIMARY KEY,
    first_slot timestamptz,
    interval_s integer NOT NULL
);
CREATE TABLE IF NOT EXISTS drill.triggers (
    user_id bigint NOT NULL,
    issued_at timestamptz NOT NULL,
    done_at timestamptz NOT NULL,
    exit_code integer NOT NULL
);
CREATE INDEX IF NOT EXISTS drill_triggers_user ON drill.triggers (user_id);
CREATE TABLE IF NOT EXISTS drill.faults (
    id integer PRIMARY KEY,
    kind text NOT NULL,
    at timestamptz NOT NULL,
    target text,
    detail text
);

-- drill_snapshot_first_slots --
-- Taken after seeding and before any scheduler starts: the slot each user's walk begins from.
INSERT INTO drill.first_slots (user_id, first_slot, interval_s)
SELECT id, sim_next_run_at, sim_interval_s FROM users
 WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
ON CONFLICT (user_id) DO NOTHING

-- drill_record_triggers --
INSERT INTO drill.triggers (user_id, issued_at, done_at, exit_code)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::int[])

-- drill_record_faults --
INSERT INTO drill.faults (id, kind, at, target, detail)
SELECT * FROM unnest($1::int[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])

-- drill_progress --
-- Cheap enough to run every few seconds during the faults: max(id) instead of count(*) (ids of
-- rolled-back inserts are skipped, so it is an upper bound), the due walk on idx_users_sim_due.
SELECT coalesce((SELECT max(id) FROM sim_runs), 0) AS run_ids,
       (SELECT count(*) FROM users
         WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
           AND sim_next_run_at <= now()) AS due,
       (SELECT extract(epoch FROM now() - min(sim_next_run_at))::float8 FROM users
         WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
           AND sim_next_run_at <= now()) AS oldest_due_s

-- drill_open_transactions --
-- Backends of the drill's processes (application_name set per process through the DSN) that are
-- inside a transaction right now: a SIGKILL of their process lands mid-transaction.
SELECT application_name, pid, state
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
   AND application_name LIKE $1
   AND xact_start IS NOT NULL
   AND state IN ('active', 'idle in transaction')

-- drill_left_due --
-- Nobody left due: an eligible user whose slot is more than $1 seconds (a lease and a pass) in
-- the past once the system has drained has been forgotten.
SELECT count(*) AS users,
       extract(epoch FROM now() - min(coalesce(sim_next_run_at, '-infinity')))::float8 AS oldest_s
  FROM users
 WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
   AND coalesce(sim_next_run_at, '-infinity') < now() - make_interval(secs => $1)

-- drill_duplicate_slots --
SELECT count(*) FROM (
    SELECT 1 FROM sim_runs GROUP BY user_id, scheduled_for HAVING count(*) > 1) d

-- drill_slot_walk --
-- Each user's runs in commit order (sim_runs.id), then the slot still pending, each against the
-- slot the previous run left (the rule every run follows, whatever faults it met):
--   ok         the previous slot + interval (or the seeded first slot);
--   catch_up   the previous run fell behind (slot + interval before its now()), so the next slot
--              is its now() + interval; now() lies between its started_at and finished_at;
--   triggered  earlier than that, at a moment a `simctl run` of the drill's was in flight;
--   early      earlier, with no trigger to explain it;
--   skipped    later, with no catch-up to explain it.
-- A tolerance of 1 ms absorbs the rounding of timestamps taken by two clocks of one machine.
WITH walk AS (
    SELECT user_id, id, scheduled_for AS slot,
           lag(scheduled_for) OVER w AS prev_slot,
           lag(started_at) OVER w AS prev_started,
           lag(finished_at) OVER w AS prev_finished
      FROM (SELECT id, user_id, scheduled_for, started_at, finished_at FROM sim_runs
            UNION ALL
            SELECT 9223372036854775807, id, sim_next_run_at, NULL, NULL FROM users
             WHERE sim_next_run_at IS NOT NULL) runs
    WINDOW w AS (PARTITION BY user_id ORDER BY id)
), judged AS (
    SELECT w.*, make_interval(secs => f.interval_s) AS iv,
           CASE WHEN w.prev_slot IS NULL THEN f.first_slot
                ELSE w.prev_slot + make_interval(secs => f.interval_s) END AS expected
      FROM walk w JOIN drill.first_slots f USING (user_id)
), verdicts AS (
    SELECT j.user_id, j.id, j.slot, j.expected,
           CASE
             WHEN j.expected IS NULL THEN 'ok'
             WHEN j.slot = j.expected
                  AND (j.prev_started IS NULL
                       OR j.expected >= j.prev_started - interval '1 millisecond') THEN 'ok'
             WHEN j.prev_started IS NOT NULL
                  AND j.expected <= j.prev_finished + interval '1 millisecond'
                  AND j.slot BETWEEN j.prev_started + j.iv - interval '1 millisecond'
                                 AND j.prev_finished + j.iv + interval '1 millisecond'
               THEN 'catch_up'
             WHEN j.slot <= greatest(j.expected, j.prev_finished + j.iv) + interval '1 millisecond'
                  AND EXISTS (SELECT 1 FROM drill.triggers t
                               WHERE t.user_id = j.user_id
                                 AND j.slot BETWEEN t.issued_at - interval '1 millisecond'
                                                AND t.done_at + interval '1 millisecond')
               THEN 'triggered'
             WHEN j.slot < j.expected THEN 'early'
             ELSE 'skipped'
           END AS verdict
      FROM judged j
)
SELECT verdict, count(*) AS n,
       (array_agg(json_build_object('user_id', user_id, 'run_id', nullif(id, 9223372036854775807),
                                    'slot', slot, 'expected', expected)
                  ORDER BY user_id, id))[1:5] AS examples
  FROM verdicts GROUP BY verdict

-- drill_partial_runs --
-- Atomicity seen from the rows: every run's trades are all there and carry its slot, every trade
-- has exactly one ledger row for its balance change, nothing exists without its run, the run
-- counter matches the runs, and the stored value is the portfolio's.
SELECT
  (SELECT count(*) FROM sim_runs r
     LEFT JOIN (SELECT sim_run_id, count(*) AS n FROM trades
                 WHERE sim_run_id IS NOT NULL GROUP BY sim_run_id) t ON t.sim_run_id = r.id
    WHERE r.trades_count <> coalesce(t.n, 0)) AS trade_count_mismatch,
  (SELECT count(*) FROM trades t
     LEFT JOIN sim_runs r ON r.id = t.sim_run_id
    WHERE t.is_simulated AND (r.id IS NULL OR r.user_id <> t.user_id
                              OR t.generated_at <> r.scheduled_for)) AS trade_without_its_run,
  (SELECT count(*) FROM trades t
     LEFT JOIN (SELECT reference, count(*) AS n, min(amount) AS lo, max(amount) AS hi
                  FROM transactions WHERE reference LIKE 'trade:%' GROUP BY reference) x
            ON x.reference = 'trade:' || t.id
    WHERE t.is_simulated
      AND (x.n IS DISTINCT FROM 1 OR x.lo <> t.balance_after - t.balance_before))
    AS trade_ledger_mismatch,
  (SELECT count(*) FROM transactions x
    WHERE x.reference LIKE 'trade:%'
      AND NOT EXISTS (SELECT 1 FROM trades t
                       WHERE t.id = substr(x.reference, 7)::bigint)) AS ledger_without_trade,
  (SELECT count(*) FROM users u
     LEFT JOIN (SELECT user_id, count(*) AS n FROM sim_runs GROUP BY user_id) r
            ON r.user_id = u.id
    WHERE u.sim_run_count <> coalesce(r.n, 0)) AS run_count_mismatch,
  (SELECT count(*) FROM users u JOIN portfolio p ON p.user_id = u.id
    WHERE u.sim_run_count > 0
      AND p.usd_value IS DISTINCT FROM u.portfolio_value_usd) AS value_mismatch

-- drill_lag_phases --
-- Lag (started_at - scheduled_for) by phase of the drill, judged by when the run started:
-- warmup before $1, faults up to the last fault $2, after it, and recovered from $3 on.
WITH lags AS (
    SELECT started_at, extract(epoch FROM started_at - scheduled_for)::float8 AS lag_s
      FROM sim_runs WHERE started_at <= $4
), phased AS (
    SELECT CASE WHEN started_at < $1 THEN 'warmup'
                WHEN started_at <= $2 THEN 'faults'
                ELSE 'after' END AS phase, lag_s
      FROM lags
    UNION ALL
    SELECT 'recovered', lag_s FROM lags WHERE started_at >= $3
)
SELECT phase, count(*) AS runs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_s) AS p50_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_s) AS p99_s,
       max(lag_s) AS max_s
  FROM phased GROUP BY phase

-- drill_fault_recovery --
-- Per fault: the first run to finish after it (idx_sim_runs_finished_at); the worst lateness of
-- the slots it was the first fault to meet (due after the previous fault, at or before this one,
-- and not yet started), and how many of them there were.
WITH f AS (
    SELECT id, kind, at, coalesce(lag(at) OVER (ORDER BY at, id), '-infinity') AS prev_at
      FROM drill.faults
)
SELECT f.id, f.kind, f.at,
       extract(epoch FROM (SELECT min(r.finished_at) FROM sim_runs r
                            WHERE r.finished_at > f.at) - f.at)::float8 AS first_commit_s,
       m.worst_lag_s, m.slots_due
  FROM f
  CROSS JOIN LATERAL (
        SELECT extract(epoch FROM max(r.started_at - r.scheduled_for))::float8 AS worst_lag_s,
               count(*) AS slots_due
          FROM sim_runs r
         WHERE r.scheduled_for > f.prev_at AND r.scheduled_for <= f.at
           AND r.started_at > f.at) m
 ORDER BY f.id

-- drill_run_totals --
SELECT count(*) AS runs,
       count(*) FILTER (WHERE started_at >= $1 AND started_at <= $2) AS runs_in_faults,
       coalesce(sum(trades_count), 0) AS trades
  FROM sim_runs

-- drill_late_slots --
-- Runs later than the lease ($1 s): how many, and how many of them had one of the drill's
-- `simctl run`s of that user between their slot and their start (a trigger re-leases the user).
WITH late AS (
    SELECT r.user_id, r.scheduled_for, r.started_at,
           extract(epoch FROM r.started_at - r.scheduled_for)::float8 AS lag_s,
           EXISTS (SELECT 1 FROM drill.triggers t
                    WHERE t.user_id = r.user_id
                      AND t.done_at >= r.scheduled_for AND t.issued_at <= r.started_at) AS triggered
      FROM sim_runs r
     WHERE r.started_at - r.scheduled_for > make_interval(secs => $1)
)
SELECT count(*) AS runs,
       count(*) FILTER (WHERE triggered) AS with_trigger,
       max(lag_s) AS max_s,
       max(lag_s) FILTER (WHERE triggered) AS max_with_trigger_s,
       max(lag_s) FILTER (WHERE NOT triggered) AS max_without_trigger_s
  FROM late

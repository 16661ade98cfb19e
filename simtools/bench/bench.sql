-- Named queries of the benchmark (simtools/bench: queries.py, naive.py). They run only against the bench's own
-- scratch databases (simbench_<pid>_<phase>) or read the server's catalogue; never a real one.
-- The engine's own statements (claim_due, lock_batch, apply_batch) stay in queries.sql: the bench
-- measures them as the engine runs them.

-- bench_server --
-- What the run records about the server it measures, and the backend's pid: when Postgres runs
-- on this machine, that pid's parent is the postmaster whose process tree the CPU is read from.
SELECT current_setting('server_version') AS version,
       current_setting('server_version_num')::int AS version_num,
       pg_backend_pid() AS backend_pid

-- bench_server_settings --
-- The settings a private cluster copies to run "as the server would": everything set by the
-- server's configuration (file, command line, ALTER SYSTEM, environment), plus the ones named in
-- $1 whatever their source (initdb writes its own guesses for some of them). Settings fixed at
-- build or initdb time (context internal) cannot be set and are left out. Per-database and
-- per-role values (source database, user) are a session's, not the server's.
SELECT name, setting, vartype
  FROM pg_settings
 WHERE context <> 'internal'
   AND (source IN ('configuration file', 'command line', 'environment variable', 'global')
        OR name = ANY($1::text[]) OR name LIKE 'wal\_%' OR name LIKE 'checkpoint\_%')
 ORDER BY name

-- bench_settings_of --
-- The private cluster's values of the settings it was given, to check the copy took.
SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name

-- bench_wal_segment_mb --
-- initdb's --wal-segsize: the one WAL setting a configuration file cannot change.
SELECT (setting::bigint / 1048576)::int FROM pg_settings WHERE name = 'wal_segment_size'

-- bench_scratch_databases --
-- This run's scratch databases ($1 is the run's prefix; `_` escaped: a literal underscore).
SELECT datname FROM pg_database WHERE datname LIKE replace($1, '_', '\_') || '\_%' ORDER BY 1

-- bench_all_due --
-- Every user due an hour ago and unleased: a fully due population (the ceiling's, the naive's).
UPDATE users SET sim_next_run_at = now() - interval '1 hour', sim_claimed_until = NULL

-- bench_due_spread --
-- Due at random times within the last hour (the claim-time phase: the claim walks slot order).
UPDATE users SET sim_next_run_at = now() - random() * interval '1 hour'

-- bench_park --
-- Nobody due for a day: processes start with nothing to do, so start-up stays out of a timing.
UPDATE users SET sim_next_run_at = now() + interval '1 day'

-- bench_due_at_once --
-- Every user due at one slot $1 seconds ahead (a peak); returns that slot. The slot is computed
-- once, not per row, so every user shares it exactly.
WITH slot AS (SELECT date_trunc('second', now()) + make_interval(secs => $1::int) AS at),
     moved AS (UPDATE users SET sim_next_run_at = (SELECT at FROM slot))
SELECT at FROM slot

-- bench_spread_from --
-- The sustained phase: each user's interval $1 s and its first slot spread uniformly over one
-- interval from $2, so the population comes due at users / $1 runs per second.
UPDATE users SET sim_interval_s = $1::int, sim_claimed_until = NULL,
       sim_next_run_at = $2::timestamptz + make_interval(secs => $1::int * random())

-- bench_ahead --
-- A moment $1 seconds after the server's now() (slots are the server's time, not ours).
SELECT now() + make_interval(secs => $1::float8)

-- bench_seconds_until --
-- How far $1 is ahead of the server's clock (negative once passed).
SELECT extract(epoch FROM $1::timestamptz - clock_timestamp())::float8

-- bench_top_run_id --
-- The highest committed run id: a probe of the primary key's right edge, which steps over the
-- uncommitted rows of the batches in flight; polled only once bench_run_ids_taken says the
-- target was handed out (a count(*) would scan a table growing by thousands of rows a second).
SELECT coalesce(max(id), 0) FROM sim_runs

-- bench_run_ids_taken --
-- The highest sim_runs id handed out so far, committed or not: the sequence's own page, so
-- polling it costs the measured server next to nothing. max(id) walks the pkey's right edge
-- past every uncommitted row of the batches in flight: polled every 50 ms through a pinned
-- peak, its backend used 1-6 % of the Postgres core (per-backend /proc), charged to the engine.
-- NULL when the sequence cannot tell (nothing handed out yet, or a role that may not read it).
SELECT pg_sequence_last_value(pg_get_serial_sequence('sim_runs', 'id')::regclass)

-- bench_user_count --
SELECT count(*) FROM users

-- bench_run_count --
SELECT count(*) FROM sim_runs

-- bench_trade_count --
SELECT count(*) FROM trades

-- bench_lags_after --
-- Each run's lag (batch start minus slot), in seconds, for the runs after id $1, sorted.
SELECT extract(epoch FROM started_at - scheduled_for)::float8 AS lag
  FROM sim_runs WHERE id > $1 ORDER BY lag

-- bench_forget_runs --
-- The ceiling starts each client count from no runs and no trades (the script writes both).
TRUNCATE sim_runs, trades RESTART IDENTITY CASCADE

-- bench_vacuum_users --
VACUUM ANALYZE users

-- bench_vacuum_state --
-- Users and holdings: what the ceiling and a peak update once per run.
VACUUM ANALYZE users, portfolio

-- bench_vacuum_written --
-- After a burst: the maintenance autovacuum would do, done before the next timed phase.
VACUUM ANALYZE users, portfolio, sim_runs, trades, transactions

-- bench_vacuum_all --
VACUUM ANALYZE

-- bench_checkpoint --
CHECKPOINT

-- naive_lock_user --
-- The naive baseline (bench/naive.py): one user per job, row by row.
SELECT u.id, u.balance_usd, u.sim_next_run_at,
       (u.sim_enabled AND NOT u.sim_paused AND u.is_active AND u.deleted_at IS NULL) AS eligible,
       u.sim_strategy, u.sim_params
  FROM users u WHERE u.id = $1 FOR UPDATE

-- naive_reserved --
SELECT asset, sum(amount) AS amount FROM withdrawals
 WHERE user_id = $1 AND status IN ('pending', 'processing') GROUP BY asset

-- naive_insert_run --
INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome, trades_count)
VALUES ($1, $2, $3, clock_timestamp(), 'applied', $4) RETURNING id

-- naive_insert_trade --
INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd, is_simulated,
                    balance_before, balance_after, sim_run_id, generated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $9, $10, $11) RETURNING id

-- naive_insert_transaction --
INSERT INTO transactions (user_id, type, amount, currency, status, reference, description)
VALUES ($1, $2, $3, 'USD', 'completed', $4, 'simulated trade')

-- naive_update_portfolio --
UPDATE portfolio SET btc = $2, eth = $3, usdt = $4, usdc = $5, xrp = $6, ada = $7, usd_value = $8,
                     updated_at = now()
 WHERE user_id = $1

-- naive_update_user --
UPDATE users
   SET balance_usd = $2, portfolio_value_usd = $3, sim_last_run_at = now(),
       sim_run_count = sim_run_count + 1, updated_at = now(), sim_claimed_until = NULL,
       sim_next_run_at = CASE WHEN $4::timestamptz + make_interval(secs => sim_interval_s) < now()
                              THEN now() + make_interval(secs => sim_interval_s)
                              ELSE $4::timestamptz + make_interval(secs => sim_interval_s) END
 WHERE id = $1

-- naive_notify --
-- The engine's notification, one per run here (the engine sends its batch's from apply_batch).
SELECT pg_notify('sim_run', $1)

-- The operators' console (`simctl console`) and the commands that share its store functions
-- (store/console.py, store/bulk.py, store/control.py). Values are bound parameters; the one
-- piece of text spliced in is a user filter's condition, chosen from constants in store/bulk.py
-- (`/*filter*/ true` below). No query counts a history table: recent windows walk
-- idx_sim_runs_finished_at, and everything else is keyset-paged by primary key.

-- overview_counts --
-- The users' side, each from an index: due now (counted up to $1 = store.console.DUE_CAP and
-- no further: a backlog of millions is "≥ $1"; each counted user is a row read, and at
-- 1,000,000 users with the engine running 100,000 of them took 290 ms), the oldest due slot (the same index, in slot
-- order), users backing off (the few failing ones, idx_users_failing), eligible users as
-- Postgres estimates them (from the statistics of idx_users_sim_due, whose predicate is
-- eligibility; counted while fewer than 10,000), the last tick per asset ($2: one backward probe
-- of price_history's primary key each).
SELECT
  (SELECT count(*) FROM (
      SELECT 1 FROM users
       WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
         AND (sim_next_run_at IS NULL OR sim_next_run_at <= now())
         AND (sim_claimed_until IS NULL OR sim_claimed_until <= now())
       LIMIT $1) d) AS due_now,
  (SELECT round(extract(epoch FROM now() - min(sim_next_run_at))::numeric, 3)::float8 FROM users
    WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL
      AND sim_next_run_at <= now()
      AND (sim_claimed_until IS NULL OR sim_claimed_until <= now())) AS oldest_lag_s,
  (SELECT count(*) FROM users
    WHERE sim_fail_count > 0 AND sim_claimed_until > now()
      AND sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL) AS backing_off,
  (SELECT CASE WHEN c.relpages > 1 AND c.reltuples >= 10000
               -- The planner's own estimate: tuples per page at the last analyze, times the
               -- pages the index has now. Below 10,000 (or never analyzed) counted exactly.
               THEN (c.reltuples / c.relpages
                     * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint
               ELSE (SELECT count(*) FROM users
                      WHERE sim_enabled AND NOT sim_paused AND is_active AND deleted_at IS NULL)
          END
     FROM pg_class c WHERE c.oid = 'idx_users_sim_due'::regclass) AS eligible,
  (SELECT coalesce(json_object_agg(asset, at), '{}'::json)
     FROM (SELECT a AS asset, (SELECT max(p.at) FROM price_history p WHERE p.asset = a) AS at
             FROM unnest($2::text[]) AS a) t
    WHERE at IS NOT NULL) AS last_tick

-- overview_recent --
-- The last minute's runs and trades, estimated from ids (identity columns, allocated as rows
-- are written): the newest id minus the first id written since a minute ago (one probe each of
-- idx_sim_runs_finished_at, idx_trades_created_at and the primary keys), never a count of the
-- history. Lag percentiles over the last minute's newest 1,000 runs at most.
-- A batch's rows share one timestamp (its transaction's now()): the first id of a moment is the
-- smallest id at the smallest timestamp after it. `min(id + 0)`, not `min(id)`: with min(id) the
-- planner may walk the primary key from the oldest row, filtering on the timestamp, which reads
-- every row written before that moment (seen with the engine running: 2.4 ms per probe on
-- 66,000 trades, 7 s per overview as trades grew); min(id + 0) reads only the rows of that
-- one timestamp through idx_sim_runs_finished_at / idx_trades_created_at (one batch's).
SELECT
  coalesce((SELECT max(id) FROM sim_runs), 0)
    - coalesce((SELECT min(id + 0) - 1 FROM sim_runs WHERE finished_at = (
                  SELECT min(finished_at) FROM sim_runs
                   WHERE finished_at > now() - interval '1 minute')),
               (SELECT max(id) FROM sim_runs), 0) AS runs_1m,
  coalesce((SELECT max(id) FROM trades), 0)
    - coalesce((SELECT min(id + 0) - 1 FROM trades WHERE created_at = (
                  SELECT min(created_at) FROM trades
                   WHERE created_at > now() - interval '1 minute')),
               (SELECT max(id) FROM trades), 0) AS trades_1m,
  s.lag_p50, s.lag_p99
  FROM (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY lag) AS lag_p50,
               percentile_disc(0.99) WITHIN GROUP (ORDER BY lag) AS lag_p99
          FROM (SELECT finished_at - scheduled_for AS lag FROM sim_runs
                 WHERE finished_at > now() - interval '1 minute'
                 ORDER BY finished_at DESC LIMIT 1000) r) s

-- overview_series --
-- The last hour per minute: runs and trades estimated from ids as overview_recent does (the
-- first id written in each minute, one index probe per minute and table, min(id + 0) for the
-- reason given there), the p99 lag of each
-- minute's newest 200 runs at most. 60 rows, each minute's even when it had no runs.
WITH marks AS (
    SELECT m,
           (SELECT min(id + 0) FROM sim_runs WHERE finished_at = (
                SELECT min(finished_at) FROM sim_runs WHERE finished_at >= m)) AS run_id,
           (SELECT min(id + 0) FROM trades WHERE created_at = (
                SELECT min(created_at) FROM trades WHERE created_at >= m)) AS trade_id
      FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                           date_trunc('minute', now()), interval '1 minute') AS m
), tops AS (
    SELECT coalesce((SELECT max(id) FROM sim_runs), 0) + 1 AS run_end,
           coalesce((SELECT max(id) FROM trades), 0) + 1 AS trade_end
)
SELECT extract(epoch FROM m)::bigint AS minute,
       greatest(coalesce(lead(run_id) OVER w, t.run_end) - coalesce(run_id, t.run_end), 0) AS runs,
       greatest(coalesce(lead(trade_id) OVER w, t.trade_end) - coalesce(trade_id, t.trade_end), 0)
         AS trades,
       (SELECT extract(epoch FROM percentile_disc(0.99) WITHIN GROUP (ORDER BY r.lag))::float8
          FROM (SELECT finished_at - scheduled_for AS lag FROM sim_runs
                 WHERE finished_at >= m AND finished_at < m + interval '1 minute'
                 ORDER BY finished_at DESC LIMIT 200) r) AS lag_p99_s
  FROM marks, tops t
WINDOW w AS (ORDER BY m)
 ORDER BY m

-- overview_state --
-- The global switch of claims, the latest checkpoint and the users on record as failing
-- (idx_users_failing: a few rows) and auto-paused among them.
SELECT c.claims_paused, c.changed_at AS claims_changed_at, c.changed_by AS claims_changed_by,
       c.reason AS claims_reason,
       (SELECT count(*) FROM users WHERE sim_fail_count > 0 AND NOT sim_paused) AS failing,
       (SELECT count(*) FROM users WHERE sim_fail_count > 0 AND sim_paused) AS auto_paused,
       (SELECT row_to_json(k) FROM (
            SELECT id, state, cut_at, verified_at, users_count, left(error, 300) AS error
              FROM sim_checkpoints ORDER BY id DESC LIMIT 1) k) AS checkpoint
  FROM sim_control c

-- claims_state --
SELECT claims_paused, changed_at, changed_by, reason FROM sim_control

-- claims_for_update --
-- The row lock orders two operators' switches; the claim reads the row without waiting.
SELECT claims_paused FROM sim_control FOR UPDATE

-- set_claims --
UPDATE sim_control SET claims_paused = $1, changed_at = now(), changed_by = $2, reason = $3
RETURNING claims_paused, changed_at, changed_by, reason

-- list_users --
-- A page of users (never deleted ones) after id $1 in id order (the primary key: keyset paging),
-- narrowed by one filter condition (store/bulk.py) and an optional strategy ($2, 'default' for
-- none) and user id ($3). Never password_hash or tax_id.
SELECT id, email, full_name, balance_usd, portfolio_value_usd, is_active, sim_enabled, sim_paused,
       coalesce(sim_strategy, 'default') AS strategy, sim_interval_s, sim_next_run_at,
       sim_last_run_at, sim_run_count, sim_fail_count, sim_failing_since, sim_claimed_until,
       left(sim_last_error, 300) AS last_error
  FROM users
 WHERE deleted_at IS NULL AND id > $1
   AND ($2::text IS NULL OR coalesce(sim_strategy, 'default') = $2)
   AND ($3::bigint IS NULL OR id = $3)
   AND /*filter*/ true
 ORDER BY id
 LIMIT $4

-- filter_ids_for_update --
-- The users a bulk change would change, locked in id order (the workers' order: no deadlock).
SELECT id FROM users
 WHERE deleted_at IS NULL
   AND ($1::text IS NULL OR coalesce(sim_strategy, 'default') = $1)
   AND ($2::bigint IS NULL OR id = $2)
   AND /*filter*/ true
   AND /*change*/ true
 ORDER BY id
 FOR UPDATE

-- filter_count --
-- The dry run of a bulk change: how many users it would change now.
SELECT count(*) FROM users
 WHERE deleted_at IS NULL
   AND ($1::text IS NULL OR coalesce(sim_strategy, 'default') = $1)
   AND ($2::bigint IS NULL OR id = $2)
   AND /*filter*/ true
   AND /*change*/ true

-- bulk_set_paused --
-- As set_sim_flags does for one user: the backoff is cleared, and a resume clears the failures
-- (so a resumed auto-paused user is claimed at its next slot, not after an old backoff).
UPDATE users
   SET sim_paused = $2,
       sim_claimed_until = NULL,
       sim_fail_count = CASE WHEN $2 THEN sim_fail_count ELSE 0 END,
       updated_at = now()
 WHERE id = ANY($1::bigint[])

-- bulk_set_strategy --
UPDATE users
   SET sim_strategy = $2, sim_params = $3::jsonb, sim_claimed_until = NULL, updated_at = now()
 WHERE id = ANY($1::bigint[])

-- user_page --
-- A user as the console shows it: never password_hash or tax_id.
SELECT u.id, u.email, u.full_name, u.balance_usd, u.portfolio_value_usd, u.is_active,
       u.deleted_at, u.created_at, u.sim_enabled, u.sim_paused, u.sim_interval_s,
       u.sim_next_run_at, u.sim_last_run_at, u.sim_run_count,
       coalesce(u.sim_strategy, 'default') AS strategy, u.sim_params::text AS params,
       u.sim_fail_count, u.sim_failing_since, u.sim_claimed_until, u.sim_last_error,
       (SELECT s.total_pnl_usd FROM sim_pnl s WHERE s.user_id = u.id) AS pnl_usd
  FROM users u WHERE u.id = $1

-- user_runs --
-- Newest first, before run id $2 (keyset on sim_runs' primary key within the user: the unique
-- (user_id, scheduled_for) index orders by slot, which follows id for one user).
SELECT id, scheduled_for, started_at, finished_at, outcome, trades_count
  FROM sim_runs WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3

-- user_trades --
-- Newest first, before trade id $2 (idx_trades_user_date).
SELECT id, trade_type, asset, amount, price_usd, total_usd, fee_usd, balance_before,
       balance_after, sim_run_id, generated_at, created_at
  FROM trades WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3

-- user_ledger --
-- Newest first, before transaction id $2 (idx_transactions_user).
SELECT id, type, amount, currency, status, reference, description, created_at
  FROM transactions WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3

-- user_withdrawals --
SELECT id, asset, amount, address, status, tx_hash, error_message, created_at, updated_at
  FROM withdrawals WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3

-- audit_page --
-- The audit log, newest first, before id $1, optionally of one action ($2) or user ($3).
SELECT id, admin_key, action, target_user_id, details, created_at
  FROM admin_audit
 WHERE id < $1 AND ($2::text IS NULL OR action = $2) AND ($3::bigint IS NULL OR target_user_id = $3)
 ORDER BY id DESC LIMIT $4

-- withdrawals_page --
-- The withdrawals queue, newest first, before id $1, optionally of one status ($2:
-- idx_withdrawals_status) or user ($3: idx_user_withdrawals).
SELECT w.id, w.user_id, u.email, w.asset, w.amount, w.address, w.status, w.tx_hash,
       w.error_message, w.created_at, w.updated_at
  FROM withdrawals w JOIN users u ON u.id = w.user_id
 WHERE w.id < $1 AND ($2::text IS NULL OR w.status = $2) AND ($3::bigint IS NULL OR w.user_id = $3)
 ORDER BY w.id DESC LIMIT $4

-- readers --
-- The roles `simctl grant-reader` made: its comment on the role ($1).
SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = $1 ORDER BY rolname

-- market_events --
-- The market's history in the audit: its definition, its changes and cancels, the imports
-- (never a seed: these rows are written without it).
SELECT id, admin_key, action, details, created_at FROM admin_audit
 WHERE action IN ('market_define', 'market_change', 'market_cancel', 'prices_import')
 ORDER BY id DESC LIMIT $1

-- asset_prices --
-- One asset's stored prices from $2 up to now (the primary key (asset, at)): never a tick
-- later than now.
SELECT extract(epoch FROM at)::float8 AS t, price_usd, source FROM price_history
 WHERE asset = $1 AND at > $2 AND at <= now()
 ORDER BY at

-- History: checkpoints, the hash chain and retention (store/history.py, store/retention.py).
--
-- The canonical text of an engine row, one line, is what the chain hashes, what an archive file
-- holds and what `simctl archive verify` hashes again: the columns in table order joined by '|',
-- NULL as \N, numbers as Postgres prints them (numeric(p,8) always with 8 decimals) and times in
-- UTC ISO 8601 with microseconds. The same line loads back with
-- `COPY t FROM ... (FORMAT text, DELIMITER '|')` (docs/operations.md, "Running for a year").
-- Each rows_* query takes ($1, $2]: the ids after one cut up to the next.

-- rows_trades --
SELECT id, user_id,
       concat_ws('|', id, user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                 is_simulated, coalesce(balance_before::text, '\N'),
                 coalesce(balance_after::text, '\N'), sim_run_id,
                 coalesce(to_char(generated_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '\N'),
                 to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) AS line
  FROM trades
 WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL

-- rows_transactions --
SELECT id, user_id,
       concat_ws('|', id, user_id, type, amount, currency, status,
                 coalesce(reference, '\N'), coalesce(description, '\N'), sim_run_id,
                 to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) AS line
  FROM transactions
 WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL

-- rows_sim_runs --
SELECT id, user_id,
       concat_ws('|', id, user_id,
                 to_char(scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                 to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                 coalesce(to_char(finished_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '\N'),
                 outcome, trades_count) AS line
  FROM sim_runs
 WHERE id > $1 AND id <= $2

-- cut --
-- Under the SHARE lock on the three tables (store/history.py take_cut): nothing is writing them,
-- so every id up to these is committed and every later one will be allocated after.
SELECT (SELECT coalesce(max(id), 0) FROM trades) AS trades,
       (SELECT coalesce(max(id), 0) FROM transactions) AS transactions,
       (SELECT coalesce(max(id), 0) FROM sim_runs) AS runs,
       clock_timestamp() AS at

-- lease_take --
-- The history lease ($1 holder, $2 seconds): free, expired, or already ours.
UPDATE sim_history SET lease_holder = $1, lease_until = clock_timestamp() + make_interval(secs => $2)
 WHERE id = 1 AND (lease_until IS NULL OR lease_until < clock_timestamp() OR lease_holder = $1)
RETURNING lease_until

-- lease_renew --
UPDATE sim_history SET lease_until = clock_timestamp() + make_interval(secs => $2)
 WHERE id = 1 AND lease_holder = $1 AND lease_until >= clock_timestamp()
RETURNING lease_until

-- lease_release --
UPDATE sim_history SET lease_holder = NULL, lease_until = NULL WHERE id = 1 AND lease_holder = $1

-- lease_state --
SELECT lease_holder, lease_until FROM sim_history WHERE id = 1

-- history_state --
SELECT pruned_through, trades_floor, transactions_floor, runs_floor, keep_days, pruned_at
  FROM sim_history WHERE id = 1

-- latest_checkpoint --
SELECT * FROM sim_checkpoints WHERE state = 'verified' ORDER BY id DESC LIMIT 1

-- checkpoint_by_id --
SELECT * FROM sim_checkpoints WHERE id = $1

-- verified_checkpoints --
SELECT * FROM sim_checkpoints WHERE state = 'verified' ORDER BY id

-- drop_building --
-- A checkpoint whose builder died (its lease ran out): its rows go, it is redone.
DELETE FROM sim_checkpoints WHERE state = 'building'

-- checkpoint_begin --
INSERT INTO sim_checkpoints (prev_id, cut_at, trades_cut, transactions_cut, runs_cut, taken_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id

-- checkpoint_copy_users --
-- The previous checkpoint's totals, users ($3, $4], as the start of the new one's.
INSERT INTO sim_checkpoint_users
SELECT $1, user_id, usd, btc, eth, usdt, usdc, xrp, ada,
       buy_btc, buy_eth, buy_usdt, buy_usdc, buy_xrp, buy_ada,
       cost_btc, cost_eth, cost_usdt, cost_usdc, cost_xrp, cost_ada, fees, trades, runs
  FROM sim_checkpoint_users
 WHERE checkpoint_id = $2 AND user_id > $3 AND user_id <= $4

-- checkpoint_finish --
UPDATE sim_checkpoints
   SET state = $2, trades_rows = $3, transactions_rows = $4, runs_rows = $5, trades_hash = $6,
       transactions_hash = $7, runs_hash = $8, window_hash = $9, chain_hash = $10,
       users_count = $11, verified_at = CASE WHEN $2 = 'verified' THEN clock_timestamp() END,
       error = $12
 WHERE id = $1

-- checkpoint_forget_users --
-- Per-user totals are kept for the newest verified checkpoint, the one before it and the one
-- retention pruned through; the chain rows (hashes, counts) are kept for ever.
DELETE FROM sim_checkpoint_users c
 WHERE c.checkpoint_id NOT IN (
         SELECT id FROM (SELECT id FROM sim_checkpoints WHERE state = 'verified'
                          ORDER BY id DESC LIMIT 2) newest
         UNION ALL
         SELECT pruned_through FROM sim_history WHERE pruned_through IS NOT NULL)
   AND c.checkpoint_id IN (SELECT id FROM sim_checkpoints WHERE state <> 'building')

-- table_blocks --
-- The stored leaves of one table's window ($1 checkpoint, $2 table).
SELECT block, rows, hash FROM sim_checkpoint_blocks WHERE checkpoint_id = $1 AND tbl = $2
 ORDER BY block

-- history_changes --
-- Every recorded change to an engine row (tampering, or a prune below its floor reported).
SELECT id, tbl, row_id, op, by_role, at FROM sim_history_changes ORDER BY id LIMIT $1

-- window_trades --
-- What the engine's trades with ids ($1, $2] explain per user ($3: one user, or NULL).
SELECT user_id,
       sum(CASE WHEN asset = 'BTC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS btc,
       sum(CASE WHEN asset = 'ETH' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS eth,
       sum(CASE WHEN asset = 'USDT' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS usdt,
       sum(CASE WHEN asset = 'USDC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS usdc,
       sum(CASE WHEN asset = 'XRP' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS xrp,
       sum(CASE WHEN asset = 'ADA' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END ELSE 0 END) AS ada,
       sum(CASE WHEN asset = 'BTC' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_btc,
       sum(CASE WHEN asset = 'ETH' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_eth,
       sum(CASE WHEN asset = 'USDT' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_usdt,
       sum(CASE WHEN asset = 'USDC' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_usdc,
       sum(CASE WHEN asset = 'XRP' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_xrp,
       sum(CASE WHEN asset = 'ADA' AND trade_type = 'buy' THEN amount ELSE 0 END) AS buy_ada,
       sum(CASE WHEN asset = 'BTC' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_btc,
       sum(CASE WHEN asset = 'ETH' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_eth,
       sum(CASE WHEN asset = 'USDT' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_usdt,
       sum(CASE WHEN asset = 'USDC' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_usdc,
       sum(CASE WHEN asset = 'XRP' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_xrp,
       sum(CASE WHEN asset = 'ADA' AND trade_type = 'buy' THEN total_usd + fee_usd ELSE 0 END) AS cost_ada,
       sum(fee_usd) AS fees, count(*) AS trades
  FROM trades
 WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL AND ($3::bigint IS NULL OR user_id = $3)
 GROUP BY user_id

-- window_transactions --
SELECT user_id, coalesce(sum(amount) FILTER (WHERE status = 'completed'), 0) AS usd
  FROM transactions
 WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL AND ($3::bigint IS NULL OR user_id = $3)
 GROUP BY user_id

-- window_sim_runs --
SELECT user_id, count(*) AS runs
  FROM sim_runs
 WHERE id > $1 AND id <= $2 AND ($3::bigint IS NULL OR user_id = $3)
 GROUP BY user_id

-- max_user --
SELECT coalesce(max(id), 0) FROM users

-- compare_users --
-- Users ($1, $2] in one snapshot: the live balance and holdings against what explains them: the
-- rows that are not the engine's (summed in full through the partial side indexes), the base
-- checkpoint's totals ($3; 0 = none), the engine's rows after it up to the reconcile's cut
-- (pg_temp.sim_since, summed a range of ids at a time) and the engine's rows after that cut
-- ($4 trades, $5 transactions: the few written since the reconcile began). On an adopted
-- database, plus the opening state the legacy ledger did not explain (sim_baseline).
WITH u AS (
    SELECT id, balance_usd, portfolio_value_usd FROM users WHERE id > $1 AND id <= $2
), side_usd AS (
    SELECT user_id, sum(amount) AS usd FROM transactions
     WHERE user_id > $1 AND user_id <= $2 AND sim_run_id IS NULL AND status = 'completed'
     GROUP BY user_id
), st AS (
    SELECT user_id,
           sum(CASE WHEN asset = 'BTC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS btc,
           sum(CASE WHEN asset = 'ETH' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS eth,
           sum(CASE WHEN asset = 'USDT' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdt,
           sum(CASE WHEN asset = 'USDC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdc,
           sum(CASE WHEN asset = 'XRP' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS xrp,
           sum(CASE WHEN asset = 'ADA' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS ada
      FROM trades WHERE user_id > $1 AND user_id <= $2 AND sim_run_id IS NULL
     GROUP BY user_id
), w AS (
    SELECT user_id,
           sum(amount) FILTER (WHERE asset = 'BTC') AS btc,
           sum(amount) FILTER (WHERE asset = 'ETH') AS eth,
           sum(amount) FILTER (WHERE asset = 'USDT') AS usdt,
           sum(amount) FILTER (WHERE asset = 'USDC') AS usdc,
           sum(amount) FILTER (WHERE asset = 'XRP') AS xrp,
           sum(amount) FILTER (WHERE asset = 'ADA') AS ada
      FROM withdrawals WHERE user_id > $1 AND user_id <= $2 AND status = 'completed'
     GROUP BY user_id
), a AS (
    SELECT target_user_id AS user_id,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'BTC') AS btc,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'ETH') AS eth,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'USDT') AS usdt,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'USDC') AS usdc,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'XRP') AS xrp,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'ADA') AS ada
      FROM admin_audit
     WHERE action = 'adjust_holding' AND target_user_id > $1 AND target_user_id <= $2
     GROUP BY target_user_id
), late_usd AS (
    SELECT user_id, sum(amount) FILTER (WHERE status = 'completed') AS usd FROM transactions
     WHERE id > $5 AND sim_run_id IS NOT NULL AND user_id > $1 AND user_id <= $2
     GROUP BY user_id
), lt AS (
    SELECT user_id,
           sum(CASE WHEN asset = 'BTC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS btc,
           sum(CASE WHEN asset = 'ETH' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS eth,
           sum(CASE WHEN asset = 'USDT' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdt,
           sum(CASE WHEN asset = 'USDC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdc,
           sum(CASE WHEN asset = 'XRP' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS xrp,
           sum(CASE WHEN asset = 'ADA' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS ada
      FROM trades WHERE id > $4 AND sim_run_id IS NOT NULL AND user_id > $1 AND user_id <= $2
     GROUP BY user_id
), expected AS (
    SELECT u.id, u.balance_usd,
           coalesce(su.usd, 0) + coalesce(cp.usd, 0) + coalesce(sn.usd, 0) + coalesce(lu.usd, 0)
             + coalesce(b.balance_usd - b.ledger_usd, 0) AS exp_usd,
           u.portfolio_value_usd, p.usd_value, p.user_id IS NOT NULL AS has_portfolio,
           coalesce(p.btc, 0) AS btc, coalesce(st.btc, 0) - coalesce(w.btc, 0) + coalesce(a.btc, 0) + coalesce(cp.btc, 0)
             + coalesce(sn.btc, 0) + coalesce(lt.btc, 0) + coalesce(b.btc - b.ledger_btc, 0) AS exp_btc,
           coalesce(p.eth, 0) AS eth, coalesce(st.eth, 0) - coalesce(w.eth, 0) + coalesce(a.eth, 0) + coalesce(cp.eth, 0)
             + coalesce(sn.eth, 0) + coalesce(lt.eth, 0) + coalesce(b.eth - b.ledger_eth, 0) AS exp_eth,
           coalesce(p.usdt, 0) AS usdt, coalesce(st.usdt, 0) - coalesce(w.usdt, 0) + coalesce(a.usdt, 0) + coalesce(cp.usdt, 0)
             + coalesce(sn.usdt, 0) + coalesce(lt.usdt, 0) + coalesce(b.usdt - b.ledger_usdt, 0) AS exp_usdt,
           coalesce(p.usdc, 0) AS usdc, coalesce(st.usdc, 0) - coalesce(w.usdc, 0) + coalesce(a.usdc, 0) + coalesce(cp.usdc, 0)
             + coalesce(sn.usdc, 0) + coalesce(lt.usdc, 0) + coalesce(b.usdc - b.ledger_usdc, 0) AS exp_usdc,
           coalesce(p.xrp, 0) AS xrp, coalesce(st.xrp, 0) - coalesce(w.xrp, 0) + coalesce(a.xrp, 0) + coalesce(cp.xrp, 0)
             + coalesce(sn.xrp, 0) + coalesce(lt.xrp, 0) + coalesce(b.xrp - b.ledger_xrp, 0) AS exp_xrp,
           coalesce(p.ada, 0) AS ada, coalesce(st.ada, 0) - coalesce(w.ada, 0) + coalesce(a.ada, 0) + coalesce(cp.ada, 0)
             + coalesce(sn.ada, 0) + coalesce(lt.ada, 0) + coalesce(b.ada - b.ledger_ada, 0) AS exp_ada,
           coalesce(p.usd_value IS NOT DISTINCT FROM b.usd_value
                    AND u.portfolio_value_usd = b.portfolio_value_usd, false) AS value_as_adopted
      FROM u
      LEFT JOIN portfolio p ON p.user_id = u.id
      LEFT JOIN side_usd su ON su.user_id = u.id
      LEFT JOIN st ON st.user_id = u.id
      LEFT JOIN w ON w.user_id = u.id
      LEFT JOIN a ON a.user_id = u.id
      LEFT JOIN late_usd lu ON lu.user_id = u.id
      LEFT JOIN lt ON lt.user_id = u.id
      LEFT JOIN sim_checkpoint_users cp ON cp.checkpoint_id = $3 AND cp.user_id = u.id
      LEFT JOIN pg_temp.sim_since sn ON sn.user_id = u.id
      LEFT JOIN sim_baseline b ON b.user_id = u.id
)
SELECT * FROM expected
 WHERE balance_usd <> exp_usd OR btc <> exp_btc OR eth <> exp_eth OR usdt <> exp_usdt OR usdc <> exp_usdc OR xrp <> exp_xrp OR ada <> exp_ada
    OR (has_portfolio AND usd_value <> portfolio_value_usd AND NOT value_as_adopted)
 ORDER BY id

-- compare_checkpoint_users --
-- A retained checkpoint's stored totals ($1) against the totals walked from the rows
-- (pg_temp.sim_since), users ($2, $3]: the users where any differs.
SELECT coalesce(c.user_id, s.user_id) AS user_id, to_jsonb(c) AS stored, to_jsonb(s) AS walked
  FROM (SELECT * FROM sim_checkpoint_users WHERE checkpoint_id = $1 AND user_id > $2 AND user_id <= $3) c
  FULL JOIN (SELECT * FROM pg_temp.sim_since WHERE user_id > $2 AND user_id <= $3) s
    ON s.user_id = c.user_id
 WHERE (c.usd, c.btc, c.eth, c.usdt, c.usdc, c.xrp, c.ada, c.buy_btc, c.buy_eth, c.buy_usdt,
        c.buy_usdc, c.buy_xrp, c.buy_ada, c.cost_btc, c.cost_eth, c.cost_usdt, c.cost_usdc,
        c.cost_xrp, c.cost_ada, c.fees, c.trades, c.runs)
       IS DISTINCT FROM
       (s.usd, s.btc, s.eth, s.usdt, s.usdc, s.xrp, s.ada, s.buy_btc, s.buy_eth, s.buy_usdt,
        s.buy_usdc, s.buy_xrp, s.buy_ada, s.cost_btc, s.cost_eth, s.cost_usdt, s.cost_usdc,
        s.cost_xrp, s.cost_ada, s.fees, s.trades, s.runs)
 ORDER BY 1
 LIMIT 100

-- suspect_trades --
-- In a block whose hash no longer matches (trade ids ($1, $2], their ledger rows among
-- transaction ids ($3, $4]): the engine trades that no longer add up: no ledger row, a ledger
-- row of another amount, a total that is not quantity x price rounded as the engine rounds, or
-- a balance change that is not the total and the fee.
SELECT t.id FROM trades t
  LEFT JOIN transactions x ON x.reference = 'trade:' || t.id AND x.sim_run_id IS NOT NULL
                          AND x.id > $3 AND x.id <= $4
 WHERE t.id > $1 AND t.id <= $2 AND t.sim_run_id IS NOT NULL
   AND (x.id IS NULL OR x.amount <> t.balance_after - t.balance_before
        OR t.total_usd <> CASE t.trade_type
                              WHEN 'buy' THEN ceil(t.amount * t.price_usd * 100000000) / 100000000
                              ELSE floor(t.amount * t.price_usd * 100000000) / 100000000 END
        OR t.balance_after - t.balance_before
           <> CASE t.trade_type WHEN 'buy' THEN -(t.total_usd + t.fee_usd)
                                ELSE t.total_usd - t.fee_usd END)
 ORDER BY t.id LIMIT 20

-- lock_for_cut --
-- The cut's locks: SHARE waits for the inserts in progress and holds new ones back for the
-- milliseconds of the cut (lock_timeout first, so a long writer makes us retry, not queue).
-- In the order apply_batch takes its row-exclusive locks (sim_runs, trades, transactions: the
-- order its statement names them): trades first deadlocked with a batch that held sim_runs and
-- waited for trades (the history bench's soak, 2 runs in 3; none in 2 runs after).
SELECT set_config('lock_timeout', '2s', true);
LOCK TABLE sim_runs, trades, transactions IN SHARE MODE

-- count_blocks_rows --
SELECT coalesce(sum(rows), 0) FROM sim_checkpoint_blocks WHERE checkpoint_id = $1 AND tbl = $2

-- checkpoint_users_count --
SELECT count(*) FROM sim_checkpoint_users WHERE checkpoint_id = $1

-- checkpoint_drop_users --
DELETE FROM sim_checkpoint_users WHERE checkpoint_id = $1

-- since_create --
-- The engine's rows since a base, summed per user (a session's own table: reconcile's work).
CREATE TEMPORARY TABLE IF NOT EXISTS sim_since (LIKE sim_checkpoint_users INCLUDING DEFAULTS);
CREATE UNIQUE INDEX IF NOT EXISTS sim_since_user ON pg_temp.sim_since (checkpoint_id, user_id)

-- since_clear --
TRUNCATE pg_temp.sim_since

-- since_from_checkpoint --
-- A checkpoint's totals, users ($2, $3], as the start of a walk.
INSERT INTO pg_temp.sim_since
SELECT 0, user_id, usd, btc, eth, usdt, usdc, xrp, ada,
       buy_btc, buy_eth, buy_usdt, buy_usdc, buy_xrp, buy_ada,
       cost_btc, cost_eth, cost_usdt, cost_usdc, cost_xrp, cost_ada, fees, trades, runs
  FROM sim_checkpoint_users
 WHERE checkpoint_id = $1 AND user_id > $2 AND user_id <= $3

-- window_of --
-- The verified checkpoint whose window holds a row ($1 table, $2 id); NULL: after every cut.
SELECT id FROM sim_checkpoints
 WHERE state = 'verified'
   AND CASE $1::text WHEN 'trades' THEN trades_cut WHEN 'transactions' THEN transactions_cut
                     ELSE runs_cut END >= $2::bigint
 ORDER BY id LIMIT 1

-- changes_in_range --
SELECT DISTINCT row_id FROM sim_history_changes
 WHERE tbl = $1 AND row_id > $2 AND row_id <= $3 ORDER BY row_id LIMIT 20

-- checkpoint_due --
SELECT NOT EXISTS (SELECT 1 FROM sim_checkpoints
                    WHERE started_at > clock_timestamp() - make_interval(secs => $1))

-- custom_plans --
SET plan_cache_mode = force_custom_plan

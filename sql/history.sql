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
-- What the engine's trades with ids ($1, $2] explain per user ($3: one user, or NULL). NULL where
-- a user has no such trade (a fold adds only what is there): FILTER adds a row's amount to the one
-- sum its asset and side name, where `CASE ... ELSE 0` made every row pay for all 19 sums (2.7 s
-- against 0.4 s for 771,507 trades).
SELECT user_id,
       CASE WHEN sq_btc IS NULL THEN bq_btc ELSE coalesce(bq_btc, 0) - sq_btc END AS btc,
       CASE WHEN sq_eth IS NULL THEN bq_eth ELSE coalesce(bq_eth, 0) - sq_eth END AS eth,
       CASE WHEN sq_usdt IS NULL THEN bq_usdt ELSE coalesce(bq_usdt, 0) - sq_usdt END AS usdt,
       CASE WHEN sq_usdc IS NULL THEN bq_usdc ELSE coalesce(bq_usdc, 0) - sq_usdc END AS usdc,
       CASE WHEN sq_xrp IS NULL THEN bq_xrp ELSE coalesce(bq_xrp, 0) - sq_xrp END AS xrp,
       CASE WHEN sq_ada IS NULL THEN bq_ada ELSE coalesce(bq_ada, 0) - sq_ada END AS ada,
       bq_btc AS buy_btc,
       bq_eth AS buy_eth,
       bq_usdt AS buy_usdt,
       bq_usdc AS buy_usdc,
       bq_xrp AS buy_xrp,
       bq_ada AS buy_ada,
       c_btc AS cost_btc,
       c_eth AS cost_eth,
       c_usdt AS cost_usdt,
       c_usdc AS cost_usdc,
       c_xrp AS cost_xrp,
       c_ada AS cost_ada,
       fees, trades
  FROM (SELECT user_id,
           sum(amount) FILTER (WHERE asset = 'BTC' AND trade_type = 'buy') AS bq_btc,
           sum(amount) FILTER (WHERE asset = 'BTC' AND trade_type = 'sell') AS sq_btc,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'BTC' AND trade_type = 'buy') AS c_btc,
           sum(amount) FILTER (WHERE asset = 'ETH' AND trade_type = 'buy') AS bq_eth,
           sum(amount) FILTER (WHERE asset = 'ETH' AND trade_type = 'sell') AS sq_eth,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'ETH' AND trade_type = 'buy') AS c_eth,
           sum(amount) FILTER (WHERE asset = 'USDT' AND trade_type = 'buy') AS bq_usdt,
           sum(amount) FILTER (WHERE asset = 'USDT' AND trade_type = 'sell') AS sq_usdt,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'USDT' AND trade_type = 'buy') AS c_usdt,
           sum(amount) FILTER (WHERE asset = 'USDC' AND trade_type = 'buy') AS bq_usdc,
           sum(amount) FILTER (WHERE asset = 'USDC' AND trade_type = 'sell') AS sq_usdc,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'USDC' AND trade_type = 'buy') AS c_usdc,
           sum(amount) FILTER (WHERE asset = 'XRP' AND trade_type = 'buy') AS bq_xrp,
           sum(amount) FILTER (WHERE asset = 'XRP' AND trade_type = 'sell') AS sq_xrp,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'XRP' AND trade_type = 'buy') AS c_xrp,
           sum(amount) FILTER (WHERE asset = 'ADA' AND trade_type = 'buy') AS bq_ada,
           sum(amount) FILTER (WHERE asset = 'ADA' AND trade_type = 'sell') AS sq_ada,
           sum(total_usd + fee_usd) FILTER (WHERE asset = 'ADA' AND trade_type = 'buy') AS c_ada,
               sum(fee_usd) AS fees, count(*) AS trades
          FROM trades
         WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL AND ($3::bigint IS NULL OR user_id = $3)
         GROUP BY user_id) s

-- window_transactions --
SELECT user_id, coalesce(sum(amount) FILTER (WHERE status = 'completed'), 0) AS usd
  FROM transactions
 WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL AND ($3::bigint IS NULL OR user_id = $3)
 GROUP BY user_id

-- window_sim_runs --
SELECT user_id, count(*) AS runs, max(scheduled_for) AS last_slot
  FROM sim_runs
 WHERE id > $1 AND id <= $2 AND ($3::bigint IS NULL OR user_id = $3)
 GROUP BY user_id

-- max_user --
SELECT coalesce(max(id), 0) FROM users

-- compare_users --
-- Users ($1, $2] in one snapshot: the live balance and holdings against what explains them: the
-- rows that are not the engine's (summed in full through the partial side indexes), the base
-- checkpoint's totals ($3; 0 = none), the engine's rows after it up to the reconcile's cut
-- (pg_temp.sim_parts: per-user sums of a range of ids each, added up here; plus what a walk over
-- earlier windows folded into pg_temp.sim_since) and the engine's rows after that cut
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
      LEFT JOIN (SELECT * FROM portfolio WHERE user_id > $1 AND user_id <= $2) p ON p.user_id = u.id
      LEFT JOIN side_usd su ON su.user_id = u.id
      LEFT JOIN st ON st.user_id = u.id
      LEFT JOIN w ON w.user_id = u.id
      LEFT JOIN a ON a.user_id = u.id
      LEFT JOIN late_usd lu ON lu.user_id = u.id
      LEFT JOIN lt ON lt.user_id = u.id
      LEFT JOIN (SELECT * FROM sim_checkpoint_users
                  WHERE checkpoint_id = $3 AND user_id > $1 AND user_id <= $2) cp ON cp.user_id = u.id
      LEFT JOIN (SELECT user_id,
                        sum(usd) AS usd,
                        sum(btc) AS btc,
                        sum(eth) AS eth,
                        sum(usdt) AS usdt,
                        sum(usdc) AS usdc,
                        sum(xrp) AS xrp,
                        sum(ada) AS ada
                   FROM (SELECT user_id, usd, btc, eth, usdt, usdc, xrp, ada FROM pg_temp.sim_since
                          WHERE user_id > $1 AND user_id <= $2
                         UNION ALL
                         SELECT user_id, usd, btc, eth, usdt, usdc, xrp, ada FROM pg_temp.sim_parts
                          WHERE user_id > $1 AND user_id <= $2) x
                  GROUP BY user_id) sn
             ON sn.user_id = u.id
      LEFT JOIN (SELECT * FROM sim_baseline WHERE user_id > $1 AND user_id <= $2) b ON b.user_id = u.id
)
SELECT * FROM expected
 WHERE balance_usd <> exp_usd OR btc <> exp_btc OR eth <> exp_eth OR usdt <> exp_usdt OR usdc <> exp_usdc OR xrp <> exp_xrp OR ada <> exp_ada
    OR (has_portfolio AND usd_value <> portfolio_value_usd AND NOT value_as_adopted)
 ORDER BY id

-- compare_checkpoint_users --
-- A retained checkpoint's stored totals ($1) against the totals walked from the rows
-- (pg_temp.sim_since), users ($2, $3]: the users where any differs. The latest slot is compared
-- where the checkpoint knows it (unknown: NULL with runs, a checkpoint taken before 0016; a walk
-- always knows it, since_from_checkpoint looking up what its start does not).
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
    OR (NOT (c.runs > 0 AND c.last_slot IS NULL) AND c.last_slot IS DISTINCT FROM s.last_slot)
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
-- A checkpoint's totals, users ($2, $3], as the start of a walk (from the checkpoint retention
-- pruned through). Where it does not know a user's latest slot (taken before 0016), the user's
-- latest run up to its cut, looked up: retention keeps each user's latest run, so that is the
-- slot, or none is left at or below the cut, and '-infinity' says so (the user's latest run
-- came after the cut: a later window or the rows since hold it, and the later slot wins).
INSERT INTO pg_temp.sim_since
SELECT 0, c.user_id, c.usd, c.btc, c.eth, c.usdt, c.usdc, c.xrp, c.ada,
       c.buy_btc, c.buy_eth, c.buy_usdt, c.buy_usdc, c.buy_xrp, c.buy_ada,
       c.cost_btc, c.cost_eth, c.cost_usdt, c.cost_usdc, c.cost_xrp, c.cost_ada, c.fees, c.trades,
       c.runs,
       CASE WHEN c.runs > 0 AND c.last_slot IS NULL
            THEN coalesce((SELECT max(r.scheduled_for) FROM sim_runs r
                            WHERE r.user_id = c.user_id AND r.id <= k.runs_cut), '-infinity')
            ELSE c.last_slot END
  FROM sim_checkpoint_users c
  JOIN sim_checkpoints k ON k.id = c.checkpoint_id
 WHERE c.checkpoint_id = $1 AND c.user_id > $2 AND c.user_id <= $3

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
-- None started within $1 seconds, or ($2 > 0) at least $2 engine rows were written after the
-- latest checkpoint's cut, whatever its state (a failed one is retried when as many more are):
-- three probes of a primary key's last entry. An upper bound: ids a rolled-back batch took count.
SELECT NOT EXISTS (SELECT 1 FROM sim_checkpoints
                    WHERE started_at > clock_timestamp() - make_interval(secs => $1))
    OR ($2::bigint > 0
        AND coalesce((SELECT (SELECT coalesce(max(id), 0) FROM trades) - c.trades_cut
                           + (SELECT coalesce(max(id), 0) FROM transactions) - c.transactions_cut
                           + (SELECT coalesce(max(id), 0) FROM sim_runs) - c.runs_cut
                        FROM sim_checkpoints c ORDER BY c.id DESC LIMIT 1), 0) >= $2::bigint)

-- custom_plans --
-- Every statement planned for its own values, and no JIT: a history job's statements each touch
-- one range, and compiling their expressions (the valuation's sums: ~130 ms per range of users)
-- cost more than running them. Memory enough for a range's per-user sums to stay in one hash
-- table (at 4 MB, 262,144 trades of 90,000 users spilled to disk in 65 batches and took 1.6x as
-- long): one session's, for the statement's length.
SET plan_cache_mode = force_custom_plan;
SET jit = off;
SET work_mem = '64MB';
-- The session's temporary tables (per-user sums: about 100 MB for a window of 2 M rows at 100,000
-- users) in memory rather than written out 8 MB at a time; settable only before the session's
-- first temporary table, so a session that already has one keeps what it has.
DO $$ BEGIN PERFORM set_config('temp_buffers', '256MB', false);
          EXCEPTION WHEN invalid_parameter_value THEN NULL; END $$

-- checkpoint_add_window --
-- The new checkpoint's totals ($1), users ($3, $4]: the previous one's ($2) plus its window
-- (pg_temp.sim_parts, summed per user here), one insert per user. The latest slot: the later of
-- the previous one's and the window's; where the previous checkpoint does not know it (taken
-- before 0016), the user's latest run up to the new cut ($5), looked up once ('-infinity' where
-- retention left none there: the user's latest run came after the cut, and a later window's
-- slot wins over it).
INSERT INTO sim_checkpoint_users
SELECT $1, coalesce(p.user_id, w.user_id),
       coalesce(p.usd, 0) + coalesce(w.usd, 0),
       coalesce(p.btc, 0) + coalesce(w.btc, 0), coalesce(p.eth, 0) + coalesce(w.eth, 0),
       coalesce(p.usdt, 0) + coalesce(w.usdt, 0), coalesce(p.usdc, 0) + coalesce(w.usdc, 0),
       coalesce(p.xrp, 0) + coalesce(w.xrp, 0), coalesce(p.ada, 0) + coalesce(w.ada, 0),
       coalesce(p.buy_btc, 0) + coalesce(w.buy_btc, 0), coalesce(p.buy_eth, 0) + coalesce(w.buy_eth, 0),
       coalesce(p.buy_usdt, 0) + coalesce(w.buy_usdt, 0), coalesce(p.buy_usdc, 0) + coalesce(w.buy_usdc, 0),
       coalesce(p.buy_xrp, 0) + coalesce(w.buy_xrp, 0), coalesce(p.buy_ada, 0) + coalesce(w.buy_ada, 0),
       coalesce(p.cost_btc, 0) + coalesce(w.cost_btc, 0), coalesce(p.cost_eth, 0) + coalesce(w.cost_eth, 0),
       coalesce(p.cost_usdt, 0) + coalesce(w.cost_usdt, 0), coalesce(p.cost_usdc, 0) + coalesce(w.cost_usdc, 0),
       coalesce(p.cost_xrp, 0) + coalesce(w.cost_xrp, 0), coalesce(p.cost_ada, 0) + coalesce(w.cost_ada, 0),
       coalesce(p.fees, 0) + coalesce(w.fees, 0),
       coalesce(p.trades, 0) + coalesce(w.trades, 0), coalesce(p.runs, 0) + coalesce(w.runs, 0),
       CASE WHEN p.runs > 0 AND p.last_slot IS NULL
            THEN coalesce((SELECT max(r.scheduled_for) FROM sim_runs r
                            WHERE r.user_id = p.user_id AND r.id <= $5::bigint), '-infinity')
            ELSE greatest(p.last_slot, w.last_slot) END
  FROM (SELECT * FROM sim_checkpoint_users WHERE checkpoint_id = $2 AND user_id > $3 AND user_id <= $4) p
  FULL JOIN (SELECT user_id,
               sum(usd) AS usd,
               sum(btc) AS btc,
               sum(eth) AS eth,
               sum(usdt) AS usdt,
               sum(usdc) AS usdc,
               sum(xrp) AS xrp,
               sum(ada) AS ada,
               sum(buy_btc) AS buy_btc,
               sum(buy_eth) AS buy_eth,
               sum(buy_usdt) AS buy_usdt,
               sum(buy_usdc) AS buy_usdc,
               sum(buy_xrp) AS buy_xrp,
               sum(buy_ada) AS buy_ada,
               sum(cost_btc) AS cost_btc,
               sum(cost_eth) AS cost_eth,
               sum(cost_usdt) AS cost_usdt,
               sum(cost_usdc) AS cost_usdc,
               sum(cost_xrp) AS cost_xrp,
               sum(cost_ada) AS cost_ada,
               sum(fees) AS fees,
               sum(trades) AS trades,
               sum(runs) AS runs,
               max(last_slot) AS last_slot
          FROM pg_temp.sim_parts WHERE user_id > $3 AND user_id <= $4 GROUP BY user_id) w
    ON w.user_id = p.user_id

-- judge_last_run --
-- Users ($1, $2] and the slot of their latest run as reconcile knows it, for the valuation check
-- (store/prices.py valuations_query): the later of the base checkpoint's ($3; 0 = none), the
-- latest among the rows since it (pg_temp.sim_since and sim_parts) and the runs committed after
-- the reconcile's cut ($4: the few since it began, through each partition's primary key). No
-- user's runs are looked up, except where the base checkpoint does not know the slot (taken
-- before 0016: NULL with runs; a walk always knows it), as before 0016, or where all it knows is that
-- the latest run came after a cut ('-infinity') and nothing later holds it (never, if the
-- rows are as written).
SELECT u.id AS user_id,
       CASE WHEN (cp.runs > 0 AND cp.last_slot IS NULL)
                 OR greatest(cp.last_slot, sn.last_slot, late.last_slot) = '-infinity'
            THEN (SELECT max(r.scheduled_for) FROM sim_runs r WHERE r.user_id = u.id)
            ELSE greatest(cp.last_slot, sn.last_slot, late.last_slot) END AS slot
  FROM users u
  LEFT JOIN (SELECT user_id, runs, last_slot FROM sim_checkpoint_users
              WHERE checkpoint_id = $3 AND user_id > $1 AND user_id <= $2) cp ON cp.user_id = u.id
  LEFT JOIN (SELECT user_id, max(last_slot) AS last_slot
               FROM (SELECT user_id, last_slot FROM pg_temp.sim_since
                      WHERE user_id > $1 AND user_id <= $2
                     UNION ALL
                     SELECT user_id, last_slot FROM pg_temp.sim_parts
                      WHERE user_id > $1 AND user_id <= $2) x
              GROUP BY user_id) sn ON sn.user_id = u.id
  LEFT JOIN (SELECT user_id, max(scheduled_for) AS last_slot FROM sim_runs
              WHERE id > $4 AND user_id > $1 AND user_id <= $2
              GROUP BY user_id) late ON late.user_id = u.id
 WHERE u.id > $1 AND u.id <= $2

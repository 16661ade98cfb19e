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

-- Retention (store/retention.py, `simctl prune`): what goes, and the batches that delete it.
--
-- Every delete walks the primary key: a batch is the next ids after a cursor up to the floor
-- (an index range scan of the pkey, `LIMIT` batch), then one DELETE of that id range. No other
-- index is needed, and none is added: the engine's inserts pay nothing for retention.
-- The engine's rows only: trades and transactions with sim_run_id NOT NULL (a legacy row or a
-- row of the platform's own has NULL there and is never touched), and sim_runs rows that are not
-- their user's latest run (reconcile values a portfolio at the user's last run's prices, and the
-- unique key (user_id, scheduled_for) answers "is there a later run" with one probe).

-- prune_checkpoint --
-- P: the newest verified checkpoint whose cut is at least $1 days old.
SELECT c.id, c.cut_at, c.trades_cut, c.transactions_cut, c.runs_cut, c.chain_hash
  FROM sim_checkpoints c
 WHERE c.state = 'verified' AND c.cut_at <= now() - make_interval(days => $1::int)
 ORDER BY c.id DESC
 LIMIT 1

-- prune_newest_verified --
SELECT id, cut_at FROM sim_checkpoints WHERE state = 'verified' ORDER BY id DESC LIMIT 1

-- prune_cutoff --
SELECT now() - make_interval(days => $1::int) AS cutoff, now() AS now

-- prune_oldest_open_withdrawal --
-- idx_withdrawals_status: the open ones are few.
SELECT id, user_id, status, created_at
  FROM withdrawals
 WHERE status IN ('pending', 'processing')
 ORDER BY created_at, id
 LIMIT 1

-- prune_state --
SELECT pruned_through, trades_floor, transactions_floor, runs_floor, keep_days, pruned_at,
       lease_holder, lease_until, lease_until > now() AS lease_live
  FROM sim_history WHERE id = 1

-- prune_table_size --
-- Bytes per row of a table with its indexes and TOAST: the estimate of what deleting rows frees
-- (for reuse by Postgres; the files shrink only with VACUUM FULL or a repack; a dropped
-- partition of sim_runs frees its files at once). A partitioned table (sim_runs, 0015) has no
-- storage of its own: its partitions are summed (a table that is not one is its only leaf).
SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint AS bytes,
       coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS tuples
  FROM pg_partition_tree($1::regclass) t
  JOIN pg_class c ON c.oid = t.relid
 WHERE t.isleaf

-- prune_all_trades --
SELECT count(*) FROM trades

-- prune_all_transactions --
SELECT count(*) FROM transactions

-- prune_all_sim_runs --
SELECT count(*) FROM sim_runs

-- prune_count_trades --
SELECT count(*) FROM trades WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL

-- prune_count_transactions --
SELECT count(*) FROM transactions WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL

-- prune_count_sim_runs --
SELECT count(*) FROM sim_runs r
 WHERE r.id > $1 AND r.id <= $2
   AND EXISTS (SELECT 1 FROM sim_runs l WHERE l.user_id = r.user_id AND l.scheduled_for > r.scheduled_for)

-- prune_start_trades --
-- Where the walk starts: the lowest engine id (the pkey from its low end, past legacy rows).
SELECT coalesce(min(id) - 1, 0) FROM trades WHERE sim_run_id IS NOT NULL

-- prune_start_transactions --
SELECT coalesce(min(id) - 1, 0) FROM transactions WHERE sim_run_id IS NOT NULL

-- prune_start_sim_runs --
SELECT coalesce(min(id) - 1, 0) FROM sim_runs

-- prune_next_trades --
-- The upper id of the next batch: the $3-th engine row after the cursor $1, at most the floor $2.
SELECT max(id) FROM (SELECT id FROM trades WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL
                      ORDER BY id LIMIT $3) b

-- prune_next_transactions --
SELECT max(id) FROM (SELECT id FROM transactions WHERE id > $1 AND id <= $2
                        AND sim_run_id IS NOT NULL ORDER BY id LIMIT $3) b

-- prune_next_sim_runs --
SELECT max(id) FROM (SELECT id FROM sim_runs WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3) b

-- prune_delete_trades --
DELETE FROM trades WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL RETURNING id

-- prune_delete_transactions --
DELETE FROM transactions WHERE id > $1 AND id <= $2 AND sim_run_id IS NOT NULL RETURNING id

-- prune_delete_sim_runs --
-- Never a user's latest run (by slot, as reconcile reads it): a later run of the same user must
-- exist, and runs only ever add later slots, so the run deleted is never the latest one.
DELETE FROM sim_runs r
 WHERE r.id > $1 AND r.id <= $2
   AND EXISTS (SELECT 1 FROM sim_runs l WHERE l.user_id = r.user_id AND l.scheduled_for > r.scheduled_for)
RETURNING r.id

-- prune_going_sim_runs --
-- The runs of ($1, $2] a batch deletes (not their user's latest), whole rows: store/retention.py
-- reads their canonical lines through rows_sim_runs (sql/history.sql) before the delete.
SELECT r.* FROM sim_runs r
 WHERE r.id > $1 AND r.id <= $2
   AND EXISTS (SELECT 1 FROM sim_runs l WHERE l.user_id = r.user_id AND l.scheduled_for > r.scheduled_for)

-- prune_delete_archived_trades --
-- An archived batch: only the ids archived ($3), within the batch's range of the pkey; the
-- whole rows go back so the caller hashes the lines it removed (store/retention.py).
DELETE FROM trades
 WHERE id > $1 AND id <= $2 AND id = ANY($3::bigint[]) AND sim_run_id IS NOT NULL
RETURNING *

-- prune_delete_archived_transactions --
DELETE FROM transactions
 WHERE id > $1 AND id <= $2 AND id = ANY($3::bigint[]) AND sim_run_id IS NOT NULL
RETURNING *

-- prune_delete_archived_sim_runs --
-- Still never a user's latest run (the same rule as prune_delete_sim_runs).
DELETE FROM sim_runs r
 WHERE r.id > $1 AND r.id <= $2 AND r.id = ANY($3::bigint[])
   AND EXISTS (SELECT 1 FROM sim_runs l WHERE l.user_id = r.user_id AND l.scheduled_for > r.scheduled_for)
RETURNING r.*

-- prune_present_trades --
-- How many of the ids in the ranges [$1[i], $2[i]] are still there (an interrupted archived
-- batch: did it commit?).
SELECT count(*) FROM unnest($1::bigint[], $2::bigint[]) AS r(a, b) JOIN trades t ON t.id BETWEEN r.a AND r.b

-- prune_present_transactions --
SELECT count(*) FROM unnest($1::bigint[], $2::bigint[]) AS r(a, b) JOIN transactions t ON t.id BETWEEN r.a AND r.b

-- prune_present_sim_runs --
SELECT count(*) FROM unnest($1::bigint[], $2::bigint[]) AS r(a, b) JOIN sim_runs t ON t.id BETWEEN r.a AND r.b

-- prune_set_floors --
-- The floors only rise: the views read P's totals for every engine row at or below them.
UPDATE sim_history
   SET pruned_through = $1, trades_floor = $2, transactions_floor = $3, runs_floor = $4,
       keep_days = $5, pruned_at = now()
 WHERE id = 1 AND lease_holder = $6 AND lease_until > now()
   AND coalesce(pruned_through, 0) < $1
   AND trades_floor <= $2 AND transactions_floor <= $3 AND runs_floor <= $4
RETURNING pruned_through

-- prune_rebuild_users --
-- P's per-user totals as the walk summed them (pg_temp.sim_since: the totals of the checkpoint
-- pruned through plus every window up to P, each verified against its hashes on the way), when
-- the checkpoints no longer keep P's own (they keep the newest two and the one pruned through).
INSERT INTO sim_checkpoint_users
SELECT $1, user_id, usd, btc, eth, usdt, usdc, xrp, ada,
       buy_btc, buy_eth, buy_usdt, buy_usdc, buy_xrp, buy_ada,
       cost_btc, cost_eth, cost_usdt, cost_usdc, cost_xrp, cost_ada, fees, trades, runs, last_slot
  FROM pg_temp.sim_since

-- prune_set_keep_days --
UPDATE sim_history SET keep_days = $1, pruned_at = now()
 WHERE id = 1 AND lease_holder = $2 AND lease_until > now()
RETURNING pruned_through

-- prune_floor_settings --
-- SET LOCAL of the change log's floors (set_config(..., true) is SET LOCAL with a parameter):
-- the trigger does not record retention's own deletes at or below them.
SELECT set_config('simengine.prune_floor_trades', $1::bigint::text, true),
       set_config('simengine.prune_floor_transactions', $2::bigint::text, true),
       set_config('simengine.prune_floor_sim_runs', $3::bigint::text, true)

-- prune_window_checkpoints --
-- The verified checkpoints whose windows lie at or below the floors (archive: the chain the
-- archived rows belong to), with the cuts of the checkpoint before each.
SELECT c.id, c.prev_id, c.cut_at, c.trades_cut, c.transactions_cut, c.runs_cut,
       c.trades_rows, c.transactions_rows, c.runs_rows,
       c.trades_hash, c.transactions_hash, c.runs_hash, c.window_hash, c.chain_hash,
       coalesce(p.trades_cut, 0) AS prev_trades_cut,
       coalesce(p.transactions_cut, 0) AS prev_transactions_cut,
       coalesce(p.runs_cut, 0) AS prev_runs_cut,
       p.chain_hash AS prev_chain_hash
  FROM sim_checkpoints c
  LEFT JOIN sim_checkpoints p ON p.id = c.prev_id
 WHERE c.state = 'verified' AND c.id <= $1
 ORDER BY c.id

-- prune_checkpoint_by_id --
SELECT c.id, c.prev_id, c.state, c.cut_at, c.trades_cut, c.transactions_cut, c.runs_cut,
       c.trades_hash, c.transactions_hash, c.runs_hash, c.window_hash, c.chain_hash,
       coalesce(p.trades_cut, 0) AS prev_trades_cut,
       coalesce(p.transactions_cut, 0) AS prev_transactions_cut,
       coalesce(p.runs_cut, 0) AS prev_runs_cut,
       p.chain_hash AS prev_chain_hash
  FROM sim_checkpoints c
  LEFT JOIN sim_checkpoints p ON p.id = c.prev_id
 WHERE c.id = $1

-- prune_checkpoint_blocks --
SELECT tbl, block, rows, hash FROM sim_checkpoint_blocks
 WHERE checkpoint_id = $1 ORDER BY tbl, block

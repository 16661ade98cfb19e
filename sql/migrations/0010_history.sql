-- 0010: history that stays bounded and provably right: checkpoints, a hash chain, retention.
--
-- The engine's own ledger rows (its trades and their transactions) and its runs are
-- append-only. A checkpoint cuts them by id (store/history.py: the cut is taken under a SHARE
-- lock on trades, transactions and sim_runs for a few milliseconds, so every id at or below it
-- is committed and every later id is allocated after it), sums each user's rows up to the cut,
-- and chains a hash over the rows of its window (the ids after the previous cut). Retention
-- (`simctl prune`) deletes only rows at or below the cut of a verified checkpoint; the views
-- then read that checkpoint's per-user totals for them, so they stay exact whatever the prune
-- has deleted so far.

-- Which ledger rows the engine wrote: the run behind each. The platform's own rows and legacy
-- rows keep NULL (a nullable column without default: a catalogue change, no row rewritten).
ALTER TABLE transactions ADD COLUMN IF NOT EXISTS sim_run_id bigint;
UPDATE transactions t SET sim_run_id = tr.sim_run_id
  FROM trades tr
 WHERE tr.sim_run_id IS NOT NULL AND t.sim_run_id IS NULL AND t.type IN ('buy', 'sell')
   AND t.reference = 'trade:' || tr.id;

-- The rows that are not the engine's (deposits, withdrawals, adjustments, the platform's own),
-- per user: reconcile sums them in full for a range of users without reading the engine's rows.
-- Partial: the engine's inserts do not touch them.
CREATE INDEX idx_transactions_user_side ON transactions (user_id) WHERE sim_run_id IS NULL;
CREATE INDEX idx_trades_user_side ON trades (user_id) WHERE sim_run_id IS NULL;

-- The chain. A checkpoint is 'building' until its window is summed and hashed, 'verified' once
-- every user's totals plus the rows since agree with the live state, 'failed' (with the reason)
-- otherwise. At most one builds at a time; verified ones form one chain (no fork).
CREATE TABLE sim_checkpoints (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prev_id           bigint REFERENCES sim_checkpoints (id),
    state             text NOT NULL DEFAULT 'building'
                      CHECK (state IN ('building', 'verified', 'failed')),
    cut_at            timestamptz NOT NULL,
    trades_cut        bigint NOT NULL,
    transactions_cut  bigint NOT NULL,
    runs_cut          bigint NOT NULL,
    trades_rows       bigint,
    transactions_rows bigint,
    runs_rows         bigint,
    trades_hash       text,
    transactions_hash text,
    runs_hash         text,
    window_hash       text,   -- sha256(trades_hash || transactions_hash || runs_hash)
    chain_hash        text,   -- sha256(previous chain_hash || window_hash)
    users_count       bigint,
    taken_by          text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    verified_at       timestamptz,
    error             text
);
CREATE UNIQUE INDEX sim_checkpoints_one_building ON sim_checkpoints ((true))
 WHERE state = 'building';
CREATE UNIQUE INDEX sim_checkpoints_chain ON sim_checkpoints (coalesce(prev_id, 0))
 WHERE state = 'verified';
REVOKE ALL ON sim_checkpoints FROM PUBLIC;

-- The leaves of each window's hash: one per table and block of 4,096 ids (rows and sha256 of
-- their canonical text), so a changed or deleted row is found to its block.
CREATE TABLE sim_checkpoint_blocks (
    checkpoint_id bigint NOT NULL REFERENCES sim_checkpoints (id) ON DELETE CASCADE,
    tbl           text NOT NULL CHECK (tbl IN ('trades', 'transactions', 'sim_runs')),
    block         bigint NOT NULL,
    rows          integer NOT NULL,
    hash          text NOT NULL,
    PRIMARY KEY (checkpoint_id, tbl, block)
);
REVOKE ALL ON sim_checkpoint_blocks FROM PUBLIC;

-- What the engine's rows up to a checkpoint's cut explain, per user: USD, each holding traded,
-- and what P&L needs of the trades (quantity and cost of buys per asset, fees). Kept for the
-- latest verified checkpoint, the one before it and the one retention pruned through.
CREATE TABLE sim_checkpoint_users (
    checkpoint_id bigint NOT NULL REFERENCES sim_checkpoints (id) ON DELETE CASCADE,
    user_id   bigint NOT NULL,
    usd       numeric NOT NULL DEFAULT 0,
    btc       numeric NOT NULL DEFAULT 0, eth numeric NOT NULL DEFAULT 0,
    usdt      numeric NOT NULL DEFAULT 0, usdc numeric NOT NULL DEFAULT 0,
    xrp       numeric NOT NULL DEFAULT 0, ada numeric NOT NULL DEFAULT 0,
    buy_btc   numeric NOT NULL DEFAULT 0, buy_eth numeric NOT NULL DEFAULT 0,
    buy_usdt  numeric NOT NULL DEFAULT 0, buy_usdc numeric NOT NULL DEFAULT 0,
    buy_xrp   numeric NOT NULL DEFAULT 0, buy_ada numeric NOT NULL DEFAULT 0,
    cost_btc  numeric NOT NULL DEFAULT 0, cost_eth numeric NOT NULL DEFAULT 0,
    cost_usdt numeric NOT NULL DEFAULT 0, cost_usdc numeric NOT NULL DEFAULT 0,
    cost_xrp  numeric NOT NULL DEFAULT 0, cost_ada numeric NOT NULL DEFAULT 0,
    fees      numeric NOT NULL DEFAULT 0,
    trades    bigint NOT NULL DEFAULT 0,
    runs      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (checkpoint_id, user_id)
);
REVOKE ALL ON sim_checkpoint_users FROM PUBLIC;

-- Retention's state (one row): the checkpoint whose totals stand for every engine row at or
-- below its cuts (the views read them instead of the rows), and its cuts, copied here so the
-- views read one row. Set before the first row is deleted; a prune killed half way leaves the
-- views exact and the next prune deletes the rest.
CREATE TABLE sim_history (
    id                smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pruned_through    bigint REFERENCES sim_checkpoints (id),
    trades_floor      bigint NOT NULL DEFAULT 0,
    transactions_floor bigint NOT NULL DEFAULT 0,
    runs_floor        bigint NOT NULL DEFAULT 0,
    keep_days         integer CHECK (keep_days >= 0),
    pruned_at         timestamptz,
    -- One history job at a time (a checkpoint or a prune): a lease renewed as it works, so a
    -- job killed half way is taken over once its lease runs out, and no transaction stays open.
    lease_holder      text,
    lease_until       timestamptz
);
INSERT INTO sim_history DEFAULT VALUES;
REVOKE ALL ON sim_history FROM PUBLIC;

-- Every change to an engine row after it was written: the engine only inserts them, so an
-- UPDATE or DELETE here is tampering, except retention's deletes of rows its checkpoint already
-- stands for (the transaction sets simengine.prune_floor_* to the floors it deletes below).
-- Statement-level triggers with transition tables: nothing runs on the engine's inserts. The
-- function runs as its owner, so a role allowed to change trades cannot skip the record.
CREATE TABLE sim_history_changes (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl     text NOT NULL,
    row_id  bigint NOT NULL,
    op      text NOT NULL,
    by_role text NOT NULL DEFAULT session_user,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON sim_history_changes FROM PUBLIC;

CREATE FUNCTION sim_record_history_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    floor_id bigint := coalesce(nullif(current_setting('simengine.prune_floor_' || TG_TABLE_NAME, true), ''), '0')::bigint;
BEGIN
    -- sim_runs has no sim_run_id column: its statements are apart (PL/pgSQL plans a statement
    -- only when it runs, per table the trigger is on), or every DELETE of a run (and of a user,
    -- by cascade) would fail on `o.sim_run_id`.
    IF TG_TABLE_NAME = 'sim_runs' THEN
        INSERT INTO sim_history_changes (tbl, row_id, op)
        SELECT TG_TABLE_NAME, o.id, lower(TG_OP) FROM old_rows o
         WHERE TG_OP = 'UPDATE' OR o.id > floor_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO sim_history_changes (tbl, row_id, op)
        SELECT TG_TABLE_NAME, o.id, 'delete' FROM old_rows o
         WHERE o.sim_run_id IS NOT NULL AND o.id > floor_id;
    ELSE
        INSERT INTO sim_history_changes (tbl, row_id, op)
        SELECT TG_TABLE_NAME, o.id, 'update' FROM old_rows o
         WHERE o.sim_run_id IS NOT NULL;
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION sim_record_history_change() FROM PUBLIC;
CREATE TRIGGER sim_trades_updated AFTER UPDATE ON trades
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_trades_deleted AFTER DELETE ON trades
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_transactions_updated AFTER UPDATE ON transactions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_transactions_deleted AFTER DELETE ON transactions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_runs_updated AFTER UPDATE ON sim_runs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_runs_deleted AFTER DELETE ON sim_runs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();

-- The ledger's totals per user: the pruned checkpoint's totals for the engine's rows at or
-- below its cuts, the rows themselves above them, and every row that is not the engine's.
CREATE OR REPLACE VIEW sim_ledger_totals AS
WITH floor AS (
    SELECT h.pruned_through, h.trades_floor, h.transactions_floor FROM sim_history h
), ledger AS (
    SELECT user_id, sum(amount) AS usd
      FROM transactions, floor f
     WHERE status = 'completed' AND (sim_run_id IS NULL OR id > f.transactions_floor)
     GROUP BY user_id
), traded AS (
    SELECT user_id,
           sum(CASE WHEN asset = 'BTC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS btc,
           sum(CASE WHEN asset = 'ETH' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS eth,
           sum(CASE WHEN asset = 'USDT' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdt,
           sum(CASE WHEN asset = 'USDC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdc,
           sum(CASE WHEN asset = 'XRP' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS xrp,
           sum(CASE WHEN asset = 'ADA' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS ada
      FROM trades, floor f
     WHERE sim_run_id IS NULL OR id > f.trades_floor
     GROUP BY user_id
), withdrawn AS (
    SELECT user_id,
           sum(amount) FILTER (WHERE asset = 'BTC') AS btc, sum(amount) FILTER (WHERE asset = 'ETH') AS eth,
           sum(amount) FILTER (WHERE asset = 'USDT') AS usdt, sum(amount) FILTER (WHERE asset = 'USDC') AS usdc,
           sum(amount) FILTER (WHERE asset = 'XRP') AS xrp, sum(amount) FILTER (WHERE asset = 'ADA') AS ada
      FROM withdrawals WHERE status = 'completed' GROUP BY user_id
), adjusted AS (
    -- Audited holding adjustments: details {"asset": "BTC", "delta": "0.5"}.
    SELECT target_user_id AS user_id,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'BTC') AS btc,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'ETH') AS eth,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'USDT') AS usdt,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'USDC') AS usdc,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'XRP') AS xrp,
           sum((details->>'delta')::numeric) FILTER (WHERE details->>'asset' = 'ADA') AS ada
      FROM admin_audit WHERE action = 'adjust_holding' GROUP BY target_user_id
), carried AS (
    SELECT c.* FROM sim_checkpoint_users c JOIN floor f ON c.checkpoint_id = f.pruned_through
)
SELECT u.id AS user_id,
       coalesce(l.usd, 0) + coalesce(c.usd, 0) AS usd,
       coalesce(t.btc, 0) - coalesce(w.btc, 0) + coalesce(a.btc, 0) + coalesce(c.btc, 0) AS btc,
       coalesce(t.eth, 0) - coalesce(w.eth, 0) + coalesce(a.eth, 0) + coalesce(c.eth, 0) AS eth,
       coalesce(t.usdt, 0) - coalesce(w.usdt, 0) + coalesce(a.usdt, 0) + coalesce(c.usdt, 0) AS usdt,
       coalesce(t.usdc, 0) - coalesce(w.usdc, 0) + coalesce(a.usdc, 0) + coalesce(c.usdc, 0) AS usdc,
       coalesce(t.xrp, 0) - coalesce(w.xrp, 0) + coalesce(a.xrp, 0) + coalesce(c.xrp, 0) AS xrp,
       coalesce(t.ada, 0) - coalesce(w.ada, 0) + coalesce(a.ada, 0) + coalesce(c.ada, 0) AS ada
  FROM users u
  LEFT JOIN ledger l ON l.user_id = u.id
  LEFT JOIN traded t ON t.user_id = u.id
  LEFT JOIN withdrawn w ON w.user_id = u.id
  LEFT JOIN adjusted a ON a.user_id = u.id
  LEFT JOIN carried c ON c.user_id = u.id;

-- P&L (0006's definition, unchanged): the cost of buys and the fees now also come from the
-- pruned checkpoint's totals for the engine's trades at or below its cut.
CREATE OR REPLACE VIEW sim_pnl AS
WITH floor AS (
    SELECT h.pruned_through, h.trades_floor FROM sim_history h
), flows AS (
    SELECT user_id,
           coalesce(sum(value_usd) FILTER (WHERE kind IN ('deposit', 'credit')), 0) AS deposits_usd,
           coalesce(-sum(value_usd) FILTER (WHERE kind = 'withdrawal'), 0) AS withdrawals_usd,
           coalesce(sum(value_usd) FILTER (WHERE kind = 'adjustment'), 0) AS adjustments_usd,
           coalesce(sum(value_usd) FILTER (WHERE asset IS NOT NULL), 0) AS crypto_flows_usd,
           sum(value_usd) AS net_contributions_usd
      FROM sim_contributions GROUP BY user_id
), held AS (
    SELECT p.user_id, h.asset, h.quantity, lp.price_usd
      FROM portfolio p
      CROSS JOIN LATERAL (VALUES ('BTC', p.btc), ('ETH', p.eth), ('USDT', p.usdt),
                                 ('USDC', p.usdc), ('XRP', p.xrp), ('ADA', p.ada)) AS h(asset, quantity)
      JOIN sim_latest_prices lp ON lp.asset = h.asset
     WHERE h.quantity > 0
), carried AS (
    SELECT c.* FROM sim_checkpoint_users c JOIN floor f ON c.checkpoint_id = f.pruned_through
), acquired AS (
    SELECT user_id, asset, sum(cost_usd) AS cost_usd, sum(quantity) AS quantity
      FROM (SELECT user_id, asset, total_usd + fee_usd AS cost_usd, amount AS quantity
              FROM trades, floor f
             WHERE trade_type = 'buy' AND (sim_run_id IS NULL OR id > f.trades_floor)
            UNION ALL
            SELECT user_id, asset, value_usd, quantity
              FROM sim_contributions WHERE asset IS NOT NULL AND quantity > 0
            UNION ALL
            SELECT c.user_id, x.asset, x.cost_usd, x.quantity
              FROM carried c
              CROSS JOIN LATERAL (VALUES ('BTC', c.cost_btc, c.buy_btc), ('ETH', c.cost_eth, c.buy_eth),
                                         ('USDT', c.cost_usdt, c.buy_usdt), ('USDC', c.cost_usdc, c.buy_usdc),
                                         ('XRP', c.cost_xrp, c.buy_xrp), ('ADA', c.cost_ada, c.buy_ada))
                   AS x(asset, cost_usd, quantity)
             WHERE x.quantity > 0) x
     GROUP BY user_id, asset
), value AS (
    SELECT h.user_id, sum(h.quantity * h.price_usd) AS holdings_value_usd,
           sum(CASE WHEN a.quantity > 0 THEN h.quantity * a.cost_usd / a.quantity ELSE 0 END)
             AS cost_basis_usd
      FROM held h LEFT JOIN acquired a ON a.user_id = h.user_id AND a.asset = h.asset
     GROUP BY h.user_id
), fees AS (
    SELECT user_id, sum(fees_usd) AS fees_usd
      FROM (SELECT user_id, fee_usd AS fees_usd FROM trades, floor f
             WHERE sim_run_id IS NULL OR id > f.trades_floor
            UNION ALL
            SELECT user_id, fees FROM carried) x
     GROUP BY user_id
)
SELECT b.user_id, b.sim_enabled, b.sim_paused, b.sim_run_count, b.sim_last_run_at,
       b.deposits_usd, b.withdrawals_usd, b.cash_usd, b.holdings_value_usd, b.equity_usd,
       b.fees_usd, b.total_pnl_usd, b.unrealised_pnl_usd,
       b.total_pnl_usd - b.unrealised_pnl_usd AS realised_pnl_usd,
       b.adjustments_usd, b.crypto_flows_usd, b.net_contributions_usd
  FROM (
    SELECT u.id AS user_id, u.sim_enabled, u.sim_paused, u.sim_run_count, u.sim_last_run_at,
           coalesce(f.deposits_usd, 0) AS deposits_usd,
           coalesce(f.withdrawals_usd, 0) AS withdrawals_usd,
           coalesce(f.adjustments_usd, 0) AS adjustments_usd,
           round(coalesce(f.crypto_flows_usd, 0), 8) AS crypto_flows_usd,
           round(coalesce(f.net_contributions_usd, 0), 8) AS net_contributions_usd,
           u.balance_usd AS cash_usd,
           round(coalesce(v.holdings_value_usd, 0), 8) AS holdings_value_usd,
           round(u.balance_usd + coalesce(v.holdings_value_usd, 0), 8) AS equity_usd,
           coalesce(fe.fees_usd, 0) AS fees_usd,
           round(u.balance_usd + coalesce(v.holdings_value_usd, 0)
                 - coalesce(f.net_contributions_usd, 0), 8) AS total_pnl_usd,
           round(coalesce(v.holdings_value_usd, 0) - coalesce(v.cost_basis_usd, 0), 8)
             AS unrealised_pnl_usd
      FROM users u
      LEFT JOIN flows f ON f.user_id = u.id
      LEFT JOIN value v ON v.user_id = u.id
      LEFT JOIN fees fe ON fe.user_id = u.id
     WHERE u.deleted_at IS NULL
  ) b;

-- 0006: the market lives in the database, and P&L counts money movements as contributions.

-- The market definition, versioned. Version 1 is stored by the first `simctl migrate` (from
-- SIM_SEED and the market settings when they are set, else the defaults and a seed drawn with
-- `secrets`); every process prices from these rows, never from its own settings. A later
-- version (`simctl market change`, an audited admin act) prices the ticks from its
-- effective_tick on, which is always after a lead time, so no tick a run may have used changes.
-- Ticks count tick_s from the first version's epoch; every version keeps tick_s and a later
-- version's epoch is its effective tick's start (its start prices are the prices there).
-- The seed is a secret: whoever knows it can compute every future price. The read role made by
-- `simctl grant-reader` cannot read this table.
CREATE TABLE sim_market (
    version        integer PRIMARY KEY CHECK (version >= 1),
    effective_tick bigint NOT NULL UNIQUE,
    seed           bigint NOT NULL CHECK (seed >= 0),
    tick_s         integer NOT NULL CHECK (tick_s > 0),
    epoch          timestamptz NOT NULL,
    model_version  integer NOT NULL CHECK (model_version >= 1),
    -- {"BTC": {"start_price_usd": "65000", "annual_vol": "0.65", "stable": false}, ...}
    assets         jsonb NOT NULL CHECK (jsonb_typeof(assets) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL
);
REVOKE ALL ON sim_market FROM PUBLIC;

-- The latest stored price per asset: six probes of the primary key (asset, at) instead of a
-- DISTINCT ON over the whole history (which grows by six rows a minute). Same columns.
CREATE OR REPLACE VIEW sim_latest_prices AS
SELECT a.asset, h.at, h.price_usd, h.source
  FROM (VALUES ('BTC'), ('ETH'), ('USDT'), ('USDC'), ('XRP'), ('ADA')) AS a(asset)
  CROSS JOIN LATERAL (SELECT p.at, p.price_usd, p.source FROM price_history p
                       WHERE p.asset = a.asset ORDER BY p.at DESC LIMIT 1) h;

-- Money that moved in or out without trading, per user, valued when it moved. USD: deposits
-- and credits (+), withdrawals (−), adjustments (±). Crypto: completed withdrawals (−) and
-- audited holding adjustments (±), quantity × the price recorded with the move (the latest
-- stored price then); rows written before prices were recorded take the latest stored price at
-- or before the move (or the first after it). An adopted database's opening value (sim_baseline)
-- is one more contribution, and only moves after it count: one more UNION ALL branch here and a
-- filter on `at`, nothing else changes.
CREATE VIEW sim_contributions AS
SELECT t.user_id, t.created_at AS at, NULL::text AS asset, NULL::numeric AS quantity,
       t.amount AS value_usd, t.type AS kind
  FROM transactions t
 WHERE t.status = 'completed' AND t.type IN ('deposit', 'credit', 'withdrawal', 'adjustment')
UNION ALL
SELECT f.user_id, f.at, f.asset, f.quantity,
       f.quantity * coalesce(
           f.price_usd,
           (SELECT h.price_usd FROM price_history h
             WHERE h.asset = f.asset AND h.at <= f.at ORDER BY h.at DESC LIMIT 1),
           (SELECT h.price_usd FROM price_history h
             WHERE h.asset = f.asset AND h.at > f.at ORDER BY h.at LIMIT 1),
           0) AS value_usd,
       f.kind
  FROM (SELECT a.target_user_id AS user_id, a.created_at AS at, a.details->>'asset' AS asset,
               CASE a.action WHEN 'adjust_holding' THEN (a.details->>'delta')::numeric
                             ELSE -(a.details->>'amount')::numeric END AS quantity,
               (a.details->>'price_usd')::numeric AS price_usd,
               a.action AS kind
          FROM admin_audit a
         WHERE a.action IN ('adjust_holding', 'withdrawal_complete')
           AND a.target_user_id IS NOT NULL) f;
REVOKE ALL ON sim_contributions FROM PUBLIC;

-- P&L per user (contract §3): current value (cash + holdings at the latest stored prices) minus
-- net contributions (sim_contributions). Deposits, withdrawals and adjustments are never gains
-- or losses; only the market path, fees and slippage move it. Sums are exact and rounded once,
-- so completing a withdrawal or applying an adjustment leaves it unchanged to the last decimal
-- (until the next price). unrealised = holdings value − their average cost (buys at cost with
-- fees, crypto received at its value then); realised = total − unrealised (fees included).
-- Recreated (the columns changed meaning): the grants of the read roles are carried over.
CREATE TEMPORARY TABLE sim_pnl_grants ON COMMIT DROP AS
SELECT DISTINCT grantee::text AS grantee FROM information_schema.role_table_grants
 WHERE table_schema = 'public' AND table_name = 'sim_pnl' AND privilege_type = 'SELECT'
   AND grantee::text NOT IN (current_user, 'PUBLIC');
DROP VIEW sim_pnl;
CREATE VIEW sim_pnl AS
WITH flows AS (
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
), acquired AS (
    SELECT user_id, asset, sum(cost_usd) AS cost_usd, sum(quantity) AS quantity
      FROM (SELECT user_id, asset, total_usd + fee_usd AS cost_usd, amount AS quantity
              FROM trades WHERE trade_type = 'buy'
            UNION ALL
            SELECT user_id, asset, value_usd, quantity
              FROM sim_contributions WHERE asset IS NOT NULL AND quantity > 0) x
     GROUP BY user_id, asset
), value AS (
    SELECT h.user_id, sum(h.quantity * h.price_usd) AS holdings_value_usd,
           sum(CASE WHEN a.quantity > 0 THEN h.quantity * a.cost_usd / a.quantity ELSE 0 END)
             AS cost_basis_usd
      FROM held h LEFT JOIN acquired a ON a.user_id = h.user_id AND a.asset = h.asset
     GROUP BY h.user_id
), fees AS (
    SELECT user_id, sum(fee_usd) AS fees_usd FROM trades GROUP BY user_id
)
SELECT b.user_id, b.sim_enabled, b.sim_paused, b.sim_run_count, b.sim_last_run_at,
       b.deposits_usd, b.withdrawals_usd, b.cash_usd, b.holdings_value_usd, b.equity_usd,
       b.fees_usd, b.total_pnl_usd, b.unrealised_pnl_usd,
       -- The difference of two 8-decimal values, so total = realised + unrealised exactly.
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
DO $$
DECLARE
    role_name text;
BEGIN
    FOR role_name IN SELECT grantee FROM sim_pnl_grants LOOP
        EXECUTE format('GRANT SELECT ON sim_pnl TO %I', role_name);
    END LOOP;
END $$;

-- The runs, for a reader checking a notification: Postgres lets any role NOTIFY on any channel,
-- so a `sim_run` payload is trusted only once its run is found here (by id, the primary key).
CREATE VIEW sim_run_log AS
SELECT id AS run_id, user_id, scheduled_for, finished_at, outcome, trades_count FROM sim_runs;

-- 0003: the read side. Other services read these views (with the role made by
-- `simctl grant-reader`), never the tables: no password_hash, no tax_id, no email.

-- The latest stored price per asset (model ticks and imports).
CREATE VIEW sim_latest_prices AS
SELECT DISTINCT ON (asset) asset, at, price_usd, source
  FROM price_history
 ORDER BY asset, at DESC;

-- One row per user and asset held: quantity, latest price and value.
CREATE VIEW sim_positions AS
SELECT p.user_id, h.asset, h.quantity, lp.price_usd, round(h.quantity * lp.price_usd, 8) AS value_usd,
       p.updated_at
  FROM portfolio p
  CROSS JOIN LATERAL (VALUES ('BTC', p.btc), ('ETH', p.eth), ('USDT', p.usdt),
                             ('USDC', p.usdc), ('XRP', p.xrp), ('ADA', p.ada)) AS h(asset, quantity)
  LEFT JOIN sim_latest_prices lp ON lp.asset = h.asset
 WHERE h.quantity > 0;

-- P&L per user. equity = cash + holdings marked at the last run; total P&L = equity − net
-- deposits; unrealised = holdings value − their average cost (cost of buys per unit × units
-- held); realised = total − unrealised (fees included).
CREATE VIEW sim_pnl AS
WITH cash AS (
    SELECT user_id,
           coalesce(sum(amount) FILTER (WHERE type IN ('deposit', 'credit')), 0) AS deposits_usd,
           coalesce(-sum(amount) FILTER (WHERE type = 'withdrawal'), 0) AS withdrawals_usd,
           coalesce(sum(amount) FILTER (WHERE type = 'adjustment'), 0) AS adjustments_usd
      FROM transactions WHERE status = 'completed' GROUP BY user_id
), cost AS (
    SELECT user_id, asset,
           sum(total_usd + fee_usd) FILTER (WHERE trade_type = 'buy') AS bought_usd,
           sum(amount) FILTER (WHERE trade_type = 'buy') AS bought_qty,
           sum(fee_usd) AS fees_usd
      FROM trades GROUP BY user_id, asset
), held AS (
    SELECT ps.user_id,
           sum(CASE WHEN c.bought_qty > 0
                    THEN ps.quantity * c.bought_usd / c.bought_qty ELSE 0 END) AS cost_basis_usd
      FROM sim_positions ps LEFT JOIN cost c ON c.user_id = ps.user_id AND c.asset = ps.asset
     GROUP BY ps.user_id
), fees AS (
    SELECT user_id, sum(fees_usd) AS fees_usd FROM cost GROUP BY user_id
)
SELECT b.user_id, b.sim_enabled, b.sim_paused, b.sim_run_count, b.sim_last_run_at,
       b.deposits_usd, b.withdrawals_usd, b.cash_usd, b.holdings_value_usd, b.equity_usd, b.fees_usd,
       b.total_pnl_usd, b.unrealised_pnl_usd,
       -- The difference of two 8-decimal values, so total = realised + unrealised exactly.
       b.total_pnl_usd - b.unrealised_pnl_usd AS realised_pnl_usd
  FROM (
    SELECT u.id AS user_id, u.sim_enabled, u.sim_paused, u.sim_run_count, u.sim_last_run_at,
           coalesce(c.deposits_usd, 0) AS deposits_usd,
           coalesce(c.withdrawals_usd, 0) AS withdrawals_usd,
           u.balance_usd AS cash_usd,
           u.portfolio_value_usd AS holdings_value_usd,
           u.balance_usd + u.portfolio_value_usd AS equity_usd,
           coalesce(f.fees_usd, 0) AS fees_usd,
           u.balance_usd + u.portfolio_value_usd - coalesce(c.deposits_usd, 0)
             + coalesce(c.withdrawals_usd, 0) - coalesce(c.adjustments_usd, 0) AS total_pnl_usd,
           round(u.portfolio_value_usd - coalesce(h.cost_basis_usd, 0), 8) AS unrealised_pnl_usd
      FROM users u
      LEFT JOIN cash c ON c.user_id = u.id
      LEFT JOIN held h ON h.user_id = u.id
      LEFT JOIN fees f ON f.user_id = u.id
     WHERE u.deleted_at IS NULL
  ) b;

-- Engine activity per minute over the last hour: runs, trades and scheduling lag.
CREATE VIEW sim_activity AS
SELECT date_trunc('minute', r.finished_at) AS minute,
       count(*) AS runs,
       sum(r.trades_count) AS trades,
       round(avg(extract(epoch FROM r.started_at - r.scheduled_for))::numeric, 3) AS avg_lag_s,
       round(max(extract(epoch FROM r.started_at - r.scheduled_for))::numeric, 3) AS max_lag_s
  FROM sim_runs r
 WHERE r.finished_at > now() - interval '1 hour'
 GROUP BY 1;

-- The runs behind the activity (finished_at) are looked up by time.
CREATE INDEX idx_sim_runs_finished_at ON sim_runs (finished_at);

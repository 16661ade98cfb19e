-- 0005: the ledger's baseline, for a database that simengine adopted (store/adopt.py).
--
-- A platform's legacy ledger may not explain its balances (older code wrote unsigned amounts or
-- skipped rows). Adoption records each user's balance and holdings at that moment, together
-- with what the ledger explained then; reconcile judges every later change from there: expected
-- = opening + (what the ledger explains now - what it explained at adoption). No ledger row is
-- invented, so no other service reads a made-up deposit. On a database simengine created, both
-- tables stay empty and reconcile is what it always was.

-- What the ledger explains per user: USD from completed transactions; each holding from trades,
-- completed withdrawals and audited holding adjustments. Reconcile and the baseline both read it.
CREATE VIEW sim_ledger_totals AS
WITH ledger AS (
    SELECT user_id, sum(amount) AS usd FROM transactions WHERE status = 'completed' GROUP BY user_id
), traded AS (
    SELECT user_id,
           sum(CASE WHEN asset = 'BTC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS btc,
           sum(CASE WHEN asset = 'ETH' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS eth,
           sum(CASE WHEN asset = 'USDT' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdt,
           sum(CASE WHEN asset = 'USDC' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS usdc,
           sum(CASE WHEN asset = 'XRP' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS xrp,
           sum(CASE WHEN asset = 'ADA' THEN CASE trade_type WHEN 'buy' THEN amount ELSE -amount END END) AS ada
      FROM trades GROUP BY user_id
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
)
SELECT u.id AS user_id,
       coalesce(l.usd, 0) AS usd,
       coalesce(t.btc, 0) - coalesce(w.btc, 0) + coalesce(a.btc, 0) AS btc,
       coalesce(t.eth, 0) - coalesce(w.eth, 0) + coalesce(a.eth, 0) AS eth,
       coalesce(t.usdt, 0) - coalesce(w.usdt, 0) + coalesce(a.usdt, 0) AS usdt,
       coalesce(t.usdc, 0) - coalesce(w.usdc, 0) + coalesce(a.usdc, 0) AS usdc,
       coalesce(t.xrp, 0) - coalesce(w.xrp, 0) + coalesce(a.xrp, 0) AS xrp,
       coalesce(t.ada, 0) - coalesce(w.ada, 0) + coalesce(a.ada, 0) AS ada
  FROM users u
  LEFT JOIN ledger l ON l.user_id = u.id
  LEFT JOIN traded t ON t.user_id = u.id
  LEFT JOIN withdrawn w ON w.user_id = u.id
  LEFT JOIN adjusted a ON a.user_id = u.id;

-- One row per user that existed at adoption: the opening state and what the ledger explained.
-- Exact copies (unconstrained numeric: a legacy column may carry more decimals than ours). No
-- foreign key: taking the snapshot must not lock users against the platform's writes.
CREATE TABLE sim_baseline (
    user_id             bigint PRIMARY KEY,
    taken_at            timestamptz NOT NULL,
    balance_usd         numeric NOT NULL,
    portfolio_value_usd numeric NOT NULL,
    usd_value           numeric,            -- portfolio.usd_value; NULL: no portfolio row
    btc numeric NOT NULL, eth numeric NOT NULL, usdt numeric NOT NULL,
    usdc numeric NOT NULL, xrp numeric NOT NULL, ada numeric NOT NULL,
    ledger_usd numeric NOT NULL,
    ledger_btc numeric NOT NULL, ledger_eth numeric NOT NULL, ledger_usdt numeric NOT NULL,
    ledger_usdc numeric NOT NULL, ledger_xrp numeric NOT NULL, ledger_ada numeric NOT NULL
);

-- The adoption itself (at most one row): when, how many users, and whether the steps after its
-- transaction (concurrent index builds, rule validation) are done; the legacy rows it reported.
CREATE TABLE sim_adoption (
    id            smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    taken_at      timestamptz NOT NULL,
    users_count   bigint NOT NULL,
    audit_id      bigint,
    completed_at  timestamptz,
    legacy_report jsonb NOT NULL DEFAULT '[]'::jsonb
);

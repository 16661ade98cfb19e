-- 0002: what a simulated user trades is decided by a strategy (engine/strategies.py).
-- NULL sim_strategy means the default from SIM_DEFAULT_STRATEGY.
ALTER TABLE users
    ADD COLUMN sim_strategy text CHECK (sim_strategy IN ('random', 'rebalance', 'dca', 'momentum')),
    ADD COLUMN sim_params jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(sim_params) = 'object');

-- The first and last imported tick per asset: a slot inside this span is priced from imports.
CREATE TABLE price_import_spans (
    asset    text PRIMARY KEY CHECK (asset IN ('BTC', 'ETH', 'USDT', 'USDC', 'XRP', 'ADA')),
    first_at timestamptz NOT NULL,
    last_at  timestamptz NOT NULL CHECK (last_at >= first_at)
);

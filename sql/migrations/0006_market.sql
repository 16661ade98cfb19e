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

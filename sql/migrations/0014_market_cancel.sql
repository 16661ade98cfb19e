-- 0014: a pending market change can be cancelled (`simctl market cancel VERSION`, the console's
-- market page): an audited admin act, refused once the version's effective tick is less than
-- a safety margin away (store/market.py cancel_change).
--
-- A cancelled version is kept, marked, never deleted: its number is never given again, so the
-- newest version that is not cancelled identifies the whole set of versions in force (a cancel
-- is only of the newest one, so the versions below a live version never change while it
-- lives). Every batch and the ticker read that number in their transaction (batch_prelude) and
-- rebuild their market when it differs from the one they hold: cancelling version N makes the
-- number fall to the version below it, so a worker that had loaded N drops it before its next
-- batch. The cancel holds the price fence exclusively (as `prices import` does), so no batch is
-- between that read and its commit while the cancel checks the time and commits.
ALTER TABLE sim_market
    ADD COLUMN cancelled_at timestamptz,
    ADD COLUMN cancelled_by text,
    ADD CONSTRAINT sim_market_cancelled_check
        CHECK ((cancelled_at IS NULL) = (cancelled_by IS NULL) AND (version > 1 OR cancelled_at IS NULL));

-- A cancelled version's tick may be taken again by a later change.
ALTER TABLE sim_market DROP CONSTRAINT sim_market_effective_tick_key;
CREATE UNIQUE INDEX sim_market_effective_tick_key ON sim_market (effective_tick)
 WHERE cancelled_at IS NULL;

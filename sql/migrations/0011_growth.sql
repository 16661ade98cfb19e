-- 0011: the operator sees growth coming: size samples of the tables the engine writes, and
-- autovacuum settings for `users` that keep its dead row versions few.

-- One row per table per sample (store/growth.py `sample`, called by the scheduler every
-- SIM_GROWTH_SAMPLE_S): bytes from the catalogue (heap, indexes, TOAST), the planner's row
-- estimate (pg_class.reltuples: never a count), and the last value of the table's id sequence,
-- so growth per day and the days left of an `integer` id come from two samples' difference.
-- Samples older than 8 days are deleted by `sample` itself: about 25 tables x 288 samples a
-- day (every 300 s) x 8 days, some 60,000 rows, a few MB.
CREATE TABLE sim_growth_samples (
    relname     text NOT NULL,
    at          timestamptz NOT NULL,
    total_bytes bigint NOT NULL,
    est_rows    bigint,          -- NULL: never analysed or vacuumed, no estimate yet
    id_last     bigint,          -- the id sequence's last_value; NULL: none, or never used
    PRIMARY KEY (relname, at)
);
CREATE INDEX idx_sim_growth_samples_at ON sim_growth_samples (at);
REVOKE ALL ON sim_growth_samples FROM PUBLIC;

-- `users` is updated once per run and never HOT (the run moves sim_next_run_at, which
-- idx_users_sim_due indexes), so each run leaves a dead row version and a dead entry in each
-- of its indexes. With the server's defaults autovacuum waits for 20 % of the table to be dead
-- (200,000 row versions on a million users, 12 minutes at 280 runs/s) while the claim walks
-- the dead entries of idx_users_sim_due that sit before the due slots; these settings start it
-- at 1 % + 1,000 (the server's autovacuum_naptime then sets the pace), and analyse at 2 %.
-- Measured in docs/operations.md ("Running for a year"; simtools/bench/users_vacuum.py).
-- ALTER TABLE ... SET for autovacuum parameters takes SHARE UPDATE EXCLUSIVE on `users` for
-- the moment of the catalogue change (reads and writes go on; it waits only for a running
-- VACUUM, ANALYZE or DDL on users) and rewrites nothing.
ALTER TABLE users SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);

-- 0007: leases per batch instead of per user.
--
-- The scheduler used to lease each claimed user by writing `users.sim_claimed_until`: a second
-- row version of `users` per run (the run's own update is the other), about 6 µs of Postgres CPU
-- per run in the claim and 4 more in the run's update, which had a longer HOT chain to prune
-- (`simctl bench --steps`). A claim now writes one row here per batch it enqueues; the batch's
-- transaction deletes it, and a lease whose job was lost simply ends (`until`), after which the
-- next claim deletes it and claims its users again. `users.sim_claimed_until` stays the "not
-- before" of a user whose run failed (the backoff), and claims still honour it.
CREATE TABLE sim_leases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_ids bigint[] NOT NULL,
    slots_us bigint[] NOT NULL,  -- the leased slots, Unix microseconds, in user id order
    until timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (toast_tuple_target = 8160);
-- A batch of 200 leases about 3.3 kB of arrays: kept in the row, never compressed (the
-- default 2 kB target compressed both arrays of every claim: 0.4 ms of 1.1, EXPLAIN ANALYZE).
ALTER TABLE sim_leases ALTER COLUMN user_ids SET STORAGE MAIN, ALTER COLUMN slots_us SET STORAGE MAIN;
-- Every batch leaves a dead row here, and every claim reads the live ones: schedulers vacuum it
-- about once a second (store.runs.vacuum_leases); autovacuum is told to come early as well.
ALTER TABLE sim_leases SET (autovacuum_vacuum_threshold = 200, autovacuum_vacuum_scale_factor = 0,
                            autovacuum_vacuum_cost_delay = 0);

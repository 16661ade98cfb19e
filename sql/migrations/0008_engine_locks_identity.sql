-- 0008: locks only the engine can take, and the database's identity.

-- The engine's exclusive locks are row locks on these rows (`SELECT ... FOR UPDATE`, tried with
-- SKIP LOCKED where a holder must not wait). A row lock needs UPDATE privilege on the table, so
-- a role without write privileges here (the read role of `simctl grant-reader`, any other
-- service's role) cannot take one; an advisory lock, which any role that can connect may take
-- by the same key, would let such a role stall claims and runs.
--   claim:  one scheduler claims at a time (store.runs.claim_due)
--   market: the first store of the market definition and every change (store.market)
CREATE TABLE sim_locks (
    name text PRIMARY KEY CHECK (name IN ('claim', 'market'))
);
INSERT INTO sim_locks (name) VALUES ('claim'), ('market');
REVOKE ALL ON sim_locks FROM PUBLIC;

-- Runs against `prices import`, many against one: a table lock on this (always empty) table.
-- Every batch takes ROW EXCLUSIVE (a no-op DELETE in its first statement: the lock is taken when
-- the statement is planned, no tuple is written, and ROW EXCLUSIVE locks never conflict with
-- each other); an import takes EXCLUSIVE (LOCK TABLE), which conflicts with them, so it waits
-- for the running batches and the next ones wait for it. LOCK TABLE in these modes and DELETE
-- need INSERT/UPDATE/DELETE/TRUNCATE privileges on the table; a plain SELECT's ACCESS SHARE
-- conflicts with neither mode.
CREATE TABLE sim_price_fence (
    held boolean
);
REVOKE ALL ON sim_price_fence FROM PUBLIC;

-- Who this database is: a random id drawn by the migrate that created it (one row). Jobs on
-- Redis carry it and the default queue name derives from it, so deployments sharing one Redis
-- never run each other's jobs. Not a secret (it names the deployment, it unlocks nothing).
CREATE TABLE sim_deployment (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sim_deployment DEFAULT VALUES;
REVOKE ALL ON sim_deployment FROM PUBLIC;

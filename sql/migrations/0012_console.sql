-- 0012: what the operators' console (`simctl console`) and its commands need.

-- The global switch of claims: one row. While `claims_paused`, claim_due leases nobody (a
-- one-time filter on this row, so the paused claim reads no user), runs already queued still
-- apply, and `simctl claims resume` lets the next pass claim again. Who changed it and why are
-- here and in admin_audit (written in the same transaction by store/control.py).
CREATE TABLE sim_control (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    claims_paused boolean NOT NULL DEFAULT false,
    changed_at    timestamptz,
    changed_by    text,
    reason        text
);
INSERT INTO sim_control (id) VALUES (true);
REVOKE ALL ON sim_control FROM PUBLIC;

-- Since when a user has been failing: set by record_failure at the first failure of a streak
-- (sim_fail_count was 0); a committed run clears the count, so the next failure starts anew.
ALTER TABLE users ADD COLUMN IF NOT EXISTS sim_failing_since timestamptz;

-- The failing users (the console's list, `users list --failing`, status's count): few rows, so a
-- partial index keeps them off a walk of every user, and the engine's runs (which write
-- sim_fail_count = 0 over 0) never touch it.
CREATE INDEX idx_users_failing ON users (id) WHERE sim_fail_count > 0;

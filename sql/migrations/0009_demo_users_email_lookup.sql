-- 0009: which users seed-demo created, and email lookups in any case.

-- The users `simctl seed-demo` created, one row each, written in the transaction that creates
-- them. seed-demo refuses a database holding any other user: a demo address or name proves
-- nothing (a real user may have one), a row here is written by nothing else.
CREATE TABLE sim_demo_users (
    user_id bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    seed bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON sim_demo_users FROM PUBLIC;

-- Emails are found in any case: an adopted database keeps the platform's mixed-case addresses
-- (its rows are never rewritten), and an operator types an address as they know it. Without
-- this index the lookup by lower(email) reads every user.
CREATE INDEX idx_users_email_lower ON users (lower(email));

-- 0004: users and portfolio at fillfactor 50, so that their per-run updates stay HOT under a burst.
--
-- A claim takes up to SIM_BATCH_SIZE users in slot order, and users due at the same slot are
-- neighbours on disk (ties in the due index are in heap order), so one claim leases every row of
-- a page at once. At fillfactor 85 only the first few new row versions fit on the page; the rest
-- moved to other pages as non-HOT updates, each inserting into all three indexes of `users`
-- (measured: 35 % of leases HOT, 17 µs of server CPU per claimed user). With half of each page
-- free, a page's whole batch of leases fits: 7 µs per claimed user, and 11,200 → 13,700
-- user-runs/s end to end (`simctl bench`, 100,000 users all due). The ceiling script, which
-- updates each row once and non-HOT, measured the same within noise (30.2k–31.2k at 85,
-- 29.9k–33.7k at 50, two runs each).
--
-- portfolio, updated once per run and in no index by the columns that change, gets the same for
-- the same reason (26 % → 94 % HOT in a burst, apply_batch 48.7 → 46.1 µs of server CPU per run).
--
-- Applies to pages written from now on: a fresh database gets it everywhere; an existing one
-- as its rows are next updated (or at once with VACUUM FULL, which locks the table).
ALTER TABLE users SET (fillfactor = 50);
ALTER TABLE portfolio SET (fillfactor = 50);

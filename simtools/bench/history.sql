-- Named queries of the history bench (simtools/bench/history*.py, `simctl bench --history`). They
-- run only against the bench's own databases on its private cluster, never a real one.

-- hist_back_to_back --
-- Every user due now with an interval of $1 s, unleased: with more users than the engine runs in
-- $1 s, each user is due again before the engine comes back to it, so the engine runs flat out
-- (the issue's operator: 100,000 users back to back).
UPDATE users SET sim_interval_s = $1::int, sim_next_run_at = now(), sim_claimed_until = NULL

-- hist_spread_slots --
-- The soak's schedule: every user every $1 s, their slots spread evenly over the interval (user
-- id modulo the interval), unleased: users / $1 runs a second, as a platform's users on slots
-- run (a slot's next is slot + interval, so the spread stays). $1 = 1: back to back.
UPDATE users SET sim_interval_s = $1::int,
                 sim_next_run_at = now() + make_interval(secs => (id % $1::int)::float8),
                 sim_claimed_until = NULL

-- hist_lags --
-- How late each run started after its slot (seconds), for the runs the engine stamped finished
-- in [$1, $2) (finished_at is the run's clock_timestamp() in its batch: read once the batches
-- in flight then have committed).
SELECT extract(epoch FROM started_at - scheduled_for)::float8 AS lag
  FROM sim_runs WHERE finished_at >= $1 AND finished_at < $2

-- hist_server_counters --
-- The server's WAL so far (every database's: the private cluster runs nothing else), and its
-- checkpoints so far: on checkpoint_timeout, and requested (max_wal_size reached, or CHECKPOINT);
-- the autovacuums and autoanalyzes done so far, every table's (as the statistics report them).
SELECT w.wal_bytes::bigint AS bytes, w.wal_fpi AS fpi,
       b.checkpoints_timed AS timed, b.checkpoints_req AS requested,
       (SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
          FROM pg_stat_user_tables) AS autovacuums
FROM pg_stat_wal w, pg_stat_bgwriter b

-- hist_clock --
SELECT clock_timestamp()

-- hist_runs_taken --
-- The highest sim_runs id handed out (the sequence's own page: polling it costs the measured
-- server next to nothing; the bench's wait_runs explains why not max(id) or count(*)). 0 before
-- the first run.
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('sim_runs', 'id')::regclass), 0)

-- hist_runs_finished_between --
-- Runs committed by the engine between two server times, and the trades they made: finished_at
-- is the run's clock_timestamp() inside its batch's statement, so a batch straddling an edge
-- counts where it wrote. Read a few seconds after $2, once the batches in flight then have
-- committed.
SELECT count(*) AS runs, coalesce(sum(trades_count), 0)::bigint AS trades
  FROM sim_runs WHERE id > $1::bigint AND finished_at >= $2 AND finished_at < $3

-- hist_wallets --
-- Every user's wallet, what a run's trades follow from (a sell needs a holding; a user's first
-- runs, holding USD alone, make fewer trades than later ones): read from the history at N, for
-- the empty databases beside it.
SELECT u.id, u.email, u.balance_usd, u.portfolio_value_usd,
       p.btc, p.eth, p.usdt, p.usdc, p.xrp, p.ada, p.usd_value
  FROM users u JOIN portfolio p ON p.user_id = u.id
 ORDER BY u.id

-- hist_wallets_table --
CREATE TEMPORARY TABLE hist_wallets (
    id bigint PRIMARY KEY, email text NOT NULL, balance_usd numeric NOT NULL,
    portfolio_value_usd numeric NOT NULL, btc numeric NOT NULL, eth numeric NOT NULL,
    usdt numeric NOT NULL, usdc numeric NOT NULL, xrp numeric NOT NULL, ada numeric NOT NULL,
    usd_value numeric
) ON COMMIT DROP

-- hist_take_wallets --
-- The wallets copied into pg_temp.hist_wallets become this database's users' own, matched by id
-- and email (the same seeded users; the caller checks every one matched): balance, value and
-- holdings, and the demo deposit that explains the balance. Nothing explains the holdings here:
-- the database is the bench's own, measured with the engine alone and dropped, never reconciled.
WITH b AS (
    UPDATE users u SET balance_usd = w.balance_usd, portfolio_value_usd = w.portfolio_value_usd
      FROM pg_temp.hist_wallets w
     WHERE u.id = w.id AND u.email = w.email
    RETURNING u.id
), p AS (
    UPDATE portfolio p
       SET btc = w.btc, eth = w.eth, usdt = w.usdt, usdc = w.usdc, xrp = w.xrp, ada = w.ada,
           usd_value = w.usd_value
      FROM pg_temp.hist_wallets w JOIN b ON b.id = w.id
     WHERE p.user_id = w.id
    RETURNING p.user_id
), d AS (
    UPDATE transactions t SET amount = w.balance_usd
      FROM pg_temp.hist_wallets w JOIN b ON b.id = w.id
     WHERE t.user_id = w.id AND t.reference = 'seed-demo' AND t.sim_run_id IS NULL
)
SELECT (SELECT count(*) FROM b) AS users, (SELECT count(*) FROM p) AS portfolios

-- hist_counts --
-- History at a point: runs, trades and ledger rows the engine wrote (the platform's own rows,
-- such as the demo users' deposits, are not counted).
SELECT (SELECT count(*) FROM sim_runs) AS runs,
       (SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL) AS trades,
       (SELECT count(*) FROM transactions WHERE sim_run_id IS NOT NULL) AS ledger_rows

-- hist_table_sizes --
-- pg_total_relation_size (heap, indexes, TOAST) of every table the engine writes: the history
-- it appends (trades, transactions, sim_runs), the state it updates once per run (users,
-- portfolio), its leases and prices, and the checkpoints' own tables. A table not there (an
-- older schema) is left out. A partitioned table (sim_runs since 0015) is the sum of its
-- partitions (its own size is 0; pg_partition_tree lists nothing for a plain table).
SELECT t.name, (CASE WHEN c.relkind = 'p'
                     THEN (SELECT coalesce(sum(pg_total_relation_size(p.relid)), 0)
                             FROM pg_partition_tree(c.oid) p WHERE p.isleaf)
                     ELSE pg_total_relation_size(c.oid) END)::bigint AS bytes
  FROM unnest(ARRAY['trades', 'transactions', 'sim_runs', 'users', 'portfolio', 'price_history',
                    'sim_leases', 'sim_checkpoints', 'sim_checkpoint_blocks',
                    'sim_checkpoint_users', 'sim_history_changes']) WITH ORDINALITY AS t(name, ord)
  JOIN pg_class c ON c.oid = to_regclass(t.name)
 ORDER BY t.ord

-- hist_users_dead --
-- What autovacuum has to keep up with on the platform's hottest table.
SELECT coalesce(n_dead_tup, 0)::bigint AS dead, coalesce(n_live_tup, 0)::bigint AS live,
       coalesce(autovacuum_count, 0)::bigint AS autovacuums
  FROM pg_stat_user_tables WHERE relname = 'users'

-- hist_transactions_of --
-- Open transactions of the backends whose application_name is $1 (the reconcile being timed),
-- sampled from a side connection: how long each has held its transaction so far, and the
-- statement it runs (its comment lines dropped, its spaces collapsed).
SELECT pid, xact_start, extract(epoch FROM clock_timestamp() - xact_start)::float8 AS held_s,
       left(btrim(regexp_replace(regexp_replace(query, '--[^\n]*', '', 'g'), '\s+', ' ', 'g')),
            200) AS query
  FROM pg_stat_activity
 WHERE application_name = $1 AND xact_start IS NOT NULL

-- hist_pnl_sum --
-- The full P&L aggregate, as a dashboard would ask it.
SELECT sum(total_pnl_usd) FROM sim_pnl

-- hist_doubled_slots --
-- Slots that ran twice: none may (unique (user_id, scheduled_for) says so; counted anyway).
SELECT count(*) FROM (SELECT 1 FROM sim_runs GROUP BY user_id, scheduled_for HAVING count(*) > 1) d

-- hist_run_counts --
-- Each user's sim_run_count against the runs the history explains: the rows still there above
-- the retention floor, plus the runs the pruned checkpoint's per-user totals stand for. A run
-- lost (deleted without being counted) or doubled shows as a user whose numbers differ.
WITH h AS (SELECT pruned_through, runs_floor FROM sim_history),
     live AS (SELECT r.user_id, count(*) AS n FROM sim_runs r, h WHERE r.id > h.runs_floor
               GROUP BY r.user_id),
     carried AS (SELECT c.user_id, c.runs FROM sim_checkpoint_users c
                   JOIN h ON c.checkpoint_id = h.pruned_through)
SELECT count(*) FILTER (WHERE u.sim_run_count <> coalesce(l.n, 0) + coalesce(c.runs, 0))
           AS users_differing,
       coalesce(sum(u.sim_run_count), 0)::bigint AS counted,
       coalesce(sum(coalesce(l.n, 0) + coalesce(c.runs, 0)), 0)::bigint AS explained
  FROM users u LEFT JOIN live l ON l.user_id = u.id LEFT JOIN carried c ON c.user_id = u.id

-- hist_run_counts_plain --
-- The same before migration 0010 (no retention): every run is still a row.
WITH live AS (SELECT user_id, count(*) AS n FROM sim_runs GROUP BY user_id)
SELECT count(*) FILTER (WHERE u.sim_run_count <> coalesce(l.n, 0)) AS users_differing,
       coalesce(sum(u.sim_run_count), 0)::bigint AS counted,
       coalesce(sum(coalesce(l.n, 0)), 0)::bigint AS explained
  FROM users u LEFT JOIN live l ON l.user_id = u.id

-- hist_has_history --
SELECT to_regclass('sim_history') IS NOT NULL

-- hist_checkpoints --
-- The checkpoints taken so far (by the scheduler or by `simctl checkpoint`): state and seconds.
SELECT id, state, extract(epoch FROM verified_at - started_at)::float8 AS seconds, error
  FROM sim_checkpoints WHERE id > $1::bigint ORDER BY id

-- hist_latest_verified --
-- The newest verified checkpoint (0: none yet): the soak prunes only once one exists.
SELECT coalesce(max(id), 0) FROM sim_checkpoints WHERE state = 'verified'

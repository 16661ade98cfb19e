-- 0015: sim_runs partitioned by day of its slot, so retention drops a day instead of deleting
-- its rows one batch at a time (store/partitions.py; docs/architecture.md, "History").
--
-- The table's name, columns, identity and unique slot rule stay as they were: a partitioned
-- `sim_runs` (RANGE on scheduled_for, the key every unique index of it must hold: UNIQUE
-- (user_id, scheduled_for) does) with
-- - one partition per UTC day, `sim_runs_pYYYYMMDD`, made ahead of time (a week) by
--   sim_runs_add_partitions(), which the scheduler's housekeeping calls; each has its own
--   primary key on id (the id lookups of checkpoints, reconcile and the console), and
-- - the DEFAULT partition `sim_runs_default`: the table as it was (attached, not copied: no row
--   is rewritten, every id stays), and later the rows whose day has no partition any more (a
--   user's latest run kept from a dropped day, a late slot of a dropped day).
-- The default carries CHECK (scheduled_for < bound), the bound being the first day never
-- dropped nor made before this migration. It does two things: a partition made ahead is
-- attached without scanning the default (the check proves it holds none of the new day's
-- rows), and a run whose slot is later than every partition made is refused loudly rather
-- than swallowed by the default (where it would block its day's partition for ever). Runs are
-- applied only when due, so that needs housekeeping stopped for a week.
--
-- What it costs on a populated table: the ACCESS EXCLUSIVE lock of the renames, one scan for
-- the latest slot and one to validate the default's check (no index is built, no row copied);
-- docs/operations.md has the measured time.

ALTER TABLE sim_runs RENAME TO sim_runs_default;
ALTER TABLE sim_runs_default RENAME CONSTRAINT sim_runs_pkey TO sim_runs_default_pkey;
ALTER TABLE sim_runs_default
    RENAME CONSTRAINT sim_runs_user_id_scheduled_for_key TO sim_runs_default_user_id_scheduled_for_key;
ALTER TABLE sim_runs_default RENAME CONSTRAINT sim_runs_user_id_fkey TO sim_runs_default_user_id_fkey;
ALTER INDEX idx_sim_runs_finished_at RENAME TO sim_runs_default_finished_at_idx;
ALTER SEQUENCE sim_runs_id_seq RENAME TO sim_runs_default_id_seq;
DROP TRIGGER sim_runs_updated ON sim_runs_default;
DROP TRIGGER sim_runs_deleted ON sim_runs_default;

-- 0001's definition, partitioned. The check keeps its name: a partition must hold the parent's
-- checks by name (the default's is the one 0001 made).
CREATE TABLE sim_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scheduled_for timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text NOT NULL DEFAULT 'applied',
    trades_count  integer NOT NULL DEFAULT 0
                  CONSTRAINT sim_runs_trades_count_check CHECK (trades_count >= 0),
    -- A slot executes at most once (the partition key is part of it, so it holds across days).
    UNIQUE (user_id, scheduled_for)
) PARTITION BY RANGE (scheduled_for);
-- 0003's index, on every partition (the default's existing one is attached, not rebuilt).
CREATE INDEX idx_sim_runs_finished_at ON sim_runs (finished_at);

-- The ids go on from where the table's own sequence was.
SELECT setval(pg_get_serial_sequence('sim_runs', 'id'), s.last_value, s.is_called)
  FROM sim_runs_default_id_seq s;
ALTER TABLE sim_runs_default ALTER COLUMN id DROP IDENTITY;

-- The default's bound: the UTC midnight after both now and the latest slot there is.
DO $$
DECLARE
    bound timestamptz;
BEGIN
    SELECT (date_trunc('day', greatest(now(), max(scheduled_for)) AT TIME ZONE 'UTC')
            + interval '1 day') AT TIME ZONE 'UTC'
      INTO bound FROM sim_runs_default;
    EXECUTE format('ALTER TABLE sim_runs_default ADD CONSTRAINT sim_runs_default_bound '
                   'CHECK (scheduled_for < %L::timestamptz)', bound);
END $$;
ALTER TABLE sim_runs ATTACH PARTITION sim_runs_default DEFAULT;

-- Grants on the table as it was, on the table as it is.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable
               FROM pg_class c, aclexplode(c.relacl) a
              WHERE c.oid = 'sim_runs_default'::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON sim_runs TO %s%s', g.privilege_type,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

-- The change log (0010): statement triggers with transition tables are allowed on a
-- partitioned table, and see the rows of every partition a statement on `sim_runs` changes.
-- A statement naming one partition fires that partition's triggers only, so each partition
-- has its own, recording under the table's name.
CREATE TRIGGER sim_runs_updated AFTER UPDATE ON sim_runs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();
CREATE TRIGGER sim_runs_deleted AFTER DELETE ON sim_runs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_history_change();

CREATE FUNCTION sim_record_run_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    floor_id bigint := coalesce(nullif(current_setting('simengine.prune_floor_sim_runs', true), ''), '0')::bigint;
BEGIN
    INSERT INTO sim_history_changes (tbl, row_id, op)
    SELECT 'sim_runs', o.id, lower(TG_OP) FROM old_rows o
     WHERE TG_OP = 'UPDATE' OR o.id > floor_id;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION sim_record_run_change() FROM PUBLIC;
CREATE TRIGGER sim_runs_part_updated AFTER UPDATE ON sim_runs_default
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_run_change();
CREATE TRIGGER sim_runs_part_deleted AFTER DELETE ON sim_runs_default
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_run_change();

-- The views that read runs, on the partitioned table (0003's and 0006's text).
CREATE OR REPLACE VIEW sim_activity AS
SELECT date_trunc('minute', r.finished_at) AS minute,
       count(*) AS runs,
       sum(r.trades_count) AS trades,
       round(avg(extract(epoch FROM r.started_at - r.scheduled_for))::numeric, 3) AS avg_lag_s,
       round(max(extract(epoch FROM r.started_at - r.scheduled_for))::numeric, 3) AS max_lag_s
  FROM sim_runs r
 WHERE r.finished_at > now() - interval '1 hour'
 GROUP BY 1;
CREATE OR REPLACE VIEW sim_run_log AS
SELECT id AS run_id, user_id, scheduled_for, finished_at, outcome, trades_count FROM sim_runs;

-- The default's bound now (its check's constant). The day partitions start at or after it.
CREATE FUNCTION sim_runs_default_bound() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_constraintdef(c.oid) FROM '''([^'']+)''')::timestamptz
      FROM pg_constraint c
     WHERE c.conrelid = 'sim_runs_default'::regclass AND c.conname = 'sim_runs_default_bound'
$$;

-- The day partitions (name, first and end instant, rows' ids at most), oldest first.
CREATE FUNCTION sim_runs_day_partitions()
RETURNS TABLE (name text, starts timestamptz, ends timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text, d AT TIME ZONE 'UTC', (d + interval '1 day') AT TIME ZONE 'UTC'
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      CROSS JOIN LATERAL (SELECT to_timestamp(substr(c.relname, 11), 'YYYYMMDD')::date::timestamp AS d) x
     WHERE i.inhparent = 'sim_runs'::regclass AND c.relname ~ '^sim_runs_p[0-9]{8}$'
     ORDER BY c.relname
$$;

-- Day partitions from the newest one (or the default's bound) through `p_days` days after
-- today (UTC); the number made. Each is made empty, apart, with the parent's columns, checks
-- and its own bound, then attached: ATTACH takes SHARE UPDATE EXCLUSIVE on sim_runs (the
-- engine's inserts and every read go on) and, briefly, ACCESS EXCLUSIVE on the default, whose
-- check proves it holds none of the new day's rows (validated first if a prune left it NOT
-- VALID), so nothing is scanned.
CREATE FUNCTION sim_runs_add_partitions(p_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    through_day date := (now() AT TIME ZONE 'UTC')::date + p_days;
    day date;
    name text;
    made integer := 0;
BEGIN
    SELECT greatest((sim_runs_default_bound() AT TIME ZONE 'UTC')::date,
                    max((p.ends AT TIME ZONE 'UTC')::date))
      INTO day FROM sim_runs_day_partitions() p;
    IF day > through_day THEN
        RETURN 0;
    END IF;
    -- One maker at a time (several schedulers): SHARE UPDATE EXCLUSIVE conflicts with itself,
    -- not with the engine's inserts and reads, and only a role that may write sim_runs takes
    -- it. The parent first, as retention's drop locks it (then the default): no deadlock.
    LOCK TABLE ONLY sim_runs IN SHARE UPDATE EXCLUSIVE MODE;
    SELECT greatest((sim_runs_default_bound() AT TIME ZONE 'UTC')::date,
                    max((p.ends AT TIME ZONE 'UTC')::date))
      INTO day FROM sim_runs_day_partitions() p;
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'sim_runs_default'::regclass
                AND conname = 'sim_runs_default_bound' AND NOT convalidated) THEN
        ALTER TABLE sim_runs_default VALIDATE CONSTRAINT sim_runs_default_bound;
    END IF;
    WHILE day <= through_day LOOP
        name := 'sim_runs_p' || to_char(day, 'YYYYMMDD');
        EXECUTE format(
            'CREATE TABLE %I (LIKE sim_runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT %I PRIMARY KEY (id), '
            'CONSTRAINT %I CHECK (scheduled_for >= %L::timestamptz AND scheduled_for < %L::timestamptz))',
            name, name || '_pkey', name || '_bound',
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
        EXECUTE format('CREATE TRIGGER sim_runs_part_updated AFTER UPDATE ON %I REFERENCING OLD '
                       'TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_run_change()',
                       name);
        EXECUTE format('CREATE TRIGGER sim_runs_part_deleted AFTER DELETE ON %I REFERENCING OLD '
                       'TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sim_record_run_change()',
                       name);
        EXECUTE format('ALTER TABLE sim_runs ATTACH PARTITION %I FOR VALUES FROM (%L::timestamptz) '
                       'TO (%L::timestamptz)',
                       name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
        made := made + 1;
        day := day + 1;
    END LOOP;
    RETURN made;
END $$;
REVOKE ALL ON FUNCTION sim_runs_add_partitions(integer) FROM PUBLIC;

-- Retention's drop of one day partition (store/partitions.py), in the caller's transaction:
-- ACCESS EXCLUSIVE on sim_runs (the parent: every statement on it waits, so the caller sets a
-- short lock_timeout and keeps the transaction to this call), then, unless the partition's
-- highest id or the change log's position for runs differs from what the caller saw when it
-- archived the rows (NULL returned, nothing done): the default's bound raised to the day's end
-- (NOT VALID: enforced for new rows at once, validated afterwards without blocking), the
-- partition dropped, and the runs `p_keep` (each its user's latest, which retention never
-- removes) put back, same ids and values, into the default, which now covers that day.
-- Returns how many were put back.
CREATE FUNCTION sim_runs_drop_day(p_name text, p_top bigint, p_changes bigint, p_keep bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day_end timestamptz;
    top bigint;
    kept sim_runs[];
BEGIN
    SELECT d.ends INTO day_end FROM sim_runs_day_partitions() d WHERE d.name = p_name;
    IF day_end IS NULL THEN
        RAISE EXCEPTION 'sim_runs has no day partition %', p_name;
    END IF;
    LOCK TABLE ONLY sim_runs IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT max(id) FROM %I', p_name) INTO top;
    IF top IS DISTINCT FROM p_top
       OR (SELECT coalesce(max(id), 0) FROM sim_history_changes WHERE tbl = 'sim_runs') <> p_changes THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT array_agg(r ORDER BY r.id) FROM %I p JOIN sim_runs r ON r.id = p.id '
                   'AND r.tableoid = %L::regclass WHERE p.id = ANY($1)', p_name, p_name)
       INTO kept USING p_keep;
    IF day_end > sim_runs_default_bound() THEN
        EXECUTE format('ALTER TABLE sim_runs_default ADD CONSTRAINT sim_runs_default_bound_next '
                       'CHECK (scheduled_for < %L::timestamptz) NOT VALID', day_end);
        ALTER TABLE sim_runs_default DROP CONSTRAINT sim_runs_default_bound;
        ALTER TABLE sim_runs_default RENAME CONSTRAINT sim_runs_default_bound_next TO sim_runs_default_bound;
    END IF;
    EXECUTE format('DROP TABLE %I', p_name);
    INSERT INTO sim_runs OVERRIDING SYSTEM VALUE SELECT (unnest(kept)).*;
    RETURN coalesce(cardinality(kept), 0);
END $$;
REVOKE ALL ON FUNCTION sim_runs_drop_day(text, bigint, bigint, bigint[]) FROM PUBLIC;

SELECT sim_runs_add_partitions(7);

-- Nothing may still read the table as it was by its old identity (a view would now show the
-- default partition only).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                WHERE d.classid = 'pg_rewrite'::regclass
                  AND d.refobjid = 'sim_runs_default'::regclass) THEN
        RAISE EXCEPTION 'a view still reads sim_runs_default';
    END IF;
END $$;

-- The migration runner's, adoption's and the start-up check's statements about the schema itself
-- (store/migrate.py, store/adopt.py, store/preflight.py), loaded by name like sql/queries.sql.
-- Statements built from the migrations (a table's new columns, a rule, an index) are not here:
-- their identifiers come from the migration files and store/adopt.py's PLATFORM.

-- migrate_lock --
-- Two `simctl migrate` serialise on it, in the transaction that walks and applies; the second
-- then finds nothing to do. SHARE ROW EXCLUSIVE conflicts with itself and with writes: taking it
-- needs UPDATE, DELETE or TRUNCATE on schema_migrations (or owning it), which the read role has
-- not; what that role can take (ACCESS SHARE, advisory locks) does not conflict with it.
LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE

-- engine_objects_present --
-- Which of these names ($1) a relation in the current schema already has.
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND c.relname = ANY($1::text[])
 ORDER BY c.relname

-- set_lock_timeout --
-- $1 milliseconds; $2 true: for the current transaction only (SET LOCAL).
SELECT set_config('lock_timeout', $1::int::text, $2)

-- reset_lock_timeout --
RESET lock_timeout

-- create_ledger --
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- ledger_exists --
SELECT to_regclass('schema_migrations') IS NOT NULL

-- ledger_has_rows --
SELECT EXISTS (SELECT 1 FROM schema_migrations)

-- applied_migrations --
SELECT version, name, checksum FROM schema_migrations

-- migration_applied --
SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)

-- record_migration --
INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)

-- platform_tables_present --
-- How many of the platform's tables ($1) this schema holds.
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY($1::text[])

-- adoption_exists --
SELECT to_regclass('sim_adoption') IS NOT NULL

-- adoption_incomplete --
SELECT EXISTS (SELECT 1 FROM sim_adoption WHERE completed_at IS NULL)

-- record_adoption --
-- The admin_audit 'adopt' row ($1: its details, to which the baseline's user count is added) and
-- the sim_adoption row ($2: the legacy rows reported), in the adoption's transaction.
WITH baseline AS (
    SELECT count(*) AS users FROM sim_baseline
), audit AS (
    INSERT INTO admin_audit (admin_key, action, details)
    SELECT 'engine', 'adopt', $1::jsonb || jsonb_build_object('users', b.users)
      FROM baseline b
    RETURNING id
)
INSERT INTO sim_adoption (taken_at, users_count, audit_id, legacy_report)
SELECT now(), b.users, a.id, $2::jsonb FROM baseline b, audit a

-- adopted_users --
SELECT users_count FROM sim_adoption

-- adoption_completed --
UPDATE sim_adoption SET completed_at = now()

-- index_valid --
-- NULL: no such index; false: a concurrent build that failed left it behind.
SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)

-- catalogue_tables --
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v')

-- catalogue_columns --
SELECT c.relname, a.attname, t.typname, a.atttypmod, a.attnotnull
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
   AND a.attnum > 0 AND NOT a.attisdropped

-- catalogue_indexes --
SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema()

-- catalogue_constraints --
-- With the table of a CHECK: the ones still NOT VALID are validated after adoption.
SELECT c.conname, c.contype::text AS contype, c.convalidated,
       coalesce(t.relname, '') AS tbl
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
  LEFT JOIN pg_class t ON t.oid = c.conrelid
 WHERE n.nspname = current_schema()

-- catalogue_functions --
SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = current_schema()

-- catalogue_triggers --
SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND NOT t.tgisinternal

-- portfolio_unique_user --
-- ON CONFLICT (user_id) needs a unique index on exactly that column.
SELECT EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
     WHERE n.nspname = current_schema() AND c.relname = 'portfolio' AND i.indisunique
       AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indisvalid AND a.attname = 'user_id')

-- lock_holders --
-- Who holds locks on these tables ($1) now, for the refusal's one line.
SELECT DISTINCT a.pid, a.state, extract(epoch FROM now() - a.xact_start)::int AS xact_s
  FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
  JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE c.relname = ANY($1::text[]) AND l.pid <> pg_backend_pid() AND l.granted
 ORDER BY 1 LIMIT 3

-- tables_present --
-- to_regclass first: has_table_privilege raises on a table that does not exist.
SELECT t.name, to_regclass(t.name) IS NOT NULL AS present FROM unnest($1::text[]) AS t(name)

-- privileges_refused --
SELECT t, p FROM unnest($1::text[], $2::text[]) AS x(t, p)
 WHERE NOT has_table_privilege(current_user, t, p)

-- current_role --
SELECT current_user

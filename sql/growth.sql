-- Growth of the tables the engine writes (store/growth.py): catalogue reads only, never a count.

-- growth_tables --
-- The tables watched, now: the engine's own (sim_*, partitions counted in their parent), the
-- platform tables the engine writes, and any table whose id sequence ends at or below 2^31 - 1
-- (an adopted `integer` id). Bytes are pg_total_relation_size (heap, indexes, TOAST: a stat of
-- the files); rows are the planner's estimate (pg_class.reltuples, or the statistics' live
-- tuples before the first ANALYZE). The id sequence is the one owned by the table's column
-- (serial: pg_depend 'a', identity: 'i'), `id` first; its end is the lower of the sequence's
-- maximum and the column type's.
WITH id_seq AS (
    SELECT DISTINCT ON (d.refobjid)
           d.refobjid AS relid, d.objid AS seqid, a.attname AS id_column,
           format_type(a.atttypid, a.atttypmod) AS id_type,
           least(s.seqmax, CASE a.atttypid WHEN 'int2'::regtype THEN 32767
                                           WHEN 'int4'::regtype THEN 2147483647
                                           ELSE 9223372036854775807 END) AS id_max
      FROM pg_depend d
      JOIN pg_sequence s ON s.seqrelid = d.objid
      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.deptype IN ('a', 'i')
     ORDER BY d.refobjid, a.attname <> 'id', a.attnum
)
SELECT c.relname::text AS relname, z.total_bytes, z.est_rows, q.id_column::text AS id_column,
       q.id_type, q.id_max,
       CASE WHEN has_sequence_privilege(q.seqid, 'SELECT,USAGE')
            THEN pg_sequence_last_value(q.seqid) END AS id_last
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
  LEFT JOIN id_seq q ON q.relid = c.oid
  CROSS JOIN LATERAL (
        SELECT coalesce(sum(pg_total_relation_size(p.relid)), 0)::bigint AS total_bytes,
               sum(CASE WHEN pc.reltuples >= 0 THEN pc.reltuples::bigint
                        ELSE pg_stat_get_live_tuples(pc.oid) END)::bigint AS est_rows
          FROM (SELECT c.oid AS relid WHERE c.relkind = 'r'
                UNION ALL
                SELECT t.relid FROM pg_partition_tree(c.oid) t
                 WHERE c.relkind = 'p' AND t.isleaf) p
          JOIN pg_class pc ON pc.oid = p.relid) z
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND (c.relname LIKE 'sim\_%'
        OR c.relname IN ('users', 'portfolio', 'trades', 'transactions', 'withdrawals',
                         'price_history', 'admin_audit')
        OR q.id_max <= 2147483647)
 ORDER BY c.relname

-- last_sample_at --
SELECT max(at) FROM sim_growth_samples

-- insert_samples --
-- One sample set, all rows at the transaction's now().
INSERT INTO sim_growth_samples (relname, at, total_bytes, est_rows, id_last)
SELECT relname, now(), total_bytes, est_rows, id_last
  FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
       AS x(relname, total_bytes, est_rows, id_last)

-- forget_samples --
-- Samples older than the keep (8 days): growth needs a day; the rest is a week to look back on.
DELETE FROM sim_growth_samples WHERE at < now() - make_interval(days => $1)

-- growth_rates --
-- Per table: the newest sample, and the one it is compared with: the oldest within a day
-- before it, else the newest older one. Each is one probe of the primary key (relname, at).
SELECT t.relname, nw.at AS newest_at, nw.total_bytes AS newest_bytes, nw.id_last AS newest_id,
       b.at AS base_at, b.total_bytes AS base_bytes, b.id_last AS base_id
  FROM unnest($1::text[]) AS t(relname)
  LEFT JOIN LATERAL (
        SELECT at, total_bytes, id_last FROM sim_growth_samples s
         WHERE s.relname = t.relname ORDER BY at DESC LIMIT 1) nw ON true
  LEFT JOIN LATERAL (
        SELECT * FROM (
            (SELECT at, total_bytes, id_last FROM sim_growth_samples s
              WHERE s.relname = t.relname AND s.at >= nw.at - interval '1 day' AND s.at < nw.at
              ORDER BY at LIMIT 1)
            UNION ALL
            (SELECT at, total_bytes, id_last FROM sim_growth_samples s
              WHERE s.relname = t.relname AND s.at < nw.at - interval '1 day'
              ORDER BY at DESC LIMIT 1)) x
         LIMIT 1) b ON true

-- users_vacuum --
-- Dead row versions on users and when they were last cleaned, from the statistics collector;
-- `vacuum_at_dead` is when autovacuum starts on it (threshold + scale factor x rows, the table's
-- own settings first, else the server's).
SELECT s.n_dead_tup AS dead_tuples, s.n_live_tup AS live_tuples,
       s.n_mod_since_analyze, s.last_autovacuum, s.last_vacuum, s.autovacuum_count,
       s.vacuum_count,
       (coalesce(o.threshold, current_setting('autovacuum_vacuum_threshold')::float8)
        + coalesce(o.scale, current_setting('autovacuum_vacuum_scale_factor')::float8)
          * greatest(c.reltuples, 0))::bigint AS vacuum_at_dead,
       current_setting('autovacuum')::bool AND coalesce(o.enabled, true) AS autovacuum_on
  FROM pg_stat_user_tables s
  JOIN pg_class c ON c.oid = s.relid
  CROSS JOIN LATERAL (
        SELECT max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_threshold')::float8
                 AS threshold,
               max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor')::float8
                 AS scale,
               max(option_value) FILTER (WHERE option_name = 'autovacuum_enabled')::bool AS enabled
          FROM pg_options_to_table(c.reloptions)) o
 WHERE s.schemaname = current_schema() AND s.relname = 'users'

-- history_state --
-- Retention's window and the checkpoints an operator acts on: the newest verified one, and
-- the newest one after it that failed or is still building (each a probe of the primary key);
-- sim_runs' day partitions and how far ahead they reach (a catalogue read).
SELECT h.keep_days, h.pruned_through, h.pruned_at,
       (SELECT cut_at FROM sim_checkpoints WHERE id = h.pruned_through) AS pruned_cut_at,
       v.id AS checkpoint_id, v.cut_at AS checkpoint_cut_at,
       v.verified_at AS checkpoint_verified_at,
       extract(epoch FROM now() - v.cut_at)::float8 AS checkpoint_age_s,
       f.id AS failed_id, f.started_at AS failed_at, f.error AS failed_error,
       g.id AS building_id, g.started_at AS building_since,
       d.run_days, d.run_days_through,
       extract(epoch FROM d.run_days_through - now())::float8 / 86400 AS run_days_ahead
  FROM sim_history h
  CROSS JOIN (SELECT count(*) AS run_days, max(ends) AS run_days_through
                FROM sim_runs_day_partitions()) d
  LEFT JOIN LATERAL (
        SELECT id, cut_at, verified_at FROM sim_checkpoints
         WHERE state = 'verified' ORDER BY id DESC LIMIT 1) v ON true
  LEFT JOIN LATERAL (
        SELECT id, started_at, error FROM sim_checkpoints
         WHERE state = 'failed' AND id > coalesce(v.id, 0) ORDER BY id DESC LIMIT 1) f ON true
  LEFT JOIN LATERAL (
        SELECT id, started_at FROM sim_checkpoints WHERE state = 'building' LIMIT 1) g ON true
 WHERE h.id = 1

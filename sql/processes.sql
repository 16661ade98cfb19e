-- The processes' heartbeats (migration 0013's sim_processes; store/processes.py). A handful of
-- rows: each statement is one probe of the primary key or a walk of a few rows.

-- beat --
-- Insert or refresh this process's row (host, pid, started_at: its primary key). seen_at is
-- the server's clock, so "seen N s ago" never depends on a process's clock.
INSERT INTO sim_processes (host, pid, started_at, kind, version, queue)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (host, pid, started_at) DO UPDATE
   SET seen_at = now(), kind = EXCLUDED.kind, version = EXCLUDED.version,
       queue = EXCLUDED.queue

-- leave --
DELETE FROM sim_processes WHERE host = $1 AND pid = $2 AND started_at = $3

-- forget --
-- Rows not seen for $1 seconds (processes that died without leaving); the scheduler's.
DELETE FROM sim_processes WHERE seen_at < now() - make_interval(secs => $1)

-- seen --
-- Every row, newest start first, with its age by the server's clock; gone when not seen for
-- $1 seconds.
SELECT kind, host, pid, started_at, seen_at, version, queue,
       round(extract(epoch FROM now() - seen_at)::numeric, 1)::float8 AS seen_s_ago,
       seen_at < now() - make_interval(secs => $1) AS gone
  FROM sim_processes
 ORDER BY kind, started_at DESC, host, pid
 LIMIT 500

-- 0013: which schedulers, workers and consoles are running: one heartbeat row per process.
--
-- Each process upserts its row (sql/processes.sql `beat`) when it starts and then every few
-- seconds (workers/heartbeat.py: at most every 5 s, on a pooled connection of its own, never
-- inside a run's transaction), and deletes it when it stops cleanly. A row not seen for a while
-- is a process that died (SIGKILL, a lost machine): the console and `simctl status` show it as
-- gone, and the scheduler deletes rows not seen for a day. A handful of rows: the primary key
-- is the only index, so the beat (which changes seen_at only) is a HOT update and leaves no
-- dead index entry.
CREATE TABLE sim_processes (
    host       text NOT NULL CHECK (length(host) BETWEEN 1 AND 255),
    pid        integer NOT NULL CHECK (pid > 0),
    started_at timestamptz NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('scheduler', 'worker', 'console')),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    version    text CHECK (length(version) <= 100),    -- the simengine package's version
    queue      text CHECK (length(queue) <= 200),      -- the Redis queue it serves or feeds
    PRIMARY KEY (host, pid, started_at)
);
-- The engine's role writes it; the read role (simctl grant-reader: the views only) never can.
REVOKE ALL ON sim_processes FROM PUBLIC;

"""The benchmark (`simctl bench`, scripts/bench, scripts/bench-core): simengine's user-runs/s
against baselines measured in the same run on the same machine, in the shared shape (every
process on every core, DATABASE_URL's server) and the pinned shape (a private Postgres cluster
on a core of its own, everything else on the others).

    plan.py       sizes of each phase, the packaged ceiling script (ceiling.pgb)
    shapes.py     where phases run: the shared shape, and the Shape every phase takes
    pinned.py     the pinned shape: a private cluster with the server's settings, taskset
    databases.py  one scratch database per phase, made and dropped by a context manager
    procs.py      pgbench, and the CPU and memory of processes from /proc
    phases.py     ceiling, TPC-B, naive, engine (peak, sustained), claim time, worker RSS
    results.py    the typed results; markdown.py the floors and the markdown table
    run.py        a whole run; steps.py `--steps`; core.py the pure core's micro-benchmark
    naive.py      the naive baseline (one job, one transaction per run), `python -m` it for a worker
    queries.py    its data access, with the named queries of bench.sql

The private cluster and redis-server, and the processes it starts, are simtools.harness's."""

"""The chaos drill (scripts/drill, `python -m simtools.drill`): the engine under every fault at
once on a private cluster and redis-server, judged by SQL alone. A clone's tool: not in the wheel.

    run.py      the plan, the fault schedule, the drill, its summary and command line
    procs.py    the drill's error and a monitor connection that outlives a Postgres crash
    queries.py  its reads and bookkeeping, with the named queries of drill.sql"""

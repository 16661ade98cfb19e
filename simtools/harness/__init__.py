"""What every tool (and the tests) runs the engine on, in one place.

services.py  a private Postgres cluster (initdb into a folder of its own, a free loopback
             port, crash and restart), a private redis-server, free_port, taskset binding
procs.py     the `simctl` command line, a spawned process, stopping a group of them, and the
             supervisor that keeps schedulers and workers running
sqlfiles.py  a tool's named queries, read from a .sql file beside it
errors.py    ToolError, the base of every tool's own error"""

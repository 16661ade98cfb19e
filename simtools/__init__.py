"""The tools wing: what measures, drills and demonstrates the engine, kept apart from it.

    harness/   one private Postgres cluster, one private redis-server, one process spawner and
               supervisor, the `simctl` command line, free ports, the tools' SQL files
    bench/     the end-to-end benchmark (`simctl bench`), the pure core's micro-benchmark
    drill/     the chaos drill (scripts/drill; a clone's tool, not in the wheel)
    fairness/  mean P&L per strategy against fees and slippage (scripts/bench-core --fairness)
    demo/      scripts/run: the engine on a demo population (the `demo` extra)

The product (engine, store, workers, simconfig, simctl) never imports this package, except
`simctl bench`, which loads simtools.bench inside the command. The tools import the product's
APIs as any caller would; each tool keeps its own SQL in .sql files beside it."""

"""The console's page times at scale (`scripts/bench-console`): a scratch database of N users and
R runs of history, `simctl console` serving it, every page timed over HTTP."""

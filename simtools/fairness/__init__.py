"""Fairness, measured (scripts/bench-core --fairness, `python -m simtools.fairness`): mean P&L
per strategy against fees and slippage, through the engine's own core. A clone's tool: not in
the wheel. table.py holds the simulation and the table."""

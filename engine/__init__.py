"""The simulation core: pure functions over plain data. No I/O, no clock, no global random state."""

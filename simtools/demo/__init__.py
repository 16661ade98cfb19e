"""The demo (scripts/run, `python -m simtools.demo`): the engine on a demo population with
whatever services this machine has. Ships in the wheel; honcho comes with the `demo` extra.
run.py holds it."""

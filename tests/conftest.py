"""The tiers' shared set-up. The server tiers (integration, acceptance, migration, chaos) take
their databases and Redis from `tests.support.fixtures`, which reaches a server only when a test
asks for one; `tests/unit` never asks (a collection check refuses a unit test that does), so it
runs with no Postgres or Redis at all."""

# Registered here because pytest reads `pytest_plugins` only from the top-level conftest.
pytest_plugins = ["tests.support.fixtures"]

"""A private Postgres cluster for the tests that stop, crash and restart the database itself
(the shared server must never be touched): the harness's, small and without fsync, since these
tests judge behaviour, not speed."""

from __future__ import annotations

from simtools.harness.services import PrivateCluster


class PgCluster(PrivateCluster):
    """initdb once; start, stop (smart, fast or immediate: a crash) and start again."""

    def __init__(self) -> None:
        super().__init__({"fsync": "off", "shared_buffers": "16MB", "max_connections": "40"})
        self.init()

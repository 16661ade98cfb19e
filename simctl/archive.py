"""simctl archive: check what `simctl prune --archive DIR` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from simctl.common import out, print_json, run_async, settings

if TYPE_CHECKING:
    from store.retention import VerifyReport

app = typer.Typer(help="Archives written by `simctl prune --archive DIR`.", no_args_is_help=True)


@app.command()
def verify(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="The folder given to prune --archive.", file_okay=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check an archive against its manifest and the checkpoint chain: each file's SHA-256,
    size, row count and days as manifest.json records them, no row twice, and every checkpoint
    window the archive holds re-derived from its lines (blocks of 4,096 ids, table, window and
    chain hashes) exactly as the database stores them. The runs a prune kept (each user's
    latest) are copied in the checkpoint files; rows of a window still in the database are
    read from there and must agree. Exit 1 naming the first bad or missing file. Read-only;
    needs the database the archive came from.

    Example:

    \b
      simctl archive verify /srv/simengine-archive/2026-11
    """
    s = settings()

    async def go() -> VerifyReport:
        from store.db import connection
        from store.retention import verify_archive

        async with connection(s.history_database_url) as conn:
            return await verify_archive(conn, directory)

    report = run_async(go)
    if as_json:
        print_json({"ok": True, **report.as_dict()})
        return
    rows = ", ".join(f"{n:,} {t}" for t, n in report.rows.items())
    out.print(
        f"ok: {report.files} file(s) ({rows}) match the manifest; "
        f"{len(report.checkpoints_rederived)} checkpoint window(s) re-derived from the lines",
        markup=False,
    )
    if report.checkpoints_partial:
        ids = ", ".join(str(i) for i in report.checkpoints_partial)
        out.print(
            f"not re-derivable (rows deleted before this archive began): checkpoint(s) {ids}",
            markup=False,
        )

"""The history bench's empty databases beside N run the same trades as the history only if their
users hold the history's wallets (a sell needs a holding): `copy_wallets` gives them those, and
refuses users that are not the same ones."""

from __future__ import annotations

import os

import pytest

from simtools.bench.databases import scratch_database
from simtools.bench.history_probe import copy_wallets
from store.db import connect
from tests.support.services import server_url

pytestmark = pytest.mark.timeout(120)

WALLET = (
    "SELECT u.id, u.email, u.balance_usd, u.portfolio_value_usd, p.btc, p.eth, p.usdt, p.usdc, "
    "p.xrp, p.ada, p.usd_value FROM users u JOIN portfolio p ON p.user_id = u.id ORDER BY u.id"
)


async def test_the_empty_database_takes_the_historys_wallets_and_only_for_the_same_users() -> None:
    tag = f"simbench_{os.getpid()}_wallets"
    async with (
        scratch_database(server_url(), f"{tag}_hist", users=30, due=False) as hist_url,
        scratch_database(server_url(), f"{tag}_empty", users=30, due=False) as empty_url,
    ):
        hist, empty = await connect(hist_url), await connect(empty_url)
        try:
            # Seasoned users: cash spent on crypto, a different amount each.
            await hist.execute(
                "UPDATE portfolio SET btc = user_id / 1000.0, eth = user_id / 7.0, "
                "ada = 3.25, usd_value = user_id * 11.5"
            )
            await hist.execute(
                "UPDATE users SET balance_usd = balance_usd - id * 3.125, "
                "portfolio_value_usd = id * 11.5"
            )
            before = await empty.fetch(WALLET)
            assert await copy_wallets(hist, empty) == 30
            theirs, ours = await hist.fetch(WALLET), await empty.fetch(WALLET)
            assert (
                [tuple(r) for r in ours] == [tuple(r) for r in theirs] != [tuple(r) for r in before]
            )
            # The demo deposit explains the copied balance (the holdings are not explained: the
            # database is the bench's own, never reconciled).
            assert (
                await empty.fetchval(
                    "SELECT count(*) FROM users u JOIN transactions t ON t.user_id = u.id "
                    "WHERE t.reference = 'seed-demo' AND t.amount <> u.balance_usd"
                )
                == 0
            )

            # Not the same users (one email differs): nothing is changed, and it says so.
            await hist.execute("UPDATE users SET email = 'someone.else@example.com' WHERE id = 7")
            await hist.execute("UPDATE portfolio SET btc = 9 WHERE user_id = 1")
            with pytest.raises(ValueError, match="matched 29 users"):
                await copy_wallets(hist, empty)
            assert [tuple(r) for r in await empty.fetch(WALLET)] == [tuple(r) for r in ours]
        finally:
            await hist.close()
            await empty.close()

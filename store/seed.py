"""Demo population: realistic users with a deposit, a portfolio and simulation on."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from store.db import Conn
from store.errors import Refused
from store.ledger import was_adopted
from store.runs import audit
from store.sqlfiles import query

FIRST = (
    "ana",
    "ben",
    "chloe",
    "david",
    "elena",
    "farid",
    "grace",
    "hugo",
    "ines",
    "jonas",
    "kofi",
    "lena",
    "mateo",
    "nadia",
    "omar",
    "priya",
    "quinn",
    "rosa",
    "sven",
    "tara",
    "umar",
    "vera",
    "wei",
    "ximena",
    "yusuf",
    "zoe",
    "liam",
    "mia",
    "noah",
    "emma",
    "lucas",
    "sofia",
    "aiko",
    "bruno",
    "carla",
    "dmitri",
    "ella",
    "felix",
    "giulia",
    "hana",
)
LAST = (
    "silva",
    "smith",
    "garcia",
    "muller",
    "rossi",
    "kim",
    "nguyen",
    "ivanova",
    "okafor",
    "haddad",
    "johansson",
    "kowalski",
    "dubois",
    "tanaka",
    "patel",
    "cohen",
    "oconnor",
    "novak",
    "mendes",
    "larsen",
    "yilmaz",
    "fischer",
    "moreau",
    "santos",
    "weber",
    "popescu",
    "ali",
    "chen",
    "costa",
    "berg",
)
# Every demo address is on example.com (RFC 2606: reserved, it reaches no one); the tag after
# `+` keeps a seed's and a position's addresses apart. The local part joins the names in one of
# six ways: six, so that a seed draws the same deposits and slots it always drew.
DOMAIN = "example.com"
JOINS = (".", "_", "-", "", ".", "_")
CHUNK = 10_000


async def seed_demo(
    conn: Conn,
    users: int,
    seed: int,
    interval_s: int = 300,
    progress: Callable[[int], None] | None = None,
    *,
    demo_only: bool = False,
    actor: str | None = None,
) -> int:
    """Create `users` demo users in one transaction; returns how many were created. Each is
    recorded in sim_demo_users. `demo_only`: Refused if the database was adopted or holds any
    user seed-demo did not create (simctl's default: demo users beside real ones would be
    simulated, reported and counted with them). `actor`: an admin key's fingerprint; one
    admin_audit row `seed_demo` records the run."""
    rng = random.Random(seed)
    created = 0
    async with conn.transaction():
        if demo_only:
            await _refuse_real_users(conn)
        now: datetime = await conn.fetchval(query("now"))
        offset: int = await conn.fetchval(query("max_user_id"))
        tag = f"{seed:x}"
        for start in range(0, users, CHUNK):
            count = min(CHUNK, users - start)
            emails, names, amounts, slots = [], [], [], []
            for i in range(start, start + count):
                first, last = rng.choice(FIRST), rng.choice(LAST)
                join = rng.choice(JOINS)
                emails.append(f"{first}{join}{last}+demo{tag}.{offset + i + 1}@{DOMAIN}")
                names.append(f"{first.title()} {last.title()}")
                # Deposits of 100 to 50,000 USD in cents: Decimal from integers, never floats.
                amounts.append(Decimal(rng.randrange(10_000, 5_000_001)).scaleb(-2))
                # Spread over the next interval so the load is smooth from the first minute.
                slots.append(now + timedelta(microseconds=rng.randrange(interval_s * 1_000_000)))
            made: int = await conn.fetchval(
                query("seed_users"), emails, names, amounts, slots, interval_s, seed
            )
            created += made
            if progress is not None:
                progress(count)
        if actor is not None:
            details = {"count": created, "seed": seed, "interval_s": interval_s}
            await audit(conn, actor, "seed_demo", None, details)
    return created


async def _refuse_real_users(conn: Conn) -> None:
    if await was_adopted(conn):
        raise Refused(
            "seed-demo is for demo databases: this one was adopted from the platform, whose "
            "users it did not create (--add-to-existing with an admin key adds them anyway)"
        )
    if await conn.fetchval(query("has_non_demo_users")):
        raise Refused(
            "seed-demo is for demo databases: this one holds users it did not create "
            "(--add-to-existing with an admin key adds them anyway)"
        )

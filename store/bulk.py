"""Users chosen by a filter, and the changes an operator makes to all of them at once (pause,
resume, set a strategy): the console's Users page and `simctl users list/bulk-*` share these.

A bulk change is two steps: a dry run counts the users it would change, and the change itself
is applied only if, under the row locks, it still changes exactly that many (a confirmation that
cannot go stale: a filter that has meanwhile come to match others is refused, nothing changed).
The change and its one admin_audit row (the filter, the count, every user id) commit together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from engine.errors import UnknownStrategy
from engine.strategies import make_strategy
from engine.text import check_text
from store.db import Conn
from store.errors import Refused, refusing
from store.runs import audit
from store.sqlfiles import query

State = Literal["all", "failing", "paused", "auto_paused", "inactive", "disabled", "running"]
STATES: tuple[State, ...] = get_args(State)

# Each state's condition on users: constants, the only text spliced into console.sql's queries.
# "failing" is on record as failing and still trying; "auto_paused" is paused with failures on
# record (the engine pauses a user after SIM_MAX_FAILURES; a resume clears the count).
_CONDITIONS: dict[str, str] = {
    "all": "true",
    "failing": "sim_fail_count > 0 AND NOT sim_paused",
    "paused": "sim_paused",
    "auto_paused": "sim_fail_count > 0 AND sim_paused",
    "inactive": "NOT is_active",
    "disabled": "NOT sim_enabled",
    "running": "sim_enabled AND NOT sim_paused AND is_active",
}
# The users a change would change (one already paused is not paused again).
_CHANGES: dict[str, str] = {
    "pause": "NOT sim_paused",
    "resume": "sim_paused",
    "set_strategy": "true",
}
Change = Literal["pause", "resume", "set_strategy"]


@dataclass(frozen=True, slots=True)
class UserFilter:
    """Which users: a state, a strategy ('default' for none) and one user id, each optional."""

    state: State = "all"
    strategy: str | None = None
    user_id: int | None = None

    def __post_init__(self) -> None:
        if self.state not in _CONDITIONS:
            raise Refused(f"unknown state {self.state!r}: one of {', '.join(STATES)}")
        if self.strategy is not None:
            with refusing():
                check_text(self.strategy, "strategy")

    def describe(self) -> dict[str, Any]:
        """The filter as its audit row and the console's URL hold it."""
        return {"state": self.state, "strategy": self.strategy, "user_id": self.user_id}


def filtered(name: str, flt: UserFilter, change: str | None = None) -> str:
    """console.sql's `name` with the filter's (and the change's) condition in place."""
    sql = query(name, "console.sql").replace("/*filter*/ true", f"({_CONDITIONS[flt.state]})")
    if change is not None:
        sql = sql.replace("/*change*/ true", f"({_CHANGES[change]})")
    return sql


async def list_users(
    conn: Conn, flt: UserFilter, after_id: int = 0, limit: int = 50
) -> list[dict[str, Any]]:
    """A page of users matching `flt` after `after_id` in id order (keyset paging)."""
    rows = await conn.fetch(filtered("list_users", flt), after_id, flt.strategy, flt.user_id, limit)
    return [dict(r.items()) for r in rows]


async def count_change(conn: Conn, flt: UserFilter, change: Change) -> int:
    """The dry run: how many users `change` would change now."""
    n: int = await conn.fetchval(filtered("filter_count", flt, change), flt.strategy, flt.user_id)
    return n


def _check_strategy(name: str, params: Mapping[str, Any]) -> None:
    try:
        make_strategy(name, params)
    except UnknownStrategy as exc:
        raise Refused(str(exc)) from None


async def apply_change(
    conn: Conn,
    actor: str,
    flt: UserFilter,
    change: Change,
    expect: int,
    *,
    strategy: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pause, resume or set the strategy of every user `flt` matches, if that is still `expect`
    users (the dry run's count); Refused, nothing changed, otherwise. One transaction with one
    admin_audit row (action bulk_<change>) holding the filter, the count and the user ids."""
    if change == "set_strategy":
        if strategy is None:
            raise Refused("set_strategy needs a strategy")
        _check_strategy(strategy, params or {})
    async with conn.transaction():
        rows = await conn.fetch(
            filtered("filter_ids_for_update", flt, change), flt.strategy, flt.user_id
        )
        ids = [r["id"] for r in rows]
        if len(ids) != expect:
            raise Refused(
                f"the filter now matches {len(ids)} users to {change.replace('_', ' ')}, "
                f"not {expect}: review the dry run again"
            )
        if change == "set_strategy":
            await conn.execute(
                query("bulk_set_strategy", "console.sql"), ids, strategy, dict(params or {})
            )
        else:
            await conn.execute(query("bulk_set_paused", "console.sql"), ids, change == "pause")
        details: dict[str, Any] = {"filter": flt.describe(), "count": len(ids), "user_ids": ids}
        if change == "set_strategy":
            details.update(strategy=strategy, params=dict(params or {}))
        audit_id = await audit(conn, actor, f"bulk_{change}", None, details)
    return {"audit_id": audit_id, "changed": len(ids), "action": f"bulk_{change}"}

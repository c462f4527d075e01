"""Publishing flag sets to Redis, for tools: the steps behind ``flagwire publish``,
``kill``, ``history`` and ``rollback`` (needs the ``redis`` extra).

::

    from flagwire import control

    with control.FlagStore("redis://...", key="flagwire:flags") as store:
        plan = control.plan_publish(store, "flags.yaml")   # validated; plan.old -> plan.new
        control.commit(store, plan, author="deploy-bot", message="checkout to 50%")
        control.kill(store, "new-checkout", variant="off", message="INC-4711")
        control.rollback(store)                            # or rollback(store, to=12)
        store.history()

``commit`` raises :class:`ConflictError` if someone published since the plan was made.
"""

from __future__ import annotations

from ._control.publish import (
    Plan,
    Published,
    commit,
    default_author,
    kill,
    plan_kill,
    plan_publish,
    plan_rollback,
    publish,
    rollback,
)
from ._control.store import ConflictError, FlagStore, HistoryEntry, Stored

__all__ = [
    "ConflictError",
    "FlagStore",
    "HistoryEntry",
    "Plan",
    "Published",
    "Stored",
    "commit",
    "default_author",
    "kill",
    "plan_kill",
    "plan_publish",
    "plan_rollback",
    "publish",
    "rollback",
]

"""``flagwire publish / kill / history / rollback``: change the flag set in force in Redis.

::

    flagwire publish FILE [--redis URL] [--key KEY] [--message TEXT] [--author NAME]
                     [--require FIELDS] [--sample N] [--dry-run]
    flagwire kill FLAG [--redis URL] [--key KEY] [--variant V | --disable] [--message TEXT]
    flagwire history [--redis URL] [--key KEY] [--limit N] [--json]
    flagwire rollback [--redis URL] [--key KEY] [--to REVISION] [--message TEXT] [--dry-run]

``--redis`` defaults to ``$FLAGWIRE_REDIS_URL`` (which keeps a password off the command
line). Exit codes: 0 done, 1 the change is invalid or breaks the policy, 2 Redis cannot be
reached or the arguments are wrong, 3 someone else published meanwhile (run it again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

from flagwire._control import publish as api
from flagwire._control.publish import Plan
from flagwire._control.store import ConflictError, FlagStore
from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError, SourceError

from . import audit as _audit
from . import diff as _diff

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS: Final = ("publish", "kill", "history", "rollback")
_CONFLICT: Final = 3


def _common(parser: argparse.ArgumentParser, *, change: bool) -> None:
    parser.add_argument(
        "--redis",
        default=os.environ.get("FLAGWIRE_REDIS_URL"),
        metavar="URL",
        help="the Redis URL (default $FLAGWIRE_REDIS_URL): redis://, rediss://, "
        "redis+sentinel://H:P,H:P/SERVICE, redis+cluster://H:P",
    )
    parser.add_argument("--key", default="flagwire:flags", help="default flagwire:flags")
    if change:
        parser.add_argument("--message", "-m", default="", metavar="TEXT", help="why")
        parser.add_argument(
            "--author", default=None, help="default $FLAGWIRE_AUTHOR, else user@host"
        )
        parser.add_argument(
            "--sample",
            type=int,
            default=_diff.DEFAULT_SAMPLE,
            metavar="N",
            help="synthetic users to show who moves between variants",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="show what the change does; write nothing"
        )


def add_parsers(sub: Any, positive: Callable[[str], int], require: Callable[[str], Any]) -> None:
    """Add the subcommands to ``flagwire``'s subparsers."""
    publish = sub.add_parser(
        "publish", help="validate a flag file, show what it changes, publish it to Redis"
    )
    publish.add_argument("file", metavar="FILE")
    publish.add_argument(
        "--require",
        type=require,
        default=None,
        metavar="FIELDS",
        help="refuse unless the audit policy holds (as flagwire audit --require)",
    )
    _common(publish, change=True)
    kill = sub.add_parser("kill", help="break glass: serve one variant of a flag to everyone")
    kill.add_argument("flag", metavar="FLAG")
    which = kill.add_mutually_exclusive_group()
    which.add_argument("--variant", default=None, help="default: the flag's defaultVariant")
    which.add_argument("--disable", action="store_true", help="serve the code default")
    _common(kill, change=True)
    history = sub.add_parser("history", help="the changes published to Redis, oldest first")
    history.add_argument("--limit", type=positive, default=None, metavar="N")
    history.add_argument("--json", action="store_true", help="one JSON object a line")
    _common(history, change=False)
    rollback = sub.add_parser("rollback", help="republish an earlier revision")
    rollback.add_argument(
        "--to", type=positive, default=None, metavar="REVISION", help="default: the previous"
    )
    _common(rollback, change=True)


def _report(plan: Plan, sample: int) -> None:
    stored = plan.stored
    if plan.old is not None:
        print(f"in force: revision {stored.revision} ({plan.old.version_label})")
    elif plan.old_problem:
        print(f"in force: revision {stored.revision}: {plan.old_problem}")
    else:
        print("in force: nothing (first publish)")
    found = _diff.diff(plan.old or FlagSet.empty(), plan.new, sample=sample)
    for line in _diff.format_text(found, sample):
        print(f"  {line}")


def _plan(args: argparse.Namespace, store: FlagStore) -> Plan | int:
    if args.command == "kill":
        return api.plan_kill(store, args.flag, variant=args.variant, disable=args.disable)
    if args.command == "rollback":
        return api.plan_rollback(store, args.to)
    if args.require is not None:
        findings = _audit.audit(
            FlagSet.from_path(args.file),
            file=args.file,
            today=datetime.now(timezone.utc).date(),
            expiring_within=_audit.DEFAULT_EXPIRING_WITHIN,
            require=args.require,
        )
        if _audit.broken(findings):
            for line in _audit.format_table(findings):
                print(line, file=sys.stderr)
            print(f"{args.file}: the audit policy is broken; nothing published", file=sys.stderr)
            return 1
    return api.plan_publish(store, args.file)


def _change(args: argparse.Namespace, store: FlagStore) -> int:
    # A kill applies to whatever is in force: on a conflict it is planned again. A publish
    # or rollback was reviewed against one revision: on a conflict it stops.
    attempts = 5 if args.command == "kill" else 1
    for attempt in range(attempts):
        plan = _plan(args, store)
        if isinstance(plan, int):
            return plan
        print(f"{args.command} -> {store.name}")
        _report(plan, args.sample)
        if args.dry_run:
            print("dry run: nothing written")
            return 0
        try:
            done = api.commit(store, plan, author=args.author, message=args.message)
        except ConflictError as exc:
            if attempt < attempts - 1:
                print(f"conflict: {exc.key} changed meanwhile; planning again")
                continue
            print(f"conflict: {exc}", file=sys.stderr)
            return _CONFLICT
        print(
            f"published revision {done.revision} ({done.flagset.version_label}) by "
            f"{done.fields['author']}; subscribers notified"
        )
        return 0
    raise AssertionError("unreachable")  # pragma: no cover


def _history(args: argparse.Namespace, store: FlagStore) -> int:
    entries = store.history(args.limit)
    for entry in entries:
        if args.json:
            print(json.dumps(entry.to_dict(), sort_keys=True))
            continue
        f = entry.fields
        what = f.get("action", "?")
        if what == "kill":
            what += f" {f.get('flag')} -> {f.get('variant')}"
        elif what == "rollback":
            what += f" to {f.get('rollback_to')}"
        elif what.startswith("guard "):
            what += f" {f.get('flag')}"
        message = f"  {f['message']!r}" if f.get("message") else ""
        print(
            f"{entry.revision:>5}  {f.get('time', '?')}  {f.get('author', '?')}  {what}  "
            f"{f.get('version', '?')}{message}"
        )
    if not entries and not args.json:
        print(f"no history at {store.keys.history}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    if not args.redis:
        print(f"flagwire {args.command}: give --redis URL (or set $FLAGWIRE_REDIS_URL)")
        return 2
    try:
        with FlagStore(args.redis, key=args.key) as store:
            if args.command == "history":
                return _history(args, store)
            return _change(args, store)
    except FlagsetError as exc:
        print(f"flagwire {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, SourceError, ImportError) as exc:
        print(f"flagwire {args.command}: {exc}", file=sys.stderr)
        return 2

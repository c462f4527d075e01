"""The ``flagwire`` command: validate flag files, explain an evaluation, audit flag
hygiene, say what a change does.

::

    flagwire validate FILE...
    flagwire explain FILE --flag KEY [--context JSON] [--default JSON] [--type T] [--json]
    flagwire audit FILE... [--today DATE] [--require owner,expires] [--expiring-within DAYS]
                   [--json]
    flagwire diff OLD NEW [--sample N] [--json]
    flagwire init [PATH] [--force]
    flagwire report --prometheus URL --flag KEY [--since 24h] [--event NAME ...] [--json] ...
    flagwire guard --prometheus URL (--redis URL | --file PATH) [--once] [--dry-run] ...
    flagwire --version
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Any

from flagwire import __version__
from flagwire._engine.assignment import FlagType
from flagwire._engine.flagset import FlagSet
from flagwire._errors import FlagsetError

from . import audit as _audit
from . import control as _control
from . import diff as _diff
from . import guard as _guard
from . import init as _init
from . import report as _report

__all__ = ["main"]


def _validate(paths: Sequence[str], fractional: str | None) -> int:
    failed = False
    for path in paths:
        try:
            flagset = FlagSet.from_path(path, fractional=fractional)
        except FlagsetError as exc:
            print(exc)
            failed = True
            continue
        for problem in flagset.problems:
            print(f"{path}: {problem}")
            failed = True
        if not flagset.problems:
            count = f"{len(flagset)} flag{'' if len(flagset) == 1 else 's'}"
            print(f"{path}: ok ({count}, version {flagset.version_label})")
    return 1 if failed else 0


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"flagwire explain: {what} is not valid JSON: {exc}") from exc


def _explain(args: argparse.Namespace) -> int:
    try:
        flagset = FlagSet.from_path(args.file, fractional=args.fractional)
    except FlagsetError as exc:
        print(exc, file=sys.stderr)
        return 1
    context = _json_arg(args.context, "--context")
    if not isinstance(context, dict):
        raise SystemExit("flagwire explain: --context must be a JSON object")
    default = _json_arg(args.default, "--default") if args.default is not None else None
    flag_type = FlagType(args.type) if args.type else None
    assignment, steps = flagset.explain(args.flag, context, default, flag_type=flag_type)
    if args.json:
        out = assignment.to_dict()
        out["steps"] = [{"at": at, "what": what} for at, what in steps]
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"flag:      {assignment.key} ({args.file}, version {assignment.flagset_version})")
    print(f"value:     {json.dumps(assignment.value)}")
    print(f"variant:   {assignment.variant if assignment.variant is not None else '-'}")
    print(f"reason:    {assignment.reason}")
    if assignment.error_code is not None:
        print(f"error:     {assignment.error_code}: {assignment.error_message}")
    if steps:
        print("decided by:")
        for at, what in steps:
            print(f"  {at}: {what}")
    return 0


class _NoExpiryWarning(logging.Filter):
    """Drops the load-time "flag expired" warning (audit reports expiry itself, and diff
    is about the change)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "flagwire" and "expired on" in str(record.msg))


@contextmanager
def _quiet_expiry() -> Iterator[None]:
    logger = logging.getLogger("flagwire")
    quiet = _NoExpiryWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _load_all(paths: Sequence[str]) -> list[tuple[str, FlagSet]] | None:
    """Load every file; ``None`` (after printing each error) if any is invalid."""
    loaded = []
    failed = False
    for path in paths:
        try:
            loaded.append((path, FlagSet.from_path(path)))
        except FlagsetError as exc:  # noqa: PERF203 - report every invalid file
            print(exc, file=sys.stderr)
            failed = True
    return None if failed else loaded


def _audit_cmd(args: argparse.Namespace) -> int:
    with _quiet_expiry():
        loaded = _load_all(args.files)
    if loaded is None:
        return 2
    today: date = args.today or datetime.now(timezone.utc).date()
    findings = [
        finding
        for path, flagset in loaded
        for finding in _audit.audit(
            flagset,
            file=path,
            today=today,
            expiring_within=args.expiring_within,
            require=args.require,
        )
    ]
    ok = not _audit.broken(findings)
    if args.json:
        print(json.dumps({"findings": [f.to_dict() for f in findings], "ok": ok}))
    else:
        if findings:
            for line in _audit.format_table(findings):
                print(line)
        flags = sum(len(flagset) for _, flagset in loaded)
        print(_audit.summary(findings, flags, len(loaded)))
    return 0 if ok else 1


def _diff_cmd(args: argparse.Namespace) -> int:
    with _quiet_expiry():
        loaded = _load_all([args.old, args.new])
    if loaded is None:
        return 2
    (_, old), (_, new) = loaded
    found = _diff.diff(old, new, sample=args.sample)
    if args.json:
        out = {
            "old": args.old,
            "new": args.new,
            "sample": args.sample,
            "flags": [f.to_dict() for f in found],
            "changed": bool(found),
        }
        print(json.dumps(out, default=str))
        return 0
    print(f"{args.old} -> {args.new}")
    for line in _diff.format_text(found, args.sample):
        print(line)
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def _require(text: str) -> tuple[str, ...]:
    try:
        return _audit.parse_require(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagwire",
        description="Check, explain, publish and guard flagd flag files; report experiments.",
    )
    parser.add_argument("--version", action="version", version=f"flagwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate", help="validate flag files; exit 1 if any has a problem (one line each)"
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--fractional", choices=("v2", "v3"), default=None)
    explain = sub.add_parser("explain", help="evaluate one flag and show what decided it")
    explain.add_argument("file", metavar="FILE")
    explain.add_argument("--flag", required=True, metavar="KEY")
    explain.add_argument(
        "--context", default="{}", metavar="JSON", help='e.g. \'{"targetingKey": "u1"}\''
    )
    explain.add_argument(
        "--default", default=None, metavar="JSON", help="the caller's default value (JSON)"
    )
    explain.add_argument(
        "--type",
        choices=[t.value for t in FlagType],
        default=None,
        help="the expected value type (default: the default value's type, if any)",
    )
    explain.add_argument("--fractional", choices=("v2", "v3"), default=None)
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    audit = sub.add_parser(
        "audit",
        help="flag hygiene: expired, expiring, ownerless, unreachable variants, rolled out; "
        "exit 1 if the policy is broken",
    )
    audit.add_argument("files", nargs="+", metavar="FILE")
    audit.add_argument(
        "--today", type=_day, default=None, metavar="DATE", help="judge expiry as of this day"
    )
    audit.add_argument(
        "--require",
        type=_require,
        default=(),
        metavar="FIELDS",
        help=f"metadata every flag must have, comma-separated ({', '.join(_audit.REQUIRABLE)})",
    )
    audit.add_argument(
        "--expiring-within",
        type=_count,
        default=_audit.DEFAULT_EXPIRING_WITHIN,
        metavar="DAYS",
        help=f"warn about flags expiring within DAYS (default {_audit.DEFAULT_EXPIRING_WITHIN})",
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    diff = sub.add_parser(
        "diff", help="what a change to a flag file does, and who moves between variants"
    )
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.add_argument(
        "--sample",
        type=_count,
        default=_diff.DEFAULT_SAMPLE,
        metavar="N",
        help=f"synthetic users user-0..N-1 to evaluate (default {_diff.DEFAULT_SAMPLE})",
    )
    diff.add_argument("--json", action="store_true", help="print one JSON object")
    init = sub.add_parser("init", help="write a starter flag file (owner, expiry, a rollout)")
    init.add_argument("path", nargs="?", default=_init.DEFAULT_PATH, metavar="PATH")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    _control.add_parsers(sub, _count, _require)
    _report.add_parser(sub)
    _guard.add_parser(sub)
    return parser


def _init_cmd(args: argparse.Namespace) -> int:
    try:
        print(_init.write_starter(args.path, force=args.force))
    except OSError as exc:
        print(f"flagwire init: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.files, args.fractional)
    if args.command == "audit":
        return _audit_cmd(args)
    if args.command == "diff":
        return _diff_cmd(args)
    if args.command == "init":
        return _init_cmd(args)
    if args.command in _control.COMMANDS:
        return _control.run(args)
    if args.command == "report":
        return _report.run(args)
    if args.command == "guard":
        return _guard.run(args)
    return _explain(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

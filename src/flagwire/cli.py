"""The ``flagwire`` command: validate flag files, explain an evaluation.

::

    flagwire validate FILE...
    flagwire explain FILE --flag KEY [--context JSON] [--default JSON] [--type T] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._assignment import FlagType
from ._errors import FlagsetError
from ._flagset import FlagSet

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
            print(f"{path}: ok ({len(flagset)} flags, version {flagset.version_label})")
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagwire", description="Check and explain flagd flag-definition files."
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.files, args.fractional)
    return _explain(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

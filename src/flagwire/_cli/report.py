"""``flagwire report``: one flag's experiment report from Prometheus.

::

    flagwire report --prometheus URL --flag KEY [--since 24h] [--event NAME ...]
                    [--control V] [--sequential] [--json] [--png PATH] [--html PATH]
                    [--flags FILE]

The control variant is ``--control``, or else the flag's ``rollout.control`` metadata in
``--flags FILE``; the weights of the sample-ratio-mismatch check are the flag's split in
that file, when its targeting is one ``fractional`` (a rule that sends some users to a
variant first makes the served shares differ from the weights, so the check is skipped and
the report says so). Exit status: 0, 1 when the sample-ratio check fails (so CI and cron
jobs notice), 2 for a usage problem, a failed query or a missing extra.

The statistics need the ``report`` extra (scipy, matplotlib); they are imported when the
command runs, so every other command works without them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from flagwire._engine.flagset import FlagSet
from flagwire._engine.fractions import fractional_shares
from flagwire._errors import FlagsetError, FlagwireError, missing_extra

__all__ = ["CONTROL_METADATA", "add_parser", "run", "split_weights"]

CONTROL_METADATA = "rollout.control"
"""The flag metadata key naming the control variant (flagd metadata values are scalars)."""

EXIT_SRM = 1
EXIT_USAGE = 2


def add_parser(sub: Any) -> None:
    """Register ``report`` on the CLI's subparsers."""
    report = sub.add_parser(
        "report",
        help="an experiment report for one flag from Prometheus: per-variant figures, "
        "comparisons with the control, the sample-ratio check; exit 1 if that fails",
    )
    report.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    report.add_argument("--flag", required=True, metavar="KEY")
    report.add_argument(
        "--since", default="24h", metavar="DURATION", help="the window (default 24h)"
    )
    report.add_argument(
        "--event",
        action="append",
        dest="events",
        default=None,
        metavar="NAME",
        help="a tracked event to report (repeatable; default: every event seen)",
    )
    report.add_argument(
        "--control", default=None, metavar="V", help=f"the control (default: {CONTROL_METADATA})"
    )
    report.add_argument(
        "--flags",
        default=None,
        metavar="FILE",
        help="the flag file: the control from its metadata, the SRM weights from its split",
    )
    report.add_argument(
        "--sequential",
        action="store_true",
        help="always-valid intervals and p-values: safe to check as often as you like",
    )
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument("--png", default=None, metavar="PATH", help="write a chart")
    report.add_argument("--html", default=None, metavar="PATH", help="write a one-page report")


def split_weights(flagset: FlagSet, key: str) -> dict[str, float] | None:
    """Each variant's share (percent) of the flag's assignment, if its whole targeting is
    one ``fractional`` with literal weights; None otherwise."""
    definition = flagset.definition(key)
    targeting = None if definition is None else definition.targeting
    if not isinstance(targeting, Mapping) or list(targeting) != ["fractional"]:
        return None
    return fractional_shares(targeting["fractional"])


def _fail(message: str) -> int:
    print(f"flagwire report: {message}", file=sys.stderr)
    return EXIT_USAGE


def _from_file(args: argparse.Namespace) -> tuple[str | None, dict[str, float] | None] | str:
    """The control and the weights from ``--flags``, or an error message."""
    if args.flags is None:
        return args.control, None
    try:
        flagset = FlagSet.from_path(args.flags)
    except FlagsetError as exc:
        return str(exc)
    definition = flagset.definition(args.flag)
    if definition is None:
        return f'flag "{args.flag}" is not in {args.flags}'
    control = args.control or definition.metadata.get(CONTROL_METADATA)
    weights = split_weights(flagset, args.flag)
    if weights is None:
        print(
            f'flagwire report: flag "{args.flag}" is not split by one fractional in '
            f"{args.flags}; the sample-ratio check needs its weights and is skipped",
            file=sys.stderr,
        )
    return (None if control is None else str(control)), weights


def run(args: argparse.Namespace) -> int:
    """Read, compute and print the report; returns the exit status."""
    found = _from_file(args)
    if isinstance(found, str):
        return _fail(found)
    control, weights = found
    if control is None:
        where = f"metadata {CONTROL_METADATA!r} in the flag file" if args.flags else "--flags"
        return _fail(f"no control variant: pass --control V, or set {where}")
    try:
        from flagwire import _analysis as analysis
    except ImportError as exc:
        return _fail(str(missing_extra(exc, "flagwire report", "scipy", "report")))
    try:
        client = analysis.PrometheusClient(args.prometheus)
        figures = analysis.read_figures(
            client, flag=args.flag, since=args.since, events=args.events
        )
        report = analysis.build_report(
            figures,
            flag=args.flag,
            control=control,
            weights=weights,
            since=args.since,
            sequential=args.sequential,
        )
        if args.png or args.html:
            latency = analysis.read_latency_series(client, flag=args.flag, since=args.since)
            if args.png:
                analysis.render_png(report, args.png, latency=latency)
            if args.html:
                analysis.render_html(report, args.html, latency=latency)
    except FlagwireError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(analysis.render_table(report))
    return EXIT_SRM if report.srm is not None and report.srm.mismatch else 0

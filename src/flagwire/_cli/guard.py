"""``flagwire guard``: step rollouts up while they are healthy, act when they are not.

::

    flagwire guard --prometheus URL (--redis URL [--key KEY] | --file PATH)
                   [--interval S] [--once] [--dry-run] [--listen HOST:PORT] [--author NAME]

Each interval every flag with a rollout plan (``rollout.*`` / ``guard.*`` metadata) is
judged from Prometheus and stepped up, held, rolled back, killed or paused; each decision
is one log line (``--once`` prints them and exits). ``--listen`` serves Alertmanager's
webhook (the shipped regression alerts trigger the flag's ``guard.action``) and the
guard's ``/metrics``; ``$FLAGWIRE_GUARD_TOKEN`` makes it require a bearer token. Exit
codes: 0, 2 for a usage problem, a missing extra, or (with ``--once``) an error that kept
the guard from judging.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from flagwire._errors import ConfigError, SourceError, missing_extra

__all__ = ["add_parser", "run"]

EXIT_USAGE = 2


def add_parser(sub: Any) -> None:
    """Register ``guard`` on the CLI's subparsers."""
    guard = sub.add_parser(
        "guard",
        help="guard rollouts: judge each flag's plan from Prometheus every interval and step "
        "it up, hold it, or roll it back / kill / pause it",
    )
    guard.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    where = guard.add_mutually_exclusive_group()
    where.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="the flag store (default $FLAGWIRE_REDIS_URL); changes are published revisions",
    )
    where.add_argument(
        "--file", default=None, metavar="PATH", help="a flag file, replaced atomically"
    )
    guard.add_argument("--key", default="flagwire:flags", help="default flagwire:flags")
    guard.add_argument(
        "--interval", type=float, default=60.0, metavar="S", help="seconds between ticks (60)"
    )
    guard.add_argument("--once", action="store_true", help="one tick, print, exit")
    guard.add_argument("--dry-run", action="store_true", help="decide and print; write nothing")
    guard.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Alertmanager's webhook and the guard's /metrics here",
    )
    guard.add_argument(
        "--author", default=None, help="the history's author (default flagwire-guard@host)"
    )


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _target(args: argparse.Namespace, author: str) -> Any:
    from flagwire._control.store import FlagStore
    from flagwire._control.targets import FileTarget, RedisTarget

    if args.file is not None:
        return FileTarget(args.file)
    url = args.redis or os.environ.get("FLAGWIRE_REDIS_URL")
    if not url:
        raise ConfigError("give --redis URL (or $FLAGWIRE_REDIS_URL) or --file PATH")
    return RedisTarget(FlagStore(url, key=args.key), author=author)


def run(args: argparse.Namespace) -> int:
    """Run the guard; returns the exit code."""
    try:
        from flagwire._analysis.reader import PrometheusClient
        from flagwire._control.guard import Guard
        from flagwire._control.guard_metrics import GuardMetrics
    except ImportError as exc:
        print(f"flagwire guard: {missing_extra(exc, 'flagwire guard', 'scipy', 'guard')}")
        return EXIT_USAGE
    if not args.interval > 0:
        print("flagwire guard: --interval must be positive", file=sys.stderr)
        return EXIT_USAGE
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    author = args.author or f"flagwire-guard@{socket.gethostname()}"
    try:
        metrics = GuardMetrics()
    except ImportError:
        metrics = None  # prometheus_client missing: no /metrics, the guard still works
    try:
        target = _target(args, author)
        guard = Guard(
            target, PrometheusClient(args.prometheus), dry_run=args.dry_run, metrics=metrics
        )
        if args.once:
            decisions = guard.tick()
            for decision in decisions:
                print(decision.line(dry_run=args.dry_run))
            if not decisions:
                print("flagwire guard: no flag has a rollout plan")
            return EXIT_USAGE if any(d.action == "error" for d in decisions) else 0
        listener = None
        if args.listen:
            from flagwire._control.alerts import AlertListener

            host, port = _address(args.listen)
            token = os.environ.get("FLAGWIRE_GUARD_TOKEN") or None
            listener = AlertListener(guard, host, port, token=token).start()
            logging.getLogger("flagwire.guard").info(
                "guard listening on %s:%d (Alertmanager webhook, /metrics)", host, listener.port
            )
        return _loop(guard, args.interval, listener)
    except (ConfigError, SourceError, ImportError, OSError) as exc:
        print(f"flagwire guard: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _loop(guard: Any, interval: float, listener: Any) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop.is_set():
            guard.tick()
            stop.wait(interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if listener is not None:
            listener.close()
    return 0

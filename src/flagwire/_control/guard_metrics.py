"""The guard's own metrics (served on ``--listen``'s ``/metrics``); one label set per flag
with a plan, so their number is bounded by the flag file."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ACTION_METRIC", "GuardMetrics"]

ACTION_METRIC: Final = "flagwire_guard_actions_total"
"""Counts the guard's changes by flag and action; the dashboard annotates its increases."""


class GuardMetrics:
    """The guard's metrics in ``registry`` (a fresh ``CollectorRegistry`` if None).

    Raises:
        ImportError: prometheus_client is not installed.
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.step = Gauge(
            "flagwire_guard_step_percent",
            "The rolled-out variant's share of its flag's split, percent (0: rolled back "
            "or not started; -1: killed or not split)",
            ["flag"], registry=r,
        )  # fmt: skip
        self.paused = Gauge(
            "flagwire_guard_paused", "1 while the guard holds a flag paused", ["flag"], registry=r
        )
        self.actions = Counter(
            ACTION_METRIC.removesuffix("_total"),
            "Changes the guard published, by action (start, advance, rollback, kill, pause)",
            ["flag", "action"], registry=r,
        )  # fmt: skip
        self.judgements = Counter(
            "flagwire_guard_judgements",
            "Judgements by outcome (healthy, regressed, thin)",
            ["flag", "outcome"], registry=r,
        )  # fmt: skip
        self.last_judgement = Gauge(
            "flagwire_guard_last_judgement_timestamp_seconds",
            "When the flag was last judged",
            ["flag"], registry=r,
        )  # fmt: skip
        self.last_alpha = Gauge(
            "flagwire_guard_last_judgement_alpha",
            "The level of the flag's last judgement (its sequence's share of guard.alpha)",
            ["flag"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "flagwire_guard_errors",
            "Ticks or alerts that changed nothing because of an error, by kind "
            "(prometheus, store, conflict, invalid)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.alerts = Counter(
            "flagwire_guard_alerts",
            "Alertmanager notifications received, by what the guard did with them",
            ["outcome"], registry=r,
        )  # fmt: skip

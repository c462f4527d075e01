"""``flagwire guard``'s controller: each interval, judge every flag with a rollout plan and
step it up, hold it, or act on it.

The guard keeps nothing that matters in memory. The step in force is the flag's
``fractional``; when it began is the flag's ``guard.since`` (which the guard stamps when
it first sees a step, and with every step it makes); a pause is the flag's
``guard.paused``. A guard restarted mid-rollout reads them and carries on. Every change
goes through the target's validated write (in Redis: a recorded revision whose message
says why, with the numbers), and every decision is logged in one line.

When Prometheus cannot be read, or the data is too thin, nothing changes and the decision
says so.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from flagwire._analysis.reader import PrometheusClient, read_figures
from flagwire._engine.definitions import FlagDefinition
from flagwire._engine.rollout import RolloutPlan, parse_plan, rollout_state, variant_share
from flagwire._errors import ConfigError, ConflictError, FlagsetError, PrometheusError, SourceError

from .guard_metrics import GuardMetrics
from .judge import HEALTHY, REGRESSED, judge, sequence_of
from .plan import format_share, with_pause, with_share, with_stamp
from .targets import Snapshot, Target

__all__ = ["CHANGES", "Decision", "Guard"]

logger = logging.getLogger("flagwire.guard")

CHANGES: Final = frozenset({"start", "advance", "rollback", "kill", "pause"})
"""The decisions that change the flag set (the others hold it)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guard did (or, in a dry run, would do) with one flag.

    Attributes:
        flag: The flag key.
        action: One of :data:`CHANGES`, or ``hold``, ``complete``, ``error``, ``ignore``.
        reason: Why, with the numbers.
        share: The rolled-out variant's share before, percent (None: killed or not split).
        new_share: After, for a step change.
        revision: The store revision written, if any.
        applied: Whether the change was written (False in a dry run or on an error).
    """

    flag: str
    action: str
    reason: str
    share: float | None = None
    new_share: float | None = None
    revision: int | None = None
    applied: bool = False

    def line(self, *, dry_run: bool = False) -> str:
        """The decision in one readable line."""
        share = "-" if self.share is None else format_share(self.share)
        if self.new_share is not None:
            share += f" -> {format_share(self.new_share)}"
        verb = f"would {self.action}" if dry_run and self.action in CHANGES else self.action
        revision = f" (revision {self.revision})" if self.revision is not None else ""
        return f"guard {self.flag}: {verb} [{share}]{revision}: {self.reason}"


class Guard:
    """Judges and steps the rollouts of one flag set.

    Args:
        target: Where the flag set is read and written.
        prometheus: The Prometheus holding the services' flagwire metrics.
        dry_run: Decide and report, write nothing.
        metrics: The guard's metrics (none if None).
        clock: Unix time now (tests compress time with it).
    """

    def __init__(
        self,
        target: Target,
        prometheus: PrometheusClient,
        *,
        dry_run: bool = False,
        metrics: GuardMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.prometheus = prometheus
        self.dry_run = dry_run
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()

    # -- the interval ---------------------------------------------------------------------

    def tick(self) -> list[Decision]:
        """Judge every flag with a plan once; the decisions, one per flag (or one error)."""
        with self._lock:
            try:
                snapshot = self.target.read()
            except SourceError as exc:
                return [self._report(self._error("*", "store", f"cannot read the flag set: {exc}"))]
            decisions = []
            for key in sorted(snapshot.flagset):
                definition = snapshot.flagset.definition(key)
                assert definition is not None
                plan, problems = parse_plan(definition)
                if problems:
                    reason = f"invalid rollout plan, not guarded: {'; '.join(problems)}"
                    decisions.append(self._report(self._error(key, "invalid", reason)))
                if plan is None:
                    continue
                decision = self._guard(snapshot, definition, plan)
                decisions.append(self._report(decision))
                if decision.applied:
                    try:  # the next flag is judged (and written) against what is now in force
                        snapshot = self.target.read()
                    except SourceError as exc:
                        decisions.append(
                            self._report(self._error("*", "store", f"cannot read: {exc}"))
                        )
                        break
            return decisions

    def _guard(self, snapshot: Snapshot, definition: FlagDefinition, plan: RolloutPlan) -> Decision:
        key = plan.flag
        state = rollout_state(definition.metadata)
        share = variant_share(definition, plan)
        if self.metrics is not None:
            self.metrics.step.labels(key).set(-1 if share is None else share)
            self.metrics.paused.labels(key).set(1 if state.paused else 0)
        if state.paused:
            why = f"paused: {state.paused} (remove metadata guard.paused to resume)"
            return Decision(key, "hold", why, share)
        if share is None:
            return Decision(key, "hold", "not split (killed, disabled or static)", share)
        if share <= 0:
            why = f"{plan.variant} serves 0% (rolled back or not started; publish a step)"
            return Decision(key, "hold", why, share)
        following = plan.next_step(share)
        if following is None:
            return Decision(key, "complete", f"{plan.variant} at the plan's last step", share)
        now = self.clock()
        if state.since is None or state.step is None or not math.isclose(state.step, share):
            why = f"watching {plan.variant} at {format_share(share)}; its bake starts now"
            raw = with_stamp(snapshot.raw, plan, share, now)
            return self._write(snapshot, Decision(key, "start", why, share), raw)
        sequence, start = sequence_of(plan, state.since, now)
        try:
            figures = read_figures(
                self.prometheus, flag=key, since=f"{max(1, math.ceil(now - start))}s",
                events=(), at=now,
            )  # fmt: skip
        except (PrometheusError, ConfigError) as exc:
            return self._error(key, "prometheus", f"cannot read Prometheus: {exc}", share)
        verdict = judge(plan, figures, sequence=sequence)
        if self.metrics is not None:
            self.metrics.judgements.labels(key, verdict.outcome).inc()
            self.metrics.last_judgement.labels(key).set(now)
            self.metrics.last_alpha.labels(key).set(verdict.alpha)
        if verdict.outcome == REGRESSED:
            return self._act(snapshot, plan, share, f"regressed: {verdict.describe()}")
        baked = now - state.since
        if verdict.outcome == HEALTHY and baked >= plan.bake:
            why = f"healthy {baked:.0f}s >= bake {plan.bake:g}s: {verdict.figures}"
            raw = with_share(snapshot.raw, plan, following, now)
            decision = Decision(key, "advance", why, share, following)
            return self._write(snapshot, decision, raw)
        if verdict.outcome == HEALTHY:
            why = f"healthy, baking {baked:.0f}/{plan.bake:g}s: {verdict.figures}"
        else:
            why = verdict.describe()
        return Decision(key, "hold", why, share)

    # -- acting ---------------------------------------------------------------------------

    def _act(self, snapshot: Snapshot, plan: RolloutPlan, share: float, why: str) -> Decision:
        key = plan.flag
        if plan.action == "rollback":
            decision = Decision(key, "rollback", f"all traffic to {plan.control}: {why}", share, 0)
            return self._write(snapshot, decision, with_share(snapshot.raw, plan, 0, self.clock()))
        if plan.action == "pause":
            return self._write(snapshot, Decision(key, "pause", why, share), with_pause(
                snapshot.raw, plan, why[:500]))  # fmt: skip
        decision = Decision(key, "kill", why, share)
        if self.dry_run:
            return decision
        return self._written(decision, lambda message: self.target.kill(
            snapshot, key, message=message))  # fmt: skip

    def _write(self, snapshot: Snapshot, decision: Decision, raw: object) -> Decision:
        if self.dry_run:
            return decision
        fields = {"action": f"guard {decision.action}", "flag": decision.flag}
        return self._written(
            decision,
            lambda message: self.target.write(snapshot, raw, fields=fields, message=message),  # type: ignore[arg-type]
        )

    def _written(self, decision: Decision, write: Callable[[str], int | None]) -> Decision:
        message = decision.line().removeprefix("guard ")
        try:
            revision = write(f"flagwire guard: {message}")
        except ConflictError:
            why = "the flag set changed meanwhile; nothing written, judged again next interval"
            return self._error(decision.flag, "conflict", why, decision.share)
        except (SourceError, FlagsetError, ConfigError) as exc:
            return self._error(decision.flag, "store", f"cannot write: {exc}", decision.share)
        if self.metrics is not None:
            self.metrics.actions.labels(decision.flag, decision.action).inc()
        return replace(decision, revision=revision, applied=True)

    # -- Alertmanager ---------------------------------------------------------------------

    def on_alert(self, *, alertname: str, flag: str, variant: str, job: str) -> Decision:
        """Apply ``flag``'s ``guard.action`` for a firing regression alert on ``variant``."""
        with self._lock:
            try:
                snapshot = self.target.read()
            except SourceError as exc:
                return self._report(self._error(flag, "store", f"cannot read: {exc}"))
            definition = snapshot.flagset.definition(flag)
            plan = None if definition is None else parse_plan(definition)[0]
            if definition is None or plan is None:
                return self._report(Decision(flag, "ignore", f"{alertname}: no rollout plan"))
            share = variant_share(definition, plan)
            if variant != plan.variant:
                why = f"{alertname} is about {variant!r}; the rollout is of {plan.variant!r}"
                return self._report(Decision(flag, "ignore", why, share))
            if share is None or share <= 0 or rollout_state(definition.metadata).paused:
                why = f"{alertname}: nothing to do (rolled back, killed or paused already)"
                return self._report(Decision(flag, "ignore", why, share))
            why = f"Alertmanager: {alertname} firing for {flag}={variant} in job {job or '?'}"
            return self._report(self._act(snapshot, plan, share, why))

    # -- reporting ------------------------------------------------------------------------

    def _error(self, flag: str, kind: str, why: str, share: float | None = None) -> Decision:
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()
        return Decision(flag, "error", f"{why}; nothing changed", share)

    def _report(self, decision: Decision) -> Decision:
        alarming = decision.action in ("error", "rollback", "kill", "pause")
        level = logging.WARNING if alarming else logging.INFO
        logger.log(level, "%s", decision.line(dry_run=self.dry_run))
        return decision

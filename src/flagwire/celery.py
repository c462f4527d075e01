"""Celery: tasks run with the flags of the request that published them.

::

    from celery import Celery
    from flagwire import FileSource
    import flagwire.celery

    app = Celery("shop", broker="redis://localhost:6379/0")
    flagwire.celery.setup(app, source=FileSource("flags.yaml"))

    @app.task
    def send_receipt(order_id):
        if flagwire.current_flags().boolean("new-receipt", False): ...

A task published inside a request (or inside another task) carries the request's trusted
assignments and targeting key, signed, in its message headers; the worker runs it with
those flags pinned, so it sees the variants the request saw. A task published outside a
request carries nothing and decides for itself (with an empty context, or
``context(task)``'s). A bad or forged header never fails a task: it is ignored.

Fork-safe under the prefork pool: the binding is plain data, and flagwire's polling
sources restart their threads in each forked child (``os.register_at_fork``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import Any

from ._engine.flagset import FlagSet
from ._errors import ConfigError, missing_extra
from ._integration import Binding, BoundRequestFlags
from ._propagation.policy import Propagation
from ._request.scope import _current, request_flags
from ._sources.base import Source
from ._telemetry import Telemetry
from .propagation import job_headers

try:
    from celery import Celery, Task
    from celery.signals import before_task_publish, task_postrun, task_prerun
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.celery", "Celery", "celery") from exc

__all__ = ["HEADER", "setup"]

HEADER = "flagwire_baggage"
"""The message header that carries the publishing request's signed assignments."""

TaskContext = Callable[[Any], "Mapping[str, Any] | None"]
_STATUS = {"SUCCESS": 200, "RETRY": 503, "IGNORED": 200, "REJECTED": 400}


class _TaskRequest:
    """What the binding reads a task from: its ``baggage`` header and the task itself."""

    __slots__ = ("headers", "task")

    def __init__(self, task: Task, baggage: str | None) -> None:
        self.task = task
        self.headers = {"baggage": baggage} if baggage else {}


class _Hooks:
    """The signal receivers of one Celery app."""

    def __init__(self, app: Celery, binding: Binding) -> None:
        self.app = app
        self.binding = binding
        # task id -> (flags, token, started); one entry per task running in this process
        self.running: dict[str, tuple[BoundRequestFlags, Any, float]] = {}

    def publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        flags = request_flags()
        propagation = self.binding.propagation
        if flags is None or propagation is None or headers is None or HEADER in headers:
            return
        value = job_headers(flags, propagation=propagation).get("baggage")
        if value:
            headers[HEADER] = value

    def prerun(self, task_id: str = "", task: Task | None = None, **_: Any) -> None:
        if task is None or task.app is not self.app:
            return
        if getattr(task.request, "is_eager", False) and request_flags() is not None:
            return  # run in place (task.apply(), eager mode): it keeps the caller's flags
        baggage = getattr(task.request, HEADER, None)
        request = _TaskRequest(task, baggage if isinstance(baggage, str) else None)
        flags = BoundRequestFlags(self.binding, request)
        self.running[task_id] = (flags, _current.set(flags), perf_counter())

    def postrun(
        self, task_id: str = "", task: Task | None = None, state: str | None = None, **_: Any
    ) -> None:
        found = self.running.pop(task_id, None)
        if found is None or task is None:
            return
        flags, token, started = found
        try:
            _current.reset(token)
        except ValueError:  # pragma: no cover - postrun in another context than prerun
            _current.set(None)
        status = _STATUS.get(state or "", 500)
        self.binding.record(flags, "TASK", task.name, status, perf_counter() - started)


def setup(
    app: Celery,
    *,
    source: Source | FlagSet,
    context: TaskContext | Sequence[TaskContext] | None = None,
    propagation: Propagation | bool | None = None,
    telemetry: Sequence[Telemetry] = (),
) -> Callable[[], None]:
    """Make ``app``'s tasks carry and honour the publishing request's flags.

    Call it where both the publishers (web processes) and the workers import the app.

    Args:
        app: The Celery app.
        source: The worker's :class:`~flagwire.Source` or :class:`~flagwire.FlagSet`.
        context: Builds a task's context from an object with ``.task`` (the running
            task: ``task.request.args``, ``task.name``, ...); a trusted publisher's
            targeting key is added to it. Default: nothing but that key.
        propagation: How assignments are signed and verified
            (:class:`~flagwire.Propagation`); default: from ``$FLAGWIRE_PROPAGATION_KEYS``.
            The same keys must be set in the publishers and the workers.
        telemetry: Where each finished task's decided flags are recorded: route label the
            task name, method ``TASK``, status 200 on success, 503 on retry, else 500.

    Returns:
        A function that undoes this (tests).

    Raises:
        ConfigError: flagwire is already set up on this app.
    """
    if getattr(app, "_flagwire_hooks", None) is not None:
        raise ConfigError("flagwire.celery.setup() was already called on this Celery app")
    binding = Binding(
        source,
        context if context is not None else _no_context,
        anonymous_cookie=None,
        propagation=propagation,
        telemetry=telemetry,
    )
    hooks = _Hooks(app, binding)
    app._flagwire_hooks = hooks  # keeps the receivers alive: signals hold weak references
    before_task_publish.connect(hooks.publish)
    task_prerun.connect(hooks.prerun)
    task_postrun.connect(hooks.postrun)

    def undo() -> None:
        before_task_publish.disconnect(hooks.publish)
        task_prerun.disconnect(hooks.prerun)
        task_postrun.disconnect(hooks.postrun)
        app._flagwire_hooks = None

    return undo


def _no_context(request: Any) -> None:
    return None

"""The per-request view of flags: :class:`RequestFlags` and :func:`current_flags`.

A request pins one flag set when it starts. Each flag is evaluated the first time the
request asks for it, against that flag set and the request's context, and the decision
is memoised: asking again (with any default) never changes it. The user context is
built lazily, the first time a flag needs it. Outcomes the request tracks
(:meth:`RequestFlags.track`) are kept with it until telemetry records them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from threading import get_ident
from time import monotonic, sleep
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from flagwire._engine.assignment import Assignment, ErrorCode, FlagType
from flagwire._engine.fitting import fit
from flagwire._engine.flagset import FlagSet
from flagwire._types import Context

from .tracking import Tracking

__all__ = ["RequestFlags"]

logger = logging.getLogger("flagwire")

T = TypeVar("T")
_BUILDERS: dict[int, int] = {}  # request flags whose context is being built -> the thread
_LOGGED: set[tuple[str, ErrorCode | None]] = set()  # flag problems logged so far
_LOGGED_MAX = 1000  # flag keys come from code, but a bug could make them unbounded
_NOT_YET: Mapping[str, Callable[[dict[str, Any]], Assignment]] = MappingProxyType({})


class _Getter(Protocol[T]):
    """A typed getter: ``flags.boolean("key")``, ``flags.boolean("key", True)``."""

    def __call__(self, key: str, default: T = ...) -> T: ...


# Every getter is this body: memo, then the flag set's decider, then one test of the value.
# The fast path: ``_deciders`` is the flag set's key -> decide(context) only once the
# context is built and when no upstream assignment can apply; until then it is empty, and
# every flag goes through ``_decide``. A decision without a variant has value None, so one
# test covers "no variant" and "another type" alike; the rest goes to the slow path. The
# getters differ only in that test, so they are made from one source, not written out five
# times (a shared helper would cost a call per flag).
_GETTER = """\
def getter(self, key, default=_default):
    decision = self._memo.get(key)
    if decision is None:
        decide = self._deciders.get(key)
        decision = (
            self._decide(key)
            if decide is None
            else self._memo.setdefault(key, decide(self._context))
        )
        value = decision.value
        if {accept}:
            return value
        return self._slow(key, decision, default, _flag_type, False)
    value = decision.value
    if {accept}:
        return value
    return self._slow(key, decision, default, _flag_type, True)
"""


def _getter(accept: str, flag_type: FlagType | None, default: Any, doc: str, **names: Any) -> Any:
    """A getter of :class:`RequestFlags` whose value passes when ``accept`` is true."""
    namespace: dict[str, Any] = {"_default": default, "_flag_type": flag_type, **names}
    exec(compile(_GETTER.format(accept=accept), "<flagwire getter>", "exec"), namespace)
    getter = namespace["getter"]
    getter.__doc__ = doc
    return getter


def _typed_getter(types: tuple[type, ...], flag_type: FlagType, default: Any, doc: str) -> Any:
    # "type(value) is _t0 or ...": identity tests, cheaper than "in" a tuple.
    accept = " or ".join(f"type(value) is _t{i}" for i in range(len(types)))
    return _getter(accept, flag_type, default, doc, **{f"_t{i}": t for i, t in enumerate(types)})


class RequestFlags(Tracking):
    """The flags of one request (or one unit of work).

    Get it with :func:`flagwire.current_flags`. Every getter takes the flag key and the
    value to use when no variant applies; the first call decides the flag for the rest of
    the request.

    Attributes:
        flagset: The flag set pinned for this request.
    """

    # _served, _upstream (and Tracking's _events) are rarely set: class defaults, and an
    # instance dict only for the requests that set them (one attribute store fewer per
    # request).
    __slots__ = ("_context", "_deciders", "_memo", "flagset")  # __dict__ from Tracking
    _served: dict[str, list[Assignment]] | None = None
    _upstream: Mapping[str, str] | None = None

    def __init__(
        self,
        flagset: FlagSet,
        context: Context | None = None,
        *,
        upstream: Mapping[str, str] | None = None,
    ) -> None:
        self.flagset = flagset
        self._context: dict[str, Any] | None = {} if context is None else dict(context)
        self._memo: dict[str, Assignment] = {}
        self._deciders: Mapping[str, Callable[[dict[str, Any]], Assignment]] = flagset._deciders
        if upstream is not None:
            self._upstream = upstream
            self._deciders = _NOT_YET

    def __contains__(self, key: object) -> bool:
        return key in self.flagset

    @property
    def context(self) -> Mapping[str, Any]:
        """The evaluation context (built on first use; read-only)."""
        return MappingProxyType(self._ensure_context())

    def _build_context(self) -> tuple[dict[str, Any], str | None]:
        """Build the context the first time a flag needs it (integrations override).

        Returns the context and, if one was made for this request, a new anonymous
        targeting key to send back to the client.
        """
        return {}, None

    def _ensure_context(self) -> dict[str, Any]:
        context = self._context
        if context is not None:
            return context
        me, thread = id(self), get_ident()
        if _BUILDERS.get(me) == thread:  # an extractor of this request asked for a flag
            logger.warning("flagwire: a context extractor asked for a flag; it sees no context")
            return {}
        # Once per request, even if several of its threads ask at once: the first thread
        # builds (no lock held while extractors, which are user code, run) and the others
        # wait for it.
        if _BUILDERS.setdefault(me, thread) != thread:
            return self._await_context(me)
        try:
            built, new_id = self._build_context()
        except Exception:  # a broken extractor never fails the request
            logger.exception("flagwire: building the request's context failed")
            built, new_id = {}, None
        finally:
            del _BUILDERS[me]
        # Only this thread builds (others wait for it): no lock to publish the result.
        if new_id is not None:
            self._new_anonymous_id(new_id)
        self._context = built
        if self._upstream is None:  # the getters' fast path, from now on
            self._deciders = self.flagset._deciders
        return built

    def _await_context(self, me: int) -> dict[str, Any]:
        deadline = monotonic() + 10.0
        while self._context is None and me in _BUILDERS and monotonic() < deadline:
            sleep(0.0002)
        context = self._context
        if context is None:  # the builder took too long: decide with no context, not wait
            logger.error("flagwire: gave up waiting for another thread to build the context")
            return {}
        return context

    def _new_anonymous_id(self, new_id: str) -> None:
        """Remember a new anonymous id for the response (integrations override)."""

    def _decide(self, key: str) -> Assignment:
        # Called when the memo has no decision yet (the typed getters' fast path calls
        # the flag set's decider itself once the context is built).
        context = self._context
        if context is None:
            context = self._ensure_context()
        upstream = self._upstream
        if upstream is not None:
            variant = upstream.get(key)
            if variant is not None:
                honoured = self.flagset.propagated(key, variant)
                if honoured is not None:
                    return self._memo.setdefault(key, honoured)
        decide = self.flagset._deciders.get(key)
        decision = decide(context) if decide is not None else self.flagset.decide(key, context)
        # setdefault: if two threads of one request race, both keep the first decision.
        return self._memo.setdefault(key, decision)

    boolean: _Getter[bool] = _typed_getter(
        (bool,), FlagType.BOOLEAN, False, "The flag's value if it is a boolean, else ``default``."
    )
    string: _Getter[str] = _typed_getter(
        (str,), FlagType.STRING, "", "The flag's value if it is a string, else ``default``."
    )
    integer: _Getter[int] = _typed_getter(
        (int,), FlagType.INTEGER, 0, "The flag's value if it is an integer, else ``default``."
    )
    # An integral variant of a number flag takes the slow path, which converts it.
    number: _Getter[float] = _typed_getter(
        (float,),
        FlagType.FLOAT,
        0.0,
        "The flag's value if it is a number (as a float), else ``default``.",
    )
    float = number
    """The name :class:`~flagwire.FlagSet` uses for :attr:`number`."""
    object: _Getter[Any] = _typed_getter(
        (dict, list),
        FlagType.OBJECT,
        None,
        "The flag's value if it is a JSON object or array, else ``default``.",
    )

    def details(
        self, key: str, default: Any = None, flag_type: FlagType | None = None
    ) -> Assignment:
        """The full :class:`Assignment` (value, variant, reason, error) for this request.

        ``value`` is ``default`` where no variant applies (disabled flag, no default
        variant, an error) and where the flag's type is not ``flag_type`` (or, without
        ``flag_type``, the type of ``default``); ``reason`` and ``error_code`` say which.
        """
        decision = self._memo.get(key)
        if decision is None:
            return self._fitted(key, self._decide(key), default, flag_type, False)
        return self._fitted(key, decision, default, flag_type, True)

    get: _Getter[Any] = _getter(
        "value is not None and (default is None or type(value) is type(default))",
        None,
        None,
        "The flag's value, or ``default`` when no variant applies or the type differs.",
    )

    def _note(self, key: str, served: Assignment, read_before: bool) -> None:
        """Remember that this request got ``served`` (its default: no variant applied, or
        a type mismatch) instead of the decision, so telemetry reports what the code ran on: every
        distinct assignment its reads were served (``read_before``: the flag was read
        before, and served the decision unless a mismatch was noted already)."""
        if self._served is None:
            self._served = {}
        seen = self._served.get(key)
        if seen is None:
            seen = self._served[key] = [self._memo[key]] if read_before else []
        if served not in seen:
            seen.append(served)

    def _slow(
        self,
        key: str,
        decision: Assignment,
        default: Any,
        flag_type: FlagType | None,
        read_before: bool,
    ) -> Any:
        # The getters' slow path: no variant (disabled, no default variant, an error), a
        # variant of another type than asked for (for get(): than the default's), or an
        # integer asked for as a float.
        if flag_type is FlagType.FLOAT and type(decision.value) is int:
            return float(decision.value)
        return self._fitted(key, decision, default, flag_type, read_before).value

    def _fitted(
        self,
        key: str,
        decision: Assignment,
        default: Any,
        flag_type: FlagType | None,
        read_before: bool,
    ) -> Assignment:
        # What a read is served: the decision, or the code's default (no variant applied,
        # or a type mismatch), noted so that telemetry records what the code ran on.
        fitted = fit(decision, default, flag_type)
        if fitted is not decision or (self._served is not None and key in self._served):
            self._note(key, fitted, read_before)
        if fitted.error_code is not None:
            self._log_problem(key, fitted)
        return fitted

    def _log_problem(self, key: str, served: Assignment) -> None:
        """Log a flag problem (missing flag, type mismatch, a rule that raised) once per
        flag, error and process: the request goes on with the code's default."""
        code = served.error_code
        mark = (key, code)
        if code is None or mark in _LOGGED or len(_LOGGED) >= _LOGGED_MAX:
            return
        _LOGGED.add(mark)
        logger.warning(
            'flagwire: flag "%s" (flag set %s): %s: %s; the code\'s default is used '
            "(logged once per flag and error)",
            key,
            self.flagset.source,
            code.value,
            served.error_message or "no message",
        )

    @property
    def upstream(self) -> Mapping[str, str]:
        """Assignments received from a trusted upstream service (flag key -> variant)."""
        self._ensure_context()
        return MappingProxyType(dict(self._upstream or {}))

    def outbound(self) -> tuple[dict[str, str], str | None, str]:
        """What to send downstream: assignments, targeting key, flag-set version.

        The assignments are the trusted upstream ones (so a later hop agrees with the
        first even about flags this service never asked for) overlaid with this request's
        own decisions that chose a variant.
        """
        context = self._ensure_context()
        assignments = dict(self._upstream or {})
        for key, decision in list(self._memo.items()):
            if decision.variant is not None:
                assignments[key] = decision.variant
        targeting_key = context.get("targetingKey")
        return (
            assignments,
            targeting_key if isinstance(targeting_key, str) else None,
            self.flagset.version_label,
        )

    def evaluated(self) -> Mapping[str, Assignment]:
        """The decisions this request made so far, by flag key (in the order made)."""
        return MappingProxyType(dict(self._memo))

    def served(self) -> dict[str, Assignment]:
        """What the code ran on, by flag key: the decisions, with the caller's default in
        place of a variant of another type than asked for (what telemetry records)."""
        served = dict(self._memo)
        if self._served:
            for key, seen in self._served.items():
                served[key] = seen[-1]
        return served

    def reads(self) -> dict[str, tuple[Assignment, ...]]:
        """For a flag whose reads were served different assignments (read as a string,
        then as a boolean), each distinct one in the order served."""
        return {key: tuple(seen) for key, seen in (self._served or {}).items() if len(seen) > 1}

    def __repr__(self) -> str:
        return f"<RequestFlags {self.flagset.version_label} evaluated={list(self._memo)}>"

"""A compiled, versioned flag set: :class:`FlagSet`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from flagwire._errors import ConfigError, FlagsetError
from flagwire._types import Context, MetadataValue

from .assignment import Assignment, ErrorCode, FlagType, Reason
from .compiled import CompiledFlag, flag_problems
from .compiler import TraceStep, compile_rule
from .definitions import (
    FlagDefinition,
    FlagsetDocument,
    parse_document,
    parse_text,
    plain_copy,
    read_document,
)
from .expiry import warn_expired
from .fitting import EXPECT_BY_VALUE, UNSET
from .flagd_ops import FRACTIONAL_VERSIONS
from .pacing import PIECE, collector_paused, pace, paced
from .rollout import plan_problems

__all__ = ["FRACTIONAL_METADATA_KEY", "FlagSet"]

logger = logging.getLogger("flagwire")

FRACTIONAL_METADATA_KEY: Final = "flagwire.fractional"
"""Flag-set metadata key that selects the fractional algorithm (``"v2"`` or ``"v3"``)."""

_EMPTY_CONTEXT: Final[dict[str, Any]] = {}


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def _canonical_digest(raw: Any) -> str:
    """SHA-256 of the document's canonical JSON (sorted keys, no whitespace), written in
    pieces: the same text as one encoding of the whole document, in calls of ``PIECE``
    flags each instead of one long call that holds the GIL through a reload of a large
    file (a server's requests wait on it), and without a call per flag."""
    digest = hashlib.sha256()
    if not isinstance(raw, dict) or not all(type(k) is str for k in raw):
        digest.update(_canonical(raw).encode())
        return digest.hexdigest()
    digest.update(b"{")
    for i, key in enumerate(sorted(raw)):
        digest.update((b"," if i else b"") + _canonical(key).encode() + b":")
        value = raw[key]
        if not isinstance(value, dict) or not all(type(k) is str for k in value):
            digest.update(_canonical(value).encode())
            continue
        # Consecutive runs of the sorted keys encode to consecutive runs of the text.
        names = sorted(value)
        digest.update(b"{")
        for start in range(0, len(names), PIECE):
            piece = _canonical({name: value[name] for name in names[start : start + PIECE]})
            digest.update((b"," if start else b"") + piece[1:-1].encode())
            pace()
        digest.update(b"}")
    digest.update(b"}")
    return digest.hexdigest()


class FlagSet:
    """An immutable, compiled, versioned set of flags.

    Build one with :meth:`from_path`, :meth:`from_text` or :meth:`from_mapping`; then
    call :meth:`evaluate` as often as you like: it never raises, never interprets JSON,
    and for static flags returns a prebuilt :class:`Assignment`.

    Loading validates every flag and finds every rule's problems, but compiles a flag
    only when it is first evaluated: a flag set of 10,000 flags of which a service reads
    20 costs the memory and time of 20 compiled flags. Compiled code is kept by its
    source, so a reload that leaves a flag as it was compiles nothing for it again.

    Attributes:
        version: The flag-set ``metadata.version``, if the document has one.
        digest: A content digest (``sha256:`` + 12 hex digits), always present.
        fractional: The fractional bucketing algorithm in force (``"v2"`` or ``"v3"``).
        source: The file (or name) the flag set came from.
    """

    __slots__ = (
        "_deciders",
        "_evaluators",
        "_flags",
        "_problems",
        "digest",
        "fractional",
        "metadata",
        "source",
        "version",
    )

    def __init__(self, document: FlagsetDocument, *, fractional: str | None = None) -> None:
        if fractional is not None and fractional not in FRACTIONAL_VERSIONS:
            raise ConfigError(
                f"fractional algorithm {fractional!r} is unknown; use one of "
                f"{', '.join(FRACTIONAL_VERSIONS)}"
            )
        chosen = fractional or document.metadata.get(FRACTIONAL_METADATA_KEY) or "v2"
        if chosen not in FRACTIONAL_VERSIONS:
            raise FlagsetError(
                f"metadata {FRACTIONAL_METADATA_KEY} is {json.dumps(chosen)}; use one of "
                f"{', '.join(FRACTIONAL_VERSIONS)}",
                path=document.source,
                pointer=f"metadata.{FRACTIONAL_METADATA_KEY}",
            )
        self.fractional = str(chosen)
        self.source = document.source
        self.metadata: Mapping[str, MetadataValue] = MappingProxyType(dict(document.metadata))
        self.digest = "sha256:" + _canonical_digest(document.raw)[:12]
        meta_version = document.metadata.get("version")
        self.version: str | None = None if meta_version is None else str(meta_version)
        self._evaluators: Mapping[str, Any] = document.evaluators
        # A flag is its definition until it is first evaluated, then its CompiledFlag.
        self._flags: dict[str, CompiledFlag | FlagDefinition] = dict(document.flags)
        self._problems: tuple[str, ...] | None = None
        # key -> decide(context) of the compiled flags: the per-request path (see
        # RequestFlags); a flag not compiled yet takes decide(), which compiles it.
        self._deciders: dict[str, Callable[[dict[str, Any]], Assignment]] = {}
        warn_expired(document.flags, document.metadata.get("owner"))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | Path, *, fractional: str | None = None) -> FlagSet:
        """Load a flagd flag-definition file (``.json``, ``.yaml`` or ``.yml``).

        Raises:
            FlagsetError: The file is missing, unparsable or not a valid flag set.
        """
        with collector_paused():
            document, _ = read_document(path)
            return cls(document, fractional=fractional)

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        format: str | None = None,
        source: str | None = None,
        fractional: str | None = None,
    ) -> FlagSet:
        """Load a flag set from JSON or YAML text (``format`` "json"/"yaml", else guessed)."""
        with collector_paused():
            raw = parse_text(text, source, format)
            return cls(parse_document(raw, source=source, text=text), fractional=fractional)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str | None = None,
        fractional: str | None = None,
    ) -> FlagSet:
        """Load a flag set from an already parsed document (a dict)."""
        with collector_paused():
            raw = plain_copy(data)  # private, so later changes to ``data`` change nothing
            return cls(parse_document(raw, source=source), fractional=fractional)

    @classmethod
    def empty(cls, *, source: str | None = None) -> FlagSet:
        """A flag set with no flags (every evaluation gives ``FLAG_NOT_FOUND``)."""
        return cls(parse_document({"flags": {}}, source=source))

    # -- inspection -----------------------------------------------------------------------

    @property
    def problems(self) -> tuple[str, ...]:
        """Problems in targeting rules that did not stop the load (each such flag gives
        ``PARSE_ERROR`` when its broken part is evaluated), found on first use (they are
        found without compiling; sources log them once a new flag set is in force)."""
        problems = self._problems
        if problems is None:
            definitions = [
                flag.definition if isinstance(flag, CompiledFlag) else flag
                for flag in self._flags.values()
            ]
            rules: list[str] = []
            plans: list[str] = []  # rollout plans' problems, listed after the rules'
            for definition in paced(definitions):
                rules.extend(flag_problems(definition, self._evaluators))
                plans.extend(plan_problems(definition))
            problems = self._problems = (*rules, *plans)
        return problems

    @property
    def version_label(self) -> str:
        """``version`` and ``digest`` in one string, as put on every assignment."""
        return self.digest if self.version is None else f"{self.version}+{self.digest}"

    def __contains__(self, key: object) -> bool:
        return key in self._flags

    def __iter__(self) -> Iterator[str]:
        return iter(self._flags)

    def __len__(self) -> int:
        return len(self._flags)

    def __repr__(self) -> str:
        return f"<FlagSet {self.source or '<memory>'} {self.version_label} flags={len(self)}>"

    def definition(self, key: str) -> FlagDefinition | None:
        """The flag's definition as written, or ``None`` if there is no such flag."""
        flag = self._flags.get(key)
        return flag.definition if isinstance(flag, CompiledFlag) else flag

    def _compiled(self, key: str) -> CompiledFlag | None:
        flag = self._flags.get(key)
        if flag is None or type(flag) is CompiledFlag:
            return flag
        return self._compile(flag)

    def _compile(self, definition: FlagDefinition) -> CompiledFlag:
        # Two threads may compile one flag at once: both get a correct flag, one is kept.
        try:
            flag = CompiledFlag(
                definition, self.metadata, self.version_label, self.fractional, self._evaluators
            )
        except Exception as exc:  # a flag that cannot be compiled never fails a caller
            logger.exception('flagwire: flag "%s" could not be compiled', definition.key)
            flag = CompiledFlag(
                definition,
                self.metadata,
                self.version_label,
                self.fractional,
                self._evaluators,
                rule_error=f"the rule could not be compiled: {type(exc).__name__}: {exc}",
            )
        self._flags[definition.key] = flag
        self._deciders[definition.key] = flag.decide
        return flag

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(
        self,
        key: str,
        context: Context | None = None,
        default: Any = None,
        *,
        flag_type: FlagType | None = None,
    ) -> Assignment:
        """Evaluate one flag for one context. Never raises.

        Args:
            key: The flag key.
            context: Attributes of the subject, with an optional ``targetingKey``.
            default: The value to use when no variant applies (disabled flag, no default
                variant, error). Its type is also the expected type unless ``flag_type``
                is given: a ``bool`` default expects a boolean flag, and so on; ``None``
                checks nothing.
            flag_type: The expected value type; a flag of another type gives
                ``TYPE_MISMATCH`` and the default.

        Returns:
            The :class:`Assignment`.
        """
        flag = self._flags.get(key)
        if type(flag) is not CompiledFlag:
            if not isinstance(flag, FlagDefinition):
                return self._not_found(key, default)
            flag = self._compile(flag)
        # The hot path: a prebuilt result that fits the caller's default as it is.
        # (The expected type as the Python type of a default: the typed getters' flag_type
        # and an untyped call's default are checked the same way.)
        expect = type(default) if flag_type is None else EXPECT_BY_VALUE[flag_type._value_]
        rule = flag.rule
        if rule is None:
            match = flag.static_result
            if match is not None and expect in match[1]:
                return match[0]
            return flag.resolve(UNSET, context, default, flag_type)
        if type(context) is not dict:
            context = _EMPTY_CONTEXT if context is None else dict(context)
        try:
            chosen = rule(context)
        except Exception as exc:  # a rule that fails never fails the caller
            return flag.failed(exc, default)
        if type(chosen) is str:
            match = flag.matches.get(chosen)
            if match is not None and expect in match[1]:
                return match[0]
        return flag.resolve(chosen, context, default, flag_type)

    def decide(self, key: str, context: dict[str, Any]) -> Assignment:
        """:meth:`evaluate` with no default and no expected type, for a dict context.

        The per-request path: what is decided here is memoised, and callers' defaults
        and types are applied afterwards (see :func:`fit`).
        """
        flag = self._compiled(key)
        if flag is None:
            return self._not_found(key, None)
        return flag.decide(context)

    def propagated(self, key: str, variant: str) -> Assignment | None:
        """The assignment for an upstream decision, if this flag set can honour it: the
        flag exists here, is enabled, and has that variant."""
        flag = self._compiled(key)
        return None if flag is None else flag.propagated.get(variant)

    def _not_found(self, key: str, default: Any) -> Assignment:
        return Assignment(
            key,
            default,
            None,
            Reason.ERROR,
            ErrorCode.FLAG_NOT_FOUND,
            f'flag "{key}" is not in flag set {self.source or ""}'.rstrip(),
            flagset_version=self.version_label,
        )

    def boolean(self, key: str, default: bool, context: Context | None = None) -> bool:
        """The flag's value if it is a boolean, else ``default``."""
        return bool(self.evaluate(key, context, default, flag_type=FlagType.BOOLEAN).value)

    def string(self, key: str, default: str, context: Context | None = None) -> str:
        """The flag's value if it is a string, else ``default``."""
        return str(self.evaluate(key, context, default, flag_type=FlagType.STRING).value)

    def integer(self, key: str, default: int, context: Context | None = None) -> int:
        """The flag's value if it is an integer, else ``default``."""
        value = self.evaluate(key, context, default, flag_type=FlagType.INTEGER).value
        return int(value)

    def float(self, key: str, default: float, context: Context | None = None) -> float:
        """The flag's value if it is a number (as a float), else ``default``."""
        value = self.evaluate(key, context, default, flag_type=FlagType.FLOAT).value
        return float(value)

    def object(self, key: str, default: Any, context: Context | None = None) -> Any:
        """The flag's value if it is a JSON object or array, else ``default``."""
        return self.evaluate(key, context, default, flag_type=FlagType.OBJECT).value

    def explain(
        self,
        key: str,
        context: Context | None = None,
        default: Any = None,
        *,
        flag_type: FlagType | None = None,
    ) -> tuple[Assignment, list[TraceStep]]:
        """Evaluate like :meth:`evaluate` and also say which parts of the rule decided.

        Slow (compiles the rule again, with tracing); meant for tools like
        ``flagwire explain``, not for request paths.
        """
        assignment = self.evaluate(key, context, default, flag_type=flag_type)
        flag = self._compiled(key)
        steps: list[TraceStep] = []
        if flag is None:
            return assignment, steps
        definition = flag.definition
        if not definition.enabled:
            steps.append(("state", "flag is DISABLED: the caller's default applies"))
        elif flag.rule_error is not None:
            steps.append(("targeting", f"{flag.rule_error}: PARSE_ERROR"))
        elif flag.rule is None:
            steps.append(("targeting", "no targeting rule: the default variant applies"))
        else:
            rule = compile_rule(
                definition.targeting,
                flag_key=key,
                fractional=self.fractional,
                evaluators=self._evaluators,
                trace=steps,
            )
            ctx = dict(context) if context else {}
            try:
                chosen = rule(ctx)
                steps.append(("targeting", f"rule returned {json.dumps(chosen, default=str)}"))
            except Exception as exc:
                steps.append(("targeting", f"rule failed: {exc}"))
        return assignment, steps

"""The result of evaluating one flag: :class:`Assignment`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from flagwire._errors import FlagwireError
from flagwire._types import FlagValue, MetadataValue

__all__ = ["Assignment", "ErrorCode", "FlagType", "Reason"]

_EMPTY: Mapping[str, MetadataValue] = MappingProxyType({})


class Reason(str, Enum):
    """Why a flag got its value (OpenFeature's names)."""

    STATIC = "STATIC"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DEFAULT = "DEFAULT"
    DISABLED = "DISABLED"
    CACHED = "CACHED"
    PROPAGATED = "PROPAGATED"
    """flagwire: decided upstream and carried here in signed baggage (not an OpenFeature
    reason; telemetry maps it to TARGETING_MATCH-like semantics)."""
    UNKNOWN = "UNKNOWN"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


class ErrorCode(str, Enum):
    """What went wrong when an assignment's reason is ``ERROR`` (OpenFeature's names)."""

    PROVIDER_NOT_READY = "PROVIDER_NOT_READY"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"

    def __str__(self) -> str:
        return self.value


class FlagType(str, Enum):
    """The value type a caller expects, checked against the resolved value."""

    BOOLEAN = "boolean"
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    OBJECT = "object"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, value: object) -> FlagType | None:
        """The type a default value asks for (``None`` for ``None`` and unknown types)."""
        return _TYPE_OF_DEFAULT.get(type(value))

    def accepts(self, value: object) -> bool:
        """Whether a resolved value is of this type (int counts as float; bool as neither)."""
        return type(value) in _ACCEPTED[self]


_TYPE_OF_DEFAULT: dict[type, FlagType] = {
    bool: FlagType.BOOLEAN,
    str: FlagType.STRING,
    int: FlagType.INTEGER,
    float: FlagType.FLOAT,
    dict: FlagType.OBJECT,
    list: FlagType.OBJECT,
}
_ACCEPTED: dict[FlagType, frozenset[type]] = {
    FlagType.BOOLEAN: frozenset({bool}),
    FlagType.STRING: frozenset({str}),
    FlagType.INTEGER: frozenset({int}),
    FlagType.FLOAT: frozenset({int, float}),
    FlagType.OBJECT: frozenset({dict, list}),
}


@dataclass(frozen=True, slots=True)
class Assignment:
    """One flag's value for one context, and why.

    Attributes:
        key: The flag key.
        value: The resolved value, or the caller's default when no variant applied.
        variant: The variant chosen, or ``None`` (disabled, no default variant, error).
        reason: Why (:class:`Reason`).
        error_code: Set when ``reason`` is ``ERROR``.
        error_message: A human-readable description of the error.
        flag_metadata: Flag-set metadata merged with the flag's own (the flag wins).
        flagset_version: The version of the flag set that decided this.
    """

    key: str
    value: FlagValue
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    flag_metadata: Mapping[str, MetadataValue] = field(default_factory=lambda: _EMPTY)
    flagset_version: str = ""

    @property
    def is_error(self) -> bool:
        """True when the evaluation failed and ``value`` is the caller's default."""
        return self.error_code is not None

    def raise_for_error(self) -> Assignment:
        """Raise :class:`EvaluationError` if this assignment is an error, else return it."""
        if self.error_code is not None:
            raise EvaluationError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``value``, ``variant``, ``reason``, ``error_code``, ...)."""
        return {
            "key": self.key,
            "value": self.value,
            "variant": self.variant,
            "reason": self.reason.value,
            "error_code": None if self.error_code is None else self.error_code.value,
            "error_message": self.error_message,
            "flag_metadata": dict(self.flag_metadata),
            "flagset_version": self.flagset_version,
        }


class EvaluationError(FlagwireError):
    """Raised by :meth:`Assignment.raise_for_error` for a failed evaluation."""

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        super().__init__(
            f'flag "{assignment.key}": {assignment.error_code}: {assignment.error_message}'
        )

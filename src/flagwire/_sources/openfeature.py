"""Any OpenFeature provider (a vendor's) as a flagwire source: :class:`OpenFeatureSource`.

A provider decides per context and does not list its flags or variants, so the flags to
bridge are declared — type, variants (name -> value) and the default variant — and each
decision is asked of the provider and mapped back to one of the declared variants.
Public from :mod:`flagwire.openfeature` (needs the ``openfeature`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

from openfeature.evaluation_context import EvaluationContext

from flagwire._engine.assignment import Assignment, ErrorCode, FlagType, Reason
from flagwire._engine.definitions import parse_document
from flagwire._engine.fitting import fit
from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError
from flagwire._types import Context, MetadataValue

from .base import SourceBase

__all__ = ["BridgedFlag", "OpenFeatureSource"]

logger = logging.getLogger("flagwire")


@dataclass(frozen=True)
class BridgedFlag:
    """A flag of an OpenFeature provider, declared for :class:`OpenFeatureSource`.

    Attributes:
        variants: Variant name -> value. Every value the provider may return must be one
            of them: flagwire's requests, propagation and telemetry speak variant names.
        default_variant: The variant the flag is declared to fall back to, or ``None``
            (the caller's default). Its value is what the provider is asked with.
        flag_type: The type the provider is asked for; default: the variants' type.
        metadata: Flag metadata (the provider's, per evaluation, is merged over it).
    """

    variants: Mapping[str, Any]
    default_variant: str | None = None
    flag_type: FlagType | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    @classmethod
    def of(cls, key: str, spec: BridgedFlag | Mapping[str, Any]) -> BridgedFlag:
        """A declaration from a :class:`BridgedFlag` or a flagd-like mapping
        (``variants``, ``defaultVariant``, ``type``, ``metadata``)."""
        if isinstance(spec, BridgedFlag):
            flag = spec
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"variants", "defaultVariant", "type", "metadata"}
            if unknown:
                raise ConfigError(f'bridged flag "{key}": unknown properties {sorted(unknown)}')
            kind = spec.get("type")
            try:
                flag_type = None if kind is None else FlagType(str(kind).lower())
            except ValueError:
                raise ConfigError(
                    f'bridged flag "{key}": type {kind!r} is not one of '
                    f"{', '.join(t.value for t in FlagType)}"
                ) from None
            flag = cls(
                dict(spec.get("variants") or {}),
                spec.get("defaultVariant"),
                flag_type,
                dict(spec.get("metadata") or {}),
            )
        else:
            raise ConfigError(
                f'bridged flag "{key}" must be a BridgedFlag or a mapping, '
                f"not {type(spec).__name__}"
            )
        return flag._checked(key)

    def _checked(self, key: str) -> BridgedFlag:
        if not self.variants:
            raise ConfigError(f'bridged flag "{key}" declares no variants')
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ConfigError(
                f'bridged flag "{key}": default variant "{self.default_variant}" is not one '
                f"of [{', '.join(self.variants)}]"
            )
        flag_type = self.flag_type
        if flag_type is None:
            kinds = {FlagType.of(v) for v in self.variants.values()}
            if len(kinds) != 1 or None in kinds:
                raise ConfigError(
                    f'bridged flag "{key}": give flag_type; its variants are not all of one '
                    "JSON type"
                )
            (flag_type,) = kinds
            assert flag_type is not None
        wrong = [name for name, v in self.variants.items() if not flag_type.accepts(v)]
        if wrong:
            raise ConfigError(
                f'bridged flag "{key}": variants [{", ".join(wrong)}] are not {flag_type}'
            )
        if flag_type is self.flag_type:
            return self
        return BridgedFlag(self.variants, self.default_variant, flag_type, self.metadata)


_OF_METHODS: Final[dict[FlagType, tuple[str, str]]] = {
    # provider method, client method
    FlagType.BOOLEAN: ("resolve_boolean_details", "get_boolean_details"),
    FlagType.STRING: ("resolve_string_details", "get_string_details"),
    FlagType.INTEGER: ("resolve_integer_details", "get_integer_details"),
    FlagType.FLOAT: ("resolve_float_details", "get_float_details"),
    FlagType.OBJECT: ("resolve_object_details", "get_object_details"),
}
_ZERO: Final[dict[FlagType, Any]] = {
    FlagType.BOOLEAN: False,
    FlagType.STRING: "",
    FlagType.INTEGER: 0,
    FlagType.FLOAT: 0.0,
    FlagType.OBJECT: {},
}
_REASONS: Final[dict[str, Reason]] = {r.value: r for r in Reason if r is not Reason.PROPAGATED}
_ERRORS: Final[dict[str, ErrorCode]] = {c.value: c for c in ErrorCode}
_INSIDE: ContextVar[bool] = ContextVar("flagwire.openfeature.bridging", default=False)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1``; ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


class _Bridge:
    """Decides one bridged flag by asking the provider (or client)."""

    def __init__(
        self, key: str, flag: BridgedFlag, target: Any, is_client: bool, flagset: FlagSet
    ) -> None:
        assert flag.flag_type is not None
        self.key = key
        self.flag = flag
        self.call: Callable[..., Any] = getattr(target, _OF_METHODS[flag.flag_type][is_client])
        self.ask_with = (
            flag.variants[flag.default_variant]
            if flag.default_variant is not None
            else _ZERO[flag.flag_type]
        )
        self.metadata = flagset._compiled(key).metadata  # type: ignore[union-attr]
        self.version = flagset.version_label
        self._complained: set[str] = set()

    def _assignment(
        self,
        variant: str | None,
        reason: Reason,
        metadata: Mapping[str, MetadataValue],
        code: ErrorCode | None = None,
        message: str | None = None,
    ) -> Assignment:
        value = None if variant is None else self.flag.variants[variant]
        return Assignment(self.key, value, variant, reason, code, message, metadata, self.version)

    def __call__(self, context: Context) -> Assignment:
        if _INSIDE.get():
            return self._assignment(
                None,
                Reason.ERROR,
                self.metadata,
                ErrorCode.GENERAL,
                "the OpenFeature provider behind this flagwire source is flagwire itself",
            )
        ctx = dict(context)
        targeting_key = ctx.pop("targetingKey", None)
        evaluation_context = EvaluationContext(
            targeting_key=targeting_key if isinstance(targeting_key, str) else None,
            attributes=ctx,
        )
        token = _INSIDE.set(True)
        try:
            details = self.call(self.key, self.ask_with, evaluation_context)
        except Exception as exc:  # a provider that raises never fails the request
            return self._assignment(
                None,
                Reason.ERROR,
                self.metadata,
                ErrorCode.GENERAL,
                f"the OpenFeature provider raised {type(exc).__name__}: {exc}",
            )
        finally:
            _INSIDE.reset(token)
        return self._map(details)

    def _map(self, details: Any) -> Assignment:
        metadata: Mapping[str, MetadataValue] = self.metadata
        theirs = getattr(details, "flag_metadata", None)
        if theirs:
            merged = dict(metadata)
            merged.update(
                (str(k), v) for k, v in theirs.items() if isinstance(v, (bool, int, float, str))
            )
            metadata = merged
        raw_reason = getattr(details, "reason", None)
        reason_name = None if raw_reason is None else str(getattr(raw_reason, "value", raw_reason))
        error = getattr(details, "error_code", None)
        if error is not None:
            name = str(getattr(error, "value", error))
            code = _ERRORS.get(name, ErrorCode.GENERAL)
            message = getattr(details, "error_message", None) or name
            if code is ErrorCode.GENERAL and name != "GENERAL":
                message = f"{name}: {message}"
            return self._assignment(None, Reason.ERROR, metadata, code, message)
        if reason_name == "DISABLED":
            return self._assignment(None, Reason.DISABLED, metadata)
        reason = _REASONS.get(reason_name or "", Reason.UNKNOWN)
        if reason is Reason.UNKNOWN and reason_name and reason_name != "UNKNOWN":
            metadata = {**metadata, "openfeature.reason": reason_name}
        value = getattr(details, "value", None)
        variants = self.flag.variants
        variant = getattr(details, "variant", None)
        if isinstance(variant, str) and variant in variants and _same(variants[variant], value):
            return self._assignment(variant, reason, metadata)
        if variant is None and reason is Reason.DEFAULT and self.flag.default_variant is None:
            return self._assignment(None, Reason.DEFAULT, metadata)  # the caller's default
        for name, declared in variants.items():
            if _same(declared, value):
                return self._assignment(name, reason, metadata)
        problem = (
            f"the provider returned {value!r} (variant {variant!r}), which is not a declared "
            f"variant of this flag; declare it in OpenFeatureSource's flags"
        )
        if problem not in self._complained and len(self._complained) < 16:
            self._complained.add(problem)
            logger.error('flagwire: flag "%s": %s', self.key, problem)
        return self._assignment(None, Reason.ERROR, metadata, ErrorCode.GENERAL, problem)


class _BridgedFlagSet(FlagSet):
    """A flag set whose bridged flags are decided by an OpenFeature provider.

    The declarations are an ordinary (static) flag set — for variant names, propagation,
    ``definition()`` and iteration — and each bridged flag's decision is asked of the
    provider, in :meth:`evaluate`, :meth:`decide` and the per-request deciders alike.
    """

    __slots__ = ("_bridges",)

    def _bridge(self, bridges: dict[str, _Bridge]) -> None:
        self._bridges = bridges
        self._deciders.update(bridges)

    def evaluate(
        self,
        key: str,
        context: Context | None = None,
        default: Any = None,
        *,
        flag_type: FlagType | None = None,
    ) -> Assignment:
        bridge = self._bridges.get(key)
        if bridge is None:
            return super().evaluate(key, context, default, flag_type=flag_type)
        return fit(bridge(context or {}), default, flag_type)

    def decide(self, key: str, context: dict[str, Any]) -> Assignment:
        bridge = self._bridges.get(key)
        if bridge is None:
            return super().decide(key, context)
        return bridge(context)


class OpenFeatureSource(SourceBase):
    """An OpenFeature provider (or client) as a flagwire :class:`~flagwire.Source`.

    The flags in ``flags`` become a flagwire flag set whose decisions are the
    provider's: each request asks the provider once per flag, with the request's context
    (``targetingKey`` becomes the targeting key, the rest attributes), and keeps the
    answer for the rest of the request, like any flagwire decision. The answer is mapped
    to a declared variant — by the variant name the provider gives, if it is declared
    with that value, otherwise by value — so propagation and telemetry can name it.

    A provider error (including a raise, and a value that is none of the declared
    variants) is an ``ERROR`` assignment: the caller's default, never an exception. A
    provider answer with reason ``DISABLED`` is flagwire's ``DISABLED``; unknown reasons
    are ``UNKNOWN`` (the provider's reason is in metadata ``openfeature.reason``).

    Pass a client (``api.get_client(domain)``) to go through OpenFeature's hooks, its
    global and transaction contexts and its provider-status checks; pass a provider to
    call it directly (it must be initialised already).

    Args:
        client_or_provider: An ``OpenFeatureClient`` or a ``FeatureProvider``.
        flags: Flag key -> :class:`BridgedFlag` or a mapping with ``variants``,
            ``defaultVariant`` (optional), ``type`` (optional) and ``metadata``.
        version: The flag-set version label (``metadata.version``) to report.
        name: The source name in logs (default: the provider's metadata name).

    Raises:
        ConfigError: A declaration is invalid, or the provider is a FlagwireProvider.
    """

    def __init__(
        self,
        client_or_provider: Any,
        flags: Mapping[str, BridgedFlag | Mapping[str, Any]],
        *,
        version: str | None = None,
        name: str | None = None,
    ) -> None:
        is_client = hasattr(client_or_provider, "get_boolean_details")
        if not is_client and not hasattr(client_or_provider, "resolve_boolean_details"):
            raise ConfigError(
                "OpenFeatureSource needs an OpenFeature client or provider, not "
                f"{type(client_or_provider).__name__}"
            )
        provider = client_or_provider.provider if is_client else client_or_provider
        if getattr(provider, "_asks_flagwire", False):
            raise ConfigError("OpenFeatureSource over a FlagwireProvider would ask itself")
        if name is None:
            try:
                name = f"openfeature:{provider.get_metadata().name}"
            except Exception:
                name = "openfeature"
        super().__init__(name)
        self.target = client_or_provider
        self.declared = {key: BridgedFlag.of(key, spec) for key, spec in flags.items()}
        document: dict[str, Any] = {
            "flags": {
                key: {
                    "state": "ENABLED",
                    "variants": dict(flag.variants),
                    "defaultVariant": flag.default_variant,
                    **({"metadata": dict(flag.metadata)} if flag.metadata else {}),
                }
                for key, flag in self.declared.items()
            }
        }
        if version is not None:
            document["metadata"] = {"version": version}
        flagset = _BridgedFlagSet(parse_document(document, source=name))
        flagset._bridge(
            {
                key: _Bridge(key, flag, client_or_provider, is_client, flagset)
                for key, flag in self.declared.items()
            }
        )
        self._accept(flagset)

    def __repr__(self) -> str:
        return f"<OpenFeatureSource {self._name} flags={len(self.declared)}>"

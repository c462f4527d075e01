"""flagwire and OpenFeature, both ways (the ``openfeature`` extra).

:class:`FlagwireProvider` makes flagwire an OpenFeature provider: code written against
the OpenFeature API gets, inside a request, the request's own assignments — pinned,
memoised, honouring trusted upstream (propagated) decisions — exactly what
:func:`flagwire.current_flags` gives::

    from openfeature import api
    from flagwire.openfeature import FlagwireProvider

    api.set_provider(FlagwireProvider())
    api.get_client().get_boolean_value("new-checkout", False)  # == current_flags()...

:class:`OpenFeatureSource` goes the other way: any OpenFeature provider (a vendor's)
becomes a flagwire source, so flagwire's middleware, propagation and telemetry work
with the vendor's flags. A provider decides per context and does not list its flags or
variants, so you declare the flags to bridge — type, variants (name -> value) and the
default variant — and each decision is asked of the provider and mapped back to one of
the declared variants::

    source = OpenFeatureSource(
        api.get_client("vendor"),
        {"new-checkout": BridgedFlag({"on": True, "off": False}, default_variant="off")},
    )
    app.add_middleware(FlagwireMiddleware, source=source)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ._errors import missing_extra

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode as OFErrorCode
    from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
    from openfeature.flag_evaluation import Reason as OFReason
    from openfeature.provider import AbstractProvider, Metadata
    from openfeature.track import TrackingEventDetails
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.openfeature", "the OpenFeature SDK", "openfeature") from exc


from ._engine.assignment import Assignment, ErrorCode, FlagType, Reason
from ._engine.flagset import FlagSet
from ._request.scope import EMPTY_FLAGSET, current_flags, default_source, request_flags
from ._sources.base import Source
from ._sources.openfeature import BridgedFlag, OpenFeatureSource

__all__ = ["BridgedFlag", "FlagwireProvider", "OpenFeatureSource"]

logger = logging.getLogger("flagwire")

ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]

# -- flagwire -> OpenFeature --------------------------------------------------------------

_OF_ERROR: Final[dict[ErrorCode, OFErrorCode]] = {
    code: OFErrorCode(code.value) for code in ErrorCode
}
"""flagwire's error codes are OpenFeature's by name (flagwire has no PROVIDER_FATAL)."""


def to_context(evaluation_context: EvaluationContext | None) -> dict[str, Any]:
    """An OpenFeature evaluation context as a flagwire context (``targetingKey`` + attributes)."""
    if evaluation_context is None:
        return {}
    context: dict[str, Any] = dict(evaluation_context.attributes)
    if evaluation_context.targeting_key:
        context["targetingKey"] = evaluation_context.targeting_key
    return context


class FlagwireProvider(AbstractProvider):
    """flagwire as an OpenFeature provider.

    Inside a flagwire request (the ASGI/WSGI middleware, the Flask extension, or
    :func:`flagwire.activate`) every resolution goes through the request's
    :class:`~flagwire.RequestFlags`: the request's pinned flag set and context, memoised
    decisions, and trusted upstream assignments. The OpenFeature evaluation context
    (global, client, transaction and invocation contexts) is **not** used there: the
    request's context, built by the middleware's extractors, decided (or will decide)
    the flag once for the whole request.

    Outside a request each resolution is a fresh evaluation against ``source`` (or, with
    none, the default source :func:`flagwire.set_default_source`, which the middleware
    sets) with the OpenFeature context: ``targeting_key`` becomes ``targetingKey`` and
    the attributes are passed as they are.

    Reasons are flagwire's, which are OpenFeature's names, except a decision honoured
    from a trusted upstream service: its reason is the string ``"PROPAGATED"`` (OpenFeature
    allows provider-specific reasons), or ``propagated_reason`` if given (e.g.
    ``Reason.TARGETING_MATCH`` for tools that only know the standard reasons). Error codes
    map by name; a flag of another type than asked for gives ``TYPE_MISMATCH`` (and the
    OpenFeature client returns the caller's default). Flag metadata (the flag set's merged
    with the flag's) is passed through.

    OpenFeature's tracking API (``client.track(name, context, details)``) is
    :meth:`flagwire.RequestFlags.track` on the request's flags: the event, with
    ``details.value`` as its value, counts for every flag the request decides (the
    details' attributes and the evaluation context are not used). Outside a request
    there is no decision to count it for, and the event is dropped with a warning.

    Args:
        source: The flagwire source (or flag set) used outside requests.
        propagated_reason: The OpenFeature reason for propagated decisions.
    """

    _asks_flagwire = True  # OpenFeatureSource refuses to bridge it: it would ask itself

    def __init__(
        self,
        source: Source | FlagSet | None = None,
        *,
        propagated_reason: str = Reason.PROPAGATED.value,
    ) -> None:
        super().__init__()
        self._source = source
        self._propagated_reason = propagated_reason
        self._unsubscribe: Callable[[], None] | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="flagwire")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        source = self._source
        if source is not None and not isinstance(source, FlagSet):
            self._unsubscribe = source.subscribe(self._changed)

    def shutdown(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _changed(self, old: FlagSet, new: FlagSet) -> None:
        from openfeature.event import ProviderEventDetails

        keys = sorted(
            key for key in set(old) | set(new) if old.definition(key) != new.definition(key)
        )
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=keys, message=f"flag set {new.version_label}")
        )

    def _flagset(self) -> FlagSet:
        source = self._source
        if isinstance(source, FlagSet):
            return source
        if source is None:
            source = default_source()
        return source.flagset if source is not None else EMPTY_FLAGSET

    def assignment(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
        flag_type: FlagType,
    ) -> Assignment:
        """The flagwire :class:`~flagwire.Assignment` a resolution is made from."""
        flags = request_flags()
        if flags is not None:
            return flags.details(flag_key, default_value, flag_type)
        return self._flagset().evaluate(
            flag_key, to_context(evaluation_context), default_value, flag_type=flag_type
        )

    def _resolve(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
        flag_type: FlagType,
    ) -> FlagResolutionDetails[Any]:
        try:
            found = self.assignment(flag_key, default_value, evaluation_context, flag_type)
        except Exception as exc:  # flagwire never raises here; belt and braces
            logger.exception("flagwire: resolving %r for OpenFeature failed", flag_key)
            return FlagResolutionDetails(
                value=default_value,
                error_code=OFErrorCode.GENERAL,
                error_message=f"{type(exc).__name__}: {exc}",
                reason=OFReason.ERROR,
            )
        reason: str = found.reason.value
        if found.reason is Reason.PROPAGATED:
            reason = self._propagated_reason
        return FlagResolutionDetails(
            value=found.value,
            error_code=None if found.error_code is None else _OF_ERROR[found.error_code],
            error_message=found.error_message,
            reason=reason,
            variant=found.variant,
            flag_metadata=dict(found.flag_metadata),
        )

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        value = None if tracking_event_details is None else tracking_event_details.value
        # Outside a request current_flags() gives throwaway flags, which drop it (warning).
        current_flags().track(tracking_event_name, value)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.BOOLEAN)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.STRING)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.INTEGER)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.FLOAT)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.OBJECT)

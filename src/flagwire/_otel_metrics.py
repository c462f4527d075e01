"""The Prometheus metrics' meaning on an OpenTelemetry metrics pipeline
(:class:`OTelMetricsTelemetry`, exported by :mod:`flagwire.otel`)."""

from __future__ import annotations

from typing import Any

__all__ = ["OTelMetricsTelemetry"]


class OTelMetricsTelemetry:
    """The Prometheus metrics' meaning on an OpenTelemetry metrics pipeline.

    Instruments (attributes as the Prometheus labels): ``flagwire.request.duration``
    (histogram, seconds; flag, variant, method, route, status_class, once per decided flag
    per request), ``flagwire.evaluations`` (counter; flag, variant, reason),
    ``flagwire.evaluation.errors`` (counter; flag, error_code), and observable gauges
    ``flagwire.source.up``, ``flagwire.flagset.last_load`` (unix seconds) and
    ``flagwire.flags.expired`` per source.

    Args:
        meter_provider: Default: the global one.
        sources: Sources whose health and expired flags to report.
        max_flags: Decided flags per request; the rest are counted as ``_other``.
    """

    def __init__(
        self,
        *,
        meter_provider: Any = None,
        sources: Any = (),
        max_flags: int = 20,
    ) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import CallbackOptions, Observation

        from ._telemetry import bounded, expired_flags, status_class, variant_label

        meter = (meter_provider or metrics.get_meter_provider()).get_meter("flagwire")
        self.max_flags = max_flags
        self._bounded = bounded
        self._status_class = status_class
        self._variant_label = variant_label
        self.duration = meter.create_histogram(
            "flagwire.request.duration",
            unit="s",
            description="Request duration, once per flag the request decided, by variant.",
        )
        self.evaluations = meter.create_counter(
            "flagwire.evaluations", description="Flags decided in requests."
        )
        self.errors = meter.create_counter(
            "flagwire.evaluation.errors", description="Flag evaluations that ended in an error."
        )
        self._sources = list(sources)

        def up(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(1 if s.status.ok else 0, {"source": s.flagset.source or ""})
                for s in self._sources
            ]

        def last_load(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(s.status.last_good_load.timestamp(), {"source": s.flagset.source or ""})
                for s in self._sources
                if s.status.last_good_load is not None
            ]

        def expired(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(len(expired_flags(s.flagset)), {"source": s.flagset.source or ""})
                for s in self._sources
            ]

        meter.create_observable_gauge("flagwire.source.up", callbacks=[up])
        meter.create_observable_gauge("flagwire.flagset.last_load", callbacks=[last_load], unit="s")
        meter.create_observable_gauge("flagwire.flags.expired", callbacks=[expired])

    def record(self, request: Any) -> None:
        status = self._status_class(request.status)
        for key, decision in self._bounded(request.decisions, self.max_flags):
            variant = self._variant_label(decision)
            self.duration.record(
                request.duration,
                {
                    "flag": key,
                    "variant": variant,
                    "method": request.method,
                    "route": request.route,
                    "status_class": status,
                },
            )
            self.evaluations.add(
                1, {"flag": key, "variant": variant, "reason": decision.reason.value}
            )
            if decision.error_code is not None:
                self.errors.add(1, {"flag": key, "error_code": decision.error_code.value})

"""Sources' health and flag sets as Prometheus metrics, collected at scrape time (the
source collector of :mod:`flagwire.prometheus`)."""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ._engine.flagset import FlagSet
from ._sources.base import Source
from ._telemetry import expiries, label_text

__all__ = ["EXPIRY_WINDOW", "SourceCollector"]

EXPIRY_WINDOW = 30 * 86400
"""Flags that expire within this many seconds (or have expired) get an expiry series; the
rest, often most of a large flag set, would only make every scrape bigger."""


class SourceCollector(Collector):
    """Exports sources' health and flag sets at scrape time (nothing on the request path)."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._sources = list(sources)
        # Per source: the flag set last exported and its expiry samples. A flag set never
        # changes, so a scrape rebuilds them only after a reload (10,000 flags: one walk
        # per version, not per scrape).
        self._expiries: dict[int, tuple[FlagSet, str, list[float], list[Sample]]] = {}

    def add(self, source: Source) -> None:
        """Export one more source (once, however often it is added)."""
        if not any(known is source for known in self._sources):
            self._sources.append(source)

    def collect(self) -> Iterable[Any]:
        info = GaugeMetricFamily(
            "flagwire_flagset_info",
            "The flag set in force (value 1).",
            labels=["source", "version"],
        )
        loaded = GaugeMetricFamily(
            "flagwire_flagset_last_load_timestamp_seconds",
            "When the flag set in force was loaded.",
            labels=["source"],
        )
        up = GaugeMetricFamily(
            "flagwire_source_up", "1 if the source's last load succeeded.", labels=["source"]
        )
        failures = CounterMetricFamily(
            "flagwire_source_failures", "Failed loads of the source.", labels=["source"]
        )
        expiry = GaugeMetricFamily(
            "flagwire_flag_expiry_timestamp_seconds",
            "When a flag expires (metadata.expires, end of day UTC): the flags expired or "
            "expiring within 30 days.",
            labels=["source", "flag", "owner"],
        )
        expired = GaugeMetricFamily(
            "flagwire_flags_expired", "Flags past their expiry date now.", labels=["source"]
        )
        now = time.time()
        for source in list(self._sources):
            flagset = source.flagset
            name = label_text(flagset.source or repr(source))
            status = source.status
            info.add_metric([name, label_text(status.version)], 1)
            if status.last_good_load is not None:
                loaded.add_metric([name], status.last_good_load.timestamp())
            up.add_metric([name], 1 if status.ok else 0)
            failures.add_metric([name], status.failures)
            whens, samples = self._expiry_samples(source, flagset, name)
            expiry.samples.extend(samples[: bisect_right(whens, now + EXPIRY_WINDOW)])
            expired.add_metric([name], bisect_left(whens, now))
        yield from (info, loaded, up, failures, expiry, expired)

    def _expiry_samples(
        self, source: Source, flagset: FlagSet, name: str
    ) -> tuple[list[float], list[Sample]]:
        cached = self._expiries.get(id(source))
        if cached is not None and cached[0] is flagset and cached[1] == name:
            return cached[2], cached[3]
        found = sorted((when, key, owner) for key, owner, when in expiries(flagset))
        whens = [when for when, _, _ in found]
        samples = [
            Sample(
                "flagwire_flag_expiry_timestamp_seconds",
                {"source": name, "flag": label_text(key), "owner": label_text(owner)},
                when,
            )
            for when, key, owner in found
        ]
        self._expiries[id(source)] = (flagset, name, whens, samples)
        return whens, samples

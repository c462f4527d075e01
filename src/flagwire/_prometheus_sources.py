"""Sources' health and flag sets as Prometheus metrics, collected at scrape time (the
source collector of :mod:`flagwire.prometheus`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ._sources.base import Source
from ._telemetry import expiries, label_text

__all__ = ["SourceCollector"]


class SourceCollector(Collector):
    """Exports sources' health and flag sets at scrape time (nothing on the request path)."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._sources = list(sources)

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
            "When a flag expires (metadata.expires, end of day UTC).",
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
            count = 0
            for key, owner, when in expiries(flagset):
                expiry.add_metric([name, label_text(key), label_text(owner)], when)
                count += when < now
            expired.add_metric([name], count)
        yield from (info, loaded, up, failures, expiry, expired)

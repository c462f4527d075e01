"""Request observations are batched without a lock and applied before every scrape: what a
scrape reads is exactly what observing each request directly would give."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from flagwire import FlagSet, RequestFlags
from flagwire._prometheus_batch import FLUSH_SECONDS, MAX_PENDING
from flagwire._telemetry import RequestRecord
from flagwire.prometheus import DEFAULT_BUCKETS, PrometheusTelemetry

FLAGSET = FlagSet.from_mapping(
    {
        "flags": {
            key: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", 50], ["off", 50]]},
            }
            for key in ("a", "b", "c")
        }
    }
)


def _request(user: int, duration: float) -> RequestRecord:
    flags = RequestFlags(FLAGSET, {"targetingKey": f"user-{user}"})
    for key in ("a", "b", "c"):
        flags.boolean(key)
    return RequestRecord(dict(flags.evaluated()), "GET", "/x", 200, duration, "v")


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[Any, ...], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def test_a_scrape_reads_what_observing_each_request_would_give() -> None:
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry)
    expected = CollectorRegistry()
    direct = Histogram(
        "flagwire_request_duration_seconds",
        "",
        ["flag", "variant", "method", "route", "status_class"],
        registry=expected,
        buckets=DEFAULT_BUCKETS,
    )
    rng = random.Random(7)
    # Durations on the bucket bounds too: a bound belongs to its own bucket (le).
    durations = [*DEFAULT_BUCKETS, 0.0, 11.0, *(rng.uniform(0, 3) for _ in range(300))]
    for user, duration in enumerate(durations):
        record = _request(user, duration)
        telemetry.record(record)
        for key, decision in record.decisions.items():
            direct.labels(key, decision.variant, "GET", "/x", "2xx").observe(duration)

    got = _samples(registry, "flagwire_request_duration_seconds")
    want = _samples(expected, "flagwire_request_duration_seconds")

    assert got.keys() == want.keys()
    for name, value in want.items():
        if name[0].endswith("_sum"):  # added in another order: equal up to rounding
            assert abs(got[name] - value) < 1e-9, name
        else:  # buckets and counts: exactly
            assert got[name] == value, name
    assert sum(v for k, v in got.items() if k[0].endswith("_count")) == 3 * len(durations)
    evaluations = _samples(registry, "flagwire_evaluations_total")
    assert sum(evaluations.values()) == 3 * len(durations)


def test_observations_reach_the_metrics_within_seconds_without_a_scrape() -> None:
    # What a multiprocess deployment relies on: its scrape reads the metric values (the
    # workers' files), not this registry.
    telemetry = PrometheusTelemetry(registry=CollectorRegistry())
    for user in range(20):
        telemetry.record(_request(user, 0.01))

    deadline = time.monotonic() + FLUSH_SECONDS * 5
    total = 0.0
    while time.monotonic() < deadline:
        total = sum(
            s.value
            for m in telemetry.evaluations.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        if total == 60:
            break
        time.sleep(0.05)

    assert total == 60


def test_the_pending_batch_is_bounded_when_nothing_flushes() -> None:
    telemetry = PrometheusTelemetry(registry=CollectorRegistry())
    record = _request(1, 0.02)

    for _ in range(MAX_PENDING):  # 3 observations each: far past the bound
        telemetry.record(record)

    assert len(telemetry._batch._pending) < MAX_PENDING
    telemetry.flush()
    counts = [
        s.value
        for m in telemetry.evaluations.collect()
        for s in m.samples
        if s.name.endswith("_total")
    ]
    assert sum(counts) == 3 * MAX_PENDING


def test_concurrent_requests_and_scrapes_lose_nothing() -> None:
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry)
    records = [_request(user, 0.003 * user) for user in range(50)]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            registry.collect()  # a generator: drain it as a scrape does
            list(registry.collect())

    def serve() -> None:
        for _ in range(40):
            for record in records:
                telemetry.record(record)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=serve) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    scraper.join()

    counts = _samples(registry, "flagwire_request_duration_seconds_count")
    assert sum(counts.values()) == 4 * 40 * 50 * 3


def test_a_forked_child_does_not_count_its_parents_pending_observations() -> None:
    import os

    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry)
    telemetry.record(_request(1, 0.01))  # pending in the parent
    read, write = os.pipe()
    with telemetry._batch._flushing:  # no flush by the process's thread meanwhile
        pid = os.fork()
    if pid == 0:  # the child: what would it apply?
        try:
            telemetry.flush()
            counts = _samples(registry, "flagwire_request_duration_seconds_count")
            os.write(write, str(sum(counts.values())).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_count = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)

    assert float(child_count) == 0
    assert sum(_samples(registry, "flagwire_request_duration_seconds_count").values()) == 3

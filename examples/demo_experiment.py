"""The demo's experiment: synthetic shoppers, and the report on what they did.

``examples/demo.py`` sends its thousand users through the gateway with :func:`shoppers`
(some of them order, more often under one ranking than the others), and ends with
:func:`experiment_report`: ``flagwire report``'s table for ``search-ranking``, from the
gateway's own ``/metrics``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent

EXPERIMENT_FLAG = "search-ranking"
# The synthetic truth: how often a shopper orders, by the ranking they are shown.
ORDER_RATE = {"control": 0.10, "treatment-a": 0.20, "treatment-b": 0.10}


def shoppers(population: list[dict[str, str]]) -> list[dict[str, str]]:
    """Give the users who order an ``x-order-total`` header (the gateway tracks it).

    Whether a synthetic shopper orders depends on the ranking they see, which the demo
    knows ahead of the request by evaluating the gateway's own flag file for them.
    """
    from flagwire import FlagSet

    flagset = FlagSet.from_path(HERE / "flags.yaml")
    rng = random.Random(16)
    with_orders = []
    for user in population:
        context = {"targetingKey": user["x-user-id"], "plan": user["x-plan"]}
        ranking = flagset.evaluate(EXPERIMENT_FLAG, context, "classic").variant
        if rng.random() < ORDER_RATE.get(ranking or "control", 0.10):
            user = {**user, "x-order-total": f"{rng.lognormvariate(3.6, 0.5):.2f}"}
        with_orders.append(user)
    return with_orders


def experiment_report(url: str, *, since: str) -> None:
    """``flagwire report`` for the experiment, from the gateway's own ``/metrics``.

    The demo runs no Prometheus, so the per-variant figures are read from the exposition
    text (prometheus_client's parser) instead of PromQL, and handed to the same report
    code ``flagwire report`` uses (``pip install -e ".[report]"`` for scipy).
    """
    try:
        from flagwire._analysis import EventFigures, VariantFigures, build_report, render_table
        from flagwire._cli.report import CONTROL_METADATA, split_weights
    except ImportError as exc:
        print(f'\nno experiment report: {exc} (pip install -e ".[report]")')
        return
    from prometheus_client.parser import text_string_to_metric_families

    from flagwire import FlagSet

    text = httpx.get(f"{url}/metrics", trust_env=False, follow_redirects=True).text
    totals: dict[tuple[str, str], float] = Counter()  # (what, variant) -> sum
    buckets: dict[str, Counter[float]] = {}
    events = {"flagwire_events_total", "flagwire_event_value_total"}
    events.add("flagwire_event_value_squared_total")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            variant = labels.get("variant")
            if labels.get("flag") != EXPERIMENT_FLAG or variant in (None, "_none"):
                continue
            if sample.name == "flagwire_request_duration_seconds_count":
                totals["requests", variant] += sample.value
                if labels["status_class"] == "5xx":
                    totals["errors", variant] += sample.value
            elif sample.name == "flagwire_request_duration_seconds_bucket":
                buckets.setdefault(variant, Counter())[float(labels["le"])] += sample.value
            elif sample.name in events and labels["event"] == "checkout":
                totals[sample.name, variant] += sample.value
    figures = [
        VariantFigures(
            variant=variant,
            requests=count,
            errors_5xx=totals["errors", variant],
            latency_buckets=tuple(sorted(buckets.get(variant, {}).items())),
            events={
                "checkout": EventFigures(
                    totals["flagwire_events_total", variant],
                    totals["flagwire_event_value_total", variant],
                    totals["flagwire_event_value_squared_total", variant],
                )
            },
        )
        for (what, variant), count in sorted(totals.items())
        if what == "requests"
    ]
    flagset = FlagSet.from_path(HERE / "flags.yaml")
    definition = flagset.definition(EXPERIMENT_FLAG)
    assert definition is not None
    report = build_report(
        figures,
        flag=EXPERIMENT_FLAG,
        control=str(definition.metadata[CONTROL_METADATA]),
        weights=split_weights(flagset, EXPERIMENT_FLAG),
        since=since,
    )
    print(f"\nthe {EXPERIMENT_FLAG} experiment, from the gateway's metrics (true order rates:")
    print(f"  {', '.join(f'{k} {v:.0%}' for k, v in ORDER_RATE.items())}):\n")
    print(render_table(report), end="")

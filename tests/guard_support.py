"""What the guard's tests share: a flag document with a rollout plan, and figures."""

from __future__ import annotations

import math
from typing import Any

from flagwire._analysis.figures import VariantFigures

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def plan_metadata(**overrides: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "owner": "checkout-team",
        "rollout.variant": "on",
        "rollout.control": "off",
        "rollout.steps": "1,5,25,50,100",
        "rollout.bake": 600,
        "guard.min_requests": 500,
        "guard.window": 300,
        "guard.error_rate_increase": 0.01,
        "guard.p95_ratio": 1.25,
        "guard.action": "rollback",
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def guarded_document(share: float = 1, *, targeting: Any = None, **metadata: Any) -> dict[str, Any]:
    """``new-checkout`` at ``share`` percent of ``on`` (the rest ``off``), with a plan."""
    if targeting is None:
        targeting = {"fractional": [["on", share], ["off", 100 - share]]}
    return {
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": targeting,
                "metadata": plan_metadata(**metadata),
            },
            "banner": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a"},
        }
    }


def figures(
    name: str, requests: float, errors: float = 0.0, *, slow: float = 0.0
) -> VariantFigures:
    """``requests`` of which ``errors`` failed: 95% under 25 ms, the rest under 50 ms, and
    a ``slow`` share of all of them moved to 250-500 ms."""
    fast = requests * (1 - slow)
    cumulative = []
    for le in BUCKETS:
        if le < 0.025:
            count = 0.0
        elif le < 0.05:
            count = 0.95 * fast
        elif le < 0.5:
            count = fast
        else:
            count = requests
        cumulative.append((le, count))
    cumulative.append((math.inf, requests))
    return VariantFigures(name, requests, errors, tuple(cumulative))

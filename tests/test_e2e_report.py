"""End to end: ``flagwire report`` on a real service behind a real Prometheus.

``tests/e2e_apps/experiment_fastapi.py`` runs under uvicorn with ``PrometheusTelemetry``;
a real Prometheus scrapes its ``/metrics`` every second. Synthetic users with known true
effects visit it once each: ``checkout-v2=on`` converts 20% more often than ``off`` (24%
against 20%), ``aa-test`` splits users into two identical arms, and ``skewed`` is served
45/55 while the flag file given to the report says 50/50. ``flagwire report --json`` then
runs as a subprocess, and its JSON must say what the truth is: the lift significant with
an interval that covers it, the A/A split not significant, the skew caught by the
sample-ratio check; and its figures must be scipy's on the same counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy import stats

from flagwire._analysis.reader import PrometheusClient
from test_analysis_e2e import running_prometheus
from test_e2e import REPO, TEST_APPS, Server, _Launcher

pytestmark = pytest.mark.e2e

USERS = 6000
BASE_RATE = 0.20
LIFT = 0.20
SINCE = "10m"


def _flag(split: dict[str, int], control: str) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {name: name for name in split},
        "defaultVariant": control,
        "targeting": {"fractional": [[name, weight] for name, weight in split.items()]},
        "metadata": {"owner": "growth", "kind": "experiment", "rollout.control": control},
    }


def _document(skewed: dict[str, int]) -> dict[str, Any]:
    return {
        "flags": {
            "checkout-v2": _flag({"on": 50, "off": 50}, "off"),
            "aa-test": _flag({"a": 50, "b": 50}, "a"),
            "skewed": _flag(skewed, "x"),
        }
    }


@dataclass
class _Experiment:
    prometheus: PrometheusClient
    intended: Path
    requests: Counter[tuple[str, str]]
    conversions: Counter[tuple[str, str]]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Experiment]:
    directory = tmp_path_factory.mktemp("experiment")
    served = directory / "served.json"
    served.write_text(json.dumps(_document({"x": 45, "y": 55})), encoding="utf-8")
    intended = directory / "intended.json"
    intended.write_text(json.dumps(_document({"x": 50, "y": 50})), encoding="utf-8")
    launcher = _Launcher(directory)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EXPERIMENT_BASE_RATE", str(BASE_RATE))
        env.setenv("EXPERIMENT_LIFT", str(LIFT))
        service = launcher.start("fastapi", served, app_dir=TEST_APPS, module="experiment_fastapi")
    try:
        target = service.url.removeprefix("http://")
        scraper = directory / "prometheus"
        scraper.mkdir()
        with running_prometheus(scraper, target) as prometheus:
            _wait_for_scrape(prometheus, after=0.0)
            requests, conversions = asyncio.run(_visit(service))
            _wait_for_scrape(prometheus, after=time.time())
            yield _Experiment(prometheus, intended, requests, conversions)
    finally:
        launcher.close()


def _wait_for_scrape(prometheus: PrometheusClient, *, after: float) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = prometheus.query('max(timestamp(up{job="app"} == 1))')
        if found and found[0].value > after:
            return
        time.sleep(0.2)
    pytest.fail("Prometheus did not scrape the service")


async def _visit(service: Server) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """Every synthetic user visits once; what the service said it served and converted."""
    rng = random.Random(20261126)
    visits = [
        (f"user-{i:05d}", rng.random(), round(rng.lognormvariate(3.5, 0.5), 2))
        for i in range(USERS)
    ]
    requests: Counter[tuple[str, str]] = Counter()
    conversions: Counter[tuple[str, str]] = Counter()
    gate = asyncio.Semaphore(32)
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=service.url, trust_env=False, timeout=10.0, limits=limits
    ) as client:

        async def one(user: str, draw: float, amount: float) -> None:
            async with gate:
                response = await client.get(
                    "/visit",
                    headers={"x-user-id": user, "x-draw": str(draw), "x-amount": str(amount)},
                )
            assert response.status_code == 200, response.text
            body = response.json()
            for flag, variant in body["variants"].items():
                requests[flag, variant] += 1
                conversions[flag, variant] += body["converted"]

        await asyncio.gather(*(one(*visit) for visit in visits))
    return requests, conversions


def _reports(experiment: _Experiment, runs: dict[str, list[str]]) -> dict[str, Any]:
    """``flagwire report ... --json`` for each run, as subprocesses side by side."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    common = [
        *(sys.executable, "-m", "flagwire", "report"),
        *("--prometheus", experiment.prometheus.base_url, "--since", SINCE),
        *("--flags", str(experiment.intended), "--event", "checkout", "--json"),
    ]
    started = {
        name: subprocess.Popen(
            [*common, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for name, args in runs.items()
    }
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=60)
        assert out, err
        done[name] = {"exit": process.returncode, "json": json.loads(out), "stderr": err}
    return done


@pytest.fixture(scope="module")
def reports(experiment: _Experiment) -> dict[str, Any]:
    return _reports(
        experiment,
        {
            "lift": ["--flag", "checkout-v2"],
            "aa": ["--flag", "aa-test"],
            "aa-sequential": ["--flag", "aa-test", "--sequential"],
            "skewed": ["--flag", "skewed"],
        },
    )


def _checkout_rate(report: dict[str, Any]) -> dict[str, Any]:
    (found,) = [
        c for c in report["comparisons"] if c["metric"] == "event_rate" and c["event"] == "checkout"
    ]
    return found


def _variant(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in report["variants"] if v["variant"] == name]
    return found


def test_a_real_lift_is_significant_and_its_interval_covers_the_truth(
    reports: dict[str, Any], experiment: _Experiment
) -> None:
    run = reports["lift"]
    report = run["json"]

    assert run["exit"] == 0, run["stderr"]
    assert report["control"] == "off"  # from the flag's rollout.control metadata
    assert not report["srm"]["mismatch"]
    rate = _checkout_rate(report)
    assert rate["model"] == "proportion"
    assert rate["significant"], rate
    assert rate["relative"]["low"] <= LIFT <= rate["relative"]["high"], rate
    truth = BASE_RATE * LIFT
    assert rate["difference"]["low"] <= truth <= rate["difference"]["high"], rate
    assert rate["difference"]["low"] > 0
    # The service's own account of what it served, against what Prometheus says.
    for variant in ("on", "off"):
        figures = _variant(report, variant)
        served = experiment.requests["checkout-v2", variant]
        converted = experiment.conversions["checkout-v2", variant]
        assert figures["requests"] == pytest.approx(served, rel=0.15)
        assert figures["events"]["checkout"]["rate_per_request"]["estimate"] == pytest.approx(
            converted / served, rel=0.02
        )


def test_an_aa_split_is_not_significant(reports: dict[str, Any]) -> None:
    for name in ("aa", "aa-sequential"):
        run = reports[name]
        report = run["json"]

        assert run["exit"] == 0, run["stderr"]
        assert report["control"] == "a"
        assert not report["srm"]["mismatch"]
        rate = _checkout_rate(report)
        assert not rate["significant"], (name, rate)
        assert rate["difference"]["low"] <= 0 <= rate["difference"]["high"]
    assert reports["aa-sequential"]["json"]["mode"] == "sequential"
    fixed = _checkout_rate(reports["aa"]["json"])["difference"]
    always_valid = _checkout_rate(reports["aa-sequential"]["json"])["difference"]
    assert always_valid["high"] - always_valid["low"] > 1.3 * (fixed["high"] - fixed["low"])


def test_a_skewed_assignment_trips_the_sample_ratio_check(reports: dict[str, Any]) -> None:
    run = reports["skewed"]
    report = run["json"]

    assert run["exit"] == 1
    assert report["srm"]["mismatch"]
    assert report["srm"]["p_value"] < 1e-6
    assert report["warnings"][0].startswith("SAMPLE RATIO MISMATCH")
    assert report["srm"]["expected"]["x"] == pytest.approx(report["srm"]["expected"]["y"])


def test_the_json_figures_are_scipys_on_the_same_counts(reports: dict[str, Any]) -> None:
    report = reports["lift"]["json"]
    on, off = _variant(report, "on"), _variant(report, "off")
    rate = _checkout_rate(report)
    counts = [
        [v["events"]["checkout"]["count"], v["requests"] - v["events"]["checkout"]["count"]]
        for v in (on, off)
    ]
    chi2 = stats.chi2_contingency(counts, correction=False)
    assert rate["p_value"] == pytest.approx(chi2.pvalue, rel=1e-9)

    (mean,) = [c for c in report["comparisons"] if c["metric"] == "event_mean_value"]

    def moments(v: dict[str, Any]) -> tuple[float, float, float]:
        e = v["events"]["checkout"]
        n = e["count"]
        m = e["value_sum"] / n
        return m, ((e["value_sq_sum"] - n * m * m) / (n - 1)) ** 0.5, n

    welch = stats.ttest_ind_from_stats(*moments(on), *moments(off), equal_var=False)
    assert mean["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    srm = report["srm"]
    expected = stats.chisquare(
        [srm["observed"]["on"], srm["observed"]["off"]],
        [srm["expected"]["on"], srm["expected"]["off"]],
    )
    assert srm["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)

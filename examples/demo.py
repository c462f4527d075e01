"""flagwire demo: a gateway and a service, two flag files, one answer per user, and
what it looks like in metrics and traces.

    python examples/demo.py

Starts the Flask service (examples/flask_app.py) under gunicorn on
``examples/flags-service.yaml`` and the FastAPI gateway (examples/gateway.py) under
uvicorn on ``examples/flags.yaml``, on loopback ports, with a shared propagation key.
The two files roll the same flags out differently (the service's copy is mid-rollout), as
happens while a change spreads. For each user the gateway decides, calls the service,
and the service honours the gateway's decisions from the signed ``baggage``: the demo
prints both services' variants per user, counts the users whose variants differ between
the hops (0), and how many would have differed had each service decided alone. Then it
shows an anonymous visitor keeping its bucket, the rollout shares over a thousand users,
a table of requests, p50/p95 latency and error rate per variant from each service's
flagwire metrics (the service's new checkout is made 20 ms slower), and one trace through
both services with its ``feature_flag.evaluation`` events. It ends with an experiment
report for ``search-ranking`` from the gateway's metrics: the thousand users are synthetic
shoppers who order twice as often when shown the vector ranking (``treatment-a``), the
gateway tracks each order (``flags.track("checkout", total)``), and the report compares
the order rate and value per variant with the control. The servers are stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from demo_experiment import experiment_report, shoppers

HERE = Path(__file__).resolve().parent
USERS = [
    {"x-user-id": "alice", "x-plan": "beta", "x-country": "DE", "x-app-version": "3.4.0"},
    {"x-user-id": "bob", "x-plan": "free", "x-country": "US", "x-app-version": "3.1.9"},
    {"x-user-id": "chen", "x-plan": "pro", "x-country": "FR", "x-app-version": "3.2.0"},
    {"x-user-id": "dara", "x-plan": "free", "x-country": "BR"},
    {"x-user-id": "eve", "x-plan": "pro", "x-country": "NL", "x-app-version": "2.9.1"},
    {"x-user-id": "farid", "x-plan": "free", "x-country": "IE"},
    {"x-user-id": "gita", "x-plan": "free", "x-country": "IN"},
    {"x-user-id": "hugo", "x-plan": "enterprise", "x-country": "ES"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server the demo started: its process and the file its output goes to."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def output(self, limit: int = 6000) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip() or "(no output)"


def start(
    name: str, command: list[str], env: dict[str, str], stack: ExitStack, logs: Path
) -> Server:
    log = logs / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".log")
    with log.open("wb") as out:  # a file, not a pipe nobody reads: a chatty server never blocks
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    stack.callback(stop)
    return Server(name, process, log)


def wait_ready(server: Server, url: str, timeout: float = 20.0) -> None:
    """Wait for ``url`` to answer 200; if the server exits or never answers, say why with
    its own output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise SystemExit(
                f"demo: {server.name} exited with code {code} before it came up "
                f"({url}). Its output:\n{server.output()}"
            )
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(
        f"demo: {server.name} ({url}) did not come up within {timeout:.0f} s. "
        f"Its output so far:\n{server.output()}"
    )


def cell(body: dict[str, Any]) -> str:
    checkout = "new" if body["new_checkout"] else "old"
    return f"{checkout:>3} {body['ranking']:<7} {'banner' if body['eu_banner'] else '-':<6}"


async def traffic(gateway: str, service: str) -> None:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        print(
            f"{'user':8} {'plan':11} {'country':7}  {'gateway':<20}{'service':<20}reason at service"
        )
        print("-" * 88)
        for user in USERS:
            body = (await client.get(f"{gateway}/checkout", headers=user)).json()
            reasons = sorted(set(body["service"]["reasons"].values()))
            print(
                f"{user['x-user-id']:8} {user['x-plan']:11} {user['x-country']:7}  "
                f"{cell(body['gateway']):<20}{cell(body['service']):<20}{', '.join(reasons)}"
            )
        print(
            f"\nflag-set versions: gateway {body['gateway']['version']}, "
            f"service {body['service']['version']}"
        )

        population = shoppers(
            [{"x-user-id": f"user-{i}", "x-plan": "free", "x-country": "DE"} for i in range(1000)]
        )
        differ = alone = 0
        checkout_on = 0
        ranking: Counter[str] = Counter()
        for start in range(0, len(population), 50):
            batch = population[start : start + 50]
            through = await asyncio.gather(
                *(client.get(f"{gateway}/checkout", headers=u) for u in batch)
            )
            direct = await asyncio.gather(
                *(client.get(f"{service}/checkout", headers=u) for u in batch)
            )
            for via_gateway, service_alone in zip(through, direct, strict=True):
                hop = via_gateway.json()
                if cell(hop["gateway"]) != cell(hop["service"]):
                    differ += 1
                if cell(hop["gateway"]) != cell(service_alone.json()):
                    alone += 1
                checkout_on += hop["gateway"]["new_checkout"]
                ranking[hop["gateway"]["ranking"]] += 1
        n = len(population)
        print(f"\n{n} users through gateway -> service:")
        print(f"  users whose variants differ between the two hops: {differ}")
        print(f"  users who would differ had the service decided alone: {alone}")
        print(f"  new-checkout canary (gateway: 20% configured): {checkout_on / n:.1%} on")
        shares = ", ".join(f"{k} {v / n:.1%}" for k, v in sorted(ranking.items()))
        print(f"  search-ranking (gateway: 50/25/25 configured): {shares}")

    print("\nan anonymous visitor (no user id) keeps its bucket through the flagwire_id cookie:")
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as visitor:
        seen = [(await visitor.get(f"{gateway}/checkout")).json() for _ in range(5)]
    ids = {body["gateway"]["user"] for body in seen}
    same = all(cell(b["gateway"]) == cell(b["service"]) for b in seen)
    print(f"  5 requests: ids {sorted(ids)}, same variants on both hops every time: {same}")


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def per_variant_table(metrics_text: str, service: str) -> None:
    """Requests, p50, p95 and error rate per flag variant, from flagwire's histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[tuple[str, str], dict[float, float]] = {}
    requests: dict[tuple[str, str], float] = {}
    errors: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "flagwire_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            key = (labels["flag"], labels["variant"])
            if sample.name.endswith("_bucket"):
                le = float(labels["le"])
                buckets.setdefault(key, {})
                buckets[key][le] = buckets[key].get(le, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                requests[key] = requests.get(key, 0.0) + sample.value
                if labels["status_class"] == "5xx":
                    errors[key] = errors.get(key, 0.0) + sample.value
    print(f"\nper variant, from {service}'s flagwire_request_duration_seconds:")
    print(f"  {'flag':16} {'variant':12} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for key in sorted(requests):
        ladder = sorted(buckets[key].items())
        p50, p95 = _quantile(0.5, ladder) * 1000, _quantile(0.95, ladder) * 1000
        error_rate = errors.get(key, 0.0) / requests[key]
        print(
            f"  {key[0]:16} {key[1]:12} {requests[key]:8.0f} {p50:8.1f} {p95:8.1f} "
            f"{error_rate:7.1%}"
        )


def print_trace(span_files: list[Path]) -> None:
    """One trace through both services, with the flag events on its server spans."""
    spans: list[dict[str, Any]] = []
    for path in span_files:
        if path.exists():
            spans += [json.loads(line) for line in path.read_text().splitlines() if line]
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["context"]["trace_id"], []).append(span)
    services = {str(s["resource"]["attributes"].get("service.name")) for s in spans}
    chosen = next(
        (
            t
            for t in by_trace.values()
            if sum(1 for s in t if s["kind"] == "SpanKind.SERVER") >= 2
            and any(e["name"] == "feature_flag.evaluation" for s in t for e in s["events"])
        ),
        None,
    )
    if chosen is None:
        print(f"\nno trace through both services was recorded ({len(spans)} spans, {services})")
        return
    print(f"\none trace through both services ({chosen[0]['context']['trace_id']}):")
    chosen.sort(key=lambda s: s["start_time"])
    for span in chosen:
        kind = span["kind"].replace("SpanKind.", "").lower()
        print(f"  {span['name']:28} {kind:8} {span['attributes'].get('http.url', '')}")
        for event in span["events"]:
            if event["name"] != "feature_flag.evaluation":
                continue
            a = event["attributes"]
            print(
                f"      feature_flag.evaluation  {a['feature_flag.key']} = "
                f"{a.get('feature_flag.result.variant', '-')}  "
                f"[{a['feature_flag.result.reason']}]"
            )


def main() -> int:
    env = {
        **os.environ,
        # One secret for both services; in production, a real secret from your vault.
        "FLAGWIRE_PROPAGATION_KEYS": secrets.token_urlsafe(32),
    }
    began = time.monotonic()
    gateway_port, service_port = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    service = f"http://127.0.0.1:{service_port}"
    print("gateway flags: examples/flags.yaml; service flags: examples/flags-service.yaml\n")
    spans_dir = Path(tempfile.mkdtemp(prefix="flagwire-demo-"))
    span_files = [spans_dir / "service.jsonl", spans_dir / "gateway.jsonl"]
    with ExitStack() as stack:
        checkout_service = start(
            "the checkout service (gunicorn, examples/flask_app.py)",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--chdir",
                str(HERE),
                "-b",
                f"127.0.0.1:{service_port}",
                "--threads",
                "8",
                "--keep-alive",  # longer than the gateway's client pool keeps connections
                "30",
                "--log-level",
                "warning",
                "flask_app:app",
            ],
            {
                **env,
                "FLAGWIRE_FLAGS": str(HERE / "flags-service.yaml"),
                "FLAGWIRE_EXAMPLE_SPANS": str(span_files[0]),
                "OTEL_SERVICE_NAME": "checkout-service",
                # The new checkout does 20 ms more work: the table below shows it.
                "EXAMPLE_NEW_CHECKOUT_EXTRA_MS": "20",
            },
            stack,
            spans_dir,
        )
        gateway_server = start(
            "the gateway (uvicorn, examples/gateway.py)",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway:app",
                "--app-dir",
                str(HERE),
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
                "--timeout-keep-alive",
                "30",
                "--log-level",
                "warning",
            ],
            {
                **env,
                "FLAGWIRE_FLAGS": str(HERE / "flags.yaml"),
                "SERVICE_URL": service,
                "FLAGWIRE_EXAMPLE_SPANS": str(span_files[1]),
                "OTEL_SERVICE_NAME": "gateway",
            },
            stack,
            spans_dir,
        )
        for server, url in ((checkout_service, service), (gateway_server, gateway)):
            wait_ready(server, f"{url}/healthz")
        asyncio.run(traffic(gateway, service))
        for name, url in (("the gateway", gateway), ("the service", service)):
            scrape = httpx.get(f"{url}/metrics", trust_env=False, follow_redirects=True)
            per_variant_table(scrape.text, name)
        print_trace(span_files)
        experiment_report(gateway, since=f"{time.monotonic() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

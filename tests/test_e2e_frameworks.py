"""End to end: Django under gunicorn and uvicorn, and one journey across frameworks.

The journey, each service a real process on 127.0.0.1 with its own flag file at its own
rollout: FastAPI gateway (uvicorn) -> gRPC service (grpcio, aio client interceptors) ->
Celery task (prefork worker, Redis) -> Django service (gunicorn, flagwire's httpx
transport). With shared keys every hop must give each of 500 users the gateway's
variants, a forged ``baggage`` must change nothing, and every hop's spans must carry the
flag events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytest.importorskip("django")
pytest.importorskip("celery")
pytest.importorskip("grpc")

import celery

from flagwire import FlagSet, Propagation
from frameworks_support import (
    COLORS,
    KEYS,
    Worker,
    app_env,
    document,
    redis_url,
    start_worker,
    stop_worker,
)
from test_e2e import TEST_APPS, Server, _free_port, _Launcher, _stop

pytestmark = pytest.mark.e2e
__all__ = ["redis_url"]  # a fixture

HOPS = {
    "gateway": document("gateway-1", 20, (34, 33, 33)),
    "grpc": document("grpc-1", 50, (10, 10, 80)),
    "worker": document("worker-1", 90, (80, 10, 10)),
    "django": document("django-1", 70, (10, 80, 10)),
}
USERS = [f"user-{n}" for n in range(500)]


def own(hop: str, user: str) -> tuple[Any, Any]:
    """What ``hop`` would decide for ``user`` on its own."""
    flagset = FlagSet.from_mapping(HOPS[hop])
    ctx = {"targetingKey": user}
    return flagset.decide("rollout", ctx).value, flagset.decide("color", ctx).value


# -- Django under gunicorn (WSGI) and uvicorn (ASGI) -----------------------------------------


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def django_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp(f"django-{request.param}")
    flags = directory / "flags.json"
    flags.write_text(json.dumps(HOPS["django"]))
    launcher = _Launcher(directory)
    framework, module = (
        ("flask", "django_wsgi") if request.param == "gunicorn" else ("fastapi", "django_asgi")
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLAGWIRE_PROPAGATION_KEYS", KEYS)
        env.setenv("PYTHONPATH", str(TEST_APPS))
        server = launcher.start(framework, flags, app_dir=TEST_APPS, module=module)
    try:
        yield server
    finally:
        launcher.close()


def test_django_server_pins_flags_in_sync_and_async_views(django_server: Server) -> None:
    with django_server.client() as client:
        for view in ("/hop", "/ahop"):
            for user in USERS[:20]:
                body = client.get(view, headers={"x-user-id": user}).json()
                assert body["same"] and body["user"] == user
                assert (body["rollout"], body["color"]) == own("django", user)
            for user in USERS[:5]:
                beta = client.get(view, headers={"x-user-id": user, "x-plan": "beta"}).json()
                assert beta["color"] == own("django", user)[1]
            anonymous = httpx.get(django_server.url + view, trust_env=False)  # no cookie jar
            assert anonymous.status_code == 200
            (cookie,) = anonymous.headers.get_list("set-cookie")
            assert cookie.startswith(f"flagwire_id={anonymous.json()['user']};")
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        signed = Propagation(keys=[KEYS]).header({"color": "blue"}, "user-1", "gw-1")
        trusted = client.get("/ahop", headers={"baggage": signed}).json()
        assert (trusted["user"], trusted["color"]) == ("user-1", "blue")
        forged = signed.replace("color~blue", "color~red")
        assert forged != signed
        assert client.get("/hop", headers={"baggage": forged}).json()["user"] != "user-1"
        lines = client.get("/stream", headers={"x-user-id": "user-3"}).text.split()
        assert lines == [own("django", "user-3")[1]] * 2


# -- the journey -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def journey(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("journey")
    files = {}
    for hop, doc in HOPS.items():
        files[hop] = directory / f"{hop}.json"
        files[hop].write_text(json.dumps(doc))
    spans = {hop: directory / f"{hop}-spans.jsonl" for hop in HOPS}
    broker = {"CELERY_BROKER": f"{redis_url}/0", "CELERY_BACKEND": f"{redis_url}/1"}
    launcher = _Launcher(directory)
    worker: Worker | None = None
    grpc_process: subprocess.Popen[bytes] | None = None
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FLAGWIRE_PROPAGATION_KEYS", KEYS)
            env.setenv("PYTHONPATH", str(TEST_APPS))
            env.setenv("SPANS_FILE", str(spans["django"]))
            django = launcher.start(
                "flask", files["django"], app_dir=TEST_APPS, module="django_wsgi"
            )
            worker = start_worker(directory, {
                **broker, "FLAGWIRE_FLAGS": str(files["worker"]), "DJANGO_URL": django.url,
                "SPANS_FILE": str(spans["worker"]),
            })  # fmt: skip
            port = _free_port()
            with (directory / "grpc.log").open("wb") as log:
                grpc_process = subprocess.Popen(
                    [sys.executable, str(TEST_APPS / "grpc_service.py")],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory,
                    env=app_env({**broker, "FLAGWIRE_FLAGS": str(files["grpc"]),
                                 "GRPC_PORT": str(port), "SPANS_FILE": str(spans["grpc"])}),
                )  # fmt: skip
            deadline = time.monotonic() + 20
            while b"serving" not in (directory / "grpc.log").read_bytes():
                assert grpc_process.poll() is None and time.monotonic() < deadline, (
                    directory / "grpc.log"
                ).read_text()
                time.sleep(0.05)
            env.setenv("GRPC_TARGET", f"127.0.0.1:{port}")
            env.setenv("SPANS_FILE", str(spans["gateway"]))
            gateway = launcher.start(
                "fastapi", files["gateway"], app_dir=TEST_APPS, module="journey_gateway"
            )
        results = celery.Celery(
            "journey", broker=broker["CELERY_BROKER"], backend=broker["CELERY_BACKEND"]
        )
        yield {"gateway": gateway, "results": results, "spans": spans}
    finally:
        launcher.close()
        if worker is not None:
            stop_worker(worker)
        if grpc_process is not None:
            _stop(grpc_process)


def walk(
    journey: dict[str, Any], user: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One user's trip: the gateway's, gRPC service's, task's and Django's decisions."""
    with httpx.Client(base_url=journey["gateway"].url, trust_env=False, timeout=30) as client:
        response = client.get("/journey", headers={"x-user-id": user, **(headers or {})})
    assert response.status_code == 200, response.text
    gateway = response.json()
    task = journey["results"].AsyncResult(gateway["grpc"]["task"]).get(timeout=30)
    hops = {"gateway": gateway, "grpc": gateway["grpc"], "worker": task, "django": task["django"]}
    return {hop: (body["user"], body["rollout"], body["color"]) for hop, body in hops.items()}


def test_one_variant_across_gateway_grpc_celery_and_django(journey: dict[str, Any]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        trips = dict(zip(USERS, pool.map(lambda u: walk(journey, u), USERS), strict=True))
    disagreeing = [u for u, hops in trips.items() if len(set(hops.values())) != 1]
    assert disagreeing == []
    assert all(hops["gateway"] == (u, *own("gateway", u)) for u, hops in trips.items())
    # the hops' own rollouts differ: without propagation, most users would see a mix
    alone = sum(len({own(hop, u) for hop in HOPS}) > 1 for u in USERS)
    assert alone > 300
    colors = Counter(hops["gateway"][2] for hops in trips.values())

    def span_colors(hop: str) -> Counter[str]:
        path = journey["spans"][hop]
        found: Counter[str] = Counter()
        for line in path.read_text().splitlines() if path.exists() else ():
            span = json.loads(line)
            events = {e["attributes"].get("feature_flag.key") for e in span["events"]}
            if {"rollout", "color"} <= events and span["kind"] != "CLIENT":
                found[span["attributes"]["flagwire.flag.color"]] += 1
        return found

    deadline = time.monotonic() + 10
    while any(span_colors(hop) != colors for hop in HOPS) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {hop: span_colors(hop) for hop in HOPS} == dict.fromkeys(HOPS, colors)
    assert set(colors) <= set(COLORS)


def test_forged_baggage_at_the_gateway_changes_nothing(journey: dict[str, Any]) -> None:
    wrong = Propagation(keys=["not-the-shared-key-0123456789abcdef"])
    for user in USERS[:30]:
        other = next(c for c in COLORS if c != own("gateway", user)[1])
        forged = {"baggage": wrong.header({"color": other, "rollout": "on"}, user, "gateway-1")}
        trip = walk(journey, user, forged)
        assert set(trip.values()) == {(user, *own("gateway", user))}

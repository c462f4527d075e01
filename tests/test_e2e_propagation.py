"""End to end: flag assignments carried between services in W3C ``baggage``.

A chain of real servers on 127.0.0.1 — FastAPI edge (uvicorn) -> Flask middle (gunicorn)
-> FastAPI last (uvicorn), the apps in ``tests/e2e_apps/chain_*.py`` — where each hop has
its own flag file: ``rollout`` is on for 20% / 50% / 90% of users and ``color`` is split
three ways differently on each. With shared keys the edge decides and the other hops
honour its signed assignments; without keys each hop decides for itself (and they
disagree). Outbound propagation is done by flagwire's httpx/requests helpers or by
OpenTelemetry's httpx/requests instrumentation with flagwire's propagator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagSet, Propagation
from flagwire._propagation.codec import packed_piece, unpack
from test_e2e import STARTUP_TIMEOUT, TEST_APPS, Server, _command, _free_port, _stop

HOST = "127.0.0.1"

pytestmark = pytest.mark.e2e

KEYS = ["chain-secret-2026-0123456789abcdef", "previous-secret-fedcba9876543210"]
TENANT = "tenant=acme"
USERS = [f"user-{i}" for i in range(1000)]
FEW_USERS = USERS[:40]
DONORS = USERS[:80]  # whose genuine signed headers the replay forgery reuses
COLORS = ("red", "green", "blue")
HOPS = ("edge", "middle", "last")
PROPAGATED = "PROPAGATED"

Document = dict[str, Any]
Hop = dict[str, Any]


def _document(version: str, rollout_on: int, colors: Sequence[int]) -> Document:
    return {
        "metadata": {"version": version},
        "flags": {
            "rollout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", rollout_on], ["off", 100 - rollout_on]]},
            },
            "color": {
                "state": "ENABLED",
                "variants": {name: name for name in COLORS},
                "defaultVariant": "red",
                "targeting": {"fractional": [[n, w] for n, w in zip(COLORS, colors, strict=True)]},
            },
        },
    }


# Each hop rolls out differently: without propagation they must disagree for many users.
DOCUMENTS: dict[str, Document] = {
    "edge": _document("edge-1", 20, (34, 33, 33)),
    "middle": _document("middle-1", 50, (10, 10, 80)),
    "last": _document("last-1", 90, (80, 10, 10)),
}


# -- the chain -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """Three servers, edge first; ``flagsets`` are their flag files, loaded in-process."""

    client: str
    servers: Mapping[str, Server]
    flagsets: Mapping[str, FlagSet]

    @property
    def url(self) -> str:
        return self.servers["edge"].url

    def logs(self) -> str:
        """The tail of each server's output (for failure messages)."""
        return "\n".join(
            f"--- {hop} ({server.url}, exit {server.process.poll()}):\n{server.output()[-1500:]}"
            for hop, server in self.servers.items()
        )

    def expected(self, hop: str, user: str) -> tuple[str | None, str | None]:
        """The (rollout, color) variants ``hop`` decides by itself for ``user``."""
        flagset, context = self.flagsets[hop], {"targetingKey": user}
        return (
            flagset.evaluate("rollout", context, False).variant,
            flagset.evaluate("color", context, "none").variant,
        )


def _wait_until_up(server: Server, token: str) -> bool:
    """Wait for ``/healthz`` to answer with ``token``: this server, not another process's
    that took the port between :func:`_free_port` and the bind (test runs side by side)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            response = httpx.get(f"{server.url}/healthz", trust_env=False, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 200 and response.json().get("id") == token:
            return True
        time.sleep(0.05)
    return False


def _base_env() -> dict[str, str]:
    """This environment without anything that would configure flagwire, OTel or a hop."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLAGWIRE_", "OTEL_", "CHAIN_")) and k != "PYTHONPATH"
    }
    repo_src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_src, os.environ.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _ChainLauncher:
    """Starts chains into ``directory``; ``close`` stops every server it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[Server] = []
        self.paths: dict[str, Path] = {}
        for hop, document in DOCUMENTS.items():
            path = directory / f"{hop}.flags.json"
            path.write_text(json.dumps(document, indent=2), encoding="utf-8")
            self.paths[hop] = path

    def start(
        self,
        client: str,
        *,
        keys: Sequence[str] | None = KEYS,
        edge_env: Mapping[str, str] | None = None,
        middle_http: str = "requests",
    ) -> Chain:
        """Start last, middle and edge together (ports chosen first), wait for all three."""
        for attempt in range(3):
            ports = {hop: _free_port() for hop in HOPS}
            urls = {hop: f"http://{HOST}:{port}" for hop, port in ports.items()}
            nexts = {"edge": urls["middle"], "middle": urls["last"], "last": ""}
            servers: dict[str, Server] = {}
            tokens = {hop: uuid.uuid4().hex for hop in HOPS}
            for hop in HOPS:
                framework = "flask" if hop == "middle" else "fastapi"
                env = {
                    **_base_env(),
                    "FLAGWIRE_FLAGS": str(self.paths[hop]),
                    "CHAIN_NAME": hop,
                    "CHAIN_NEXT": nexts[hop],
                    "CHAIN_CLIENT": client,
                    "CHAIN_HTTP": middle_http,
                    "CHAIN_ID": tokens[hop],
                }
                if keys is not None:
                    env["FLAGWIRE_PROPAGATION_KEYS"] = ",".join(keys)
                if hop == "edge":
                    env.update(edge_env or {})
                log = self.directory / f"{client}-{hop}-{ports[hop]}.log"
                # gunicorn: 2 workers x 8 threads (long keep-alive: see _command)
                command = _command(framework, TEST_APPS, f"chain_{framework}", ports[hop], 2, ())
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=self.directory,
                        start_new_session=True,
                    )
                server = Server(framework, urls[hop], self.paths[hop], process, log)
                servers[hop] = server
                self.servers.append(server)
            down = [
                hop for hop, server in servers.items() if not _wait_until_up(server, tokens[hop])
            ]
            if not down:
                flagsets = {hop: FlagSet.from_path(path) for hop, path in self.paths.items()}
                return Chain(client, servers, flagsets)
            for server in servers.values():
                _stop(server.process)
            logs = {hop: servers[hop].output() for hop in down}
            if attempt == 2 or not any("in use" in text.lower() for text in logs.values()):
                details = "\n".join(f"--- {hop}:\n{text[-3000:]}" for hop, text in logs.items())
                pytest.fail(f"chain hops {down} did not come up:\n{details}")
        raise AssertionError("unreachable")

    def close(self) -> None:
        # SIGTERM every server first, so their graceful shutdowns overlap; then reap each.
        for server in self.servers:
            if server.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.process.pid, signal.SIGTERM)
        for server in self.servers:
            _stop(server.process)


StartChain = Callable[..., Chain]


@pytest.fixture(scope="module")
def shared_chains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Chain]]:
    """One keyed chain per client kind (edge adds ``tenant=acme``), shared by the tests."""
    launcher = _ChainLauncher(tmp_path_factory.mktemp("chains"))
    started: dict[str, Chain] = {}

    def get(client: str) -> Chain:
        if client not in started:
            started[client] = launcher.start(client, edge_env={"CHAIN_BAGGAGE": TENANT})
        return started[client]

    try:
        yield get
    finally:
        launcher.close()


@pytest.fixture
def start_chain(tmp_path: Path) -> Iterator[StartChain]:
    """Start a chain of its own for one test; stopped after it."""
    launcher = _ChainLauncher(tmp_path)
    try:
        yield launcher.start
    finally:
        launcher.close()


# -- driving it ------------------------------------------------------------------------------------


def _walk(body: Hop) -> list[Hop]:
    """The hops of one chain answer, edge first."""
    hops = [body]
    while isinstance(hops[-1].get("next"), dict):
        hops.append(hops[-1]["next"])
    return hops


def _send_all(
    chain: Chain,
    users: Sequence[str],
    baggage: Mapping[str, str] | None = None,
    *,
    clients: int = 4,
    concurrency: int = 32,
) -> dict[str, list[Hop]]:
    """GET ``/hop`` for each user (``x-user-id``, plus ``baggage[user]`` if any), at most
    ``concurrency`` at once over ``clients`` AsyncClients; each user's hops, edge first.

    Fails (with the servers' logs) if any request fails or any chain is incomplete."""

    async def run() -> list[tuple[str, httpx.Response | str]]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            pool = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=chain.url, trust_env=False, timeout=60.0, limits=limits
                    )
                )
                for _ in range(clients)
            ]

            async def one(n: int, user: str) -> tuple[str, httpx.Response | str]:
                headers = {"x-user-id": user}
                if baggage is not None and user in baggage:
                    headers["baggage"] = baggage[user]
                async with gate:
                    sent = time.monotonic()
                    try:
                        return user, await pool[n % clients].get("/hop", headers=headers)
                    except httpx.TransportError as exc:
                        return user, (
                            f"{exc!r} after {time.monotonic() - sent:.2f}s "
                            f"(request {n}, {sent - started:.2f}s into the run)"
                        )

            return await asyncio.gather(*(one(n, user) for n, user in enumerate(users)))

    answers = asyncio.run(run())
    failed = [
        (user, r if isinstance(r, str) else f"{r.status_code}: {r.text[-500:]}")
        for user, r in answers
        if isinstance(r, str) or r.is_error
    ]
    if failed:
        pytest.fail(f"{len(failed)} of {len(users)} requests failed: {failed[:3]}\n{chain.logs()}")
    results = {user: _walk(r.json()) for user, r in answers if not isinstance(r, str)}
    broken = {
        user: hops
        for user, hops in results.items()
        if len(hops) != len(HOPS) or any("error" in hop for hop in hops)
    }
    if broken:
        pytest.fail(f"{len(broken)} chains broke: {next(iter(broken.items()))}\n{chain.logs()}")
    return results


def _decision(hop: Hop) -> tuple[Any, Any]:
    return hop["rollout"], hop["color"]


def _variants(hop: Hop) -> tuple[str | None, str | None]:
    return hop["variants"]["rollout"], hop["variants"]["color"]


def _members(header: str | None) -> list[str]:
    return [m.strip() for m in (header or "").split(",") if m.strip()]


def _fw_members(header: str | None) -> list[str]:
    return [m for m in _members(header) if m.startswith("fw.")]


@dataclass(frozen=True)
class Agreement:
    users: int
    mismatched_users: int
    mismatches_by_hop: dict[str, int]
    edge_rollout_on: int
    reasons: dict[str, dict[str, int]]


def _agreement(results: Mapping[str, list[Hop]]) -> Agreement:
    """How many users got a (rollout, color) on a later hop other than on the edge."""
    by_hop = {hop: 0 for hop in HOPS[1:]}
    reasons: dict[str, dict[str, int]] = {hop: {} for hop in HOPS}
    mismatched = 0
    for hops in results.values():
        edge = _decision(hops[0])
        differs = False
        for name, hop in zip(HOPS, hops, strict=True):
            for reason in hop["reasons"].values():
                reasons[name][reason] = reasons[name].get(reason, 0) + 1
            if name != "edge" and _decision(hop) != edge:
                by_hop[name] += 1
                differs = True
        mismatched += differs
    on = sum(hops[0]["rollout"] is True for hops in results.values())
    return Agreement(len(results), mismatched, by_hop, on, reasons)


def _check_propagated_chain(chain: Chain, results: Mapping[str, list[Hop]]) -> Agreement:
    """Everything test 1 and test 2 require of a keyed chain's answers."""
    agreement = _agreement(results)
    print(f"\n[{chain.client}] {agreement}")
    # The edge decides, by its own flag file, for the user in x-user-id ...
    wrong_edge = [
        user for user, hops in results.items() if _variants(hops[0]) != chain.expected("edge", user)
    ]
    assert not wrong_edge, f"{len(wrong_edge)} edge decisions differ from its flag file"
    assert all(hops[0]["reason"] != PROPAGATED for hops in results.values())
    # ... and every later hop takes the edge's decision: 0 users differ anywhere.
    assert agreement.mismatched_users == 0, agreement
    assert 150 <= agreement.edge_rollout_on <= 250, agreement  # ~20%: the edge's rollout
    for name in HOPS[1:]:
        assert agreement.reasons[name] == {PROPAGATED: 2 * len(results)}, agreement.reasons
    for user, hops in results.items():
        # the subject travelled too (nothing but baggage was forwarded)
        assert [hop["user"] for hop in hops] == [user] * 3, hops
        # the app's own member arrives next to flagwire's
        assert TENANT in _members(hops[1]["baggage"]), hops[1]["baggage"]
    return agreement


# -- (1) flagwire's clients: every hop agrees with the edge ----------------------------------------


def test_flagwire_clients_propagate_the_edges_decisions(
    shared_chains: Callable[[str], Chain],
) -> None:
    chain = shared_chains("flagwire")
    started = time.monotonic()
    results = _send_all(chain, USERS)
    elapsed = time.monotonic() - started
    _check_propagated_chain(chain, results)
    print(f"[flagwire] {len(USERS)} chains in {elapsed:.1f}s")
    # flagwire's helpers did the sending, without OpenTelemetry: no trace context.
    assert all(hop["traceparent"] is None for hops in results.values() for hop in hops)


def test_without_keys_the_hops_disagree(start_chain: StartChain) -> None:
    """The control: the same chain without keys decides per hop, so the test can fail."""
    chain = start_chain("flagwire", keys=None, edge_env={"CHAIN_BAGGAGE": TENANT})
    results = _send_all(chain, USERS)
    agreement = _agreement(results)
    print(f"\n[no keys] {agreement}")
    assert agreement.mismatched_users > len(USERS) // 4, agreement
    assert all(agreement.mismatches_by_hop[hop] > len(USERS) // 5 for hop in HOPS[1:]), agreement
    assert all(PROPAGATED not in agreement.reasons[hop] for hop in HOPS), agreement.reasons
    for hops in results.values():
        assert not _fw_members(hops[1]["baggage"]), hops[1]["baggage"]
        assert _members(hops[1]["baggage"]) == [TENANT], hops[1]["baggage"]


# -- (2) OpenTelemetry's instrumentation with flagwire's propagator -------------------------------


def test_otel_instrumentation_propagates_the_edges_decisions(
    shared_chains: Callable[[str], Chain],
) -> None:
    chain = shared_chains("otel")
    started = time.monotonic()
    results = _send_all(chain, USERS)
    elapsed = time.monotonic() - started
    _check_propagated_chain(chain, results)
    print(f"[otel] {len(USERS)} chains in {elapsed:.1f}s")
    # OTel's instrumentation did the sending: its trace context travelled with the baggage.
    for hops in results.values():
        assert hops[0]["traceparent"] is None
        assert hops[1]["traceparent"] and hops[2]["traceparent"], hops


# -- (3) forged inbound baggage never changes the edge's decision, nor travels on ---------------


def _other_variant(variant: str | None, choices: Sequence[str]) -> str:
    return next(c for c in choices if c != variant)


def _forgeries(chain: Chain, users: Sequence[str]) -> dict[str, dict[str, str]]:
    """For each kind of forgery, the ``baggage`` header an outside client sends per user.

    Every forged header asks for the variants the edge would *not* decide for that user.
    """
    genuine = _send_all(chain, DONORS)
    version = chain.flagsets["edge"].version_label
    strangers = Propagation(keys=["a-key-nobody-shares-0000000000"])
    ours = Propagation(keys=KEYS)
    expired = Propagation(keys=KEYS, clock=lambda: time.time() - 3600)
    later = int(time.time()) + 300
    kinds: dict[str, dict[str, str]] = {
        k: {} for k in ("unsigned", "junk-sig", "wrong-key", "tampered", "expired", "replayed")
    }
    for user in users:
        rollout, color = chain.expected("edge", user)
        forged = {
            "rollout": _other_variant(rollout, ["on", "off"]),
            "color": _other_variant(color, list(COLORS)),
        }
        forged_member = "fw.a0=" + "~".join(packed_piece(k, v) for k, v in sorted(forged.items()))
        plain = f"outside=1,fw.ver=2,fw.tk={user},fw.fs={version},fw.exp={later},{forged_member}"
        kinds["unsigned"][user] = plain
        kinds["junk-sig"][user] = f"{plain},fw.sig=AAAA.AAAAAAAAAAAAAAAAAAAAAA"
        kinds["wrong-key"][user] = "outside=1," + ",".join(strangers.encode(forged, user, version))
        real = ours.encode({"rollout": rollout or "", "color": color or ""}, user, version)
        kinds["tampered"][user] = "outside=1," + ",".join(
            forged_member if m.startswith("fw.a0=") else m for m in real
        )
        kinds["expired"][user] = "outside=1," + ",".join(expired.encode(forged, user, version))
        # A genuine header, signed by the edge with the shared key for another user whose
        # decisions differ on both flags, replayed with this user's x-user-id.
        donor = next(
            u
            for u in DONORS
            if u != user
            and all(
                a != b for a, b in zip(chain.expected("edge", u), (rollout, color), strict=True)
            )
        )
        captured = genuine[donor][1]["baggage"]
        assert ours.decode(captured).trusted, captured
        kinds["replayed"][user] = "outside=1," + ",".join(_fw_members(captured))
    return kinds


def _packed_pairs(header: str) -> list[tuple[str, str]]:
    """The (flag, variant) pairs in a header's packed flagwire members."""
    return [
        pair
        for m in _fw_members(header)
        if m.startswith("fw.a")
        for pair in (unpack(m.partition("=")[2]) or [])
    ]


@pytest.mark.parametrize("client", ["flagwire", "otel"])
def test_forged_inbound_baggage_is_ignored_and_not_forwarded(
    client: str, shared_chains: Callable[[str], Chain]
) -> None:
    chain = shared_chains(client)
    ours = Propagation(keys=KEYS)
    for kind, headers in _forgeries(chain, FEW_USERS).items():
        results = _send_all(chain, FEW_USERS, headers)
        problems: list[str] = []
        for user, (edge, middle, last) in results.items():
            expected = chain.expected("edge", user)
            own = {("rollout", expected[0]), ("color", expected[1])}
            forged_flags = set(_packed_pairs(headers[user])) - own
            pairs = _packed_pairs(middle["baggage"])
            received = _fw_members(middle["baggage"])
            inbound = ours.decode(middle["baggage"])
            if _variants(edge) != expected or edge["reason"] == PROPAGATED:
                problems.append(f"{user}: edge took {_variants(edge)} ({edge['reason']})")
            if (_variants(middle), _variants(last)) != (expected, expected):
                problems.append(f"{user}: later hops {_variants(middle)}, {_variants(last)}")
            # The forged assignments ask for other variants than the edge's: none may arrive.
            if forged_flags & set(pairs) or len(dict(pairs)) != len(pairs):
                problems.append(f"{user}: forged members reached the middle: {received}")
            if not inbound.trusted or inbound.targeting_key != user:
                problems.append(f"{user}: middle got untrusted baggage: {middle['baggage']}")
            elif dict(inbound.assignments) != {"rollout": expected[0], "color": expected[1]}:
                problems.append(f"{user}: middle was sent {dict(inbound.assignments)}")
            # The app's members: with flagwire's helpers only the edge's own; with OTel the
            # inbound baggage context travels on too (OTel's doing), minus flagwire's members.
            others = {m for m in _members(middle["baggage"]) if not m.startswith("fw.")}
            if others != ({TENANT} if client == "flagwire" else {TENANT, "outside=1"}):
                problems.append(f"{user}: the middle got app members {others}")
        assert not problems, f"{kind}: {len(problems)} problems: {problems[:5]}"


# -- (4) a destination that is not allowed gets no flagwire member, but the app's ones ------------


@pytest.mark.parametrize("client", ["flagwire", "otel"])
def test_disallowed_destination_gets_no_flag_members(client: str, start_chain: StartChain) -> None:
    # The middle uses httpx's sync client here (requests elsewhere): its hop to the last one
    # is allowed (loopback, by default) and must carry the middle's own decisions.
    chain = start_chain(
        client,
        edge_env={"FLAGWIRE_PROPAGATION_HOSTS": "*.internal,payments", "CHAIN_BAGGAGE": TENANT},
        middle_http="httpx",
    )
    results = _send_all(chain, FEW_USERS)
    for user, (edge, middle, last) in results.items():
        assert _variants(edge) == chain.expected("edge", user)
        assert not _fw_members(middle["baggage"]), middle["baggage"]
        assert TENANT in _members(middle["baggage"]), middle["baggage"]
        # The middle decided by itself, for an anonymous id (no x-user-id, no fw.tk) ...
        assert middle["reason"] != PROPAGATED
        assert middle["user"] != user
        assert _variants(middle) == chain.expected("middle", middle["user"])
        # ... and the last hop takes the middle's decisions.
        assert last["reasons"] == {"rollout": PROPAGATED, "color": PROPAGATED}
        assert (last["user"], _variants(last)) == (middle["user"], _variants(middle))

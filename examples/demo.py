"""flagwire demo: two real services, one flag file, flags in every response.

    python examples/demo.py [FLAGS_FILE]

Starts the FastAPI example under uvicorn and the Flask example under gunicorn, on
loopback ports, both reading ``examples/flags.yaml``. Then it sends requests for a set of
users to both and prints what each service decided for each user, shows an anonymous
visitor keeping its bucket through flagwire's cookie, and measures the canary's share
over a thousand users. The servers are stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

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


def start(command: list[str], env: dict[str, str], stack: ExitStack) -> None:
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    stack.callback(stop)


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not come up within {timeout:.0f} s")


def cell(body: dict[str, Any]) -> str:
    checkout = "new" if body["new_checkout"] else "old"
    return f"{checkout:>3} {body['ranking']:<7} {'banner' if body['eu_banner'] else '-':<6}"


async def traffic(services: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        print(f"{'user':8} {'plan':11} {'country':7}  " + "  ".join(f"{n:<18}" for n in services))
        print("-" * (30 + 20 * len(services)))
        disagreements = 0
        for user in USERS:
            bodies = [
                (await client.get(f"{url}/checkout", headers=user)).json()
                for url in services.values()
            ]
            if len({cell(b) for b in bodies}) > 1:
                disagreements += 1
            print(
                f"{user['x-user-id']:8} {user['x-plan']:11} {user['x-country']:7}  "
                + "  ".join(f"{cell(b):<18}" for b in bodies)
            )
        version = bodies[0]["version"]
        print(f"\nflag-set version on both services: {version}")
        print(f"users whose flags differ between the services: {disagreements} of {len(USERS)}")

    print("\nan anonymous visitor (no user id) keeps its bucket through the flagwire_id cookie:")
    for name, url in services.items():
        async with httpx.AsyncClient(timeout=10.0) as visitor:
            seen = [(await visitor.get(f"{url}/checkout")).json() for _ in range(5)]
        ids = {body["user"] for body in seen}
        rankings = {body["ranking"] for body in seen}
        print(f"  {name}: 5 requests, ids {sorted(ids)}, rankings {sorted(rankings)}")

    population = 1000
    url = next(iter(services.values()))
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=10)) as client:
        bodies = await asyncio.gather(
            *(
                client.get(f"{url}/checkout", headers={"x-user-id": f"user-{i}", "x-plan": "free"})
                for i in range(population)
            )
        )
    checkout = Counter(b.json()["new_checkout"] for b in bodies)
    ranking = Counter(b.json()["ranking"] for b in bodies)
    print(f"\n{population} free-plan users against {next(iter(services))}:")
    print(f"  new-checkout canary (20% configured): {checkout[True] / population:.1%} on")
    shares = ", ".join(f"{k} {v / population:.1%}" for k, v in sorted(ranking.items()))
    print(f"  search-ranking (50/25/25 configured): {shares}")


def main() -> int:
    flags = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE / "flags.yaml"
    env = {**os.environ, "FLAGWIRE_FLAGS": str(flags)}
    fastapi_port, flask_port = free_port(), free_port()
    services = {
        "fastapi (uvicorn)": f"http://127.0.0.1:{fastapi_port}",
        "flask (gunicorn)": f"http://127.0.0.1:{flask_port}",
    }
    print(f"flag file: {flags}\n")
    with ExitStack() as stack:
        start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "fastapi_app:app",
                "--app-dir",
                str(HERE),
                "--host",
                "127.0.0.1",
                "--port",
                str(fastapi_port),
                "--log-level",
                "warning",
            ],
            env,
            stack,
        )
        start(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--chdir",
                str(HERE),
                "-b",
                f"127.0.0.1:{flask_port}",
                "--threads",
                "4",
                "--log-level",
                "warning",
                "flask_app:app",
            ],
            env,
            stack,
        )
        for url in services.values():
            wait_ready(f"{url}/healthz")
        asyncio.run(traffic(services))
    return 0


if __name__ == "__main__":
    sys.exit(main())

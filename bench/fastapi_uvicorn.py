"""FastAPI on a real uvicorn: requests per second with the ``Flags`` dependency, with
``current_flags()`` in the handler, and bare, as ratios measured in one run.

Each app reads 10 flags per request with a plain-function extractor (the realistic flags
of ``realistic.py``); uvicorn (one worker) serves it on loopback, and a small asyncio
client keeps ``--connections`` keep-alive connections busy for ``--seconds``. Rounds are
interleaved and the best of each app is kept.

    python bench/fastapi_uvicorn.py            # print the table
    python bench/fastapi_uvicorn.py --check    # also exit 1 if a bar is missed

Bars (issue 13): with ``Flags`` >= 0.90x bare and >= 0.95x the ``current_flags()`` app.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

APP = """
from fastapi import FastAPI
from realistic import DEFAULTS, FLAGSET, KEYS, extract
from flagwire import current_flags
from flagwire.fastapi import Flags, FlagwireMiddleware

bare = FastAPI()
dependency = FastAPI()
handler = FastAPI()


@bare.get("/")
async def bare_root() -> dict[str, int]:
    return {"n": 0}


@dependency.get("/")
async def dependency_root(flags: Flags) -> dict[str, int]:
    return {"n": sum(1 for k in KEYS if flags.get(k, DEFAULTS.get(k, False)))}


@handler.get("/")
async def handler_root() -> dict[str, int]:
    flags = current_flags()
    return {"n": sum(1 for k in KEYS if flags.get(k, DEFAULTS.get(k, False)))}


for app in (dependency, handler):
    app.add_middleware(FlagwireMiddleware, source=FLAGSET, context=extract)
"""

REQUEST = (
    b"GET / HTTP/1.1\r\nhost: bench\r\nx-user-id: user-1234\r\nx-email: jo@customer.test\r\n"
    b"x-plan: pro\r\nx-app-version: 3.1.4\r\nx-country: DE\r\nx-tenant: acme\r\n\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(name: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), str(HERE)])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"bench_fastapi_apps:{name}",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-keep-alive",
            "60",
        ],
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _answers(port):
            return process, port
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"uvicorn for {name} did not start")


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


async def load(port: int, connections: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_fastapi_apps.py").write_text(APP)
        servers = {name: serve(name, Path(tmp)) for name in ("bare", "dependency", "handler")}
        try:
            for _, port in servers.values():  # warm up
                asyncio.run(load(port, args.connections, 0.5))
            best = dict.fromkeys(servers, 0.0)
            for _ in range(args.rounds):
                for name, (_, port) in servers.items():
                    rate = asyncio.run(load(port, args.connections, args.seconds))
                    best[name] = max(best[name], rate)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)
    print(f"{'app (10 flags, plain extractor, get())':40} {'req/s':>9} {'x bare':>7}")
    labels = {
        "bare": "bare FastAPI",
        "dependency": "Flags dependency",
        "handler": "current_flags()",
    }
    for name, rate in best.items():
        print(f"{labels[name]:40} {rate:9.0f} {rate / best['bare']:7.2f}")
    bars = [
        ("Flags dependency >= 0.90x bare", best["dependency"] / best["bare"], 0.90),
        ("Flags dependency >= 0.95x current_flags()", best["dependency"] / best["handler"], 0.95),
    ]
    print()
    ok = True
    for label, ratio, limit in bars:
        ok = ok and ratio >= limit
        print(f"{'PASS' if ratio >= limit else 'FAIL'}  {label}: {ratio:.2f}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

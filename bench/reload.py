"""A 10,000-flag file reloaded under traffic: latency of the requests that overlap the
reload against steady traffic, and how soon the new version is served, in one run.

A FastAPI app on a real uvicorn reads 10 flags per request from a ``FileSource`` over a
10,000-flag file (the mix of ``loading.py``); a client sends ``--rate`` requests per
second. After a steady period the file is replaced (an atomic rename) by a version with
one flag changed; the client watches for the new version and records every latency.

    python bench/reload.py            # print the figures
    python bench/reload.py --check    # also exit 1 if a bar is missed

Bars (issue 13): p99 of the requests in the reload window <= 4x the steady p99; the new
version served within 2 s of the write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loading import document

HERE = Path(__file__).resolve().parent

APP = """
import os
from fastapi import FastAPI
from flagwire import FileSource, context, current_flags
from flagwire.fastapi import FlagwireMiddleware

KEYS = [f"flag-{i:05d}" for i in range(0, 50, 5)]
source = FileSource(os.environ["BENCH_FLAGS"], poll_interval=0.2)
app = FastAPI()
app.add_middleware(
    FlagwireMiddleware, source=source, context=context.headers({"x-user-id": "targetingKey"})
)


@app.get("/")
async def root() -> dict[str, object]:
    flags = current_flags()
    return {"on": [k for k in KEYS if flags.get(k, False)], "v": flags.flagset.version}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive(
    port: int, rate: float, steady: float, flags_file: Path, new_text: str
) -> dict[str, float]:
    latencies: list[tuple[float, float, str]] = []  # (sent at, seconds, version)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def one(i: int) -> None:
        sent = time.monotonic()
        writer.write(f"GET / HTTP/1.1\r\nhost: b\r\nx-user-id: user-{i}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        latencies.append((sent, time.monotonic() - sent, str(body["v"])))

    interval = 1.0 / rate
    start = time.monotonic()
    written_at = None
    seen_new_at = None
    i = 0
    while True:
        now = time.monotonic()
        if written_at is None and now - start >= steady:
            tmp = flags_file.with_suffix(".tmp")
            tmp.write_text(new_text)
            os.replace(tmp, flags_file)
            written_at = time.monotonic()
        await one(i)  # one connection, in order: each latency is the server's alone
        i += 1
        if written_at is not None and seen_new_at is None and latencies[-1][2] == "2":
            seen_new_at = latencies[-1][0] + latencies[-1][1]
        if written_at is not None and (
            time.monotonic() - written_at > 4
            or (seen_new_at and time.monotonic() - seen_new_at > 2)
        ):
            break
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    writer.close()
    assert written_at is not None
    steady_lat = [lat for sent, lat, _ in latencies if sent < written_at]
    window = [
        lat for sent, lat, _ in latencies if written_at <= sent <= (seen_new_at or written_at) + 1.0
    ]
    return {
        "steady_p99": percentile(steady_lat, 0.99),
        "reload_p99": percentile(window, 0.99),
        "reload_max": max(window) if window else float("nan"),
        "served_after": (seen_new_at - written_at) if seen_new_at else float("inf"),
        "requests": float(len(latencies)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--steady", type=float, default=4.0)
    parser.add_argument("--flags", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        old = document(args.flags)
        old["metadata"] = {"version": "1"}
        new = json.loads(json.dumps(old))
        new["metadata"] = {"version": "2"}
        new["flags"]["flag-00000"]["defaultVariant"] = "on"
        flags_file = directory / "flags.json"
        flags_file.write_text(json.dumps(old))
        (directory / "bench_reload_app.py").write_text(APP)
        port = free_port()
        env = {**os.environ, "BENCH_FLAGS": str(flags_file), "PYTHONPATH": str(directory)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench_reload_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            result = asyncio.run(drive(port, args.rate, args.steady, flags_file, json.dumps(new)))
        finally:
            server.terminate()
            server.wait(10)
    ratio = result["reload_p99"] / result["steady_p99"]
    print(f"{args.flags} flags, {args.rate:.0f} req/s, {result['requests']:.0f} requests")
    print(f"steady p99            {result['steady_p99'] * 1e3:8.2f} ms")
    print(f"reload window p99     {result['reload_p99'] * 1e3:8.2f} ms  ({ratio:.2f}x steady)")
    print(f"reload window max     {result['reload_max'] * 1e3:8.2f} ms")
    print(f"new version served    {result['served_after']:8.2f} s after the write")
    bars = [
        ("reload p99 <= 4x steady p99", ratio, 4.0),
        ("new version served within 2 s", result["served_after"], 2.0),
    ]
    print()
    ok = True
    for label, value, limit in bars:
        ok = ok and value <= limit
        print(f"{'PASS' if value <= limit else 'FAIL'}  {label}: {value:.2f}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

"""A source keeps its deadline, its secrets and its memory: a real HTTP server that
trickles bytes, redirects to another origin, or serves a gzip bomb."""

from __future__ import annotations

import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from attack_servers import Recorder, recorder
from flagwire import HttpSource

DOCUMENT = json.dumps(
    {"flags": {"kill": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}}
).encode()


def _serve(handler: BaseHTTPRequestHandler, body: bytes, **headers: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Recorder]:
    with recorder("127.0.0.1") as running:
        running.routes["/flags.json"] = lambda h: _serve(
            h, DOCUMENT, Content_Length=str(len(DOCUMENT))
        )
        yield running


def _trickle_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(DOCUMENT)))
    handler.end_headers()
    for byte in DOCUMENT:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.05)


def _trickle_headers(handler: BaseHTTPRequestHandler) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 20:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.02)


@pytest.mark.parametrize("trickle", [_trickle_body, _trickle_headers])
def test_a_trickling_server_is_cut_off_at_the_deadline(server: Recorder, trickle: object) -> None:
    with HttpSource(server.url("/flags.json"), interval=0, timeout=0.5) as source:
        assert source.status.ok and "kill" in source.flagset
        server.routes["/flags.json"] = trickle  # type: ignore[assignment]
        started = time.monotonic()
        source.refresh()
        took = time.monotonic() - started
        assert took < 1.5, f"the fetch took {took:.1f} s past a 0.5 s deadline"
        assert not source.status.ok
        assert "stalled" in (source.status.last_error or "")
        assert "kill" in source.flagset  # the last good set stays


def test_credentials_never_go_to_another_origin(server: Recorder) -> None:
    with recorder("127.0.0.2") as other:
        other.routes["/flags.json"] = server.routes["/flags.json"]
        target = other.url("/flags.json")
        url = f"http://user:pw@127.0.0.1:{server.port}/redirect?to={target}"
        headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}
        with HttpSource(url, interval=0, headers=headers) as source:
            assert source.status.ok and "kill" in source.flagset
        url = f"http://user:pw@127.0.0.1:{server.port}/redirect?to={target}"
        with HttpSource(url, interval=0) as source:
            assert source.status.ok
    first = server.seen[0]
    assert other.seen, "the redirect was followed"
    assert first["authorization"] == "Bearer s3cret" and first["x-api-key"] == "k3y"
    assert server.seen[1]["authorization"].startswith("Basic ")
    for seen in other.seen:
        assert "authorization" not in seen and "x-api-key" not in seen


def test_a_same_origin_redirect_keeps_the_credentials(server: Recorder) -> None:
    url = server.url("/redirect?to=" + server.url("/flags.json"))
    with HttpSource(url, interval=0, headers={"Authorization": "Bearer s3cret"}) as source:
        assert source.status.ok
    assert server.seen[1]["authorization"] == "Bearer s3cret"


def _bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def test_a_gzip_bomb_is_refused_within_the_body_cap(server: Recorder) -> None:
    bomb = _bomb(256 << 20)
    assert len(bomb) < 1 << 20
    server.routes["/bomb.json"] = lambda h: _serve(
        h, bomb, Content_Encoding="gzip", Content_Length=str(len(bomb))
    )
    tracemalloc.start()
    try:
        with HttpSource(server.url("/bomb.json"), interval=0, max_bytes=4 << 20) as source:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not source.status.ok and len(source.flagset) == 0
    assert "larger than max_bytes" in (source.status.last_error or "")
    assert peak < 16 << 20, f"{peak >> 20} MiB held for a 4 MiB cap"


def test_a_large_plain_body_without_a_length_is_refused(server: Recorder) -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        for _ in range(64):
            handler.wfile.write(b" " * (1 << 16))

    server.routes["/big.json"] = endless
    with HttpSource(server.url("/big.json"), interval=0, max_bytes=1 << 20) as source:
        assert "larger than max_bytes" in (source.status.last_error or "")

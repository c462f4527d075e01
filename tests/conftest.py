"""Shared fixtures: flag documents, files in tmp_path, file sources that get closed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flagwire import FileSource, FlagSet

Document = dict[str, Any]
WriteFile = Callable[..., Path]
WaitFor = Callable[..., None]
MakeSource = Callable[..., FileSource]


def _checkout_document() -> Document:
    return {
        "metadata": {"version": "2026.11.26-1", "owner": "platform"},
        "flags": {
            "checkout-v2": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"in": [{"var": "plan"}, ["beta"]]}, "on", None]},
            },
            "banner": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f"},
                "defaultVariant": "red",
            },
        },
    }


@pytest.fixture
def checkout_document() -> Document:
    """A small valid flag set: a targeted boolean flag and a static string flag."""
    return _checkout_document()


def _evaluation_document() -> Document:
    on_off = {"on": True, "off": False}
    return {
        "metadata": {"version": "42", "owner": "platform", "env": "prod"},
        "flags": {
            "static-bool": {"state": "ENABLED", "variants": on_off, "defaultVariant": "on"},
            "static-empty-rule": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {},
            },
            "greeting": {
                "state": "ENABLED",
                "variants": {"hello": "hello", "bye": "bye"},
                "defaultVariant": "hello",
                "targeting": {"if": [{"==": [{"var": "name"}, "bob"]}, "bye", None]},
            },
            "disabled": {"state": "DISABLED", "variants": on_off, "defaultVariant": "on"},
            "no-default": {"state": "ENABLED", "variants": on_off},
            "no-default-targeted": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": None,
                "targeting": {"if": [{"var": "vip"}, "on", None]},
            },
            "retries": {
                "state": "ENABLED",
                "variants": {"few": 3, "many": 10},
                "defaultVariant": "few",
            },
            "ratio": {
                "state": "ENABLED",
                "variants": {"half": 0.5, "whole": 1},
                "defaultVariant": "half",
                "targeting": {"if": [{"var": "whole"}, "whole", None]},
            },
            "layout": {
                "state": "ENABLED",
                "variants": {"grid": {"columns": 3}, "list": ["a", "b"]},
                "defaultVariant": "grid",
                "targeting": {"if": [{"var": "list"}, "list", None]},
            },
            "divide": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {"/": [1, 0]},
            },
            "stray-variant": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {"if": [{"var": "stray"}, "purple", "off"]},
            },
            "self-aware": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {
                    "if": [{"==": [{"var": "$flagd.flagKey"}, "self-aware"]}, "on", "off"]
                },
            },
            "time-gate": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {
                    "if": [{">=": [{"var": "$flagd.timestamp"}, {"var": "since"}]}, "on", "off"]
                },
            },
            "tiers": {
                "state": "ENABLED",
                "variants": {"gold": "gold", "silver": "silver", "bronze": "bronze"},
                "defaultVariant": "bronze",
                "targeting": {
                    "if": [
                        {"==": [{"var": "plan"}, "enterprise"]},
                        "gold",
                        {">": [{"var": "seats"}, 10]},
                        "silver",
                        "bronze",
                    ]
                },
            },
            "owned": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "on",
                "metadata": {"owner": "payments", "ticket": 123, "temporary": True},
            },
        },
    }


@pytest.fixture
def evaluation_document() -> Document:
    """A flag set with one flag per evaluation behaviour (see the flag keys)."""
    return _evaluation_document()


@pytest.fixture
def flags(evaluation_document: Document) -> FlagSet:
    """``evaluation_document`` loaded."""
    return FlagSet.from_mapping(evaluation_document, source="flags.json")


@pytest.fixture
def write_file(tmp_path: Path) -> WriteFile:
    """Write text (or a document as JSON) to ``tmp_path / name`` in place; returns the path."""

    def write(name: str, content: str | Mapping[str, Any]) -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def replace_file(tmp_path: Path) -> WriteFile:
    """Replace ``tmp_path / name`` atomically (write a temporary file, then os.replace)."""

    def replace(name: str, content: str | Mapping[str, Any]) -> Path:
        path = tmp_path / name
        tmp = tmp_path / f".{name}.tmp"
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    return replace


@pytest.fixture
def wait_for() -> WaitFor:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""

    def wait(condition: Callable[[], bool], timeout: float = 2.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
            time.sleep(0.005)

    return wait


@pytest.fixture
def make_source() -> Iterator[MakeSource]:
    """Build FileSources that are closed at the end of the test."""
    sources: list[FileSource] = []

    def make(path: Path, **options: Any) -> FileSource:
        source = FileSource(path, **options)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


@pytest.fixture
def label_of() -> Callable[[Mapping[str, Any]], str]:
    """The version label a document gets when loaded (what assignments carry)."""

    def label(document: Mapping[str, Any]) -> str:
        return FlagSet.from_mapping(document).version_label

    return label


@pytest.fixture(autouse=True)
def _reset_default_source() -> Iterator[None]:
    """No default source leaks between tests (integrations set one when none is set)."""
    import flagwire

    flagwire.set_default_source(None)
    yield
    flagwire.set_default_source(None)


def _per_request_document() -> Document:
    on_off = {"on": True, "off": False}
    return {
        "metadata": {"version": "r1", "owner": "web"},
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", "off"]},
            },
            "ranking": {
                "state": "ENABLED",
                "variants": {"classic": "classic", "vector": "vector", "hybrid": "hybrid"},
                "defaultVariant": "classic",
                "targeting": {"fractional": [["classic", 34], ["vector", 33], ["hybrid", 33]]},
            },
            "retired": {"state": "DISABLED", "variants": on_off, "defaultVariant": "on"},
            "no-default": {"state": "ENABLED", "variants": on_off},
            "limits": {
                "state": "ENABLED",
                "variants": {"small": {"max": 3, "tags": ["a"]}, "large": {"max": 10}},
                "defaultVariant": "small",
            },
            "retries": {
                "state": "ENABLED",
                "variants": {"few": 3, "many": 10},
                "defaultVariant": "few",
            },
        },
    }


@pytest.fixture
def per_request_document() -> Document:
    """The flags the per-request tests use: ``new-checkout`` (boolean, "on" for
    ``plan == "beta"``), ``ranking`` (string, fractional on targetingKey), ``retired``
    (disabled), ``no-default`` (no defaultVariant), ``limits`` (object), ``retries`` (int)."""
    return _per_request_document()


@pytest.fixture
def per_request_flags(per_request_document: Document) -> FlagSet:
    """``per_request_document`` loaded."""
    return FlagSet.from_mapping(per_request_document, source="request-flags.json")


@pytest.fixture(autouse=True)
def _reset_default_propagation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No propagation keys or hosts from the environment, and no process-wide
    :class:`~flagwire.Propagation` leaking between tests."""
    import flagwire

    monkeypatch.delenv("FLAGWIRE_PROPAGATION_KEYS", raising=False)
    monkeypatch.delenv("FLAGWIRE_PROPAGATION_HOSTS", raising=False)
    flagwire.set_default_propagation(None)
    yield
    flagwire.set_default_propagation(None)

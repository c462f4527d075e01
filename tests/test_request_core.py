"""The getters' hot path exists twice — in C (``flagwire._speedups``, built at install when
a C compiler is there) and in pure Python — and both must behave exactly alike.

The rest of the suite runs on whichever core is active; here the pure-Python core runs
the per-request tests in a subprocess, and both cores are held to the same calling
conventions. Set ``FLAGWIRE_REQUIRE_SPEEDUPS=1`` (CI does) to fail when the C core is
missing, so a broken build cannot pass unnoticed.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flagwire import FlagSet, RequestFlags
from flagwire import _request as request_module

ROOT = Path(__file__).resolve().parent.parent

DOC = {
    "flags": {
        "on": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
        "name": {"state": "ENABLED", "variants": {"a": "alpha"}, "defaultVariant": "a"},
        "ratio": {"state": "ENABLED", "variants": {"half": 0.5}, "defaultVariant": "half"},
        "count": {"state": "ENABLED", "variants": {"three": 3}, "defaultVariant": "three"},
        "config": {"state": "ENABLED", "variants": {"c": {"k": 1}}, "defaultVariant": "c"},
        "listed": {"state": "ENABLED", "variants": {"l": [1, 2]}, "defaultVariant": "l"},
        "no-default": {"state": "ENABLED", "variants": {"a": "alpha"}},
        "by-plan": {
            "state": "ENABLED",
            "variants": {"yes": True, "no": False},
            "defaultVariant": "no",
            "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "yes", "no"]},
        },
    }
}


@pytest.fixture
def flags() -> RequestFlags:
    return RequestFlags(FlagSet.from_mapping(DOC), {"targetingKey": "u", "plan": "beta"})


def test_the_c_core_is_active_where_required() -> None:
    core = RequestFlags.__mro__[1]
    if os.environ.get("FLAGWIRE_REQUIRE_SPEEDUPS"):
        assert core.__module__ == "flagwire._speedups", f"C speedups not active: {core}"
    else:
        assert core in (request_module._PyCore,) or core.__module__ == "flagwire._speedups"


def test_typed_getters(flags: RequestFlags) -> None:
    assert flags.boolean("on") is True
    assert flags.boolean("by-plan") is True
    assert flags.string("name") == "alpha"
    assert flags.number("ratio") == 0.5
    assert flags.float("ratio") == 0.5 and flags.float("missing", 2.5) == 2.5
    number = flags.number("count")
    assert number == 3.0 and type(number) is float
    assert flags.integer("count") == 3
    assert flags.object("config") == {"k": 1}
    assert flags.object("listed") == [1, 2]


def test_defaults_for_missing_no_variant_and_other_types(flags: RequestFlags) -> None:
    assert flags.boolean("missing") is False
    assert flags.boolean("missing", True) is True
    assert flags.string("missing") == ""
    assert flags.number("missing") == 0.0
    assert flags.integer("missing") == 0
    assert flags.object("missing") is None
    assert flags.string("no-default", "fallback") == "fallback"
    assert flags.integer("ratio", 7) == 7  # a float is not an integer
    assert flags.boolean("name", True) is True
    assert flags.string("on", "text") == "text"
    assert flags.object("name", {"d": 1}) == {"d": 1}
    # A type mismatch is noted: telemetry reports what the code ran on.
    assert flags._served is not None
    assert flags._served["name"].error_code is not None


def test_keyword_arguments(flags: RequestFlags) -> None:
    assert flags.boolean(key="missing", default=True) is True
    assert flags.string("missing", default="d") == "d"
    getter: Any = flags.integer
    with pytest.raises(TypeError):
        getter()
    with pytest.raises(TypeError):
        getter("count", 1, 2)
    with pytest.raises(TypeError):
        getter("count", dflt=1)
    with pytest.raises(TypeError):
        getter("count", 1, default=2)


def test_an_unhashable_key_raises_type_error(flags: RequestFlags) -> None:
    getter: Any = flags.boolean
    with pytest.raises(TypeError):
        getter(["not", "a", "key"])


def test_each_decision_is_memoised_once(flags: RequestFlags) -> None:
    first = flags.boolean("by-plan")
    decision = flags.evaluated()["by-plan"]
    assert flags.boolean("by-plan", False) is first
    assert flags.details("by-plan", False).variant == "yes"
    assert flags.evaluated()["by-plan"] is decision
    assert list(flags.evaluated()) == ["by-plan"]


def test_the_pure_python_core_passes_the_per_request_tests() -> None:
    env = {**os.environ, "FLAGWIRE_PURE_PYTHON": "1"}
    env.pop("FLAGWIRE_REQUIRE_SPEEDUPS", None)
    check = (
        "import flagwire._request as r; "
        "assert r.RequestFlags.__mro__[1] is r._PyCore, r.RequestFlags.__mro__"
    )
    subprocess.run([sys.executable, "-c", check], env=env, check=True, cwd=ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_request.py",
            "tests/test_request_core.py",
            "tests/test_codegen.py",
            "-k",
            "not pure_python_core",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("name", ["boolean", "string", "number", "integer", "object"])
def test_both_cores_have_the_same_signatures(name: str) -> None:
    def shape(fn: Any) -> list[tuple[str, Any]]:
        params = inspect.signature(fn).parameters.values()
        return [(p.name, p.default) for p in params]

    assert shape(getattr(RequestFlags, name)) == shape(getattr(request_module._PyCore, name))

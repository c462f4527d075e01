"""The house rules: imports only point down the layers (import-linter), every documented
import path works, ``import flagwire`` alone is enough and imports no framework, and a
missing extra is named with a command that works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Every import path the README documents, with the names it documents there.
DOCUMENTED = {
    "flagwire": [
        "Assignment",
        "FileSource",
        "FlagSet",
        "HttpSource",
        "KeyRing",
        "Propagation",
        "RedisSource",
        "RequestFlags",
        "StaticSource",
        "activate",
        "context",
        "current_flags",
        "set_default_source",
    ],
    "flagwire.asgi": ["FlagwireMiddleware"],
    "flagwire.wsgi": ["FlagwireMiddleware"],
    "flagwire.flask": ["Flagwire", "flags"],
    "flagwire.fastapi": ["Flags", "FlagwireMiddleware"],
    "flagwire.django": ["FlagwireMiddleware"],
    "flagwire.control": [
        "ConflictError",
        "FlagStore",
        "commit",
        "kill",
        "plan_publish",
        "rollback",
    ],
    "flagwire.celery": ["setup"],
    "flagwire.grpc": [
        "AioServerInterceptor",
        "ClientInterceptor",
        "ServerInterceptor",
        "aio_client_interceptors",
    ],
    "flagwire.httpx": ["AsyncFlagwireTransport", "FlagwireTransport"],
    "flagwire.requests": ["install"],
    "flagwire.otel": [
        "FlagwirePropagator",
        "OTelMetricsTelemetry",
        "OTelTelemetry",
        "install_propagator",
        "request_hook",
    ],
    "flagwire.prometheus": ["PrometheusTelemetry"],
    "flagwire.openfeature": ["BridgedFlag", "FlagwireProvider", "OpenFeatureSource"],
    "flagwire.context": ["compose", "cookies", "headers", "query", "static", "user"],
    "flagwire.propagation": ["bind", "flags_from_headers", "inject", "job_headers"],
}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_names_import_from_their_documented_path(module: str) -> None:
    names = ", ".join(DOCUMENTED[module])
    result = _python(f"from {module} import {names}")
    assert result.returncode == 0, result.stderr


def test_import_flagwire_is_enough_and_loads_no_framework() -> None:
    result = _python(
        """
        import sys
        import flagwire
        heavy = ("starlette", "fastapi", "flask", "werkzeug", "httpx", "requests",
                 "opentelemetry", "prometheus_client", "openfeature")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        assert not loaded, loaded
        flagwire.httpx.AsyncFlagwireTransport()
        flagwire.propagation.inject
        flagwire.otel.install_propagator
        flagwire.flask.Flagwire
        assert "httpx" in dir(flagwire)
        try:
            flagwire.no_such_thing
        except AttributeError as exc:
            assert "no_such_thing" in str(exc)
        else:
            raise AssertionError("no AttributeError")
        """
    )
    assert result.returncode == 0, result.stderr


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            {action}
        return None
sys.meta_path.insert(0, Block())
"""


def test_a_missing_extra_names_the_install_command() -> None:
    block = _BLOCK.format(blocked="starlette", action="raise ModuleNotFoundError(name=name)")
    result = _python(block + "import flagwire.asgi")
    assert result.returncode != 0
    assert "flagwire.asgi needs Starlette (starlette is not installed)" in result.stderr
    assert 'pip install -e ".[fastapi]"' in result.stderr


def test_an_import_that_fails_for_another_reason_is_not_called_a_missing_extra() -> None:
    block = _BLOCK.format(
        blocked="opentelemetry", action='raise ImportError("partially initialized module")'
    )
    result = _python(block + "import flagwire.otel")
    assert result.returncode != 0
    assert "partially initialized module" in result.stderr
    assert "needs OpenTelemetry" not in result.stderr


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(pythonpath)},
    )


def test_the_layer_contracts_hold() -> None:
    result = _lint_imports(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("_engine/climb.py", "import flagwire._request.flags\n", "Layers"),
        ("_request/climb.py", "import flagwire._integration\n", "Layers"),
        ("_sources/web.py", "import starlette.requests\n", "imports no web framework"),
    ],
)
def test_an_import_that_climbs_a_layer_breaks_a_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    shutil.copytree(ROOT / "src" / "flagwire", tmp_path / "flagwire")
    (tmp_path / "flagwire" / module).write_text(line)
    result = _lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "1 broken" in result.stdout
    assert broken in result.stdout.split("Broken contracts", 1)[1]

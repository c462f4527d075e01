"""When a demo server fails to start, the demo says which one and prints its output."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import pytest

from attack_servers import free_port

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def _demo() -> ModuleType:
    # As ``python examples/demo.py`` runs it: its folder first on the path (its helpers).
    if str(DEMO.parent) not in sys.path:
        sys.path.insert(0, str(DEMO.parent))
    spec = importlib.util.spec_from_file_location("flagwire_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_server_that_exits_is_named_with_its_output(tmp_path: Path) -> None:
    demo = _demo()
    failing = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('boom: no flask_app'); sys.exit(3)",
    ]
    with ExitStack() as stack:
        server = demo.start(
            "the checkout service (gunicorn, examples/flask_app.py)", failing, {}, stack, tmp_path
        )
        with pytest.raises(SystemExit) as stopped:
            demo.wait_ready(server, f"http://127.0.0.1:{free_port()}/healthz", timeout=10)
    message = str(stopped.value)
    assert "flask_app.py) exited with code 3" in message and "boom: no flask_app" in message


def test_a_server_that_never_answers_is_named_with_its_output(tmp_path: Path) -> None:
    demo = _demo()
    silent = [
        sys.executable,
        "-c",
        "import time; print('listening nowhere', flush=True); time.sleep(30)",
    ]
    with ExitStack() as stack:
        server = demo.start("the gateway", silent, {}, stack, tmp_path)
        with pytest.raises(SystemExit) as stopped:
            demo.wait_ready(server, f"http://127.0.0.1:{free_port()}/healthz", timeout=1)
    assert "did not come up within 1 s" in str(stopped.value)
    assert "listening nowhere" in str(stopped.value)

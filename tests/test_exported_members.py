"""flagwire's public API is exactly ``flagwire.__all__`` (as httpx checks its own)."""

from __future__ import annotations

import json
import subprocess
import sys

import flagwire

# Run in a fresh interpreter: in this one, other tests may have imported submodules
# (``flagwire.asgi``, ``flagwire.cli``, ...), which binds them as attributes of the package.
_PUBLIC_NAMES = """
import __future__, json
import flagwire
included_private_members = ["__version__"]
print(json.dumps(sorted([
    *(
        name
        for name, value in vars(flagwire).items()
        if (not name.startswith("_") or name in included_private_members)
        and value is not __future__.annotations  # from __future__ import annotations
    ),
    *flagwire._LAZY,  # resolved on first use (module __getattr__)
])))
"""


def test_all_is_sorted() -> None:
    assert flagwire.__all__ == sorted(flagwire.__all__)
    assert len(set(flagwire.__all__)) == len(flagwire.__all__)


def test_all_imports_are_exported() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PUBLIC_NAMES], capture_output=True, text=True, check=True
    )

    assert flagwire.__all__ == json.loads(result.stdout)


def test_every_exported_name_resolves() -> None:
    for name in flagwire.__all__:
        obj = getattr(flagwire, name)
        assert obj is not None, name
        if isinstance(obj, type):
            assert obj.__module__.startswith("flagwire"), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from flagwire import *", namespace)

    assert sorted(k for k in namespace if k != "__builtins__") == sorted(flagwire.__all__)

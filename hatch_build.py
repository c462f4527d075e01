"""Build hook: compile flagwire's optional C speedups (``src/flagwire/_speedups.c``).

The extension is compiled in place, next to the sources (so editable installs find it),
and put into wheels. Without a working C compiler, or with ``FLAGWIRE_PURE_PYTHON=1``
set at build time, the build goes on without it: flagwire then uses its pure-Python core
(same behaviour, slower per flag).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src") / "flagwire" / "_speedups.c"


def compile_speedups(root: Path) -> Path | None:
    """Compile the extension in place; its path, or ``None`` if it could not be built."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    link = sysconfig.get_config_var("LDSHARED")
    include = sysconfig.get_paths()["include"]
    source = root / SOURCE
    if not suffix or not link or not source.exists():
        return None
    target = source.with_name("_speedups" + suffix)
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    command = [
        *shlex.split(link),
        *shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC"),
        "-O2",
        "-I",
        include,
        str(source),
        "-o",
        str(target),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"flagwire: C speedups not built ({exc}); using pure Python", file=sys.stderr)
        return None
    if result.returncode != 0:
        print(
            "flagwire: C speedups not built; using pure Python\n" + result.stderr,
            file=sys.stderr,
        )
        return None
    return target


class SpeedupsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("FLAGWIRE_PURE_PYTHON"):
            return
        built = compile_speedups(Path(self.root))
        if built is None:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports it from src/
            build_data["force_include"][str(built)] = f"flagwire/{built.name}"

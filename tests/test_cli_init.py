"""``flagwire init`` and ``flagwire --version``, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import flagwire
from flagwire import FlagSet
from flagwire._cli.init import starter

CLI = [sys.executable, "-m", "flagwire"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True)


def test_init_writes_a_file_that_passes_validate_and_the_strict_audit(tmp_path: Path) -> None:
    made = _run("init", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "flags.yaml").exists()
    assert _run("validate", "flags.yaml", cwd=tmp_path).returncode == 0
    audit = _run("audit", "flags.yaml", "--require", "owner,expires", cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("keep me")
    refused = _run("init", "mine.yaml", cwd=tmp_path)
    assert refused.returncode == 1
    assert "exists" in refused.stderr
    assert (tmp_path / "mine.yaml").read_text() == "keep me"
    assert _run("init", "mine.yaml", "--force", cwd=tmp_path).returncode == 0
    assert "new-checkout" in (tmp_path / "mine.yaml").read_text()


def test_the_starter_rolls_out_to_a_tenth_and_expires_in_a_quarter() -> None:
    flagset = FlagSet.from_text(starter(today=date(2026, 12, 2)), source="starter")
    on = sum(flagset.boolean("new-checkout", False, {"targetingKey": f"u{i}"}) for i in range(2000))
    assert 150 < on < 250
    definition = flagset.definition("new-checkout")
    assert definition is not None
    assert definition.metadata["expires"] == "2027-03-02"
    assert definition.metadata["owner"] == "team-checkout"


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    result = _run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"flagwire {flagwire.__version__}"

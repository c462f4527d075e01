"""The guard's assets in ``integrations/``: the dashboard's annotation of guard actions,
the guard alerts in the shipped rules (``promtool test rules``), and the Alertmanager
receiver config (``amtool check-config`` and ``amtool config routes test``). The rollout-step
panel is checked with the other panels in ``tests/test_integrations.py``, and against a
real Prometheus scraping a real guard in ``tests/test_e2e_guard.py``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flagwire._control.guard_metrics import ACTION_METRIC
from test_integrations import INTEGRATIONS, _binary, _dashboard, _rules, metric_names

ALERTMANAGER_CONFIG = INTEGRATIONS / "alertmanager" / "flagwire-guard.yml"


def test_dashboard_annotates_guard_actions() -> None:
    (guard,) = [a for a in _dashboard()["annotations"]["list"] if a.get("name") == "Guard actions"]
    assert metric_names(guard["expr"]) == {ACTION_METRIC}
    assert "{{action}}" in guard["titleFormat"] and "{{flag}}" in guard["textFormat"]
    # A guard's first action of a kind creates its series at 1: changes() alone misses it.
    assert "unless flagwire_guard_actions_total offset 2m" in guard["expr"]
    assert guard["enable"] and guard["datasource"]["uid"] == "${datasource}"


def test_promtool_unit_tests_of_the_guard_alerts(tmp_path: Path) -> None:
    rules = _rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    series = [
        {"series": 'flagwire_guard_paused{job="guard", flag="new-checkout"}',
         "values": "0 0 1 1 1 1 1"},
        {"series": 'flagwire_guard_errors_total{job="guard", kind="prometheus"}',
         "values": "0+1x40"},
    ]  # fmt: skip
    paused = {"flag": "new-checkout", "severity": "warning"}
    failing = {"job": "guard", "kind": "prometheus", "severity": "warning"}
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "FlagwireGuardPaused", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "FlagwireGuardPaused",
                 "exp_alerts": [{"exp_labels": paused}]},
                {"eval_time": "5m", "alertname": "FlagwireGuardFailing", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "FlagwireGuardFailing",
                 "exp_alerts": [{"exp_labels": failing}]},
            ],
        }],
    }  # fmt: skip
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [_binary("promtool"), "test", "rules", "tests.yml"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _amtool(*args: str) -> str:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (bash .ci/install-services.sh installs it)")
    result = subprocess.run(
        [amtool, *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alertmanager_config_routes_the_regression_alerts_to_the_guard() -> None:
    assert "SUCCESS" in _amtool("check-config", str(ALERTMANAGER_CONFIG))
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (guard,) = [r for r in config["receivers"] if r["name"] == "flagwire-guard"]
    assert guard["webhook_configs"][0]["url"].endswith("/alerts")
    test = ["config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
    for alert in ("FlagwireVariantLatencyRegression", "FlagwireVariantErrorRegression"):
        routed = _amtool(*test, f"alertname={alert}", "flag=f", "variant=on", "job=shop")
        assert "flagwire-guard" in routed, routed
    assert "flagwire-guard" not in _amtool(*test, "alertname=FlagwireSourceDown")

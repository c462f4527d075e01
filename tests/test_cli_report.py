"""``flagwire report``: the control and the weights from the flag file, the output forms,
exit statuses, and the errors it names (against a canned Prometheus API on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from flagwire._cli.main import main
from test_analysis_reader import _canned, _Server
from test_layers import _BLOCK

ROOT = Path(__file__).resolve().parents[1]
FLAG = "checkout-v2"


@pytest.fixture
def prometheus() -> Iterator[_Server]:
    server = _Server()

    def answer(params: dict[str, str]) -> tuple[int, bytes]:
        if "step" in params:  # query_range: p95 over time, for the chart
            points = [[1700000000.0 + 60 * i, str(0.05 + 0.01 * i)] for i in range(5)]
            result = [{"metric": {"variant": v}, "values": points} for v in ("on", "off")]
            body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
            return 200, json.dumps(body).encode()
        return _canned(params)

    server.answer = answer
    yield server
    server.close()


def _flags(tmp_path: Path, targeting: Any, metadata: dict[str, Any] | None = None) -> Path:
    document = {
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": targeting,
                "metadata": {"owner": "payments", **(metadata or {})},
            }
        }
    }
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


SPLIT = {"fractional": [["on", 50], ["off", 50]]}


def _run(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> tuple[int, str, str]:
    code = main(["report", "--prometheus", url, "--flag", FLAG, "--since", "1h", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_takes_the_control_from_metadata_and_the_weights_from_the_split(
    prometheus: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _flags(tmp_path, SPLIT, {"rollout.control": "off"})

    code, out, _ = _run(capsys, prometheus.url, "--flags", str(flags), "--json")

    assert code == 0
    report = json.loads(out)
    assert report["schema"] == "flagwire.report/v1"
    assert report["control"] == "off"
    assert [v["variant"] for v in report["variants"]] == ["off", "on"]
    assert report["srm"]["expected"] == {"on": 1000.0, "off": 1000.0}
    expected = stats.chisquare([1010, 990], [1000, 1000])
    assert report["srm"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert not report["srm"]["mismatch"]
    checkout = next(
        c for c in report["comparisons"] if c["event"] == "checkout" and c["metric"] == "event_rate"
    )
    assert checkout["variant_value"] == pytest.approx(120 / 1010)
    # The queries covered the window asked for.
    assert all("[1h]" in params["query"] for _, params in prometheus.seen)


def test_the_table_is_printed_and_a_split_that_does_not_match_exits_1(
    prometheus: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _flags(tmp_path, {"fractional": [["on", 80], ["off", 20]]})

    code, out, _ = _run(capsys, prometheus.url, "--flags", str(flags), "--control", "off")

    assert code == 1
    assert f"flag {FLAG}" in out
    assert "SAMPLE RATIO MISMATCH" in out
    assert out.index("SAMPLE RATIO MISMATCH") < out.index("requests")


def test_without_a_plain_split_the_srm_check_is_skipped_and_said_so(
    prometheus: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beta_first = {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", SPLIT]}
    flags = _flags(tmp_path, beta_first, {"rollout.control": "off"})

    code, out, err = _run(capsys, prometheus.url, "--flags", str(flags), "--json")

    assert code == 0
    assert json.loads(out)["srm"] is None
    assert "not split by one fractional" in err


def test_events_can_be_chosen(prometheus: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, prometheus.url, "--control", "off", "--event", "signup", "--json")

    assert code == 0
    report = json.loads(out)
    assert {e for v in report["variants"] for e in v["events"]} == {"signup"}
    assert report["srm"] is None


def test_png_and_html_are_written(
    prometheus: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png, page = tmp_path / "report.png", tmp_path / "report.html"

    code, _, _ = _run(
        capsys, prometheus.url, "--control", "off", "--png", str(png), "--html", str(page)
    )

    assert code == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert 'id="flagwire-report"' in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no control variant: pass --control V, or set --flags"),
        (["--control", "nope"], "control variant 'nope' has no requests"),
        (["--control", "off", "--since", "yesterday"], "not a Prometheus duration"),
        (["--flags", "FLAGS"], "no control variant: pass --control V, or set metadata"),
        (["--flags", "FLAGS", "--flag", "missing"], 'flag "missing" is not in'),
    ],
)
def test_usage_problems_exit_2_with_a_message(
    prometheus: _Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    flags = str(_flags(tmp_path, SPLIT))
    code, out, err = _run(capsys, prometheus.url, *[flags if e == "FLAGS" else e for e in extra])

    assert code == 2
    assert out == ""
    assert message in err


def test_an_unreachable_prometheus_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "http://127.0.0.1:9", "--control", "off")

    assert code == 2
    assert "http://127.0.0.1:9/api/v1/query" in err
    assert "cannot connect" in err


def test_a_missing_scipy_names_the_extra_and_other_commands_still_work(tmp_path: Path) -> None:
    flags = _flags(tmp_path, SPLIT)
    block = _BLOCK.format(blocked="scipy", action="raise ModuleNotFoundError(name=name)")
    script = block + (
        "import sys\n"
        "from flagwire._cli.main import main\n"
        f"assert main(['validate', {str(flags)!r}]) == 0\n"
        "sys.exit(main(['report', '--prometheus', 'http://127.0.0.1:9', '--flag', 'f',"
        " '--control', 'off']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )

    assert result.returncode == 2, result.stderr
    assert "flagwire report needs scipy (scipy is not installed)" in result.stderr
    assert 'pip install -e ".[report]"' in result.stderr

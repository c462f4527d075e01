"""The chart (PNG) and the HTML page; that the rest of the analysis never imports matplotlib.

The PNG this draws was looked at while writing the chart (title, axis labels with units,
legend, error bars with labelled differences); these tests keep what can be checked
mechanically: it is a real, non-blank image of the expected size, the page embeds it and
the report, and a missing matplotlib names the extra.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flagwire._analysis.chart import render_html, render_png, render_png_bytes
from flagwire._analysis.figures import EventFigures, VariantFigures
from flagwire._analysis.model import Report
from flagwire._analysis.report import build_report
from flagwire._errors import ConfigError

END = 1_780_000_000.0
LATENCY = {
    "off": [(END - 600 * i, 0.20 + 0.03 * math.sin(i / 10)) for i in range(144, -1, -1)],
    "on": [(END - 600 * i, 0.24 + 0.03 * math.sin(i / 8)) for i in range(144, -1, -1)],
}


def _report(on_requests: int = 10_100) -> Report:
    buckets = ((0.05, 0.4), (0.1, 0.8), (0.25, 0.95), (math.inf, 1.0))
    figures = [
        VariantFigures(
            name, requests, errors, tuple((le, s * requests) for le, s in buckets),
            {"checkout": EventFigures(checkouts, 50.0 * checkouts, 2900.0 * checkouts),
             "click": EventFigures(clicks)},
        )
        for name, requests, errors, checkouts, clicks in [
            ("off", 10_000, 12, 1000, 15_000),
            ("on", on_requests, 20, on_requests // 8, 15_500),
        ]
    ]  # fmt: skip
    return build_report(
        figures, flag="checkout-v2", control="off", weights={"on": 1, "off": 1}, since="24h"
    )


def test_the_png_is_a_real_readable_sized_image(tmp_path: Path) -> None:
    path = tmp_path / "report.png"

    render_png(_report(), path, latency=LATENCY)

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 780)  # 12 x 7.8 inches at 100 dpi: two rows of panels
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None
    assert len(colours) > 200  # lines, markers, text: not a blank canvas


def test_more_events_add_rows_of_panels() -> None:
    report = _report()
    one_row = Image.open(io.BytesIO(render_png_bytes(report))).size
    many = build_report(
        [
            VariantFigures(v, 1000, 1, (), {f"e{i}": EventFigures(100 + i) for i in range(5)})
            for v in ("off", "on")
        ],
        flag="f", control="off", weights=None, since="1h",
    )  # fmt: skip

    assert Image.open(io.BytesIO(render_png_bytes(many))).size[1] > one_row[1]


def test_the_html_page_embeds_the_chart_table_and_json(tmp_path: Path) -> None:
    report = _report(on_requests=11_000)  # skewed: the page must say so first
    path = tmp_path / "report.html"

    render_html(report, path, latency=LATENCY)

    page = path.read_text(encoding="utf-8")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.index('class="srm"') < page.index("<img")
    assert html.escape("SAMPLE RATIO MISMATCH") in page
    script = re.search(r'id="flagwire-report">(.*?)</script>', page, re.DOTALL)
    assert script is not None
    assert json.loads(script.group(1)) == report.to_json()
    assert "checkout per request" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing to fetch


def test_a_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)

    with pytest.raises(ConfigError, match=r'pip install -e "\.\[report\]"'):
        render_png_bytes(_report())


def test_the_core_of_the_analysis_never_imports_matplotlib() -> None:
    code = (
        "import sys\n"
        "import flagwire._analysis.report, flagwire._analysis.table, flagwire._analysis.reader\n"
        "import flagwire._analysis.chart\n"
        "assert 'matplotlib' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_package_exports_are_sorted_and_complete() -> None:
    import flagwire._analysis as analysis

    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    assert analysis.__all__ == sorted(
        analysis.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n)
    )
    public = {
        name
        for module in (
            "chart", "figures", "model", "reader", "report", "sequential", "srm", "stats", "table",
        )
        for name in __import__(f"flagwire._analysis.{module}", fromlist=["_"]).__all__
    }  # fmt: skip
    assert set(analysis.__all__) == public

"""The HTML reports in a real browser: headless Chromium (Debian's package, installed by
``make setup``) loads each page without a console error and draws every plot.  The
demo's own page, from real runs, is opened by ``test_migration``."""

from __future__ import annotations

import json
from pathlib import Path

from wanmig.report.html import write_html

from ..browser import open_page
from ..unit.test_html_report import bench_doc, record


def test_record_and_bench_pages_load_and_draw_every_plot(tmp_path: Path) -> None:
    pages = {"record.html": (json.loads(record().model_dump_json()), 4),
             "bench.html": (bench_doc(), 3)}
    for name, (doc, plots) in pages.items():
        write_html(doc, tmp_path / name)
        view = open_page(tmp_path / name)
        assert view.loaded and view.errors == [], (name, view.errors)
        assert len(view.images) == plots, view.images
        assert all(i["complete"] and i["width"] > 300 and i["height"] > 100
                   for i in view.images), view.images


def test_the_browser_check_sees_errors_and_undrawn_plots(tmp_path: Path) -> None:
    """What the check would report of a broken page: it can fail."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="plot" src="data:image/png;base64,'
                    'AAAA"><script>console.error("drawn badly")</script></body></html>')
    view = open_page(page)
    assert view.loaded
    assert any("drawn badly" in e for e in view.errors), view.errors
    assert view.images == [{"alt": "plot", "complete": True, "width": 0, "height": 0}]

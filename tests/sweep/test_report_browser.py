"""The report of a finished sweep as a browser shows it: headless Chromium renders
RUN/report/index.html; its DOM holds the results table and plots that decode, and the screenshot
shows them (not a blank page, not broken-image boxes).

Chromium is part of the test set-up (the README's test command installs the Debian package)."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lorabatch.layout import RunLayout
from tests.helpers.processes import kill_session

WIDTH, HEIGHT = 1280, 4000
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WIDTH},{HEIGHT}",
]
# Appended to a copy of the page for --dump-dom: once loaded, each <img> records what the browser
# decoded (natural size) and where it drew it (layout box in CSS px = screenshot px at scale 1).
PROBE = """<script>window.addEventListener('load', () => { for (const img of document.images) {
  const r = img.getBoundingClientRect();
  img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight);
  img.setAttribute('data-box', [r.left, r.top, r.width, r.height].join(','));
  img.setAttribute('data-complete', String(img.complete)); } });</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed: the README's test command installs it (apt-get install -y chromium)"
    return path


def _run_chromium(args: list[str]) -> str:
    """Chromium with a fresh profile in a session of its own; its stdout. No process survives it."""
    with tempfile.TemporaryDirectory(prefix="lbchrome-") as profile:
        proc = subprocess.Popen(
            [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            kill_session(proc.pid)
    assert proc.returncode == 0, err[-3000:]
    return out


class _Page(HTMLParser):
    """Tables (rows of cell texts, by id) and <img> attributes of a rendered DOM."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _colours(pixels: np.ndarray) -> int:
    """Distinct RGB colours of an (h, w, 3) uint8-valued array."""
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    return len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))


@pytest.fixture(scope="module")
def rendered(reference_sweep, tmp_path_factory):
    """(screenshot as an RGB array, parsed DOM) of the reference sweep's report."""
    index = RunLayout(reference_sweep).report_index
    out = tmp_path_factory.mktemp("browser")
    shot = out / "report.png"
    _run_chromium([f"--screenshot={shot}", index.resolve().as_uri()])
    probed = out / "probed.html"  # beside nothing it needs: the page is self-contained
    probed.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    page = _Page()
    page.feed(_run_chromium(["--dump-dom", probed.as_uri()]))
    print(f"report screenshot: {shot}")
    return np.asarray(Image.open(shot).convert("RGB")), page


def test_dom_has_the_results_table_and_the_stages(rendered, reference_sweep):
    _, page = rendered
    summary = pq.read_table(RunLayout(reference_sweep).score_table("summary")).to_pylist()
    table = page.tables["results"]
    assert table[0][:2] == ["setting", "Rouge-L"]
    assert [row[0] for row in table[1:]] == [r["setting"] for r in summary]
    assert {row[0] for row in table[1:]} == {"base", "oracle", "JS-attentional", "JS-normalized"}
    for row, r in zip(table[1:], summary):
        assert row[1] == f"{r['rouge_l']:.3f}"
    stages = [row[0] for row in page.tables["stages"][1:]]
    assert stages == [
        "bank",
        "features",
        "distances",
        "coefficients",
        "coefficients-JS",
        "synthesis",
        "fewshot",
        "generation",
        "scoring",
        "report",
    ]


def test_plots_decode_and_are_drawn(rendered):
    shot, page = rendered
    assert shot.shape == (HEIGHT, WIDTH, 3)
    assert _colours(shot) > 100  # text, table borders and plots: not a blank page
    alts = sorted(img["alt"] for img in page.images)
    assert alts == [
        "coefficient heatmaps JS/attentional",
        "coefficient heatmaps JS/normalized",
        "distance heatmaps JS",
        "per-task improvement",
    ]
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        source = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
        assert img["data-complete"] == "true"
        # The browser decoded it to its true size (a broken image reports 0x0) ...
        assert img["data-natural"] == f"{source.shape[1]}x{source.shape[0]}", img["alt"]
        left, top, width, height = (round(float(v)) for v in img["data-box"].split(","))
        assert (width, height) == (source.shape[1], source.shape[0]) and top + height <= HEIGHT, img["alt"]
        # ... and the screenshot shows it there: a plot's colours, the pixels of its PNG.
        drawn = shot[top : top + height, left : left + width].astype(int)
        assert _colours(drawn) > 30, img["alt"]
        assert np.abs(drawn - source).mean() < 4.0, img["alt"]

"""`RUN/report/index.html`: one self-contained page (inline PNGs, no network) refreshed as stages
finish — the results table in the paper's shape, coefficient heatmaps per setting (as the paper's
Figure 1), per-task improvement over base, and distance-matrix heatmaps.

Reads only Parquet outputs of the stages; any part whose inputs do not exist yet is shown as
pending, so the report can be written after every stage.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from datetime import datetime, timezone
from pathlib import Path

from lorabatch.atomic import write_text
from lorabatch.layout import RunLayout
from lorabatch.scoring.aggregate import task_order
from lorabatch.settings import BASE, COEFFICIENT_MODELS, display_order
from lorabatch.sweep.stages import PIPELINE

SUMMARY_COLUMNS = [
    ("setting", "setting", "{}"),
    ("rouge_l", "Rouge-L", "{:.3f}"),
    ("improvement", "Δ vs base", "{:+.3f}"),
    ("improvement_rel", "Δ% vs base", "{:+.1%}"),
    ("share_improved", "tasks improved", "{:.0%}"),
    ("gap_closed", "base→oracle gap closed", "{:.0%}"),
    ("vs_uniform", "Δ vs uniform", "{:+.3f}"),
    ("exact_match", "exact match", "{:.3f}"),
    ("content", "content", "{:.3f}"),
    ("n_tasks", "tasks", "{}"),
    ("n_examples", "examples", "{}"),
    ("n_errors", "errors", "{}"),
]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _heatmap(matrix, labels, title: str, cmap: str, cbar: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = min(9.0, 2.5 + 0.18 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(matrix, cmap=cmap, interpolation="nearest")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n), labels, fontsize=6)
    ax.set_xlabel("source task j")
    ax.set_ylabel("target task i")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar)
    return _png(fig)


def _square(table, value: str):
    """Dense matrix of a (target, source, value) table, rows/cols in sorted task order."""
    import numpy as np

    targets = table.column("target").to_pylist()
    sources = table.column("source").to_pylist()
    labels = sorted(set(targets) | set(sources), key=task_order)
    index = {t: k for k, t in enumerate(labels)}
    m = np.full((len(labels), len(labels)), np.nan)
    for t, s, v in zip(targets, sources, table.column(value).to_pylist()):
        m[index[t], index[s]] = v
    return m, labels


def _summary_table(run_dir: Path) -> str:
    import pyarrow.parquet as pq

    path = RunLayout(run_dir).score_table("summary")
    if not path.is_file():
        return "<p class='pending'>Scores pending.</p>"
    rows = pq.read_table(path).to_pylist()
    cols = [c for c in SUMMARY_COLUMNS if rows and c[0] in rows[0]]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in cols)
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("<td>–</td>" if v is None or v != v else f"<td>{html.escape(fmt.format(v))}</td>")
        below = r.get("beats_uniform") is False
        mark = " class='below-uniform' title='does not beat uniform'" if below else ""
        body.append(f"<tr{mark}>{''.join(cells)}</tr>")
    note = (
        "<p class='meta'>Rows in grey with ✗ do not beat <code>uniform</code>, the plain mean of the other "
        "tasks' adapters (no task information).</p>"
        if any(r.get("beats_uniform") is False for r in rows)
        else ""
    )
    return f"<table id='results'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _fewshot_table(run_dir: Path) -> str:
    """Per few-shot method: tasks, mean loss vs its reference, forward passes and seconds per task."""
    import pyarrow.parquet as pq

    rows = []
    for method in ("select", "refine"):
        path = RunLayout(run_dir).fewshot(method)
        if not path.is_file():
            continue
        ok = [r for r in pq.read_table(path).to_pylist() if not r["error"]]
        n = max(1, len(ok))
        rows.append(
            (
                method,
                len(ok),
                sum(r["loss"] for r in ok) / n,
                sum(r["start_loss"] for r in ok) / n,
                sum(r["evaluations"] for r in ok) / n,
                sum(r["forward_passes"] for r in ok) / n,
                sum(r["seconds"] for r in ok) / n,
            )
        )
    if not rows:
        return "<p class='pending'>No few-shot settings (select / refine) in this run yet.</p>"
    body = "".join(
        f"<tr><td>{m}</td><td>{k}</td><td>{loss:.3f}</td><td>{start:.3f}</td><td>{ev:.0f}</td><td>{fp:.0f}</td><td>{sec:.2f}</td></tr>"
        for m, k, loss, start, ev, fp, sec in rows
    )
    head = (
        "<th>method</th><th>tasks</th><th>few-shot loss</th><th>reference loss (select: best paper setting; "
        "refine: start)</th><th>adapters tried / task</th><th>forward passes / task</th><th>seconds / task</th>"
    )
    return f"<table id='fewshot'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _improvement_plot(run_dir: Path) -> str:
    import pyarrow.parquet as pq

    path = RunLayout(run_dir).score_table("tasks")
    if not path.is_file():
        return "<p class='pending'>Per-task scores pending.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pq.read_table(path, columns=["task_id", "setting", "rouge_l"]).to_pylist()
    rows = [r for r in rows if r["rouge_l"] is not None]  # a task whose every row failed has no score
    base = {r["task_id"]: r["rouge_l"] for r in rows if r["setting"] == BASE}

    settings = sorted({r["setting"] for r in rows} - {BASE}, key=display_order)
    if not base or not settings:
        return "<p class='pending'>Per-task improvements need base and at least one other setting.</p>"
    fig, ax = plt.subplots(figsize=(10, 4))
    data = [
        [r["rouge_l"] - base[r["task_id"]] for r in rows if r["setting"] == s and r["task_id"] in base]
        for s in settings
    ]
    ax.boxplot(data, tick_labels=settings, showmeans=True)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("Rouge-L − base (per task)")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.set_title("Per-task improvement over the base model", fontsize=10)
    return f"<img alt='per-task improvement' src='{_png(fig)}'>"


# The report is refreshed after every stage, and a heatmap takes ~0.5 s to draw: each is drawn
# once per content of its file (this process), not once per refresh.
_HEATMAPS: dict[tuple[str, str, str, str], str] = {}


def _matrix_section(folder: Path, value: str, cmap: str, what: str, coefficients: bool = False) -> str:
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    if coefficients:  # the paper settings' (Figure 1); the controls' are trivial
        files = [f for f in files if f.stem in COEFFICIENT_MODELS]
    if not files:
        return f"<p class='pending'>{what.capitalize()} pending.</p>"
    out = []
    for f in files:
        name = str(f.relative_to(folder).with_suffix(""))
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        key = (digest, name, value, cmap)
        if key not in _HEATMAPS:
            table = pq.read_table(f, columns=["target", "source", value])
            matrix, labels = _square(table, value)
            _HEATMAPS[key] = _heatmap(matrix, labels, name, cmap, value)
        out.append(
            f"<figure><img alt='{html.escape(what)} {html.escape(name)}' "
            f"src='{_HEATMAPS[key]}'><figcaption>{html.escape(name)}</figcaption></figure>"
        )
    return "<div class='grid'>" + "".join(out) + "</div>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}td:first-child{font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}img{max-width:100%}
.pending{color:#888;font-style:italic}.meta{color:#666;font-size:90%}
tr.below-uniform td{color:#999}tr.below-uniform td:first-child::after{content:" ✗"}
"""


def _stage_order(name: str) -> tuple:
    """Pipeline order; a stage's parts (`coefficients-JS`) right after it; unknown stages last."""
    stem = name.split("-", 1)[0]
    return (PIPELINE.index(stem) if stem in PIPELINE else len(PIPELINE), name != stem, name)


def write_report(run_dir: str | Path, stages: dict | None = None) -> Path:
    """Render the report from whatever the run directory holds now; returns its path."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    stage_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(m.get('finished_at', ''))}</td><td>{m.get('seconds', '')}</td></tr>"
        for name, m in sorted((stages or {}).items(), key=lambda item: _stage_order(item[0]))
    )
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>lorabatch report — {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>lorabatch report</h1>
<p class='meta'>run directory {html.escape(str(run_dir.resolve()))} · written {datetime.now(timezone.utc).isoformat(timespec="seconds")}</p>
<h2>Results (Rouge-L, test splits)</h2>{_summary_table(run_dir)}
<h2>Few-shot settings: what they cost</h2>{_fewshot_table(run_dir)}
<h2>Per-task improvement over base</h2>{_improvement_plot(run_dir)}
<h2>Coefficients (rows: target task, columns: bank task)</h2>{_matrix_section(layout.coefficients_dir, "c", "viridis", "coefficient heatmaps", coefficients=True)}
<h2>Distances</h2>{_matrix_section(layout.distances_dir, "d", "magma_r", "distance heatmaps")}
<h2>Stages</h2><table id='stages'><thead><tr><th>stage</th><th>finished</th><th>seconds</th></tr></thead><tbody>{stage_rows}</tbody></table>
</body></html>"""
    target = layout.report_index
    write_text(target, page)
    return target

"""Stage markers: `RUN/stages/<name>.json` records the content key a stage last completed with.

A stage is skipped when its marker's key equals the key of its current inputs (config section,
upstream file hashes); any change of input changes the key and the stage runs again. Markers are
written atomically after a stage's outputs, so a marker never claims work that is not on disk.

Marker schema: {"stage": str, "key": str, "finished_at": ISO-8601 UTC, "seconds": float, "info": {...}}
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorabatch.atomic import write_json
from lorabatch.layout import RunLayout

# The sweep's stages in pipeline order (status and the report list them so).
PIPELINE = ("bank", "features", "distances", "coefficients", "synthesis", "fewshot", "generation", "scoring", "report")


def content_key(*parts: Any) -> str:
    """sha256 of the JSON form of `parts` (paths and other objects via str)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def marker_path(run_dir: str | Path, stage: str) -> Path:
    return RunLayout(run_dir).stage_marker(stage)


def read_marker(run_dir: str | Path, stage: str) -> dict | None:
    path = marker_path(run_dir, stage)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(run_dir: str | Path, stage: str, key: str) -> bool:
    marker = read_marker(run_dir, stage)
    return marker is not None and marker.get("key") == key


def mark_done(run_dir: str | Path, stage: str, key: str, started: float, info: dict | None = None) -> None:
    write_json(
        marker_path(run_dir, stage),
        {
            "stage": stage,
            "key": key,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 3),
            "info": info or {},
        },
    )


def all_markers(run_dir: str | Path) -> dict[str, dict]:
    folder = RunLayout(run_dir).stages
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return out

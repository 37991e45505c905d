"""Progress as Ray metrics, so the Ray dashboard (Metrics tab / Prometheus) shows it.

    lorabatch_rows_generated_total{setting}        generation rows written
    lorabatch_rows_failed_total{setting}           generation rows recorded with an error
    lorabatch_adapters_synthesized_total{setting}  adapters written by synthesis
    lorabatch_stage_done{stage}                    1 once a sweep stage has completed, else 0

Metrics only exist while connected to Ray; outside Ray every call is a no-op. The stages report
here, so this module depends on nothing of lorabatch.
"""

from __future__ import annotations

_METRICS: dict | None = None


def _metrics() -> dict | None:
    global _METRICS
    if _METRICS is not None:
        return _METRICS
    try:
        import ray
        from ray.util.metrics import Counter, Gauge
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    _METRICS = {
        "rows": Counter("lorabatch_rows_generated", "Generation rows written.", tag_keys=("setting",)),
        "failed": Counter("lorabatch_rows_failed", "Generation rows recorded with an error.", tag_keys=("setting",)),
        "adapters": Counter("lorabatch_adapters_synthesized", "Adapters written by synthesis.", tag_keys=("setting",)),
        "stage": Gauge("lorabatch_stage_done", "1 once a sweep stage has completed.", tag_keys=("stage",)),
    }
    return _METRICS


def rows_generated(setting: str, n: int, failed: int = 0) -> None:
    m = _metrics()
    if m is None:
        return
    if n:
        m["rows"].inc(n, tags={"setting": setting})
    if failed:
        m["failed"].inc(failed, tags={"setting": setting})


def adapters_synthesized(setting: str, n: int = 1) -> None:
    m = _metrics()
    if m is not None and n:
        m["adapters"].inc(n, tags={"setting": setting})


def stage_done(stage: str, done: bool = True) -> None:
    m = _metrics()
    if m is not None:
        m["stage"].set(1.0 if done else 0.0, tags={"stage": stage})

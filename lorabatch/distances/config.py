"""Configuration of the distances stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lorabatch.distances.registry import PAPER_METRICS, registered_metrics
from lorabatch.strict import RuntimeField, StrictModel


class DistancesConfig(StrictModel):
    """Which metrics to compute over the bank, and how."""

    metrics: list[str] = Field(
        default_factory=lambda: list(PAPER_METRICS),
        description="Metric names (registered: KL, JS, WD, MMD in paper mode; OT_EMD, OT_SLICED, "
        "MMD_RBF on embeddings). Each is written to RUN/distances/<metric>.parquet.",
    )
    block_size: int | None = RuntimeField(
        None,
        ge=1,
        description="Rows and columns of one block of the matrix (one task); None: the metric's own "
        "default (large for matrix-product metrics, smaller for per-bin kernels).",
    )
    executor: Literal["auto", "ray", "local"] = RuntimeField(
        "auto",
        description="'ray': blocks as Ray Data tasks; 'local': blocks on threads of this process; "
        "'auto': Ray Data when the metric's estimated single-core work exceeds ray_min_work_s, "
        "else local (distributing a second of work costs more than it saves).",
    )
    ray_min_work_s: float = RuntimeField(
        10.0, ge=0, description="'auto' executor: estimated single-core seconds from which Ray Data is used."
    )
    num_workers: int | None = RuntimeField(
        None,
        ge=1,
        description="Parallel block workers: Ray tasks or local threads; also the threads that prepare "
        "the per-dataset arrays (None: the CPUs available).",
    )
    ot_sample_size: int = Field(
        128, ge=1, description="OT_EMD: example embeddings per dataset (seeded subsample) in the exact EMD."
    )
    ot_seed: int = Field(0, description="OT_EMD: seed of the subsamples (combined with each dataset's content).")
    sliced_projections: int = Field(
        128, ge=1, description="OT_SLICED: random directions of the sliced Wasserstein distance."
    )
    sliced_seed: int = Field(0, description="OT_SLICED: seed of the random directions.")
    rbf_bandwidth: float = Field(
        1.0, gt=0, description="MMD_RBF: σ of k(x, y) = exp(-‖x - y‖² / (2σ²)) on the embeddings."
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics):
        known = registered_metrics()
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; registered: {list(known)}")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"a metric is listed more than once: {metrics}")
        if not metrics:
            raise ValueError("no metric listed")
        return metrics

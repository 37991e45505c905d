"""Config of the scoring stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lorabatch.strict import RuntimeField, StrictModel


class ScoringConfig(StrictModel):
    reference: Literal["first", "max"] = Field(
        "first",
        description="Score against output[0] ('first', the paper's choice) or take the best score over "
        "all references ('max').",
    )
    failed_rows: Literal["exclude", "zero"] = Field(
        "exclude",
        description="Rows recorded with an error: left out of the means ('exclude', counted in n_errors) "
        "or scored 0 ('zero').",
    )
    executor: Literal["ray", "local"] = RuntimeField(
        "ray", description="Score examples with Ray Data ('ray') or in this process ('local')."
    )
    batch_size: int = RuntimeField(256, ge=1, description="Rows per Ray Data scoring batch.")

"""Base class of every config model."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

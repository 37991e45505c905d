"""Base class of every config model."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def no_duplicates(values: list, what: str) -> list:
    """`values` unchanged, or `ValueError` naming the entries `what` lists more than once."""
    dupes = sorted({v for v in values if values.count(v) > 1}, key=str)
    if dupes:
        raise ValueError(f"{what} listed more than once: {dupes}")
    return values

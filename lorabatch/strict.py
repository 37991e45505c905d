"""Base class of every config model."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def torch_device(value: str, auto: bool) -> str:
    """`value` unchanged if it names a torch device ('cpu', 'cuda[:i]', 'mps'; 'auto' too when
    `auto`), else `ValueError` quoting it."""
    if (auto and value == "auto") or value.split(":")[0] in ("cpu", "cuda", "mps"):
        return value
    kinds = "'auto', 'cpu', 'cuda[:i]' or 'mps'" if auto else "'cpu', 'cuda[:i]' or 'mps'"
    raise ValueError(f"device must be {kinds}, got {value!r}")


def no_duplicates(values: list, what: str) -> list:
    """`values` unchanged, or `ValueError` naming the entries `what` lists more than once."""
    dupes = sorted({v for v in values if values.count(v) > 1}, key=str)
    if dupes:
        raise ValueError(f"{what} listed more than once: {dupes}")
    return values

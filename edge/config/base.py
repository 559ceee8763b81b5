"""What every config section shares: typed, strict, frozen, and finite.

Strict scalars: `1` is no bool and `"10"` no int (YAML's own types are kept); a float
field takes an int. Unknown keys are errors. NaN and infinity are refused everywhere,
so no pulse cap or rate can be infinite.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Strict, StrictBool, StrictInt, StrictStr

Float = Annotated[float, Strict()]
Int = StrictInt
Bool = StrictBool
Str = StrictStr


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=False)

    def replace(self, **changes: Any):
        """A copy with some fields changed (as dataclasses.replace)."""
        return self.model_copy(update=changes)


class Invalid(ValueError):
    """A cross-field check failed; `key` (relative to the section) names the field to fix."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key

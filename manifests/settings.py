"""The base of every settings model: unknown keys are errors, values are frozen.

A stage's settings are dumped to JSON for its fingerprint in the journal, so a model's fields (not its class or
module) are what a resume compares.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

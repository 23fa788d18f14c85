"""The face tracker's settings (`stages.face` in pipeline.yaml): curation and inference track faces alike."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from manifests.settings import StrictSettings


class FaceParams(StrictSettings):
    backend: Literal["dlib", "fan"] = "dlib"
    resolution: int = Field(256, ge=64, le=2048)
    track: bool = True
    detect_every: int = Field(50, ge=1)
    search_every: int = Field(10, ge=1)
    shape_tolerance: float = Field(0.08, gt=0)
    min_face_px: int = Field(96, ge=8)
    min_detection_rate: float = Field(0.9, ge=0, le=1)
    max_multi_face_share: float = Field(0.2, ge=0, le=1)
    prominent_ratio: float = Field(0.5, gt=0, le=1)
    max_gap_frames: int = Field(10, ge=0)
    smooth_sigma_frames: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _even(self) -> "FaceParams":
        if self.resolution % 2:
            raise ValueError(f"resolution {self.resolution} must be even (4:2:0 video)")
        return self

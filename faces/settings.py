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
    min_face_px: int | None = Field(None, ge=8)   # None: follows the resolution (see min_face)
    min_detection_rate: float = Field(0.9, ge=0, le=1)
    max_multi_face_share: float = Field(0.2, ge=0, le=1)
    prominent_ratio: float = Field(0.5, gt=0, le=1)
    max_gap_frames: int = Field(10, ge=0)
    smooth_sigma_frames: float = Field(2.0, ge=0)
    min_mouth_sharpness: float = Field(8.5, ge=0)
    max_yaw_deg: float = Field(30.0, gt=0, le=90)
    max_pitch_deg: float = Field(30.0, gt=0, le=90)
    max_off_pose_share: float = Field(0.2, ge=0, le=1)
    max_mouth_outside_share: float = Field(0.05, ge=0, le=1)
    max_turn_deg_s: float = Field(150.0, gt=0)
    max_move_widths_s: float = Field(2.0, gt=0)
    # a shot with several faces: follow each and keep the one that speaks (`speaker`), keep the largest
    # (`largest`), or drop the clip as `several_faces` (`reject`)
    several_faces: Literal["speaker", "largest", "reject"] = "speaker"
    max_faces: int = Field(2, ge=1, le=8)                  # faces followed at once under `speaker`
    speaker_window_frames: int = Field(75, ge=10)          # the speaking cue's window (3 s at 25 fps)
    turn_margin: float = Field(0.2, ge=0)                  # a window is one face's when its cue leads by this
    max_turn_share: float = Field(0.3, ge=0, le=1)         # ... and a clip is two speakers' when each has this share

    @property
    def min_face(self) -> int:
        """The minimum face width in source pixels: `min_face_px`, or by default 96 px for a 256-pixel target
        and in proportion above (192 for 512): a face upscaled to the aligned size more than about 2.7x shows
        its blur, and a larger target needs a proportionally larger face for the same sharpness."""
        return self.min_face_px if self.min_face_px is not None else round(self.resolution * 96 / 256)

    @model_validator(mode="after")
    def _even(self) -> "FaceParams":
        if self.resolution % 2:
            raise ValueError(f"resolution {self.resolution} must be even (4:2:0 video)")
        return self

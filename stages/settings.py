"""The settings of each curation stage (`stages.<name>` in pipeline.yaml; the face tracker's are in
faces.settings). Kept apart from the stages themselves so that the driver reads a config without importing
PyAV, OpenCV or torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from manifests.settings import StrictSettings


class ProbeParams(StrictSettings):
    truncation_tolerance_s: float = Field(1.0, ge=0)


class ResampleParams(StrictSettings):
    fps: int = Field(25, ge=1, le=240)
    sample_rate: int = Field(16000, ge=8000, le=192000)

    @model_validator(mode="after")
    def _whole_samples_per_frame(self) -> "ResampleParams":
        if self.sample_rate % self.fps:
            raise ValueError(
                f"sample_rate {self.sample_rate} is not a whole number of samples per frame at fps {self.fps}"
            )
        return self


class ShotParams(StrictSettings):
    adaptive_threshold: float = Field(2.0, gt=0)
    min_scene_len_s: float = Field(0.6, ge=0)
    window_width: int = Field(2, ge=1)
    min_content_val: float = Field(15.0, ge=0)
    luma_only: bool = False
    analysis_width: int = Field(256, ge=32)


class ClipParams(StrictSettings):
    min_seconds: float = Field(5.0, gt=0)
    max_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "ClipParams":
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) is below min_seconds ({self.min_seconds})")
        return self


class SyncParams(StrictSettings):
    min_confidence: float = Field(3.0, ge=0)
    max_offset: int = Field(6, ge=0, le=15)
    crop_scale: float = Field(0.4, gt=0)
    speaker_tie_conf: float = Field(0.5, ge=0)   # faces of one span this close in confidence: the cue decides


class QualityParams(StrictSettings):
    min_score: float = 40.0


class WriteParams(StrictSettings):
    short_side: int = Field(256, ge=16)
    crf: int = Field(18, ge=0, le=51)
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
    ] = "veryfast"
    audio_codec: Literal["flac", "pcm_s16le", "aac"] = "flac"


class SpeechParams(StrictSettings):
    enabled: bool = True
    min_fraction: float = Field(0.5, ge=0, le=1)
    threshold: float = Field(0.5, gt=0, lt=1)


class DuplicateParams(StrictSettings):
    max_video_distance: int = Field(32, ge=0, le=256)   # summed Hamming distance of the 4 picture hashes (of 256)
    max_audio_distance: int = Field(16, ge=0, le=64)    # Hamming distance of the audio hashes (of 64)

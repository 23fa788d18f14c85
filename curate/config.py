"""Pipeline configuration: the schema of pipeline.yaml, its validation and the per-stage fingerprints.

The defaults below are the documented defaults of `pipeline.yaml` at the repository root (a test keeps
the two equal). Every model forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from faces.settings import FaceParams
from manifests.settings import StrictSettings
from stages.settings import (
    ClipParams, DuplicateParams, ProbeParams, QualityParams, ResampleParams, ShotParams, SpeechParams, SyncParams,
    WriteParams,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the bad key."""


# stages a run may leave out (`--skip`); without `face` the clips are written unaligned, and the clip stages
# are left out too: `sync` crops from the face stage's landmarks, and `quality`'s threshold (LatentSync's 40)
# is meant for the aligned face, not for the middle of a whole frame
SKIPPABLE = ("shots", "face", "speech", "sync", "quality", "duplicates")


class RunSettings(StrictSettings):
    num_cpus: int | None = Field(None, ge=1)
    address: str | None = None
    max_in_flight: int | None = Field(None, ge=1)
    max_retries: int = Field(3, ge=0)
    stall_timeout_s: float = Field(600, ge=1)   # a source task silent this long is hung: killed, source rejected
    part_sources: int = Field(1000, ge=1)       # a manifest part is written every this many finished sources...
    part_seconds: float = Field(60, gt=0)       # ... or this often, whichever comes first
    max_queued_clips: int = Field(2000, ge=1)   # clips waiting for a clip stage before new sources wait too
    skip: tuple[Literal[SKIPPABLE], ...] = ()


class InputSettings(StrictSettings):
    extensions: tuple[str, ...] = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".flv", ".m4v")
    follow_symlinks: bool = True
    # how the input folder is laid out (curate.layouts): any tree, VoxCeleb2's idNNNNN/<video>/NNNNN.mp4,
    # or HDTF's flat <Set>_<Name>.mp4 whose annotated time intervals alone are cut into clips
    layout: Literal["folder", "voxceleb2", "hdtf"] = "folder"
    # hdtf: HDTF's *_annotion_time.txt file, or a folder of them (null: the input folder)
    annotations: Path | None = None

    @model_validator(mode="after")
    def _dotted(self) -> "InputSettings":
        for ext in self.extensions:
            if not ext.startswith(".") or len(ext) < 2:
                raise ValueError(f"extension {ext!r} must look like '.mp4'")
        if self.annotations is not None and self.layout != "hdtf":
            raise ValueError(f"annotations are read with layout hdtf only (layout is {self.layout})")
        return self


class Resources(StrictSettings):
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    memory_mb: int = Field(1024, ge=64)


class PoolResources(Resources):
    workers: int = Field(1, ge=1)            # actors in the pool, each with the weights loaded once
    batch_clips: int = Field(4, ge=1)        # clips handed to an actor at once


class SyncResources(PoolResources):
    batch_windows: int = Field(64, ge=1)     # network batch size


class QualityResources(PoolResources):
    batch_frames: int = Field(6, ge=1)       # network batch size (3 key frames per clip)


class ResourceSettings(StrictSettings):
    source_pass: Resources = Resources()
    sync: SyncResources = SyncResources(memory_mb=2048)
    quality: QualityResources = QualityResources(memory_mb=2048, batch_clips=8)


class ModelSettings(StrictSettings):
    dir: str | None = None                   # null: $CURATE_MODELS_DIR, else ~/.cache/lipsync-curate/models
    sha256: dict[str, str] = {}              # pinned sha256 per file name; a file that differs is refused


class StageSettings(StrictSettings):
    probe: ProbeParams = ProbeParams()
    resample: ResampleParams = ResampleParams()
    shots: ShotParams = ShotParams()
    clips: ClipParams = ClipParams()
    face: FaceParams = FaceParams()
    speech: SpeechParams = SpeechParams()
    write: WriteParams = WriteParams()
    sync: SyncParams = SyncParams()
    quality: QualityParams = QualityParams()
    duplicates: DuplicateParams = DuplicateParams()


# The order the stages run in; a stage's fingerprint covers its own parameters and every earlier stage's.
# probe .. write run in one pass per source; the clip stages (sync, then quality, then duplicates) work on the
# written clips: sync and quality in actor pools, duplicates in the driver (it compares a clip with every other).
STAGE_ORDER = ("probe", "resample", "shots", "clips", "face", "speech", "write", "sync", "quality", "duplicates")
SOURCE_PASS = STAGE_ORDER[:STAGE_ORDER.index("write") + 1]
CLIP_STAGES = STAGE_ORDER[len(SOURCE_PASS):]
DRIVER_STAGES = ("duplicates",)


class Config(StrictSettings):
    run: RunSettings = RunSettings()
    inputs: InputSettings = InputSettings()
    resources: ResourceSettings = ResourceSettings()
    models: ModelSettings = ModelSettings()
    stages: StageSettings = StageSettings()

    @model_validator(mode="after")
    def _speech_rate(self) -> "Config":
        # Silero VAD takes 16 or 8 kHz audio only (stages.speech)
        if not self.skipped("speech") and self.stages.resample.sample_rate not in (8000, 16000):
            raise ValueError(f"stages.speech needs stages.resample.sample_rate 16000 or 8000, not "
                             f"{self.stages.resample.sample_rate} (or run with --skip speech)")
        return self

    def skipped(self, stage: str) -> bool:
        """Whether `stage` does not run: asked to be skipped, or it needs a stage that is."""
        return (stage in self.run.skip or (stage in ("sync", "quality") and "face" in self.run.skip)
                or (stage == "speech" and not self.stages.speech.enabled))

    def clip_stages(self) -> list[str]:
        """The clip stages this run does, in order."""
        return [stage for stage in CLIP_STAGES if not self.skipped(stage)]

    def pool_stages(self) -> list[str]:
        """The clip stages this run does in actor pools (every one but the driver's own)."""
        return [stage for stage in self.clip_stages() if stage not in DRIVER_STAGES]

    def stage_fingerprints(self) -> dict[str, str]:
        """Fingerprint of each stage: a hash of its parameters chained with the stage before it.

        Results recorded under a stage's fingerprint stay valid while it is unchanged, so changing one
        stage's parameters invalidates that stage and the ones after it, nothing before.
        """
        fingerprints: dict[str, str] = {}
        previous = ""
        for name in STAGE_ORDER:
            params = "skipped" if self.skipped(name) else getattr(self.stages, name).model_dump(mode="json")
            if name == "clips" and self.inputs.layout == "hdtf":   # the annotated intervals bound the clips
                params = {**params, "inputs.layout": "hdtf"}
            blob = json.dumps({"stage": name, "params": params, "previous": previous}, sort_keys=True)
            previous = hashlib.sha256(blob.encode()).hexdigest()[:16]
            fingerprints[name] = previous
        return fingerprints

    def fingerprint(self) -> str:
        """Fingerprint of the whole chain (the last stage's)."""
        return self.stage_fingerprints()[STAGE_ORDER[-1]]

    def source_fingerprint(self) -> str:
        """Fingerprint of what the per-source pass makes (through the clip writer)."""
        return self.stage_fingerprints()[SOURCE_PASS[-1]]

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def with_skipped(config: Config, stages: list[str]) -> Config:
    """`config` with more stages skipped (the --skip flag)."""
    for stage in stages:
        if stage not in SKIPPABLE:
            near = difflib.get_close_matches(stage, SKIPPABLE, n=1)
            raise ConfigError(f"--skip {stage}: not a stage that can be left out; choose from {', '.join(SKIPPABLE)}"
                              + (f" (did you mean '{near[0]}'?)" if near else ""))
    data = config.model_dump(mode="json")
    data["run"]["skip"] = sorted(set(data["run"]["skip"]) | set(stages), key=STAGE_ORDER.index)
    return config_from_dict(data, source="--skip")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(data if data is not None else {}, source=str(path))


def config_from_dict(data: Any, source: str = "config") -> Config:
    return validate_config(Config, data, source)


def validate_config(schema: type[BaseModel], data: Any, source: str = "config"):
    """`data` validated against `schema`, or a ConfigError naming every bad key (with the nearest valid one)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(err, schema) for err in exc.errors())) from None


def _describe(err: dict, schema: type[BaseModel]) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    # pydantic's word for an unknown key: extra_forbidden in a model, unexpected_keyword_argument in a dataclass
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        hints = _suggest(loc, schema)
        if len(hints) > 1 and isinstance(err.get("input"), dict):   # the section whose keys were given
            hints = [h for h in hints if set(err["input"]) <= set(_fields(_type_at(h.split("."), schema)) or [])] or hints
        return f"unknown key '{key}'" + (f" (did you mean {' or '.join(repr(h) for h in hints)}?)" if hints else "")
    message = err["msg"].removeprefix("Value error, ")
    return f"'{key}': {message}"


def _fields(kind) -> list[str] | None:
    """The keys a section of type `kind` takes (a pydantic model or a dataclass), None if it is not a section."""
    for candidate in (kind, *typing.get_args(kind)):   # Optional[Section] too
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return list(candidate.model_fields)
        if dataclasses.is_dataclass(candidate):
            return [f.name for f in dataclasses.fields(candidate)]
    return None


def _section_type(kind, name: str):
    for candidate in (kind, *typing.get_args(kind)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and name in candidate.model_fields:
            return candidate.model_fields[name].annotation
        if dataclasses.is_dataclass(candidate):
            found = {f.name: f.type for f in dataclasses.fields(candidate)}
            if name in found:
                return typing.get_type_hints(candidate).get(name)
    return None


def _type_at(loc: list[str], schema: type[BaseModel]):
    kind = schema
    for part in loc:
        kind = _section_type(kind, part) if kind is not None else None
    return kind


def _suggest(loc: list[str], schema: type[BaseModel] = Config) -> list[str]:
    """The nearest valid keys for a misspelt one, e.g. stages.shots.treshold -> stages.shots.threshold, and a
    section's own key written one level too high, e.g. write -> stages.write."""
    kind = _type_at(loc[:-1], schema)
    if kind is None:
        return []
    names = _fields(kind) or []
    match = difflib.get_close_matches(loc[-1], names, n=1)
    if match:
        return [".".join(loc[:-1] + match)]
    # the key of a section inside one of these sections (`write:` at the top level is `stages.write`)
    return [".".join(loc[:-1] + [name, loc[-1]]) for name in names
            if loc[-1] in (_fields(_section_type(kind, name)) or [])]

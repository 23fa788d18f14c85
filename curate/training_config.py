"""`curate train`'s configuration: its schema, the defaults of each trainer, and loading a config file.

The documented defaults are `configs/syncnet-stable.yaml`, `configs/syncnet-wav2lip.yaml` (the experts) and
`configs/wav2lip.yaml` (the Wav2Lip generator; a test keeps them equal to these). A config file sets any
subset of keys over the defaults of the `--arch` (or trainer) it is used with; unknown keys are errors that
name the key, as in pipeline.yaml. The `data:`, `train:`, `loss:` and `gan:` sections are the training code's
own settings classes (training.windows.WindowSettings, training.face_windows.FaceWindowSettings,
training.loop.LoopSettings, training.wav2lip.Wav2LipLoss and GanSettings), validated here so that the
training code itself needs no pydantic.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from curate.config import ConfigError, validate_config
from manifests.settings import StrictSettings
from networks.syncnet.stable import GROUPS, LATENTSYNC_16_PIXEL_ATTN
from training.face_windows import FaceWindowSettings
from training.latentsync import LatentSyncLoss
from training.loop import LoopSettings
from training.wav2lip import GanSettings, Wav2LipLoss
from training.windows import WindowSettings

ROOT = Path(__file__).resolve().parents[1]


class EncoderConfig(StrictSettings):
    """One of StableSyncNet's encoders, as LatentSync's syncnet yaml writes it (docs/syncnet_arch.md there)."""
    in_channels: int = Field(ge=1)
    block_out_channels: list[int]
    downsample_factors: list[int | tuple[int, int]]
    attn_blocks: list[Literal[0, 1]]
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> "EncoderConfig":
        if not len(self.block_out_channels) == len(self.downsample_factors) == len(self.attn_blocks) >= 1:
            raise ValueError("block_out_channels, downsample_factors and attn_blocks need one entry per block")
        for width in self.block_out_channels:
            if width % GROUPS:
                raise ValueError(f"block width {width} is not a multiple of {GROUPS} (its GroupNorm's groups)")
        return self


class StableModel(StrictSettings):
    audio_encoder: EncoderConfig
    visual_encoder: EncoderConfig

    @model_validator(mode="after")
    def _frames(self) -> "StableModel":
        if self.audio_encoder.in_channels != 1:
            raise ValueError("audio_encoder.in_channels must be 1 (one mel spectrogram)")
        if self.visual_encoder.in_channels % 3:
            raise ValueError("visual_encoder.in_channels must be 3 x the number of frames (RGB)")
        return self


class TrainResources(StrictSettings):
    workers: int = Field(1, ge=1)              # training workers (DDP ranks); --workers
    gpus_per_worker: float = Field(0, ge=0)    # --gpus-per-worker; 0: the CPU (gloo), else NCCL
    cpus_per_worker: float | None = Field(None, gt=0)   # null: data.num_workers + 1, at most a node's CPUs
    max_failures: int = Field(3, ge=0)         # a worker that dies: all restart from the last checkpoint, this often
    address: str | None = None                 # a Ray cluster to use; --address (null: an embedded one)


class SyncNetTraining(StrictSettings):
    model: StableModel | None = None
    data: WindowSettings = WindowSettings()
    train: LoopSettings = LoopSettings()
    resources: TrainResources = TrainResources()

    def run_identity(self) -> dict:
        """What makes a run the run it is: everything but how long it goes on and where it runs."""
        data = self.model_dump(mode="json")
        data.pop("resources")
        data["train"].pop("max_steps")
        return data


# the defaults of each architecture: LatentSync's syncnet_16_pixel_attn.yaml, Wav2Lip's hparams.py
ARCH_DEFAULTS = {
    "stable": {
        "model": LATENTSYNC_16_PIXEL_ATTN,
        "data": {"clips_per_batch": 32, "batches_per_clip": 2},
        "train": {"batch_size": 256, "optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.01, "max_grad_norm": 1.0,
                  "validate_every": 2500, "checkpoint_every": 2500},
    },
    "wav2lip": {
        "model": None,
        "data": {"clips_per_batch": 16, "batches_per_clip": 4},
        "train": {"batch_size": 64, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "max_grad_norm": None,
                  "validate_every": 10000, "checkpoint_every": 10000},
    },
}


def documented_defaults(arch: str) -> Path:
    return ROOT / "configs" / f"syncnet-{arch}.yaml"


def load_training_config(arch: str, path: str | Path | None = None, overrides: dict | None = None) -> SyncNetTraining:
    """The defaults of `arch`, then the file at `path`, then `overrides` (the command line's flags)."""
    if arch not in ARCH_DEFAULTS:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(ARCH_DEFAULTS)}")
    data = copy.deepcopy(ARCH_DEFAULTS[arch])
    source = f"the {arch} defaults"
    if path is not None:
        path = Path(path)
        loaded = _read_yaml(path)
        if arch == "wav2lip" and loaded.get("model") is not None:
            raise ConfigError(f"{path}: 'model': the Wav2Lip expert's architecture is fixed; leave the section out")
        data = _merge(data, loaded)
        source = str(path)
    data = _merge(data, overrides or {})
    config = validate_config(SyncNetTraining, data, source)
    if arch == "wav2lip" and config.data.resolution not in (None, 96):
        raise ConfigError(f"{source}: 'data.resolution': the Wav2Lip expert takes 96 x 96 faces, not "
                          f"{config.data.resolution}")
    return config


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {type(loaded).__name__}")
    return loaded


# -- the Wav2Lip generator (curate train wav2lip) --------------------------------------------------------------

GENERATOR_SIZES = (64, 96, 128, 192, 256)   # sides the generator's levels halve down to 3 or 2 (at most the clips')


class GeneratorModel(StrictSettings):
    size: int = 96            # 96: the official network (wav2lip.pth's); 256: the HD variant on our 256 faces

    @field_validator("size")
    @classmethod
    def _size(cls, size: int) -> int:
        if size not in GENERATOR_SIZES:
            raise ValueError(f"{size} is not a size the generator is built for: "
                             f"{', '.join(map(str, GENERATOR_SIZES))} (96: the official network; 256: the clips' own)")
        return size


class GeneratorSamples(StrictSettings):
    clips: int = Field(2, ge=0)          # validation clips (the first by path) remade at each validation; 0: none
    seconds: float = Field(4.0, gt=0)    # how much of each: its first seconds, with its own audio


class _GeneratorTraining(StrictSettings):
    """What the generators' configs share: a micro-batch split evenly over the clips a batch draws from, and a
    run's identity (everything but how long it goes on, where it runs and what samples it writes)."""

    @model_validator(mode="after")
    def _batches(self):
        if self.train.micro_batch % self.data.clips_per_batch:
            raise ValueError(f"a micro-batch of {self.train.micro_batch} samples (train.batch_size / grad_accum) "
                             f"does not split evenly over data.clips_per_batch = {self.data.clips_per_batch} clips")
        return self

    def run_identity(self) -> dict:
        data = self.model_dump(mode="json")
        data.pop("resources")
        data.pop("samples")
        data["train"].pop("max_steps")
        return data


class Wav2LipTraining(_GeneratorTraining):
    model: GeneratorModel = GeneratorModel()
    data: FaceWindowSettings = FaceWindowSettings()
    loss: Wav2LipLoss = Wav2LipLoss()
    gan: GanSettings = GanSettings()
    train: LoopSettings = LoopSettings()
    samples: GeneratorSamples = GeneratorSamples()
    resources: TrainResources = TrainResources()


# Wav2Lip's hparams.py and wav2lip_train.py (the gan: and loss: sections' defaults are hq_wav2lip_train.py's)
WAV2LIP_DEFAULTS = {
    "model": {"size": 96},
    "data": {"clips_per_batch": 16, "batches_per_clip": 16},
    "train": {"batch_size": 16, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "betas": (0.9, 0.999),
              "max_grad_norm": None, "validate_every": 3000, "checkpoint_every": 3000},
}


def wav2lip_documented_defaults() -> Path:
    return ROOT / "configs" / "wav2lip.yaml"


def load_wav2lip_config(path: str | Path | None = None, overrides: dict | None = None) -> Wav2LipTraining:
    """The generator's defaults, then the file at `path`, then `overrides` (the command line's flags)."""
    data = copy.deepcopy(WAV2LIP_DEFAULTS)
    source = "the wav2lip defaults"
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = str(path)
    return validate_config(Wav2LipTraining, _merge(data, overrides or {}), source)


def _merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, section by section; a value that is not a mapping replaces the one below."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- LatentSync's U-Net (curate train latentsync) ----------------------------------------------------------------

LATENTSYNC_STAGES = ("1", "2", "2-efficient")
_STAGE_KEYS = ("use_motion_module", "motion_module_decoder_only")


class LatentSyncModelSection(StrictSettings):
    resolution: int = 256        # the faces' side: 256 (LatentSync 1.5), 512 (1.6); latents are an eighth of it
    unet: dict = {}              # U-Net keys over stage2.yaml's model section (networks.latentsync_unet.UNetConfig)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, resolution: int) -> int:
        if resolution < 64 or resolution % 64:
            raise ValueError(f"{resolution} is not a multiple of 64 of at least 64 (the U-Net halves the "
                             "latents three times)")
        return resolution

    @field_validator("unet")
    @classmethod
    def _unet(cls, unet: dict) -> dict:
        from networks.latentsync_unet import UNetConfig

        fixed = sorted(set(unet) & set(_STAGE_KEYS))
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: set by --stage (1: no motion modules; 2: everywhere; "
                             "2-efficient: in the decoder)")
        UNetConfig.from_config_dict(unet)          # raises, naming the key, for anything it cannot build
        return unet


class LatentSyncSamples(StrictSettings):
    clips: int = Field(2, ge=0)          # validation clips (the first by path) remade at each validation; 0: none
    seconds: float = Field(2.0, gt=0)    # how much of each: its first seconds, with its own audio
    steps: int = Field(20, ge=1)         # DDIM steps (inference's)
    guidance: float = Field(1.5, ge=1)   # classifier-free guidance (inference's)


class TrepaNetwork(StrictSettings):
    """What TREPA's VideoMAE-v2 file cannot say of itself (its other sizes are read from its shapes)."""
    num_heads: int = Field(16, ge=1)     # ViT-g/14's
    img_size: int = Field(224, ge=14)    # frames are resized to this


class LatentSyncTraining(_GeneratorTraining):
    model: LatentSyncModelSection = LatentSyncModelSection()
    data: FaceWindowSettings = FaceWindowSettings()
    loss: LatentSyncLoss = LatentSyncLoss()
    train: LoopSettings = LoopSettings()
    samples: LatentSyncSamples = LatentSyncSamples()
    trepa: TrepaNetwork = TrepaNetwork()
    resources: TrainResources = TrainResources()


# LatentSync's configs/unet/stage1.yaml, stage2.yaml and stage2_efficient.yaml (one GPU's batch: the yamls'
# commented values; the U-Net's model section is stage2.yaml's in all three, the stage sets its motion modules)
_LATENTSYNC_TRAIN = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.01, "betas": (0.9, 0.999),
                     "max_grad_norm": 1.0, "precision": "fp16", "gradient_checkpointing": True, "seed": 1247,
                     "validate_every": 10000, "checkpoint_every": 10000}
LATENTSYNC_DEFAULTS = {
    "1": {"data": {"clips_per_batch": 8, "batches_per_clip": 4},
          "train": {**_LATENTSYNC_TRAIN, "batch_size": 24},
          "loss": {"pixel_space": False, "sync_weight": 0.0, "lpips_weight": 0.0, "trepa_weight": 0.0}},
    "2": {"data": {"clips_per_batch": 4, "batches_per_clip": 4},
          "train": {**_LATENTSYNC_TRAIN, "batch_size": 4},
          "loss": {"pixel_space": True, "sync_weight": 0.05, "lpips_weight": 0.1, "trepa_weight": 10.0}},
    "2-efficient": {"data": {"clips_per_batch": 4, "batches_per_clip": 4},
                    "train": {**_LATENTSYNC_TRAIN, "batch_size": 4},
                    "loss": {"pixel_space": True, "sync_weight": 0.05, "lpips_weight": 0.1, "trepa_weight": 0.0}},
}


def latentsync_documented_defaults(stage: str) -> Path:
    return ROOT / "configs" / f"latentsync-stage{stage}.yaml"


def load_latentsync_config(stage: str, path: str | Path | None = None,
                           overrides: dict | None = None) -> LatentSyncTraining:
    """The defaults of `stage`, then the file at `path`, then `overrides` (the command line's flags)."""
    if stage not in LATENTSYNC_DEFAULTS:
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(LATENTSYNC_STAGES)}")
    data = copy.deepcopy(LATENTSYNC_DEFAULTS[stage])
    source = f"the latentsync stage {stage} defaults"
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = str(path)
    return validate_config(LatentSyncTraining, _merge(data, overrides or {}), source)

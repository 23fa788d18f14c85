"""Every GPU figure of issue #30 in one run: one table printed, the same figures written as JSON.

    python bench/gpu_check.py [--device cuda] [--json FILE]             # the full-size figures (about 5 min, H100)
    python bench/gpu_check.py --device cpu --small [--json FILE]        # the same code at small sizes (the tests)

Sections (each times itself; `--budget` seconds are shared among them as BUDGET says, and a section that runs
out of its share stops its loop and says what it left out):

- `sync`: SyncNet v2 (stand-in weights of the official shapes; the speed does not depend on the values), lips
  and audio of a window, on windows already on the device, fp32 and fp16, at the sync stage's batch size
  (`resources.sync.batch_windows`, 64) and larger ones a GPU can take; and the sync stage's own scorer
  (`stages.sync_score.SyncScorer.score_many`, fp32 as the stage runs it: MFCC, stacking and the copies
  included) on 75-frame clips. The goal is at least 20,000 windows/s on an H100.
- `hyperiqa`: HyperIQA frames/s on prepared 224 x 224 crops, fp32 and fp16, at the quality stage's batch
  (`resources.quality.batch_frames`, 6) and a larger one.
- `training`: samples/s and peak memory of a training step through the harness (`training.loop.fit`, the
  recipes of training/) for StableSyncNet (configs/syncnet-stable.yaml: batch 256 of 16 frames at 256), Wav2Lip
  (configs/wav2lip.yaml: 96, batch 16) and LatentSync 2-efficient (configs/latentsync-stage2-efficient.yaml:
  256, batch 4, gradient checkpointing, LPIPS and the sync loss through the decoded one-step estimate), each in
  bf16 and fp16 for `steps` steps on one fixed batch: the losses must be finite and fall (the mean of the last
  quarter of the steps under that of the first). samples/s leaves out the first quarter (warming up). The loop's
  checkpoint at the end is not written (it would time the disk).
- `inference`: LatentSync's sampler (`networks.latentsync.LatentSyncSampler`: DDIM 20 steps, guidance 1.5, fp16
  as `curate lipsync` runs it on a GPU) frames/s at 256 and 512 on 16-frame windows; and peak memory over a
  64-frame and a 640-frame input (Whisper chunks streamed from the speech, each window's output brought back
  to the CPU as `LatentSyncModel.generate` does): flat when the two peaks match. The flat runs take fewer DDIM
  steps when 20 would not fit their share of the budget (the memory of a step does not depend on how many
  there are; the JSON says how many).
- `agreement`: the device's output against the CPU's (fp32, computed in the same run) on the golden inputs
  (../shared/golden, `--golden`), stand-in weights by the golden fill rule: fp32 within 1e-3, fp16 within 1e-2
  (relative: the largest difference over the largest value of the CPU's output); also the CPU's output
  against the golden reference's, where the golden set has it. On a GPU fp32 is checked twice: with torch's
  defaults (cuDNN may use TF32) and with TF32 off.

Peak memory is the CUDA allocator's peak on a GPU; on the CPU the process's peak RSS (VmHWM, reset before each
measurement through /proc/self/clear_refs). With `--device cpu` the half precision is bf16 (the CPU's fp16
kernels are several times slower than fp32) and the training runs in fp32, as the loop runs on a CPU; `--small`
takes the small configs (configs/*-small.yaml) and a few steps: it is what the test suite runs, so the script
cannot rot.

What it imports: torch, numpy, scipy, PIL, PyYAML and the project's networks/ and training/ code (and
stages/sync_score.py), plus diffusers (LatentSync's VAE, U-Net blocks and DDIM scheduler) and
python_speech_features (the sync stage's MFCC), which the lent GPU machine lacks and which travel as wheels: on
this machine, once,

    echo /.whl/ >> .git/info/exclude; echo /.golden/ >> .git/info/exclude
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1          # 6.4 MB
    python -m pip wheel --no-deps -w .whl python_speech_features==0.6      # 6 kB (PyPI has only its sdist)
    mkdir -p .golden && cp -r ../shared/golden/{syncnet,hyperiqa,wav2lip,latentsync} .golden/   # 24 MB

then the device tool's `run` with carry [".whl", ".golden"], timeout_s 420, and the command

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --device cuda --json $OUT/gpu_check.json

The script installs the wheels of `--wheels` (default .whl) that it cannot import into a folder of its own
(pip --no-index --no-deps --target) and puts that folder first on sys.path; diffusers' own needs (huggingface_hub,
safetensors, regex, requests, filelock, numpy, Pillow) are on that machine. The JSON lists every third-party
distribution the run imported (`imported`), which tests/test_gpu_check.py holds against that machine's packages.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2 ** 30
GOAL_WINDOWS_PER_S = 20_000
TOLERANCE = {"fp32": 1e-3, "fp32-no-tf32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}   # bf16: the CPU's half (7 bits)
# each section's share of --budget (seconds at the default 300; scaled with it)
BUDGET = {"agreement": 60, "sync": 25, "hyperiqa": 15, "training": 120, "inference": 70}
SMALL_VAE = {"block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4, "layers_per_block": 1}

FULL = {"sync_batches": (64, 256, 1024), "sync_clips": 16, "clip_frames": 75, "hyper_batches": (6, 48),
        "min_seconds": 2.0, "max_calls": 400, "train_steps": 20, "train_batch": None, "unet": {},
        "resolutions": (256, 512), "timed_windows": {256: 2, 512: 1}, "steps": 20, "flat_frames": (64, 640),
        "flat_resolution": 256, "windows": 16,
        "agree": {"syncnet_windows": 16, "hyperiqa_frames": 3, "wav2lip_samples": 6, "expert_samples": 4,
                  "stable": True, "whisper": True, "unet": True}}
# the small configs (configs/*-small.yaml) cut further (batches of 2, one layer a U-Net block, windows of 4 frames):
# the code paths, not figures
SMALL = {"sync_batches": (2,), "sync_clips": 1, "clip_frames": 8, "hyper_batches": (1,), "min_seconds": 0.0,
         "max_calls": 1, "train_steps": 3, "train_batch": 2, "unet": {"layers_per_block": 1},
         "resolutions": (64,), "timed_windows": {64: 1}, "steps": 1, "flat_frames": (4, 24), "flat_resolution": 64,
         "windows": 4,
         "agree": {"syncnet_windows": 1, "hyperiqa_frames": 1, "wav2lip_samples": 1, "expert_samples": 1,
                   "stable": False, "whisper": False, "unet": False}}


# --- the machine ---------------------------------------------------------------------------------------------------

def use_carried_wheels(folder: Path) -> list[str]:
    """Install the wheels in `folder` whose module cannot be imported here into a folder of this run's, first on
    sys.path (the GPU machine lacks diffusers and python_speech_features). Returns the wheels installed."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    missing = [w for w in wheels if importlib.util.find_spec(w.name.split("-")[0]) is None]
    if not missing:
        return []
    target = Path(tempfile.gettempdir()) / "gpu_check_site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(target), *map(str, missing)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return [w.name for w in missing]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Peak memory since `reset`: the CUDA allocator's on a GPU, the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "GPU allocated" if device.type == "cuda" else "process RSS"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:   # "5" resets the peak RSS (VmHWM) to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GiB
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GiB
        return float("nan")


def rate(call, per_call: int, device: torch.device, min_seconds: float, max_calls: int, warm: int = 1) -> tuple[float, float]:
    """Items per second of `call` (`per_call` items each) after `warm` calls: at least one call and `min_seconds`,
    at most `max_calls`. Returns (items/s, seconds timed)."""
    for _ in range(warm):
        call()
    synchronize(device)
    start, calls = time.perf_counter(), 0
    while True:
        call()
        calls += 1
        if calls >= max_calls:
            break
        if calls % 4 == 0:
            synchronize(device)
            if time.perf_counter() - start >= min_seconds:
                break
    synchronize(device)
    elapsed = time.perf_counter() - start
    return per_call * calls / elapsed, elapsed


def relative(device_out, cpu_out) -> float:
    """The largest difference over the largest value of the CPU's output."""
    a, b = (torch.as_tensor(x).detach().float().cpu() for x in (device_out, cpu_out))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- weights -------------------------------------------------------------------------------------------------------

def with_stand_in(model: torch.nn.Module, prefix: str = "", computed: dict | None = None) -> torch.nn.Module:
    """`model` with stand-in weights (its keys named `prefix` + key as the official file names them); `computed`
    maps a key suffix to a function of the shape for the tables the official files hold as computed values."""
    from networks.stand_in import stand_in   # the golden fill rule the tests use too

    state = {}
    for key, value in model.state_dict().items():
        make = next((f for suffix, f in (computed or {}).items() if key.endswith(suffix)), None)
        state[key] = (make(value.shape) if make else stand_in(prefix + key, value.shape)).to(value.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def fill_zero_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Weights a fresh network starts at zero (LatentSync's conv_in, conv_out and motion modules' proj_out) drawn
    as a trained network's would be non-zero: else a frozen zero conv_out passes no gradient at all."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not bool(parameter.any()):
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter[0].numel()))
    return model


# --- configs (read as plain YAML: the pydantic loader is not on the GPU machine) --------------------------------------

def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config(name: str, small: bool) -> dict:
    """configs/NAME.yaml, with configs/SMALL.yaml over it when `small` (SMALL named in SMALL_CONFIGS)."""
    import yaml

    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    if small:
        data = merged(data, yaml.safe_load((ROOT / "configs" / SMALL_CONFIGS[name]).read_text()))
    return data


SMALL_CONFIGS = {"syncnet-stable": "syncnet-stable-small.yaml", "wav2lip": "wav2lip-small.yaml",
                 "latentsync-stage2-efficient": "latentsync-small.yaml"}


# --- sections ------------------------------------------------------------------------------------------------------

class Run:
    def __init__(self, device: torch.device, small: bool, budget: float, golden: Path):
        self.device, self.small, self.golden = device, small, golden
        self.sizes = SMALL if small else FULL
        self.scale = budget / sum(BUDGET.values())
        self.half = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.half_name = "fp16" if self.half == torch.float16 else "bf16"
        self.peak = Peak(device)
        self.section_started = time.perf_counter()
        self.section_budget = 0.0

    def left(self) -> float:
        """Seconds left of the running section's share."""
        return self.section_budget - (time.perf_counter() - self.section_started)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)


def section_sync(run: Run) -> dict:
    from networks.syncnet.syncnet_v2 import SyncNet

    sizes, device = run.sizes, run.device
    model = with_stand_in(SyncNet()).to(device)
    rows, left_out = [], []
    for dtype, name in ((torch.float32, "fp32"), (run.half, run.half_name)):
        model.to(dtype)
        for batch in sizes["sync_batches"]:
            if run.left() < 0:
                left_out.append(f"network {name} batch {batch}")
                continue
            g = run.generator(batch)
            frames = torch.randint(0, 256, (batch, 5, 224, 224, 3), dtype=torch.uint8, generator=g).to(device)
            mfcc = (10 * torch.randn(batch, 1, 13, 20, generator=g)).to(device)

            def call():
                with torch.inference_mode():
                    model.forward_lips(frames.permute(0, 4, 1, 2, 3).to(dtype))
                    model.forward_audio(mfcc.to(dtype))

            per_s, seconds = rate(call, batch, device, sizes["min_seconds"], sizes["max_calls"])
            rows.append({"what": "network (lips + audio), windows on the device", "dtype": name, "batch": batch,
                         "windows_per_s": per_s, "seconds": seconds})
        if dtype == torch.float32:
            rows.append(_sync_scorer(run, model))
    return {"rows": rows, "goal_windows_per_s": GOAL_WINDOWS_PER_S, "left_out": left_out}


def _sync_scorer(run: Run, model) -> dict:
    """The sync stage's scorer end to end (fp32, batch 64 as pipeline.yaml): MFCC, stacking, copies included."""
    try:
        from stages.sync_score import SyncScorer, window_count
    except ImportError as exc:      # python_speech_features not carried
        return {"what": "SyncScorer.score_many (the stage's path)", "dtype": "fp32", "skipped": str(exc)}
    frames_per_clip = run.sizes["clip_frames"]
    g = np.random.default_rng(0)
    clips = [(g.integers(0, 256, (frames_per_clip, 224, 224, 3), dtype=np.uint8),
              (g.standard_normal(frames_per_clip * 640) * 3000).astype(np.int16)) for _ in range(run.sizes["sync_clips"])]
    windows = sum(window_count(len(f), len(a)) for f, a in clips)
    scorer = SyncScorer(model, str(run.device), batch_size=64)
    per_s, seconds = rate(lambda: scorer.score_many(clips), windows, run.device, run.sizes["min_seconds"],
                          max(1, run.sizes["max_calls"] // 100), warm=1)
    return {"what": f"SyncScorer.score_many (the stage's path), {len(clips)} clips of {frames_per_clip} frames",
            "dtype": "fp32", "batch": 64, "windows_per_s": per_s, "seconds": seconds}


def section_hyperiqa(run: Run) -> dict:
    from networks.hyperiqa import HyperIQA

    sizes, device = run.sizes, run.device
    model = with_stand_in(HyperIQA()).to(device)
    rows, left_out = [], []
    for dtype, name in ((torch.float32, "fp32"), (run.half, run.half_name)):
        model.to(dtype)
        for batch in sizes["hyper_batches"]:
            if run.left() < 0:
                left_out.append(f"{name} batch {batch}")
                continue
            crops = torch.randn(batch, 3, 224, 224, generator=run.generator(batch)).to(device, dtype)

            def call():
                with torch.inference_mode():
                    model(crops)

            per_s, seconds = rate(call, batch, device, sizes["min_seconds"], sizes["max_calls"])
            rows.append({"what": "HyperIQA on 224 x 224 crops on the device", "dtype": name, "batch": batch,
                         "frames_per_s": per_s, "seconds": seconds})
    return {"rows": rows, "left_out": left_out}


class OnDevice:
    """A recipe whose model is built on the device (no CPU copy of a 1.3 B network first) with no zero weight."""

    def __init__(self, recipe, device: torch.device):
        self._recipe, self._device = recipe, device

    def __getattr__(self, name):
        return getattr(self._recipe, name)

    def build_model(self):
        with torch.device(self._device):
            return fill_zero_weights(self._recipe.build_model())


def _loop_settings(train: dict, steps: int, precision: str):
    from training.loop import LoopSettings

    train = {**train, "betas": tuple(train["betas"]), "max_steps": steps, "log_every": 1, "precision": precision,
             "validate_every": 10 ** 9, "checkpoint_every": 10 ** 9}
    return LoopSettings(**train)


def _trainer_config(run: Run, name: str) -> dict:
    """configs/NAME.yaml as `run` takes it: the small config over it and the batch cut with --small."""
    data = config(name, run.small)
    if run.sizes["train_batch"]:
        data["train"]["batch_size"] = min(data["train"]["batch_size"], run.sizes["train_batch"])
    if "unet" in data["model"]:
        data["model"]["unet"] = {**data["model"]["unet"], **run.sizes["unet"]}
    return data


def _training_cases(run: Run):
    """(name, train section, make_recipe(precision), batch) of the three trainers."""
    small, device = run.small, run.device
    g = run.generator(7)
    uint8 = lambda *shape: torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)  # noqa: E731

    from networks.syncnet.experts import framing_of
    from training.expert import ExpertRecipe

    stable = _trainer_config(run, "syncnet-stable")
    framing = framing_of("stable", stable["model"], stable["data"]["resolution"])
    n = stable["train"]["batch_size"]
    batch = {"frames": uint8(n, framing.num_frames, framing.height, framing.width, 3),
             "mel": torch.randn(n, 1, 80, 52, generator=g), "label": (torch.arange(n) % 2).float(), "index": 0}
    yield (f"StableSyncNet {framing.width}", stable["train"], lambda precision: ExpertRecipe("stable", stable["model"]),
           batch)

    from networks.syncnet.wav2lip_expert import Wav2LipExpert
    from training.wav2lip import Wav2LipLoss, Wav2LipRecipe

    wav2lip = _trainer_config(run, "wav2lip")
    size, n = wav2lip["model"]["size"], wav2lip["train"]["batch_size"]
    batch = {"faces": uint8(n, 5, size, size, 3), "references": uint8(n, 5, size, size, 3),
             "mels": torch.randn(n, 5, 1, 80, 16, generator=g), "mel": torch.randn(n, 1, 80, 16, generator=g),
             "index": 0}
    yield (f"Wav2Lip {size}", wav2lip["train"],
           lambda precision: Wav2LipRecipe(size, with_stand_in(Wav2LipExpert()).to(device), Wav2LipLoss(**wav2lip["loss"])),
           batch)

    from networks.latentsync import VAE_CONFIG, build_vae
    from networks.lpips import LPIPS
    from networks.syncnet.stable import StableSyncNet
    from training.latentsync import STAGES, LatentSyncLoss, LatentSyncRecipe, unet_config
    from training.loop import precision_of

    latent = _trainer_config(run, "latentsync-stage2-efficient")
    resolution, n = latent["model"]["resolution"], latent["train"]["batch_size"]
    stage = STAGES["2-efficient"]
    loss = LatentSyncLoss(**latent["loss"])
    with torch.device(device):      # the frozen networks, built once, on the device
        vae = build_vae(VAE_CONFIG if not small else {**VAE_CONFIG, **SMALL_VAE})
        expert = StableSyncNet(None if not small else config("syncnet-stable", True)["model"])
        lpips = LPIPS()
    if latent["train"]["gradient_checkpointing"] and loss.pixel_terms:
        vae.enable_gradient_checkpointing()
    batch = {"faces": uint8(n, 16, resolution, resolution, 3), "references": uint8(n, 16, resolution, resolution, 3),
             "mel": torch.randn(n, 1, 80, 52, generator=g), "audio": torch.randn(n, 16, 50, 384, generator=g),
             "sample": torch.arange(n), "index": 0}

    def latentsync(precision):
        return LatentSyncRecipe(unet_config(latent["model"]["unet"], stage), stage, loss, resolution, vae,
                                expert if "sync" in loss.pixel_terms else None, resolution,
                                lpips if "lpips" in loss.pixel_terms else None, None, None, latent["train"]["seed"],
                                precision_of(precision, device))

    yield f"LatentSync 2-efficient {resolution}", latent["train"], latentsync, batch


def section_training(run: Run) -> dict:
    import training.loop as loop

    # the loop's checkpoint at the end would time the disk (a 1.3 B U-Net's file), and its plot matplotlib
    loop.save_checkpoint = lambda *args, **kwargs: None
    loop.plot_metrics = lambda *args, **kwargs: None
    device, steps = run.device, run.sizes["train_steps"]
    precisions = ("bf16", "fp16") if device.type == "cuda" else ("fp32",)
    rows, left_out = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, train, make_recipe, batch in _training_cases(run):
            if device.type == "cuda":
                batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
            for precision in precisions:
                if run.left() < 0:
                    left_out.append(f"{name} {precision}")
                    continue
                settings = _loop_settings(train, steps, precision)
                run_dir = Path(folder) / f"{name}-{precision}".replace(" ", "_")
                recipe = OnDevice(make_recipe(precision), device)
                run.peak.reset()
                started = time.perf_counter()
                loop.fit(recipe, settings, run_dir, lambda start: itertools.repeat(batch),
                         loop.Placement(device=str(device)))
                synchronize(device)
                seconds = time.perf_counter() - started
                peak = run.peak.read()
                lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                start_line = next(line for line in lines if line.get("event") == "start")
                steps_ = [line for line in lines if "loss" in line and "step" in line]
                losses = [line["loss"] for line in steps_]
                quarter = max(1, len(losses) // 4)
                timed = steps_[quarter:] or steps_
                seconds_per_step = float(np.mean([settings.batch_size / line["samples_per_s"] for line in timed]))
                rows.append({"model": name, "precision": precision, "autocast": start_line["precision"],
                             "batch": settings.batch_size, "lr": settings.lr, "steps": len(losses),
                             "gradient_checkpointing": settings.gradient_checkpointing,
                             "trainable_m": start_line["trainable_parameters"] / 1e6,
                             "samples_per_s": settings.batch_size / seconds_per_step, "s_per_step": seconds_per_step,
                             "peak_gib": peak, "memory": run.peak.kind, "seconds": seconds, "losses": losses,
                             "finite": all(math.isfinite(x) for x in losses),
                             "falling": bool(np.mean(losses[-quarter:]) < np.mean(losses[:quarter]))})
                del recipe
                gc.collect()
    return {"rows": rows, "left_out": left_out}


def section_inference(run: Run) -> dict:
    from networks.latentsync import VAE_CONFIG, LatentSyncSampler, build_vae
    from networks.latentsync_unet import LatentSyncUNet, UNetConfig
    from networks.whisper import WhisperEncoder, iter_chunks

    sizes, device = run.sizes, run.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32     # as LatentSyncModel runs it
    unet_settings = UNetConfig.from_config_dict(_trainer_config(run, "latentsync-stage2-efficient")["model"]["unet"])
    with torch.device(device):
        unet = fill_zero_weights(LatentSyncUNet(unet_settings)).to(dtype).eval()
        vae = build_vae(VAE_CONFIG if not run.small else {**VAE_CONFIG, **SMALL_VAE}).to(dtype).eval()
        encoder = with_stand_in(WhisperEncoder(), "encoder.").to(device)
    window = sizes["windows"]
    rows, left_out = [], []
    g = run.generator(3)
    for resolution in sizes["resolutions"]:
        if run.left() < 0:
            left_out.append(f"frames/s at {resolution}")
            continue
        sampler = LatentSyncSampler(unet, vae, resolution, device, dtype, sizes["steps"], 1.5)
        faces = torch.rand(window, 3, resolution, resolution, generator=g) * 2 - 1
        audio = torch.randn(window, 50, 384, generator=g)
        run.peak.reset()
        timed = sizes["timed_windows"][resolution]
        per_s, seconds = rate(lambda: sampler(faces, audio).cpu(), window, device, 0.0, timed, warm=1)
        rows.append({"what": f"LatentSync sampler, {window}-frame windows, DDIM {sizes['steps']}, guidance 1.5",
                     "resolution": resolution, "dtype": str(dtype).removeprefix("torch."), "frames_per_s": per_s,
                     "s_per_window": seconds / timed, "peak_gib": run.peak.read(), "memory": run.peak.kind})

    # flat in length: 64 frames against 640, Whisper chunks streamed, each window's output back on the CPU
    resolution = sizes["flat_resolution"]
    short, long = sizes["flat_frames"]
    measured = next((row for row in rows if row["resolution"] == resolution), None)
    steps = sizes["steps"]
    if measured and not run.small:   # fewer steps when 20 would not fit the share left
        windows = math.ceil(short / window) + math.ceil(long / window)
        per_step = measured["s_per_window"] / sizes["steps"]
        steps = max(1, min(steps, int(0.8 * run.left() / (windows * per_step))))
    sampler = LatentSyncSampler(unet, vae, resolution, device, dtype, steps, 1.5)
    flat = {"resolution": resolution, "steps": steps, "memory": run.peak.kind, "frames": [], "peak_gib": [],
            "seconds": []}
    rng = np.random.default_rng(5)
    for frames in (short, long):
        speech = (rng.standard_normal(frames * 640) * 3000).astype(np.int16)
        run.peak.reset()
        started = time.perf_counter()
        chunks = iter_chunks(encoder, speech)
        for first in range(0, frames, window):
            count = min(window, frames - first)
            audio = torch.stack([next(chunks) for _ in range(count)])
            faces = torch.from_numpy(rng.integers(0, 256, (count, resolution, resolution, 3), dtype=np.uint8))
            made = sampler(faces.permute(0, 3, 1, 2).float() / 127.5 - 1, audio)
            ((made.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
        synchronize(device)
        flat["frames"].append(frames)
        flat["seconds"].append(time.perf_counter() - started)
        flat["peak_gib"].append(run.peak.read())
    flat["ratio"] = flat["peak_gib"][1] / flat["peak_gib"][0]
    # the allocator's peak is exact: flat is equal within 2 % + 64 MiB; the RSS of a CPU process wanders more
    slack = (1.02, 1 / 16) if device.type == "cuda" else (1.25, 0.25)
    flat["flat"] = bool(flat["peak_gib"][1] <= flat["peak_gib"][0] * slack[0] + slack[1])
    return {"rows": rows, "flat": flat, "left_out": left_out}


def section_agreement(run: Run) -> dict:
    """Each network on the golden inputs: the CPU's fp32 output, then the device's in fp32 and in half."""
    golden, agree = run.golden, run.sizes["agree"]
    if not golden.is_dir():
        raise FileNotFoundError(f"{golden}: no golden inputs (--golden; on the GPU machine carry .golden)")
    rows = []
    for name, make, inputs, forward, reference, *select in _agreement_cases(golden, agree):
        if run.left() < 0 and rows:
            rows.append({"network": name, "skipped": "over the section's budget"})
            continue
        model = make()
        with torch.inference_mode():
            cpu = forward(model, inputs, torch.device("cpu"), torch.float32)
        picked = select[0](cpu) if select else cpu
        row = {"network": name, "cpu_vs_reference": relative(picked, reference) if reference is not None else None}
        checks = [("fp32", torch.float32)] + ([("fp32-no-tf32", torch.float32)] if run.device.type == "cuda" else [])
        checks.append((run.half_name, run.half))
        for label, dtype in checks:
            tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            if label == "fp32-no-tf32":
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            try:
                if label == "fp32" and run.device.type == "cpu":
                    out = cpu       # the same computation: the CPU's half is what is checked there
                else:
                    model.to(run.device, dtype)
                    with torch.inference_mode():
                        out = forward(model, inputs, run.device, dtype)
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
            row[label] = relative(out, cpu)
            row[f"{label}_ok"] = bool(row[label] <= TOLERANCE[label])
        rows.append(row)
        del model
        gc.collect()
    return {"rows": rows, "tolerance": TOLERANCE}


def _agreement_cases(golden: Path, agree: dict):
    """(name, make model, inputs, forward(model, inputs, device, dtype) -> tensor, the reference's output or None)."""
    from networks.hyperiqa import HyperIQA
    from networks.syncnet.syncnet_v2 import SyncNet
    from networks.syncnet.wav2lip_expert import Wav2LipExpert
    from networks.wav2lip import Wav2Lip

    def on(x, device, dtype):
        x = torch.as_tensor(x)
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)

    # SyncNet v2: the golden crops' first windows and their MFCC windows (as the sync stage cuts them)
    data = np.load(golden / "syncnet" / "syncnet_input.npz")
    expected = json.loads((golden / "syncnet" / "syncnet_expected.json").read_text())
    count = agree["syncnet_windows"]
    frames = data["frames_bgr"]
    lips = torch.from_numpy(np.stack([frames[i:i + 5] for i in range(count)])).permute(0, 4, 1, 2, 3).float()
    try:
        from scipy.io import wavfile

        from stages.sync_score import mfcc

        coefficients = torch.from_numpy(mfcc(wavfile.read(golden / "syncnet" / "syncnet_audio.wav")[1]).astype(np.float32))
        sound = torch.stack([coefficients[:, 4 * i:4 * i + 20] for i in range(count)])[:, None]
        reference = torch.tensor(expected["lip_feature_0_first8"] + expected["audio_feature_0_first8"])
    except ImportError:     # no MFCC here: seeded values of its range, and no reference to hold them to
        sound, reference = 10 * torch.randn(count, 1, 13, 20, generator=torch.Generator().manual_seed(0)), None

    def syncnet(model, x, device, dtype):
        lip = model.forward_lips(on(x[0], device, dtype)).float()
        return torch.cat([lip, model.forward_audio(on(x[1], device, dtype)).float()], dim=1)

    yield ("SyncNet v2", lambda: with_stand_in(SyncNet()), (lips, sound), syncnet, reference,
           lambda out: torch.cat([out[0, :8], out[0, 1024:1032]]))

    # HyperIQA: the golden frames, centre 224, ImageNet normalisation
    count = agree["hyperiqa_frames"]
    rgb = np.load(golden / "hyperiqa" / "hyperiqa_input.npz")["frames_rgb"][:count, 16:240, 16:240].astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    crops = torch.from_numpy(((rgb - mean) / std).transpose(0, 3, 1, 2).copy())
    per_frame = torch.tensor(json.loads((golden / "hyperiqa" / "hyperiqa_expected.json").read_text())["per_frame"][:count])
    yield ("HyperIQA", lambda: with_stand_in(HyperIQA()), crops,
           lambda model, x, device, dtype: model(on(x, device, dtype)).float(), per_frame)

    # Wav2Lip's generator and expert
    inputs, expected = np.load(golden / "wav2lip" / "wav2lip_input.npz"), np.load(golden / "wav2lip" / "wav2lip_expected.npz")
    n = agree["wav2lip_samples"]
    yield ("Wav2Lip 96 generator", lambda: with_stand_in(Wav2Lip()), (inputs["gen_mel_input"][:n], inputs["gen_face_input"][:n]),
           lambda model, x, device, dtype: model(on(x[0], device, dtype), on(x[1], device, dtype)).float(),
           torch.from_numpy(expected["gen_output"][:n]))
    n = agree["expert_samples"]

    def pair(model, x, device, dtype):
        vision, audio = model(on(x[0], device, dtype), on(x[1], device, dtype))
        return torch.cat([vision.float(), audio.float()], dim=1)

    yield ("Wav2Lip expert", lambda: with_stand_in(Wav2LipExpert()), (inputs["expert_face_input"][:n], inputs["expert_mel_input"][:n]),
           pair, torch.cat([torch.from_numpy(expected["expert_face_embedding"][:n]),
                            torch.from_numpy(expected["expert_audio_embedding"][:n])], dim=1))

    latent = golden / "latentsync"
    if agree["stable"] or agree["whisper"] or agree["unet"]:
        inputs, expected = np.load(latent / "latentsync_input.npz"), np.load(latent / "latentsync_expected.npz")
    if agree["stable"]:
        from networks.syncnet.stable import StableSyncNet

        yield ("StableSyncNet", lambda: with_stand_in(StableSyncNet()), (inputs["syncnet_frames"], inputs["syncnet_mel"]),
               pair, torch.cat([torch.from_numpy(expected["syncnet_vision_embeds"]),
                                torch.from_numpy(expected["syncnet_audio_embeds"])], dim=1))
    if agree["whisper"]:
        from networks.whisper import WhisperEncoder, sinusoids, whisper_features

        yield ("Whisper tiny encoder", lambda: with_stand_in(WhisperEncoder(), "encoder.",
                                                              {"positional_embedding": lambda shape: sinusoids(*shape)}),
               inputs["audio_s16"], lambda model, x, device, dtype: whisper_features(model, x),
               torch.from_numpy(expected["whisper_features"]))
    if agree["unet"]:
        from networks.latentsync_unet import LatentSyncUNet, sinusoid_table

        def unet():
            with torch.device("meta"):
                model = LatentSyncUNet()
            return with_stand_in(model, computed={"pos_encoder.pe": lambda shape: sinusoid_table(shape[1], shape[2])})

        yield ("LatentSync U-Net", unet, (inputs["unet_sample"], inputs["unet_timestep"], inputs["unet_encoder_hidden_states"]),
               lambda model, x, device, dtype: model(on(x[0], device, dtype), torch.as_tensor(x[1]).to(device),
                                                     on(x[2], device, dtype)).float(),
               torch.from_numpy(expected["unet_output"]))


# --- the run -------------------------------------------------------------------------------------------------------

SECTIONS = {"agreement": section_agreement, "sync": section_sync, "hyperiqa": section_hyperiqa,
            "training": section_training, "inference": section_inference}
PROJECT = {"networks", "training", "stages", "bench", "gpu_check", "manifests", "media", "faces", "lipsync", "curate"}


def imported_distributions() -> list[str]:
    """The third-party distributions whose modules this process imported (the standard library and the project's
    own packages left out)."""
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    names = set()
    for module in list(sys.modules):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in PROJECT or top.startswith("_") or top == "__main__":
            continue
        for owner in owners.get(top, []):      # none: a module no distribution installed (cython_runtime)
            names.add(re.sub(r"[-_.]+", "-", owner).lower())
    return sorted(names)


def checks(result: dict) -> list[str]:
    """What failed: the training's losses, the agreement, the flat memory, a section's error."""
    failed = []
    for name, section in result["sections"].items():
        if "error" in section:
            failed.append(f"{name}: {section['error']}")
    for row in result["sections"].get("training", {}).get("rows", []):
        if not (row["finite"] and row["falling"]):
            failed.append(f"training {row['model']} {row['precision']}: losses finite {row['finite']}, "
                          f"falling {row['falling']}")
    for row in result["sections"].get("agreement", {}).get("rows", []):
        for key, value in row.items():
            if key.endswith("_ok") and not value:
                failed.append(f"agreement {row['network']} {key[:-3]}: {row[key[:-3]]:.2e} > {TOLERANCE[key[:-3]]}")
    flat = result["sections"].get("inference", {}).get("flat")
    if flat and not flat["flat"]:
        failed.append(f"inference memory not flat: {flat['peak_gib']} GiB for {flat['frames']} frames")
    return failed


def table(result: dict) -> str:
    """One Markdown table of every figure."""
    lines = ["| section | what | figure |", "|---|---|---:|"]
    sections = result["sections"]
    for row in sections.get("sync", {}).get("rows", []):
        figure = (f"{row['windows_per_s']:,.{0 if row['windows_per_s'] >= 100 else 2}f} windows/s"
                  if "windows_per_s" in row else row.get("skipped", ""))
        lines.append(f"| sync | {row['what']}, {row['dtype']}, batch {row.get('batch', '')} | {figure} |")
    for row in sections.get("hyperiqa", {}).get("rows", []):
        lines.append(f"| hyperiqa | {row['what']}, {row['dtype']}, batch {row['batch']} | {row['frames_per_s']:,.1f} frames/s |")
    for row in sections.get("training", {}).get("rows", []):
        lines.append(f"| training | {row['model']}, {row['precision']} (autocast {row['autocast']}), batch {row['batch']}, "
                     f"{row['steps']} steps, loss {row['losses'][0]:.4f} -> {row['losses'][-1]:.4f} "
                     f"({'finite' if row['finite'] else 'NOT FINITE'}, {'falling' if row['falling'] else 'NOT FALLING'}) "
                     f"| {row['samples_per_s']:,.2f} samples/s, {row['peak_gib']:.2f} GiB {row['memory']} |")
    inference = sections.get("inference", {})
    for row in inference.get("rows", []):
        lines.append(f"| inference | {row['what']}, {row['resolution']} px, {row['dtype']} | {row['frames_per_s']:,.2f} "
                     f"frames/s, {row['peak_gib']:.2f} GiB {row['memory']} |")
    flat = inference.get("flat")
    if flat:
        lines.append(f"| inference | peak memory, {flat['frames'][0]} against {flat['frames'][1]} frames at "
                     f"{flat['resolution']} px (DDIM {flat['steps']}): {'flat' if flat['flat'] else 'NOT FLAT'} | "
                     f"{flat['peak_gib'][0]:.2f} / {flat['peak_gib'][1]:.2f} GiB {flat['memory']} |")
    for row in sections.get("agreement", {}).get("rows", []):
        if "skipped" in row:
            lines.append(f"| agreement | {row['network']} | {row['skipped']} |")
            continue
        parts = [f"{key} {row[key]:.1e}{'' if row[key + '_ok'] else ' FAILS'}" for key in TOLERANCE if key in row]
        if row["cpu_vs_reference"] is not None:
            parts.append(f"CPU vs reference {row['cpu_vs_reference']:.1e}")
        lines.append(f"| agreement | {row['network']}, device against CPU (relative) | {', '.join(parts)} |")
    for name, section in sections.items():
        if section.get("left_out"):
            lines.append(f"| {name} | left out (over its share of the budget) | {', '.join(section['left_out'])} |")
        if "error" in section:
            lines.append(f"| {name} | ERROR | {section['error']} |")
        lines.append(f"| {name} | seconds, wall (CPU of this process) | {section['seconds']:.1f} "
                     f"({section['cpu_seconds']:.1f}) |")
    lines.append(f"| all | seconds, wall, the imports included | {result['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the small configs and sizes (the test suite's run)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds shared among the sections (default 300; none with --small, which runs all)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    parser.add_argument("--golden", type=Path, default=None,
                        help="the golden inputs (default: .golden in the checkout if there, else ../shared/golden)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install where not importable")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    args = parser.parse_args()
    started = time.perf_counter()
    installed = use_carried_wheels(args.wheels)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (--device cpu --small for the CPU run)")
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = [ROOT / ".golden"] + ([Path(os.environ["CURATE_GOLDEN_DIR"])] if os.environ.get("CURATE_GOLDEN_DIR")
                                       else []) + [ROOT.parent / "shared" / "golden"]
    golden = args.golden or next((p for p in candidates if p.is_dir()), candidates[-1])
    budget = args.budget or (math.inf if args.small else 300.0)
    run = Run(device, args.small, budget, golden)
    try:    # diffusers warns of every VAE cast to fp16, which is how LatentSync runs it
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"device": name, "small": args.small, "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "wheels_installed": installed, "golden": str(golden),
              "budget_s": budget if math.isfinite(budget) else None, "sections": {}}
    print(f"gpu_check on {name}, torch {torch.__version__}, {'small' if args.small else 'full'} sizes", flush=True)
    for section in args.sections.split(","):
        run.section_started, run.section_budget = time.perf_counter(), BUDGET[section] * run.scale
        cpu = time.process_time()
        print(f"  {section} ...", flush=True)
        try:
            out = SECTIONS[section](run)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
            traceback.print_exc()
            out = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out["seconds"] = time.perf_counter() - run.section_started
        out["cpu_seconds"] = time.process_time() - cpu
        result["sections"][section] = out
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - started
    result["imported"] = imported_distributions()
    result["failed"] = checks(result)
    result["ok"] = not result["failed"]
    print()
    print(table(result))
    print("\nall checks pass" if result["ok"] else "\nFAILED:\n  " + "\n  ".join(result["failed"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

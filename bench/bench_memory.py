"""Full-size memory of every training step and of LatentSync's inference, measured on the CPU (issue #30, item 1).

    python bench/bench_memory.py [--steps NAME,...] [--real NAME,...] [--json OUT.json] [--small]

Each step is built from our full-size configs (configs/*.yaml through curate.training_config), with stand-in
weights of the official shapes, and run through the recipes' own loss code (`recipe.loss`,
`adversarial_loss`, `adversary_loss`) with the loop's optimizer (`training.loop._optimizer`), gradient clipping
and `zero_grad(set_to_none=True)` as `training.loop.fit` runs them, for two optimizer steps (the second is the one
that holds the optimizer's state). Memory is the peak of live tensor bytes, tracked by torch's own dispatch-mode
tracker (`torch.distributed._tools.mem_tracker.MemTracker`), not RSS:

- `fake`: under `FakeTensorMode`, which runs the same ops on tensors without storage, so a 55 GB step traces in a
  few GB of RAM. Every step is measured so.
- `real`: the same code on real CPU tensors (only the steps that fit this machine; `--real`), to check the fake
  figure.

Mixed precision: our configs train with autocast on a GPU (LatentSync: fp16 with a grad scaler, its frozen VAE,
StableSyncNet, LPIPS and TREPA in fp16; the experts and Wav2Lip: `auto`, bf16 on an H100). The CPU-only torch
here cannot fake CUDA's autocast (a fake `cuda:0` tensor can be made, but autocast's cast asks the CUDA runtime
for a device guard and aborts), so the steps run under `torch.autocast("cpu")` with the config's dtype (2 bytes
either way), and the frozen networks are given that dtype as `LatentSyncRecipe` does on a GPU. The grad scaler is
left out (`found_inf.item()` cannot run on fake tensors; scaling is in place and its state is two scalars).
What this leaves different from a GPU: CPU autocast's op lists (which ops run in 2 bytes) are not CUDA's,
attention runs CPU's SDPA kernel, Adam runs its per-tensor loop (on a GPU, its `foreach` path, whose temporaries
can add up to about the trainable weights' size during the optimizer step), and no CUDA allocator rounding,
fragmentation, cuDNN workspace or CUDA context (about 0.5-1 GB on a GPU) is counted.

The split at the peak: weights (trainable and frozen, with the models' buffers), gradients, optimizer state,
and activations (what the forward keeps, the backward's temporaries, and the batch).

Inference: LatentSync's sampler (`networks.latentsync.LatentSyncSampler`, what `curate lipsync` runs per window
of 16 frames: 20 DDIM steps, guidance 1.5, so the U-Net sees 2 x 16 frames) in fp16, over 1 window and over
several in a row; the peak must not depend on the count (flat in video length).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
# LatentSync's README (GPU memory of each stage and of inference)
PUBLISHED = {"latentsync-1": 23, "latentsync-2": 30, "latentsync-2-efficient": 20, "latentsync-2-512": 55,
             "inference-256": 8, "inference-512": 18}
TRAINING = ("syncnet-stable", "wav2lip", "wav2lip-gan", "latentsync-1", "latentsync-2", "latentsync-2-efficient",
            "latentsync-2-512")
ALL = TRAINING + ("inference-256", "inference-512")


# -- building modules under FakeTensorMode -------------------------------------------------------------------------

def _replace(module: nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> nn.Module:
    """`module.to(device, dtype)` by putting new tensors in the modules' dicts: what `.to` does, without the
    tensor swap that `nn.Module._apply` insists on for fake tensors (and that fails on them)."""
    def moved(t: torch.Tensor) -> torch.Tensor:
        to_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        to_device = device if device is not None else t.device
        if to_dtype == t.dtype and to_device == t.device:
            return t
        return torch.empty(t.shape, dtype=to_dtype, device=to_device)

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                new = moved(p)
                if new is not p:
                    m._parameters[name] = nn.Parameter(new, requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = moved(b)
    return module


@contextlib.contextmanager
def fake_modules():
    """Fake tensors, with `nn.Module.to` done by `_replace`."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    original = nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        return _replace(self, device, dtype)

    nn.Module.to = to
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        nn.Module.to = original


class Tracker:
    """MemTracker, allowing a module called several times outside any forward (the VAE's `encode` three times a
    step): torch's tracker refuses that, taking it for a second iteration; its memory is tracked all the same
    (by dispatch), only its per-module snapshots are skipped."""

    def __new__(cls):
        from torch.distributed._tools.mem_tracker import MemTracker

        class _Tracker(MemTracker):
            def _pre_fw_hook(self, module, inputs):
                try:
                    super()._pre_fw_hook(module, inputs)
                except NotImplementedError:
                    pass

            def _update_peak_stats(self, peak_state):
                # the global peak only (torch's also updates every module's, a loop over all modules per op)
                for dev, snap in self._curr_mem_snap.items():
                    if self._peak_mem.get(dev, 0) < snap["Total"]:
                        self._peak_mem[dev] = snap["Total"]
                        self._peak_mem_snap[dev] = dict(snap)

            def prepare(self, learning, frozen, tensors):
                """Track the modules' weights from the start; gradient hooks on the weights that learn (the
                adversary's too, frozen while it judges), none on the frozen ones (MemTracker would try, and
                torch refuses a hook on a tensor that needs no gradient)."""
                for module in [*learning, *frozen]:
                    for p in module.parameters():
                        if not p.requires_grad:
                            self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
                for module in learning:
                    self._track_module_params_and_buffers(module, install_grad_hooks=True)
                for module in frozen:
                    self._track_module_params_and_buffers(module, install_grad_hooks=False)
                self.track_external(*tensors)

        return _Tracker()


class _NoHook:
    def remove(self) -> None:
        pass


def _split(snapshot: dict, trainable: int, frozen: int) -> dict:
    """A MemTracker snapshot (one device) as our split, in bytes."""
    from torch.distributed._tools.mem_tracker import _MemRefType as R

    get = lambda kind: int(snapshot.get(kind, 0))  # noqa: E731
    weights = get(R.PARAM) + get(R.BUFFER)
    return {"total": get("Total"), "weights": weights, "trainable_weights": trainable, "frozen_weights": frozen,
            "gradients": get(R.GRAD), "optimizer": get(R.OPT),
            "activations": get(R.ACT) + get(R.TEMP) + get(R.OTH)}


def _nbytes(modules, trainable: bool | None = None) -> int:
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if id(p) in seen or (trainable is not None and p.requires_grad != trainable):
                continue
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


# -- the steps -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Built:
    recipe: object
    model: nn.Module
    adversary: nn.Module | None
    frozen: list                 # frozen networks (modules)
    settings: object             # LoopSettings
    batch: dict
    dtype: torch.dtype | None    # autocast dtype


def _u8(*shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8)


def _syncnet(small: bool, batch: int | None = None) -> Built:
    from curate.training_config import load_training_config
    from training.expert import ExpertRecipe

    config = load_training_config("stable", ROOT / "configs" / ("syncnet-stable-small.yaml" if small else
                                                                 "syncnet-stable.yaml"))
    model_config = config.model.model_dump(mode="json")
    recipe = ExpertRecipe("stable", model_config)
    frames = model_config["visual_encoder"]["in_channels"] // 3
    side = config.data.resolution or (64 if small else 256)
    b = batch or (8 if small else config.train.micro_batch)
    batch = {"frames": _u8(b, frames, side // 2, side, 3), "mel": torch.randn(b, 1, 80, 52),
             "label": (torch.arange(b) % 2).float()}
    return Built(recipe, recipe.build_model(), None, [], dataclasses.replace(config.train, batch_size=b),
                 batch, torch.bfloat16)


def _wav2lip(small: bool, gan: bool, batch: int | None = None) -> Built:
    from curate.training_config import load_wav2lip_config
    from networks.syncnet.wav2lip_expert import Wav2LipExpert
    from training.wav2lip import GanSettings, Wav2LipRecipe

    config = load_wav2lip_config(ROOT / "configs" / "wav2lip.yaml")
    size = config.model.size
    expert = Wav2LipExpert()
    recipe = Wav2LipRecipe(size, expert, config.loss, GanSettings() if gan else None)
    recipe.sync_on = True          # the expert's loss learnt from: its backward through the expert is kept
    b = batch or (2 if small else config.train.micro_batch)
    batch = {"faces": _u8(b, 5, size, size, 3), "references": _u8(b, 5, size, size, 3),
             "mels": torch.randn(b, 5, 1, 80, 16), "mel": torch.randn(b, 1, 80, 16)}
    return Built(recipe, recipe.build_model(), recipe.build_adversary(), [expert],
                 dataclasses.replace(config.train, batch_size=b), batch, torch.bfloat16)


def _latentsync(stage: str, resolution: int, small: bool, batch: int | None = None) -> Built:
    from curate.training_config import load_latentsync_config
    from networks.latentsync import VAE_CONFIG, build_vae
    from networks.lpips import LPIPS
    from networks.syncnet.stable import StableSyncNet
    from networks.videomae import OFFICIAL, SMALL, VideoMAEv2
    from training.latentsync import STAGES, LatentSyncRecipe, unet_config
    from training.loop import precision_of  # noqa: F401  (what the recipe is given on a GPU: the config's dtype)
    from training.losses import TrepaLoss

    config = load_latentsync_config(stage, ROOT / "configs" / ("latentsync-small.yaml" if small else
                                                               f"latentsync-stage{stage}.yaml"))
    if small:
        resolution = config.model.resolution
    loop = config.train
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "auto": torch.bfloat16}.get(loop.precision)
    terms = config.loss.pixel_terms
    vae = build_vae(VAE_CONFIG if not small else {**VAE_CONFIG, "block_out_channels": (8, 8, 16, 16),
                                                  "norm_num_groups": 4, "layers_per_block": 1})
    if small:
        from curate.training_config import load_training_config

        expert_config = load_training_config("stable", ROOT / "configs" / "syncnet-stable-small.yaml").model
        expert, expert_resolution = StableSyncNet(expert_config.model_dump(mode="json")), 64
    else:
        expert, expert_resolution = StableSyncNet(), 256
    lpips = LPIPS() if "lpips" in terms else None
    trepa = (TrepaLoss(VideoMAEv2(SMALL if small else OFFICIAL), checkpointing=loop.gradient_checkpointing)
             if "trepa" in terms else None)
    if loop.gradient_checkpointing and terms:          # as training.latentsync.frozen_networks
        vae.enable_gradient_checkpointing()
    recipe = LatentSyncRecipe(unet_config(config.model.unet, STAGES[stage]), STAGES[stage], config.loss, resolution,
                              vae, expert if "sync" in terms else None, expert_resolution, lpips, trepa, None,
                              loop.seed, dtype)
    frozen = [vae, expert if "sync" in terms else None, lpips, trepa.model if trepa is not None else None]
    for network in frozen:                             # the recipe's `_place` on a GPU: the frozen ones in fp16
        if network is not None and dtype is not None:
            network.to(dtype=dtype)
    recipe._device = torch.device("cpu")
    if isinstance(torch.empty(0), _fake_type()):
        _draws_outside_fake(recipe)
    b = batch or (1 if small or resolution == 512 else loop.micro_batch)   # our 512 run: batch 1, as theirs
    frames = 16
    batch = {"faces": _u8(b, frames, resolution, resolution, 3), "references": _u8(b, frames, resolution, resolution, 3),
             "mel": torch.randn(b, 1, 80, 52), "audio": torch.randn(b, frames, 50, recipe.unet.cross_attention_dim),
             "sample": torch.arange(b), "index": 0}
    return Built(recipe, recipe.build_model(), None, [n for n in frozen if n is not None],
                 dataclasses.replace(loop, batch_size=b), batch, dtype)


def _fake_type():
    from torch._subclasses.fake_tensor import FakeTensor

    return FakeTensor


def _draws_outside_fake(recipe) -> None:
    """The recipe's seeded draws read their numbers (`tolist`, `int`), which fake tensors do not have: they are
    drawn on real tensors, and the step gets fake tensors of their shapes (made inside the tracker, so counted)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    original = recipe._draws

    def draws(batch, shape, validation):
        with unset_fake_temporarily():
            made = original({"sample": torch.arange(len(batch["faces"])), "index": 0}, shape, validation)
        return tuple(torch.empty(x.shape, dtype=x.dtype) for x in made)

    recipe._draws = draws


def build(name: str, small: bool, batch: int | None = None) -> Built:
    """The step `name` at the config's micro-batch (one GPU), or at `batch`."""
    if name == "syncnet-stable":
        return _syncnet(small, batch)
    if name in ("wav2lip", "wav2lip-gan"):
        return _wav2lip(small, name == "wav2lip-gan", batch)
    stage = name.removeprefix("latentsync-").removesuffix("-512")
    return _latentsync(stage, 512 if name.endswith("-512") else 256, small, batch)


def _autocast(dtype):
    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


def train_steps(built: Built, tracker, steps: int = 2) -> list[dict]:
    """`steps` optimizer steps as training.loop.fit runs them (one micro-batch each, no grad scaler); the
    tracker's live bytes after each."""
    from training.loop import _optimizer

    settings, device = built.settings, torch.device("cpu")
    model, adversary, recipe = built.model, built.adversary, built.recipe
    if settings.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):   # as fit does
        model.set_gradient_checkpointing(True)
    optimizer = _optimizer(model, settings)
    rival = _optimizer(adversary, recipe.adversary_settings) if adversary is not None else None
    scale = 1 / settings.batch_size
    after = []
    for _ in range(steps):
        model.train()
        if adversary is not None:
            adversary.train()
        with _autocast(built.dtype):
            if adversary is None:
                loss_sum, _ = recipe.loss(model, built.batch, device)
            else:
                adversary.requires_grad_(False)
                loss_sum, _, outputs = recipe.adversarial_loss(model, adversary, built.batch, device)
        (loss_sum * scale).backward()
        if adversary is not None:
            adversary.requires_grad_(True)
            with _autocast(built.dtype):
                rival_sum, _ = recipe.adversary_loss(adversary, built.batch, outputs.detach(), device)
            (rival_sum * scale).backward()
            del outputs, rival_sum
        del loss_sum
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rival is not None:
            rival.step()
            rival.zero_grad(set_to_none=True)
        after.append(dict(tracker.get_tracker_snapshot("current").get(device, {})))
    return after


def measure_training(name: str, fake: bool, small: bool = False, checkpointing: bool | None = None,
                     batch: int | None = None) -> dict:
    return measure_built(name, lambda: build(name, small, batch), fake, checkpointing)


def measure_built(name: str, make, fake: bool, checkpointing: bool | None = None) -> dict:
    """Two training steps of what `make()` builds (a `Built`), on fake or real tensors: the peak and its split."""
    started = time.perf_counter()
    torch.manual_seed(0)
    with (fake_modules() if fake else contextlib.nullcontext()):
        built = make()
        if checkpointing is not None:
            built.settings = dataclasses.replace(built.settings, gradient_checkpointing=checkpointing)
        trainable = _nbytes([built.model, built.adversary], trainable=True)
        frozen = _nbytes([built.model, built.adversary] + built.frozen, trainable=False)
        tracker = Tracker()
        tracker.prepare([m for m in (built.model, built.adversary) if m is not None], [built.model, *built.frozen],
                        [v for v in built.batch.values() if torch.is_tensor(v)])
        with tracker:
            after = train_steps(built, tracker)
        peak = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {})
    result = {"step": name, "mode": "fake" if fake else "real", "batch": built.settings.batch_size,
              "precision": str(built.dtype or torch.float32).removeprefix("torch."),
              "gradient_checkpointing": built.settings.gradient_checkpointing,
              "peak": _split(peak, trainable, frozen),
              "after_step": [int(a.get("Total", 0)) for a in after], "seconds": time.perf_counter() - started}
    return result


@contextlib.contextmanager
def _real_schedule(fake: bool):
    """The DDIM schedule made on real tensors, and each step given its timestep as a number: under fake tensors
    `schedule.step` cannot read a timestep's value (the sampler's loop over the timesteps makes them fake, so
    the numbers are read from the schedule, in the order the loop takes them). A few hundred bytes: the same
    peak."""
    import networks.latentsync as latentsync
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    original = latentsync.scheduler

    def real(*args, **kwargs):
        with unset_fake_temporarily():
            schedule = original(*args, **kwargs)
        step, numbers = schedule.step, iter(schedule.timesteps.tolist())

        def step_at_number(output, timestep, sample, **options):
            return step(output, next(numbers), sample, **options)

        schedule.step = step_at_number
        return schedule

    latentsync.scheduler = real if fake else original
    try:
        yield
    finally:
        latentsync.scheduler = original


def measure_inference(resolution: int, windows: int, fake: bool, small: bool = False, steps: int = 20) -> dict:
    """The sampler over `windows` windows of 16 frames in a row; the peak and the live bytes after each window."""
    from networks.latentsync import VAE_CONFIG, LatentSyncSampler, build_vae
    from networks.latentsync_unet import LatentSyncUNet, UNetConfig
    from networks.whisper import WhisperEncoder

    started = time.perf_counter()
    torch.manual_seed(0)
    dtype = torch.float16
    with (fake_modules() if fake else contextlib.nullcontext()), _real_schedule(fake):
        if small:
            unet = LatentSyncUNet(UNetConfig.from_config_dict(
                {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
                 "attention_head_dim": 8}).replace(use_motion_module=True))
            vae = build_vae({**VAE_CONFIG, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4,
                             "layers_per_block": 1})
        else:
            unet, vae = LatentSyncUNet(UNetConfig().replace(use_motion_module=True)), build_vae(VAE_CONFIG)
        whisper = WhisperEncoder().to(dtype=dtype).eval()   # the audio's encoder, held beside (LatentSync's tiny)
        sampler = LatentSyncSampler(unet, vae, resolution, torch.device("cpu"), dtype, steps=steps)
        frozen = _nbytes([unet, vae, whisper])
        tracker = Tracker()
        tracker.prepare([], [unet, vae, whisper], [sampler.mask, sampler.latent_mask, sampler.noise])
        after = []
        with tracker:
            for _ in range(windows):
                faces = torch.rand(16, 3, resolution, resolution) * 2 - 1
                audio = torch.randn(16, 50, unet.config.cross_attention_dim)
                out = sampler(faces, audio)
                del faces, audio, out
                after.append(int(tracker.get_tracker_snapshot("current").get(torch.device("cpu"), {}).get("Total", 0)))
        peak = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {})
    return {"step": f"inference-{resolution}", "mode": "fake" if fake else "real", "batch": 1, "windows": windows,
            "precision": "float16", "gradient_checkpointing": False, "peak": _split(peak, 0, frozen),
            "after_step": after, "seconds": time.perf_counter() - started}


# -- the table -----------------------------------------------------------------------------------------------------

def row(r: dict) -> str:
    p = r["peak"]
    published = PUBLISHED.get(r["step"])
    what = r["step"] + (f" x{r['windows']} windows" if "windows" in r else "") + (
        "" if r.get("gradient_checkpointing") or r["step"].startswith(("inference", "syncnet", "wav2lip"))
        else " (no checkpointing)")
    return (f"| {what} | {r['mode']} | {r['batch']} | {r['precision']} | {p['total'] / GB:.2f} | "
            f"{p['trainable_weights'] / GB:.2f} | {p['frozen_weights'] / GB:.2f} | {p['gradients'] / GB:.2f} | "
            f"{p['optimizer'] / GB:.2f} | {p['activations'] / GB:.2f} | "
            f"{published if published else '-'} | {r['seconds']:.0f} |")


HEADER = ("| step | tensors | batch | autocast | peak GB | trainable weights | frozen weights | gradients | "
          "optimizer | activations | LatentSync's GB | s |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(ALL), help="comma-separated, of: " + ", ".join(ALL))
    parser.add_argument("--real", default="", help="steps also run on real CPU tensors (those that fit in RAM)")
    parser.add_argument("--windows", type=int, default=8, help="inference windows in a row (against 1)")
    parser.add_argument("--no-checkpointing", default="", help="steps also measured with gradient checkpointing off")
    parser.add_argument("--small", action="store_true", help="the small configs (a quick check)")
    parser.add_argument("--batch", type=int, help="the micro-batch of every training step (default: the config's;"
                        " LatentSync's published figures are at its yaml's batch_size 1)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    results = []
    print(HEADER, flush=True)

    def run(fn, *a, **k):
        r = fn(*a, **k)
        results.append(r)
        print(row(r), flush=True)
        return r

    real = [s for s in args.real.split(",") if s]
    for name in [s for s in args.steps.split(",") if s]:
        if name.startswith("inference-"):
            resolution = int(name.split("-")[1])
            for windows in (1, args.windows):
                run(measure_inference, resolution, windows, True, args.small)
            if name in real:
                run(measure_inference, resolution, 1, False, args.small, steps=2)
                run(measure_inference, resolution, 1, True, args.small, steps=2)
            continue
        run(measure_training, name, True, args.small, batch=args.batch)
        if name in args.no_checkpointing.split(","):
            run(measure_training, name, True, args.small, checkpointing=False, batch=args.batch)
        if name in real:
            run(measure_training, name, False, args.small, batch=args.batch)
    pairs = {}
    for r in results:
        pairs.setdefault((r["step"], r.get("windows"), r["after_step"].__len__()), {})[r["mode"]] = r
    for (step, _, _), both in pairs.items():
        if "real" in both and "fake" in both:
            f, t = both["fake"]["peak"]["total"], both["real"]["peak"]["total"]
            print(f"{step}: fake {f / GB:.3f} GB, real {t / GB:.3f} GB, fake - real = {(f - t) / t * 100:+.2f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

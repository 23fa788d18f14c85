"""The training loop every trainer runs: plain PyTorch, on one process or as one rank of DDP, the same code.

A trainer is a *recipe* (the model, its loss on a batch, its validation, its official checkpoint layout); this
loop owns everything else: seeding, the optimizer, mixed precision, gradient accumulation and clipping, DDP,
checkpoints with everything needed to continue exactly, the metrics file and the plot. It imports only torch
(matplotlib for the plot when it is there), so it runs under Ray Train, in a test, or on a bare GPU machine.

The data is a function of the position in the run: `batches(start)` yields this rank's micro-batches from
global micro-batch `start` on, the same ones whatever the number of ranks (each rank gets its share). So a
checkpoint needs only the step to continue with the very batches an uninterrupted run would have seen, and a
resumed run gives the same losses, bit for bit on the CPU.

Run folder: `metrics.jsonl` (a JSON line per logged step and per validation), `metrics.png`, and
`checkpoints/step-NNNNNNNNN/` holding the model in the recipe's official layout and `train_state.pt`
(optimizer, grad scaler, RNG states, step, best validation so far); the last `keep_checkpoints` are kept,
and the best by validation loss (`checkpoints/best.json` names it).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class LoopSettings:
    """The `train:` section of every trainer's config."""
    __pydantic_config__ = {"extra": "forbid"}   # validated by the command line's config loader

    batch_size: int = 256               # samples per optimizer step, all workers and accumulation together
    grad_accum: int = 1                 # micro-batches per optimizer step
    max_steps: int = 100_000
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0   # clip the gradient's norm to this (null: no clipping)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on GPUs that have it, else fp16
    gradient_checkpointing: bool = False                          # (with a grad scaler); fp32 on the CPU
    seed: int = 42
    log_every: int = 10                 # steps between lines of metrics.jsonl
    validate_every: int = 2500          # steps between validations (also at the start and the end)
    checkpoint_every: int = 2500        # steps between checkpoints (also at the end)
    keep_checkpoints: int = 3           # the last ones kept, besides the best

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "validate_every", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be above 0, not {self.lr}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a whole number of grad_accum "
                             f"({self.grad_accum}) micro-batches")

    @property
    def micro_batch(self) -> int:
        """Samples per micro-batch, all ranks together."""
        return self.batch_size // self.grad_accum


class Recipe(Protocol):
    export_name: str                   # file name of the model in a checkpoint, as the official one is named

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        """The loss *summed* over this rank's samples of `batch`, and sums of other metrics (e.g. `correct`)."""

    def validate(self, model: nn.Module, device: torch.device) -> dict: ...

    def export(self, model: nn.Module, step: int, epoch: int) -> dict:
        """The model as its official checkpoint file holds it."""


@dataclass(frozen=True)
class Placement:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def precision_of(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32)."""
    if device.type != "cuda" or setting == "fp32":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def fit(recipe: Recipe, settings: LoopSettings, run_dir: Path, batches: Callable[[int], Iterator[dict]],
        placement: Placement = Placement(), epoch_of: Callable[[int], int] = lambda position: 0,
        init: Callable[[nn.Module], None] | None = None) -> dict:
    """Train from the run folder's last checkpoint (or from the start) to `settings.max_steps`; returns the
    last logged metrics. `epoch_of(micro_batch)` tells the epoch a position is in (for the checkpoint);
    `init(model)` loads starting weights when there is no checkpoint yet."""
    device = torch.device(placement.device)
    run_dir = Path(run_dir)
    _seed_everything(settings.seed)
    model = recipe.build_model()
    if settings.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    model.to(device)
    optimizer = _optimizer(model, settings)
    autocast_dtype = precision_of(settings.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    log = MetricsLog(run_dir / METRICS, enabled=placement.main)

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        step, best = _restore(checkpoint, recipe, model, optimizer, scaler, device)
        log.keep_until(step)
    else:
        step, best = 0, None
        if init is not None:
            init(model)
        log.clear()

    trained = model
    if placement.world_size > 1:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if placement.main and step == 0:
        log.write({"event": "start", "trainable_parameters": count, "world_size": placement.world_size,
                   "precision": str(autocast_dtype or torch.float32).removeprefix("torch."),
                   "settings": asdict(settings)})

    last = {}
    if step == 0:
        last = _validate(recipe, model, device, step, log, placement)
        best = _better(best, last, step)
    stream = batches(step * settings.grad_accum)
    # sums stay on the device (NCCL reduces only device tensors; no sync per step), read at each metrics line
    sum_type = torch.float32 if device.type == "mps" else torch.float64
    window = _Window(device, sum_type)
    while step < settings.max_steps:
        model.train()
        totals = torch.zeros(3, dtype=sum_type, device=device)   # loss sum, correct, samples (this rank)
        for micro in range(settings.grad_accum):
            waited = time.perf_counter()
            batch = next(stream)
            window.wait += time.perf_counter() - waited
            syncing = micro == settings.grad_accum - 1 or placement.world_size == 1
            with (nullcontext() if syncing else trained.no_sync()):
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    loss_sum, sums = recipe.loss(trained, batch, device)
                # DDP averages gradients over ranks: scaled so, the gradient is the mean over all the step's samples
                scaled = loss_sum * (placement.world_size / settings.batch_size)
                scaler.scale(scaled).backward()
            totals[0] += loss_sum.detach().to(sum_type)
            totals[1] += torch.as_tensor(sums.get("correct", 0), device=device).to(sum_type)
            totals[2] += sums.get("samples", 0)
        if settings.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if placement.world_size > 1:
            dist.all_reduce(totals)
        window.add(totals)

        if step % settings.log_every == 0 or step == settings.max_steps:
            last = window.line(step, settings, optimizer)
            log.write(last)
            window = _Window(device, sum_type)
        paused = time.perf_counter()
        if step % settings.validate_every == 0 or step == settings.max_steps:
            last = {**last, **_validate(recipe, model, device, step, log, placement)}
            best = _better(best, last, step)
        if step % settings.checkpoint_every == 0 or step == settings.max_steps:
            if placement.main:
                save_checkpoint(run_dir, recipe, model, optimizer, scaler, step,
                                epoch_of(step * settings.grad_accum), best, settings.keep_checkpoints)
                plot_metrics(run_dir)
            _barrier(placement)
        window.started += time.perf_counter() - paused   # samples/s of training, not of validation
    return last


class _Window:
    """Sums over the steps since the last metrics line."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.started = time.perf_counter()
        self.wait = 0.0
        self.steps = 0
        self.totals = torch.zeros(3, dtype=dtype, device=device)

    def add(self, totals: torch.Tensor) -> None:
        self.totals += totals
        self.steps += 1

    def line(self, step: int, settings: LoopSettings, optimizer) -> dict:
        elapsed = time.perf_counter() - self.started
        loss_sum, correct, samples = self.totals.tolist()
        line = {"step": step, "loss": loss_sum / max(samples, 1), "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": settings.batch_size * self.steps / max(elapsed, 1e-9),
                "data_wait_share": min(1.0, self.wait / max(elapsed, 1e-9))}
        if correct:
            line["accuracy"] = correct / samples
        return line


def _validate(recipe: Recipe, model: nn.Module, device: torch.device, step: int, log: "MetricsLog",
              placement: Placement) -> dict:
    """Validation on rank 0 (the others wait): its numbers, prefixed `val_`, as a metrics line."""
    result = {}
    if placement.main:
        model.eval()
        with torch.no_grad():
            numbers = recipe.validate(model, device)
        if numbers:
            result = {f"val_{key}": value for key, value in numbers.items()}
            log.write({"step": step, **result})
            plot_metrics(log.path.parent)
    _barrier(placement)
    return result


def _better(best: dict | None, metrics: dict, step: int) -> dict | None:
    loss = metrics.get("val_loss")
    if loss is not None and (best is None or loss < best["val_loss"]):
        return {"step": step, "val_loss": loss}
    return best


def _barrier(placement: Placement) -> None:
    if placement.world_size > 1:
        dist.barrier()


def _optimizer(model: nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- checkpoints ----------------------------------------------------------------------------------------------

def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is renamed into place only once everything is in it)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: Path) -> Path | None:
    try:
        best = json.loads((Path(run_dir) / CHECKPOINTS / "best.json").read_text())
    except (OSError, ValueError):
        return None
    path = Path(run_dir) / CHECKPOINTS / best["checkpoint"]
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, recipe: Recipe, model: nn.Module, optimizer, scaler, step: int, epoch: int,
                    best: dict | None, keep: int) -> Path:
    folder = Path(run_dir) / CHECKPOINTS
    target = folder / f"step-{step:09d}"
    partial = folder / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(recipe.export(model, step, epoch), partial / recipe.export_name)
    torch.save({"step": step, "epoch": epoch, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "best": best}, partial / STATE_FILE)
    for name in (recipe.export_name, STATE_FILE):
        with open(partial / name, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    if best is not None:
        _write_json(folder / "best.json", {"checkpoint": f"step-{best['step']:09d}", **best})
    _prune(run_dir, keep, best)
    return target


def _prune(run_dir: Path, keep: int, best: dict | None) -> None:
    found = checkpoint_dirs(run_dir)
    keep_names = {p.name for p in found[-keep:]}
    if best is not None:
        keep_names.add(f"step-{best['step']:09d}")
    for path in found:
        if path.name not in keep_names:
            shutil.rmtree(path, ignore_errors=True)


def _restore(checkpoint: Path, recipe: Recipe, model: nn.Module, optimizer, scaler, device) -> tuple[int, dict | None]:
    exported = torch.load(checkpoint / recipe.export_name, map_location="cpu", weights_only=True)
    model.load_state_dict(exported["state_dict"], strict=True)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], device)
    return int(state["step"]), state.get("best")


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


# -- metrics ----------------------------------------------------------------------------------------------------

class MetricsLog:
    """`metrics.jsonl`, appended by rank 0; on resume, lines past the checkpoint's step are dropped, so the file
    tells the story of the run as it would read without the interruption."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def keep_until(self, step: int) -> None:
        if self.enabled and self.path.exists():
            self._rewrite([line for line in read_metrics(self.path) if line.get("step", 0) <= step])

    def clear(self) -> None:
        if self.enabled and self.path.exists():
            self._rewrite([])

    def _rewrite(self, lines: list[dict]) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(line) + "\n" for line in lines))
        os.replace(partial, self.path)

    def write(self, line: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({**line, "time": round(time.time(), 3)}) + "\n")


def read_metrics(path: Path) -> list[dict]:
    lines = []
    try:
        with open(path) as handle:
            for text in handle:
                try:
                    lines.append(json.loads(text))
                except ValueError:
                    continue   # a line cut short by a crash
    except OSError:
        pass
    return lines


def plot_metrics(run_dir: Path) -> Path | None:
    """`metrics.png`: training and validation loss, and the accuracies, against the step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lines = read_metrics(Path(run_dir) / METRICS)
    train = [line for line in lines if "loss" in line]
    val = [line for line in lines if "val_loss" in line]
    if not train and not val:
        return None
    figure, (losses, accuracies) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, key, label in ((train, "loss", "train loss"), (val, "val_loss", "val loss")):
        if rows:
            losses.plot([r["step"] for r in rows], [r[key] for r in rows], label=label, marker="." if rows is val else None)
    losses.axhline(math.log(2), color="grey", linestyle=":", label="chance (ln 2)")
    losses.set_xlabel("step")
    losses.set_title("loss")
    losses.legend()
    for rows, key, label in ((train, "accuracy", "train accuracy"), (val, "val_accuracy", "val accuracy"),
                             (val, "val_offset_accuracy", "val offset accuracy")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            accuracies.plot(*zip(*points), label=label, marker="." if rows is val else None)
    accuracies.set_ylim(0, 1)
    accuracies.set_xlabel("step")
    accuracies.set_title("accuracy")
    accuracies.legend()
    figure.tight_layout()
    target = Path(run_dir) / PLOT
    partial = target.with_name("metrics.partial.png")
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    os.replace(partial, target)
    return target

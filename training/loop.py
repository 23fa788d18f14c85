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
(optimizer, grad scaler, RNG states, step, best validation so far, the recipe's own state); the last
`keep_checkpoints` are kept, and the best by validation loss (`checkpoints/best.json` names it).

**An adversary.** A recipe may declare a second model trained against the first (a GAN's discriminator),
with its own optimizer and grad scaler, saved beside the model in its own official layout and restored with
it. Each micro-batch has two phases: the model's, in which the recipe calls the adversary itself (not its DDP
wrapper) with its weights frozen, so that it judges without being changed; then the adversary's, which calls
the DDP-wrapped adversary on real samples and the model's detached outputs. Both optimizers step at the end
of the step.
"""

from __future__ import annotations

import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.checkpoints import latest_checkpoint, restore, save_checkpoint
from training.metrics import METRICS, MetricsLog, plot_metrics


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

    # Optional:
    # metric_names: tuple[str, ...]       sums in `loss`'s dict logged as per-sample means (e.g. "l1")
    # plot_panels: tuple[Panel, ...]      what metrics.png shows (default: loss and accuracies)
    # state_dict() -> dict, load_state_dict(dict)   the recipe's own state (e.g. a loss weight switched on at
    #                                     a validation): checkpointed, and shared by rank 0 after validations


class AdversarialRecipe(Recipe, Protocol):
    """A recipe with an adversary (see the module's docstring). `build_adversary` may return None: no adversary
    this run, and the plain `loss` is used."""
    adversary_export_name: str
    adversary_settings: object          # optimizer, lr, betas, weight_decay (as LoopSettings names them)

    def build_adversary(self) -> nn.Module | None: ...

    def adversarial_loss(self, model: nn.Module, adversary: nn.Module, batch: dict, device: torch.device
                         ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """As `loss`, with the (frozen) adversary's judgement in it; and the model's outputs for the
        adversary's phase."""

    def adversary_loss(self, adversary: nn.Module, batch: dict, outputs: torch.Tensor, device: torch.device
                       ) -> tuple[torch.Tensor, dict]:
        """The adversary's loss summed over this rank's samples, on real ones and the (detached) outputs."""

    def export_adversary(self, adversary: nn.Module, step: int, epoch: int) -> dict: ...


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
        placement: Placement = Placement(), position_of: Callable[[int], dict] = lambda micro_batch: {"epoch": 0},
        init: Callable[[nn.Module], None] | None = None,
        on_validate: Callable[[nn.Module, int], dict | None] | None = None) -> dict:
    """Train from the run folder's last checkpoint (or from the start) to `settings.max_steps`; returns the
    last logged metrics. `position_of(micro_batch)` says where in the data a micro-batch is (its `epoch`, and
    for the trainers' streams its place in the shuffle and its first clip, with shard and key): a checkpoint
    keeps it, and a resumed run that would now be elsewhere in the data says so;
    `init(model)` loads starting weights when there is no checkpoint yet; `on_validate(model, step)` runs on
    rank 0 after each validation (e.g. to write samples), and the numbers it returns join the validation's."""
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
    adversary = recipe.build_adversary() if hasattr(recipe, "build_adversary") else None
    rival = None                     # the adversary's optimizer and grad scaler
    if adversary is not None:
        adversary.to(device)
        rival = _Rival(_optimizer(adversary, recipe.adversary_settings),
                       torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16))
    log = MetricsLog(run_dir / METRICS, enabled=placement.main)
    panels = getattr(recipe, "plot_panels", None)

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        step, best, position = restore(checkpoint, recipe, model, optimizer, scaler, device, adversary, rival)
        log.keep_until(step)
        now = position_of(step * settings.grad_accum)
        if position is not None and position != now and placement.main:
            warnings.warn(f"the data changed since {checkpoint.name}: its next micro-batch was at {position}, "
                          f"it is now at {now}; training goes on from there")
    else:
        step, best = 0, None
        if init is not None:
            init(model)
        log.clear()

    trained, trained_adversary = model, adversary
    if placement.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=ids)
        if adversary is not None:
            trained_adversary = DistributedDataParallel(adversary, device_ids=ids)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if placement.main and step == 0:
        start = {"event": "start", "trainable_parameters": count, "world_size": placement.world_size,
                 "precision": str(autocast_dtype or torch.float32).removeprefix("torch."),
                 "settings": asdict(settings)}
        if adversary is not None:
            start["adversary_parameters"] = sum(p.numel() for p in adversary.parameters() if p.requires_grad)
        log.write(start)

    last = {}
    if step == 0:
        last = _validate(recipe, model, device, step, log, placement, on_validate)
        best = _better(best, last, step)
    stream = batches(step * settings.grad_accum)
    names = tuple(getattr(recipe, "metric_names", ()))
    # sums stay on the device (NCCL reduces only device tensors; no sync per step), read at each metrics line
    sum_type = torch.float32 if device.type == "mps" else torch.float64
    window = _Window(device, sum_type, names)
    autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype or torch.float32,  # noqa: E731
                                      enabled=autocast_dtype is not None)
    # DDP averages gradients over ranks: scaled so, the gradient is the mean over all the step's samples
    scale = placement.world_size / settings.batch_size
    while step < settings.max_steps:
        model.train()
        if adversary is not None:
            adversary.train()
        # loss sum, correct, samples, then the recipe's metric_names (this rank)
        totals = torch.zeros(3 + len(names), dtype=sum_type, device=device)
        for micro in range(settings.grad_accum):
            waited = time.perf_counter()
            batch = next(stream)
            window.wait += time.perf_counter() - waited
            syncing = micro == settings.grad_accum - 1 or placement.world_size == 1
            with (nullcontext() if syncing else trained.no_sync()):
                with autocast():
                    if adversary is None:
                        loss_sum, sums = recipe.loss(trained, batch, device)
                    else:
                        adversary.requires_grad_(False)     # it judges the outputs; its phase comes next
                        loss_sum, sums, outputs = recipe.adversarial_loss(trained, adversary, batch, device)
                scaler.scale(loss_sum * scale).backward()
            if adversary is not None:
                adversary.requires_grad_(True)
                with (nullcontext() if syncing else trained_adversary.no_sync()):
                    with autocast():
                        rival_sum, rival_sums = recipe.adversary_loss(trained_adversary, batch, outputs.detach(),
                                                                      device)
                    rival.scaler.scale(rival_sum * scale).backward()
                sums = {**sums, **rival_sums}
            totals[0] += loss_sum.detach().to(sum_type)
            totals[1] += torch.as_tensor(sums.get("correct", 0), device=device).to(sum_type)
            totals[2] += sums.get("samples", 0)
            for i, name in enumerate(names):
                totals[3 + i] += torch.as_tensor(sums.get(name, 0), device=device).detach().to(sum_type)
        if settings.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if rival is not None:
            rival.scaler.step(rival.optimizer)
            rival.scaler.update()
            rival.optimizer.zero_grad(set_to_none=True)
        step += 1
        if placement.world_size > 1:
            dist.all_reduce(totals)
        window.add(totals)

        if step % settings.log_every == 0 or step == settings.max_steps:
            last = window.line(step, settings, optimizer)
            log.write(last)
            window = _Window(device, sum_type, names)
        paused = time.perf_counter()
        if step % settings.validate_every == 0 or step == settings.max_steps:
            last = {**last, **_validate(recipe, model, device, step, log, placement, on_validate)}
            best = _better(best, last, step)
        if step % settings.checkpoint_every == 0 or step == settings.max_steps:
            if placement.main:
                save_checkpoint(run_dir, recipe, model, optimizer, scaler, step,
                                position_of(step * settings.grad_accum), best, settings.keep_checkpoints,
                                adversary, rival)
                plot_metrics(run_dir, panels)
            _barrier(placement)
        window.started += time.perf_counter() - paused   # samples/s of training, not of validation
    return last


@dataclass
class _Rival:
    """The adversary's optimizer and grad scaler."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


class _Window:
    """Sums over the steps since the last metrics line."""

    def __init__(self, device: torch.device, dtype: torch.dtype, names: tuple[str, ...] = ()):
        self.started = time.perf_counter()
        self.wait = 0.0
        self.steps = 0
        self.names = names
        self.totals = torch.zeros(3 + len(names), dtype=dtype, device=device)

    def add(self, totals: torch.Tensor) -> None:
        self.totals += totals
        self.steps += 1

    def line(self, step: int, settings: LoopSettings, optimizer) -> dict:
        elapsed = time.perf_counter() - self.started
        loss_sum, correct, samples, *extra = self.totals.tolist()
        line = {"step": step, "loss": loss_sum / max(samples, 1), "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": settings.batch_size * self.steps / max(elapsed, 1e-9),
                "data_wait_share": min(1.0, self.wait / max(elapsed, 1e-9))}
        if correct:
            line["accuracy"] = correct / samples
        for name, value in zip(self.names, extra):
            line[name] = value / max(samples, 1)
        return line


def _validate(recipe: Recipe, model: nn.Module, device: torch.device, step: int, log: "MetricsLog",
              placement: Placement, on_validate: Callable[[nn.Module, int], dict | None] | None = None) -> dict:
    """Validation on rank 0 (the others wait): its numbers, prefixed `val_`, as a metrics line. The recipe's
    state (which a validation may change) is then rank 0's on every rank."""
    result = {}
    if placement.main:
        model.eval()
        with torch.no_grad():
            numbers = recipe.validate(model, device)
            if numbers and on_validate is not None:
                numbers = {**numbers, **(on_validate(model, step) or {})}
        if numbers:
            result = {f"val_{key}": value for key, value in numbers.items()}
            log.write({"step": step, **result})
            plot_metrics(log.path.parent, getattr(recipe, "plot_panels", None))
    _barrier(placement)
    if placement.world_size > 1 and hasattr(recipe, "state_dict"):
        shared = [recipe.state_dict() if placement.main else None]
        dist.broadcast_object_list(shared, src=0)
        recipe.load_state_dict(shared[0])
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

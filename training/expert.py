"""Training an expert: the recipe the harness (training/loop.py) runs, and the numbers that judge an expert.

The loss is both references': binary cross-entropy of the cosine of the two unit embeddings (non-negative
after the encoders' final ReLU, so a probability) against the in-sync label. Validation, on a fixed set of
windows of the validation clips (training.windows.ValWindows):

- `loss` and `accuracy` (cosine > 0.5 means "in sync") over each window's positive (its own audio) and its
  negative (the audio at a shift of at least min_negative_shift frames);
- `offset_accuracy`: the share of windows whose best-scoring audio shift in -15 .. +15 frames is within one
  frame of 0, which is what matters when the expert supervises a generator;
- `best_shift`: the median best shift. An expert that learns while this stays away from 0 is learning data
  whose audio is off by that many frames: a data problem, not a slow start.

The recipe and the evaluation import only torch; `train_expert`, what each Ray Train worker runs, brings in
the data path (PyAV) when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from networks.syncnet.experts import CLASSES, build_expert, framing_of, load_expert, official_layout
from training.loop import LoopSettings, Placement, fit
from training.losses import bce_on_cosine

if TYPE_CHECKING:
    from training.windows import WindowSettings

EXPORT_NAMES = {"stable": "stable_syncnet.pt", "wav2lip": "lipsync_expert.pth"}
VAL_SHIFT = 15


class ExpertRecipe:
    def __init__(self, arch: str, model_config: dict | None = None,
                 val_batches: Callable[[], Iterator[dict]] | None = None, resolution: int | None = None):
        self.arch, self.model_config, self.resolution = arch, model_config, resolution
        self.export_name = EXPORT_NAMES[arch]
        self.frames_input = CLASSES[arch].frames_input
        self.val_batches = val_batches

    def build_model(self) -> nn.Module:
        return build_expert(self.arch, self.model_config)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        frames = self.frames_input(batch["frames"].to(device, non_blocking=True))
        labels = batch["label"].to(device)
        vision, audio = model(frames, batch["mel"].to(device, non_blocking=True))
        losses, cosine = bce_on_cosine(vision, audio, labels)
        correct = ((cosine > 0.5).float() == labels).sum()   # a tensor: no device sync per step
        return losses.sum(), {"correct": correct, "samples": len(labels)}

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict:
        if self.val_batches is None:
            return {}
        return evaluate_expert(model, self.frames_input, self.val_batches(), device)

    def export(self, model: nn.Module, step: int, epoch: int) -> dict:
        return official_layout(self.arch, model, step, epoch, self.resolution)

    def init_from(self, path: str) -> Callable[[nn.Module], None]:
        """The loop's `init`: start from the weights of an expert file (an official one, or one of ours)."""
        def load(model: nn.Module) -> None:
            _, source = load_expert(path, arch=self.arch)
            model.load_state_dict(source.state_dict(), strict=True)
        return load


@torch.no_grad()
def evaluate_expert(model: nn.Module, frames_input, batches: Iterator[dict], device: torch.device) -> dict:
    """loss, accuracy, offset_accuracy and best_shift over validation batches (see the module docstring)."""
    model.eval()
    losses, correct, hits, best, windows = 0.0, 0, 0, [], 0
    module = model.module if hasattr(model, "module") else model   # DDP's wrapper
    for batch in batches:
        frames = frames_input(batch["frames"].to(device))
        mels = batch["mels"].to(device)                                  # (n, 31, 1, 80, C)
        n, shifts = mels.shape[:2]
        # the frames once, against every shifted audio window
        vision = module.embed_frames(frames).float()
        audio = module.embed_audio(mels.flatten(0, 1)).float().reshape(n, shifts, -1)
        cosine = (vision[:, None, :] * audio).sum(-1)                    # unit vectors: the cosine
        positive = cosine[:, VAL_SHIFT]
        negative = cosine[torch.arange(n), batch["negative"].to(device)]
        pair = torch.cat([positive, negative]).clamp(0.0, 1.0)
        labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        losses += float(F.binary_cross_entropy(pair, labels, reduction="sum"))
        correct += int(((pair > 0.5).float() == labels).sum())
        shift = cosine.argmax(1) - VAL_SHIFT
        hits += int((shift.abs() <= 1).sum())
        best += shift.tolist()
        windows += n
    if not windows:
        return {}
    return {"loss": losses / (2 * windows), "accuracy": correct / (2 * windows),
            "offset_accuracy": hits / windows, "best_shift": float(torch.tensor(best).float().median()),
            "windows": windows}


@dataclass(frozen=True)
class ExpertJob:
    """Everything a training worker needs (it is sent to every worker as it is)."""
    arch: str
    model_config: dict | None
    data: "WindowSettings"
    loop: LoopSettings
    train_clips: list        # training.windows.Clip
    val_clips: list
    run_dir: str
    init: str | None = None  # an expert file to start from (--init)


def train_expert(job: ExpertJob, placement: Placement = Placement()) -> dict:
    """One worker's part of training an expert: its share of the window stream, the loop, and (rank 0) the
    validation windows. Returns the last metrics."""
    from training.windows import ValWindows, WindowStream, stream_batches

    framing = framing_of(job.arch, job.model_config, job.data.resolution)
    val = ValWindows(job.val_clips, framing, job.data, job.loop.seed) if placement.main and job.val_clips else None
    recipe = ExpertRecipe(job.arch, job.model_config, (lambda: val.batches()) if val is not None and len(val) else None,
                          framing.width)
    batches, position_of = stream_batches(
        partial(WindowStream, job.train_clips, framing, job.data, job.loop.micro_batch, job.loop.seed),
        placement.rank, placement.world_size, job.run_dir)
    return fit(recipe, job.loop, Path(job.run_dir), batches, placement, position_of=position_of,
               init=recipe.init_from(job.init) if job.init else None)

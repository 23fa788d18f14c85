"""Training Wav2Lip's generator: the recipe the harness (training/loop.py) runs, and what each Ray Train worker runs.

The sample (training/face_windows.py): 5 frames of a clip (the target), 5 other frames of the same clip that do
not overlap them (the reference), the mel window of each frame and of the five. The generator sees the target
with its lower half zeroed beside the reference, and each frame's audio, and remakes the whole face.

The loss is the reference's (wav2lip_train.py, hq_wav2lip_train.py): per sample

    (1 - s - g) * L1(generated, target) + s * sync + g * gan

- L1 over the whole face, as the reference (the upper half is given, so it is learnt first);
- `sync`: the frozen lip-sync expert's BCE of its cosine against "in sync" on the 5 generated lower halves
  and the 5 frames' mel window. The expert is Wav2Lip's SyncNet_color (48 x 96 lower halves of 5 BGR frames):
  at the official size (96) the lower half is its input as it is; at other sizes it is resized to 48 x 96
  (area averaging going down, bilinear going up). The expert is in eval mode: the reference leaves its batch
  norms in training mode, so that they normalise by the generated batch's own statistics; here they use the
  statistics the expert was trained with;
- `gan` (with --gan): the visual-quality discriminator's BCE of its judgement of the generated faces against
  "real", the discriminator frozen in this phase; in its own phase it learns real (the targets) from generated
  (detached), BCE on each, with its own Adam (hq_wav2lip_train.py: lr 1e-4, betas 0.5, 0.999).

Weights as the reference: s is 0 until a validation's sync loss (the expert on generated windows) falls under
`sync_on_below` (0.75), then `sync_weight` (0.01) without the discriminator, `gan_sync_weight` (0.03) with it;
g is `gan_weight` (0.07) from the start with --gan, else 0. The switch is the recipe's state: checkpointed,
so a resumed run keeps it (the reference forgets it when restarted), and shared by rank 0 with the others.

Validation (rank 0, fixed seeded windows of the val clips, self-reenactment with each clip's own audio, so
the truth is known), on the lower half, which is all the generator has to make:
`l1`, `psnr` (dB), `ssim` of the generated lower half against the truth; `copy_l1`, `copy_psnr`, `copy_ssim`,
the same of copying the reference's lower half instead (the baseline a generator must beat); `sync`, the expert's loss on the
generated windows (what switches s on), and `sync_truth`, its loss on the real ones (what the expert thinks
of the data itself); `loss` = l1 + s_on * sync with s_on the weight s takes once on, whether or not it is on
yet, so that one yardstick ranks every checkpoint of the run (`best.json`) across the switch.

Imports only torch (and the torch-only experts, generator and harness); `train_wav2lip`, what a Ray Train
worker runs, brings in the data path (PyAV) when it is called.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from networks.wav2lip import DISC_FILE, GENERATOR_FILE, Wav2Lip, Wav2LipDiscriminator, load_generator, official_layout
from training.loop import LoopSettings, Placement, fit
from training.losses import bce_on_cosine
from training.metrics import Panel

if TYPE_CHECKING:
    from training.face_windows import FaceWindowSettings

EXPERT_SIZE = (48, 96)       # the Wav2Lip expert's lower half, height x width
FRAMING = "template"         # what our clips are: LatentSync's affine template (lipsync reads this key)


@dataclass(frozen=True)
class Wav2LipLoss:
    """The `loss:` section: the generator's loss weights and when the expert's is switched on."""
    __pydantic_config__ = {"extra": "forbid"}

    sync_weight: float = 0.01       # the expert's weight once on, without --gan (wav2lip_train.py)
    gan_sync_weight: float = 0.03   # ... and with --gan (hq_wav2lip_train.py)
    sync_on_below: float = 0.75     # the expert's weight is 0 until a validation's sync loss is below this
    gan_weight: float = 0.07        # the discriminator's weight with --gan, from the start (disc_wt)

    def __post_init__(self):
        for name in ("sync_weight", "gan_sync_weight", "gan_weight"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.gan_sync_weight + self.gan_weight >= 1:
            raise ValueError("gan_sync_weight + gan_weight must be under 1 (the rest is the L1's weight)")


@dataclass(frozen=True)
class GanSettings:
    """The `gan:` section, used with --gan: the discriminator's optimizer, and the generator's Adam betas
    (hq_wav2lip_train.py uses (0.5, 0.999) for both; wav2lip_train.py, without a discriminator, Adam's
    defaults, which are train.betas)."""
    __pydantic_config__ = {"extra": "forbid"}

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    generator_betas: tuple[float, float] = (0.5, 0.999)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be above 0, not {self.lr}")


def _unit(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [0, 1], the channels as they are (BGR)."""
    return frames.permute(0, 4, 1, 2, 3).float().div_(255.0)


def expert_input(faces: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, S, S) faces -> (B, 3 T, 48, 96): the lower halves at the expert's size, frames stacked on
    channels frame by frame (as the reference's get_sync_loss and the expert's data path stack them)."""
    lower = faces[..., faces.shape[-2] // 2:, :]
    b, c, t, h, w = lower.shape
    x = lower.transpose(1, 2).reshape(b * t, c, h, w)
    if (h, w) != EXPERT_SIZE:
        x = (F.interpolate(x, size=EXPERT_SIZE, mode="area") if h > EXPERT_SIZE[0] else
             F.interpolate(x, size=EXPERT_SIZE, mode="bilinear", align_corners=False))
    return x.reshape(b, t * c, *EXPERT_SIZE)


def _bce(probabilities: torch.Tensor, target: float) -> torch.Tensor:
    """Element-wise BCE in fp32 (autocast refuses binary_cross_entropy)."""
    p = probabilities.float()
    with torch.autocast(p.device.type, enabled=False):
        return F.binary_cross_entropy(p, torch.full_like(p, target), reduction="none")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (N, C, H, W) pictures in [0, 1]: Gaussian window 11, sigma 1.5, over each channel
    (valid positions only), averaged."""
    coords = torch.arange(11, dtype=a.dtype, device=a.device) - 5
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    channels = a.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, 11, 11).contiguous()
    blur = lambda x: F.conv2d(x, kernel, groups=channels)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)


class Wav2LipRecipe:
    export_name = GENERATOR_FILE
    adversary_export_name = DISC_FILE

    def __init__(self, size: int, expert: nn.Module, loss: Wav2LipLoss = Wav2LipLoss(),
                 gan: GanSettings | None = None, val_batches: Callable[[], Iterator[dict]] | None = None):
        self.size, self.loss_weights, self.gan, self.val_batches = size, loss, gan, val_batches
        self.expert = expert.eval().requires_grad_(False)
        self.adversary_settings = gan
        self.sync_on = False
        self.metric_names = ("l1", "sync") + (("gan", "disc_real", "disc_fake") if gan else ())
        self.plot_panels = (
            Panel("loss", (("loss", "train loss"), ("val_loss", "val loss (L1 + s_on x sync)"))),
            Panel("lower-half L1 (validation)", (("val_l1", "generated"), ("val_copy_l1", "copying the reference"))),
            Panel("lower-half PSNR, dB (validation)", (("val_psnr", "generated"),
                                                        ("val_copy_psnr", "copying the reference"))),
            Panel("expert sync loss", (("sync", "train"), ("val_sync", "val, generated"),
                                       ("val_sync_truth", "val, real frames")),
                  (loss.sync_on_below, "switched on below")),
        ) + ((Panel("discriminator", (("gan", "generator's GAN loss"), ("disc_real", "disc, real"),
                                      ("disc_fake", "disc, generated"))),) if gan else ())

    # the sync weight's switch: the recipe's state
    def state_dict(self) -> dict:
        return {"sync_on": self.sync_on}

    def load_state_dict(self, state: dict) -> None:
        self.sync_on = bool(state["sync_on"])

    @property
    def sync_weight_on(self) -> float:
        return self.loss_weights.gan_sync_weight if self.gan else self.loss_weights.sync_weight

    @property
    def sync_weight(self) -> float:
        return self.sync_weight_on if self.sync_on else 0.0

    def build_model(self) -> nn.Module:
        return Wav2Lip(self.size)

    def build_adversary(self) -> nn.Module | None:
        return Wav2LipDiscriminator(self.size) if self.gan else None

    def _inputs(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(audio, generator input, target, reference): the target's lower half zeroed beside the reference."""
        target = _unit(batch["faces"].to(device, non_blocking=True))
        reference = _unit(batch["references"].to(device, non_blocking=True))
        masked = target.clone()
        masked[..., self.size // 2:, :] = 0
        return (batch["mels"].to(device, non_blocking=True), torch.cat([masked, reference], dim=1), target,
                reference)

    def _sync(self, faces: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Per-sample expert loss of 5 faces (B, 3, 5, S, S) against their mel window (B, 1, 80, 16)."""
        if next(self.expert.parameters()).device != faces.device:
            self.expert.to(faces.device)
        vision, audio = self.expert(expert_input(faces), mel)
        losses, _ = bce_on_cosine(vision, audio, torch.ones(len(faces), device=faces.device))
        return losses

    def _generate(self, model: nn.Module, adversary: nn.Module | None, batch: dict, device: torch.device):
        audio, faces, target, _ = self._inputs(batch, device)
        generated = model(audio, faces)
        l1 = (generated.float() - target).abs().flatten(1).mean(1)
        s = self.sync_weight
        g = self.loss_weights.gan_weight if adversary is not None else 0.0
        # the expert's loss is measured all along, and learnt from once switched on
        with (nullcontext() if s > 0 else torch.no_grad()):
            sync = self._sync(generated, batch["mel"].to(device, non_blocking=True))
        total = (1 - s - g) * l1 + s * sync
        sums = {"samples": len(l1), "l1": l1.detach().sum(), "sync": sync.detach().sum()}
        if adversary is not None:
            frames = generated.shape[2]
            # one judgement per frame, time-major (T x B): a sample's is the mean over its frames
            gan = _bce(adversary(generated), 1.0).view(frames, -1).mean(0)
            total = total + g * gan
            sums["gan"] = gan.detach().sum()
        return total.sum(), sums, generated

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        loss, sums, _ = self._generate(model, None, batch, device)
        return loss, sums

    def adversarial_loss(self, model: nn.Module, adversary: nn.Module, batch: dict, device: torch.device):
        return self._generate(model, adversary, batch, device)

    def adversary_loss(self, adversary: nn.Module, batch: dict, outputs: torch.Tensor, device: torch.device):
        target = _unit(batch["faces"].to(device, non_blocking=True))
        n, frames = len(target), target.shape[2]
        # real and generated in one call: DDP allows one forward per backward
        judged = adversary(torch.cat([target, outputs.to(target.dtype)])).view(frames, 2 * n)
        real, fake = _bce(judged[:, :n], 1.0).mean(0), _bce(judged[:, n:], 0.0).mean(0)
        return (real + fake).sum(), {"disc_real": real.detach().sum(), "disc_fake": fake.detach().sum()}

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict:
        if self.val_batches is None:
            return {}
        keys = ("l1", "copy_l1", "psnr", "copy_psnr", "ssim", "copy_ssim", "sync", "sync_truth")
        sums, windows = dict.fromkeys(keys, 0.0), 0
        half = self.size // 2
        for batch in self.val_batches():
            audio, faces, target, reference = self._inputs(batch, device)
            generated = model(audio, faces).float()
            made, truth, copied = (x[..., half:, :] for x in (generated, target, reference))
            n, frames = len(made), made.shape[2]
            per_frame = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (B T, 3, h, w)
            psnr = lambda x: (-10 * torch.log10(  # noqa: E731  (per window, the mean of its frames')
                (per_frame(x) - per_frame(truth)).pow(2).flatten(1).mean(1).clamp_min(1e-10))).view(n, frames).mean(1)
            mel = batch["mel"].to(device)
            values = {"l1": (made - truth).abs().flatten(1).mean(1), "copy_l1": (copied - truth).abs().flatten(1).mean(1),
                      "psnr": psnr(made), "copy_psnr": psnr(copied),
                      "ssim": ssim(per_frame(made), per_frame(truth)).view(n, frames).mean(1),
                      "copy_ssim": ssim(per_frame(copied), per_frame(truth)).view(n, frames).mean(1),
                      "sync": self._sync(generated, mel), "sync_truth": self._sync(target, mel)}
            for key in keys:
                sums[key] += float(values[key].sum())
            windows += n
        if not windows:
            return {}
        numbers = {key: value / windows for key, value in sums.items()}
        numbers["loss"] = numbers["l1"] + self.sync_weight_on * numbers["sync"]
        if not self.sync_on and numbers["sync"] < self.loss_weights.sync_on_below:
            self.sync_on = True
        numbers["sync_weight"] = self.sync_weight
        numbers["windows"] = windows
        return numbers

    def export(self, model: nn.Module, step: int, epoch: int) -> dict:
        return {**official_layout(model, step, epoch), "framing": FRAMING}

    def export_adversary(self, adversary: nn.Module, step: int, epoch: int) -> dict:
        return official_layout(adversary, step, epoch)

    def init_from(self, path: str) -> Callable[[nn.Module], None]:
        """The loop's `init`: start from the weights of a generator file (wav2lip.pth, wav2lip_gan.pth, ours)."""
        def load(model: nn.Module) -> None:
            model.load_state_dict(load_generator(path).state_dict(), strict=True)
        return load


@dataclass(frozen=True)
class Wav2LipJob:
    """Everything a training worker needs (it is sent to every worker as it is)."""
    size: int
    data: "FaceWindowSettings"
    loop: LoopSettings
    loss: Wav2LipLoss
    gan: GanSettings | None        # None: no discriminator
    expert: str                    # the lip-sync expert's file (Wav2Lip's layout)
    train_clips: list              # training.windows.Clip
    val_clips: list
    run_dir: str
    init: str | None = None        # a generator file to start from (--init)
    on_validate: Callable | None = None   # (model, step) -> numbers, on rank 0 after each validation


def train_wav2lip(job: Wav2LipJob, placement: Placement = Placement()) -> dict:
    """One worker's part of training the generator: its share of the stream, the loop, and (rank 0) the
    validation windows. Returns the last metrics."""
    from networks.syncnet.experts import load_expert
    from training.face_windows import FaceStream, FaceValWindows
    from training.windows import stream_batches

    val = FaceValWindows(job.val_clips, job.size, job.data, job.loop.seed) if placement.main and job.val_clips else None
    _, expert = load_expert(job.expert, placement.device, arch="wav2lip")
    recipe = Wav2LipRecipe(job.size, expert, job.loss, job.gan,
                           (lambda: val.batches()) if val is not None and len(val) else None)
    batches, position_of = stream_batches(
        partial(FaceStream, job.train_clips, job.size, job.data, job.loop.micro_batch, job.loop.seed),
        placement.rank, placement.world_size, job.run_dir)
    return fit(recipe, job.loop, Path(job.run_dir), batches, placement, position_of=position_of,
               init=recipe.init_from(job.init) if job.init else None, on_validate=job.on_validate)

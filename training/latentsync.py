"""Training LatentSync's U-Net: the recipe the harness (training/loop.py) runs for stage 1, stage 2 and stage 2
"efficient" (LatentSync's configs/unet/stage1.yaml, stage2.yaml, stage2_efficient.yaml), and what each Ray Train
worker runs.

A step, per sample (training/latent_windows.py gives 16 target frames, 16 reference frames, the expert's mel
window and each frame's Whisper chunk), as LatentSync's scripts/train_unet.py does it:

1. the target frames in [-1, 1], the mouth-masked target (`networks.latentsync.mouth_mask`) and the reference
   frames are encoded by the frozen VAE and sampled from its posterior, x 0.18215; the mask is resized
   (nearest) to the latents' size;
2. noise: with `mixed_noise` (the default, alpha = 1) a shared part, one frame's noise repeated over the 16
   frames with variance alpha^2 / (1 + alpha^2), plus an independent part of variance 1 / (1 + alpha^2)
   (arXiv 2305.10474); without, one frame's noise for all frames;
3. a timestep uniform in 0 .. 999 of the DDPM schedule LatentSync's scheduler config defines (scaled linear,
   0.00085 .. 0.012); the noisy target goes into the U-Net with the mask, the masked and the reference
   latents (13 channels) and the audio; the loss `recon` is the MSE of the predicted noise (epsilon prediction);
4. with `pixel_space` (stages 2 and 2-efficient): the one-step estimate x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
   decoded by the frozen VAE (gradients through it, to the U-Net), and
   - `lpips`: LPIPS-VGG of the decoded and the true lower halves (networks.lpips), weight 0.1;
   - `sync`: the frozen StableSyncNet's BCE of its cosine against "in sync" on the 16 decoded frames (bicubic
     to the expert's resolution when it is another, the lower half) and the mel window, weight 0.05;
   - `trepa`: TREPA, the MSE of VideoMAE-v2 features of the decoded and the true clips (networks.videomae),
     weight 10 (0 in 2-efficient).

Which weights learn: stage 1 builds the U-Net without motion modules and trains all of it; stage 2 adds the
motion modules and trains them and every spatial transformer (names with "motion_modules." or "attentions.");
2-efficient has motion modules in the decoder only and trains them and the audio cross-attention ("attn2.").
Everything else is frozen (requires_grad off: the optimizer never sees it).

Randomness: each sample's noise, timestep and VAE posterior draws come from a generator seeded by (seed, global
micro-batch, the sample's place in it), not from the process's RNG, so a batch is the same however many ranks
share it and wherever a run is resumed.

Validation (rank 0, a fixed set of windows of the val clips, each with its own fixed noise and a timestep spread
over 0 .. 999): the losses above on them, `zero_recon` (the noise MSE of predicting no noise: what an untrained
U-Net, whose last convolution starts at zero, scores), `sync_truth` (the expert on the real frames), and
`loss`, their weighted sum, which ranks the checkpoints (`best.json`).

Imports only torch and diffusers (and the torch-only networks; the U-Net's module, which imports diffusers, when
it is first needed, so that the configs load fast); `train_latentsync`, what a Ray Train worker
runs, brings in the data path (PyAV) when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from networks.latentsync import SCALING_FACTOR, SCHEDULER, mouth_mask
from training.loop import LoopSettings, Placement, fit, precision_of
from training.losses import TrepaLoss, bce_on_cosine
from training.metrics import Panel

if TYPE_CHECKING:
    from networks.latentsync_unet import UNetConfig


@dataclass(frozen=True)
class Stage:
    """What a stage builds and trains."""
    name: str
    motion_modules: bool                     # the U-Net has AnimateDiff's motion modules
    decoder_only: bool                       # ... in the decoder only
    trainable: tuple[str, ...] | None        # weights whose names hold one of these learn (None: all)


STAGES = {
    "1": Stage("1", motion_modules=False, decoder_only=False, trainable=None),
    "2": Stage("2", motion_modules=True, decoder_only=False, trainable=("motion_modules.", "attentions.")),
    "2-efficient": Stage("2-efficient", motion_modules=True, decoder_only=True, trainable=("motion_modules.", "attn2.")),
}


@dataclass(frozen=True)
class LatentSyncLoss:
    """The `loss:` section (its defaults are stage 2's; the stages' own are in curate/training_config.py)."""
    __pydantic_config__ = {"extra": "forbid"}

    recon_weight: float = 1.0          # the noise MSE
    pixel_space: bool = True           # decode the one-step x0 and supervise it in pixels (the three below)
    sync_weight: float = 0.05          # the frozen StableSyncNet's sync loss
    lpips_weight: float = 0.1          # LPIPS-VGG on the lower half
    trepa_weight: float = 10.0         # TREPA (VideoMAE-v2 features)
    mixed_noise: bool = True           # shared + independent noise over the 16 frames (else one frame's for all)
    mixed_noise_alpha: float = 1.0

    def __post_init__(self):
        for name in ("recon_weight", "sync_weight", "lpips_weight", "trepa_weight", "mixed_noise_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, not {getattr(self, name)}")
        if not self.pixel_space and (self.sync_weight or self.lpips_weight or self.trepa_weight):
            raise ValueError("sync_weight, lpips_weight and trepa_weight supervise the decoded frames: they need "
                             "pixel_space: true (or set them to 0)")
        if not (self.recon_weight or self.pixel_space):
            raise ValueError("nothing to learn from: recon_weight is 0 and pixel_space is off")

    @property
    def pixel_terms(self) -> tuple[str, ...]:
        return tuple(name for name in ("sync", "lpips", "trepa") if self.pixel_space and getattr(self, f"{name}_weight"))


def unet_config(model: dict | UNetConfig | None, stage: Stage) -> UNetConfig:
    """The U-Net of `stage`: the `model:` section (stage2.yaml's by default) with the stage's motion modules."""
    from networks.latentsync_unet import UNetConfig

    config = model if isinstance(model, UNetConfig) else UNetConfig.from_config_dict(model or {})
    return config.replace(use_motion_module=stage.motion_modules, motion_module_decoder_only=stage.decoder_only)


def mark_trainable(model: nn.Module, stage: Stage) -> int:
    """Switch requires_grad on for the stage's weights only; returns how many weights (tensors) learn."""
    count = 0
    for name, parameter in model.named_parameters():
        learns = stage.trainable is None or any(part in name for part in stage.trainable)
        parameter.requires_grad_(learns)
        count += learns
    if not count:
        raise ValueError(f"stage {stage.name} trains no weight of this U-Net (none is named {stage.trainable})")
    return count


def starting_weights(path: str | Path, model: nn.Module) -> tuple[dict, list[str], list[str]]:
    """The weights of a U-Net file (latentsync_unet.pt, a stage's checkpoint of ours) for `model`, with the
    motion modules' keys reconciled: those the file has and the stage does not build (stage 1; the encoder's in
    2-efficient) are dropped, those the stage builds and the file lacks (stage 2 from a stage-1 U-Net) keep
    their fresh start (zero output, as the reference's). Anything else that does not match is an error."""
    from networks.latentsync_unet import UNetFileError, read_unet_file

    state = read_unet_file(path)["state_dict"]
    mine = model.state_dict()
    dropped = sorted(key for key in state if key not in mine)
    fresh = sorted(key for key in mine if key not in state)
    other = [key for key in dropped + fresh if ".motion_modules." not in key]
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(mine[key].shape)}" for key in mine
                if key in state and state[key].shape != mine[key].shape]
    if other or reshaped:
        problems = [f"{len(keys)} {what} (first {keys[0]!r})" for keys, what in
                    (([k for k in fresh if k in other], "keys missing"), ([k for k in dropped if k in other],
                                                                          "unexpected keys"),
                     (reshaped, "of another shape")) if keys]
        raise UNetFileError(f"{path} does not fit this U-Net (the config's widths and blocks): {', '.join(problems)}")
    return {key: state[key] for key in mine if key in state}, dropped, fresh


def _unit_clip(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, S, S, 3) uint8 RGB -> (B F, 3, S, S) in [-1, 1]."""
    b, f, h, w, c = frames.shape
    return frames.reshape(b * f, h, w, c).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _seeded(*numbers: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0]))


class LatentSyncRecipe:
    export_name = "latentsync_unet.pt"           # networks.latentsync_unet.UNET_FILE, the official name

    def __init__(self, unet: UNetConfig, stage: Stage, loss: LatentSyncLoss, resolution: int, vae: nn.Module,
                 expert: nn.Module | None = None, expert_resolution: int | None = None, lpips: nn.Module | None = None,
                 trepa=None, val_batches: Callable[[], Iterator[dict]] | None = None, seed: int = 0,
                 frozen_dtype: torch.dtype | None = None):
        self.unet, self.stage, self.weights, self.resolution = unet, stage, loss, resolution
        self.seed, self.val_batches = seed, val_batches
        self.frozen_dtype = frozen_dtype         # the frozen networks' dtype on a GPU (None: float32)
        self.vae = vae.eval().requires_grad_(False)
        self.expert = expert.eval().requires_grad_(False) if expert is not None else None
        self.expert_resolution = expert_resolution or resolution
        self.lpips = lpips.eval().requires_grad_(False) if lpips is not None else None
        self.trepa = trepa
        for name in loss.pixel_terms:
            if {"sync": self.expert, "lpips": self.lpips, "trepa": self.trepa}[name] is None:
                raise ValueError(f"loss.{name}_weight is {getattr(loss, name + '_weight')} but no {name} network "
                                 "was given")
        alphas = torch.tensor(_alphas_cumprod(), dtype=torch.float32)
        self.alphas = alphas
        self.mask = mouth_mask(resolution)
        self.latent_mask = F.interpolate(self.mask[None, None], size=(resolution // 8, resolution // 8))[0, 0]
        self._device = None
        self.metric_names = ("recon",) + loss.pixel_terms
        self.plot_panels = (
            Panel("loss", (("loss", "train loss"), ("val_loss", "val loss"))),
            Panel("noise MSE", (("recon", "train"), ("val_recon", "val"), ("val_zero_recon", "val, predicting 0"))),
        ) + ((Panel("pixel losses", tuple((key, f"train {key}") for key in loss.pixel_terms)
                    + tuple((f"val_{key}", f"val {key}") for key in loss.pixel_terms)
                    + ((("val_sync_truth", "val sync, real frames"),) if "sync" in loss.pixel_terms else ())),)
             if loss.pixel_terms else ())

    # the model -----------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from networks.latentsync_unet import LatentSyncUNet

        model = LatentSyncUNet(self.unet)
        mark_trainable(model, self.stage)
        return model

    def init_from(self, path: str) -> Callable[[nn.Module], None]:
        """The loop's `init`: start from a U-Net file's weights (see `starting_weights`)."""
        def load(model: nn.Module) -> None:
            state, _, _ = starting_weights(path, model)
            model.load_state_dict(state, strict=False)
        return load

    def export(self, model: nn.Module, step: int, epoch: int) -> dict:
        """LatentSync's layout ({"state_dict", "global_step"}, which its from_pretrained reads), with the
        resolution it was trained at (which `curate lipsync` reads)."""
        return {"state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
                "global_step": int(step), "resolution": self.resolution}

    # the loss ------------------------------------------------------------------------------------------------
    def _place(self, device: torch.device) -> None:
        if self._device == device:
            return
        dtype = self.frozen_dtype if device.type == "cuda" and self.frozen_dtype else torch.float32
        for network in (self.vae, self.expert, self.lpips, self.trepa):
            if network is not None:   # (diffusers warns of any dtype given, even float32's)
                network.to(device) if dtype == torch.float32 else network.to(device, dtype)
        self.alphas, self.mask, self.latent_mask = (x.to(device) for x in (self.alphas, self.mask, self.latent_mask))
        self._device = device

    def _encode(self, pictures: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """(B F, 3, S, S) -> (B F, 4, h, w) scaled latents, the posterior sampled with `eps`."""
        parameter = next(self.vae.parameters())
        posterior = self.vae.encode(pictures.to(parameter.dtype)).latent_dist
        return (posterior.mean + posterior.std * eps.to(posterior.mean.dtype)).float() * SCALING_FACTOR

    def _draws(self, batch: dict, shape: tuple[int, ...], validation: bool) -> tuple[torch.Tensor, ...]:
        """Per sample (seeded by its place, see the module's docstring): the noise (4, F, h, w), the timestep,
        and the three VAE posterior draws (F, 4, h, w)."""
        c, f, h, w = shape
        alpha = self.weights.mixed_noise_alpha
        noises, steps, eps = [], [], []
        for i, place in enumerate(batch["sample"].tolist()):
            generator = _seeded(self.seed, 5, place) if validation else _seeded(self.seed, 4, batch["index"], place)
            if self.weights.mixed_noise:
                shared = torch.randn((c, 1, h, w), generator=generator) * (alpha ** 2 / (1 + alpha ** 2)) ** 0.5
                independent = torch.randn((c, f, h, w), generator=generator) * (1 / (1 + alpha ** 2)) ** 0.5
                noises.append(independent + shared)
            else:
                noises.append(torch.randn((c, 1, h, w), generator=generator).expand(c, f, h, w))
            if validation:      # spread over the schedule, the same for a window every time
                steps.append(int((place * 0.6180339887 + 0.5) % 1 * len(self.alphas)))
            else:
                steps.append(int(torch.randint(0, len(self.alphas), (1,), generator=generator)))
            eps.append(torch.randn((3, f, c, h, w), generator=generator))
        return torch.stack(noises), torch.tensor(steps), torch.stack(eps)

    def _losses(self, model: nn.Module, batch: dict, device: torch.device, validation: bool = False) -> dict:
        """Per-sample losses (each (B,)) of a batch, and `total`, their weighted sum."""
        self._place(device)
        faces = batch["faces"].to(device, non_blocking=True)
        b, f, s = faces.shape[0], faces.shape[1], faces.shape[2]
        h = s // 8
        truth = _unit_clip(faces)                                            # (B F, 3, S, S)
        references = _unit_clip(batch["references"].to(device, non_blocking=True))
        noise, steps, eps = self._draws(batch, (4, f, h, h), validation)
        noise, steps, eps = noise.to(device), steps.to(device), eps.to(device)
        to_video = lambda x: x.reshape(b, f, *x.shape[1:]).transpose(1, 2)  # (B F, C, h, w) -> (B, C, F, h, w)
        with torch.no_grad():
            latents = to_video(self._encode(truth, eps[:, 0].flatten(0, 1)))
            masked = to_video(self._encode(truth * self.mask, eps[:, 1].flatten(0, 1)))
            reference = to_video(self._encode(references, eps[:, 2].flatten(0, 1)))
        a = self.alphas[steps].view(b, 1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        mask = self.latent_mask.expand(b, 1, f, h, h)
        predicted = model(torch.cat([noisy, mask, masked, reference], dim=1), steps,
                          batch["audio"].to(device, non_blocking=True))
        out = {"recon": (predicted.float() - noise).pow(2).flatten(1).mean(1)}
        if validation:
            out["zero_recon"] = noise.pow(2).flatten(1).mean(1)
        total = self.weights.recon_weight * out["recon"]
        if self.weights.pixel_terms:
            estimate = (noisy - (1 - a).sqrt() * predicted.float()) / a.sqrt()           # the one-step x0
            vae_dtype = next(self.vae.parameters()).dtype
            decoded = self.vae.decode((estimate.transpose(1, 2).flatten(0, 1) / SCALING_FACTOR).to(vae_dtype)).sample
            decoded = decoded.float()                                                   # (B F, 3, S, S)
            if "lpips" in self.weights.pixel_terms:
                half = s // 2
                dtype = next(self.lpips.parameters()).dtype
                out["lpips"] = self.lpips(decoded[:, :, half:].to(dtype), truth[:, :, half:].to(dtype)).float().view(b, f).mean(1)
            if "sync" in self.weights.pixel_terms:
                mel = batch["mel"].to(device, non_blocking=True)
                out["sync"] = self._sync(decoded, mel, b)
                if validation:
                    out["sync_truth"] = self._sync(truth, mel, b)
            if "trepa" in self.weights.pixel_terms:
                fake = decoded.view(b, f, 3, s, s).transpose(1, 2)
                real = truth.view(b, f, 3, s, s).transpose(1, 2)
                with torch.no_grad():
                    real_features = self.trepa.features(real)
                out["trepa"] = (self.trepa.features(fake) - real_features).pow(2).mean(1)
            for name in self.weights.pixel_terms:
                total = total + getattr(self.weights, f"{name}_weight") * out[name]
        out["total"] = total
        return out

    def _sync(self, frames: torch.Tensor, mel: torch.Tensor, batch: int) -> torch.Tensor:
        """The expert's per-sample loss of (B F, 3, S, S) frames in [-1, 1] against their (B, 1, 80, 52) mel."""
        size = self.expert_resolution
        if frames.shape[-1] != size:
            frames = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)
        lower = frames[:, :, size // 2:]
        stacked = lower.reshape(batch, -1, *lower.shape[2:])            # (B, F 3, S/2, S), frame-major
        dtype = next(self.expert.parameters()).dtype
        vision, audio = self.expert(stacked.to(dtype), mel.to(dtype))
        losses, _ = bce_on_cosine(vision, audio, torch.ones(batch, device=frames.device))
        return losses

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        out = self._losses(model, batch, device)
        sums = {"samples": len(out["total"]), **{name: out[name].detach().sum() for name in self.metric_names}}
        return out["total"].sum(), sums

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict:
        if self.val_batches is None:
            return {}
        sums: dict[str, float] = {}
        windows = 0
        for batch in self.val_batches():
            out = self._losses(model, batch, device, validation=True)
            out["loss"] = out.pop("total")
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.sum())
            windows += len(batch["sample"])
        if not windows:
            return {}
        return {**{key: value / windows for key, value in sums.items()}, "windows": windows}


def _alphas_cumprod() -> np.ndarray:
    """The DDPM schedule of LatentSync's scheduler config: scaled linear betas 0.00085 .. 0.012 over 1000 steps."""
    steps = SCHEDULER["num_train_timesteps"]
    betas = np.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5, steps, dtype=np.float32) ** 2
    return np.cumprod(1.0 - betas, dtype=np.float32)


@dataclass(frozen=True)
class LatentSyncJob:
    """Everything a training worker needs (sent to every worker as it is)."""
    stage: str
    unet: UNetConfig                 # the stage's U-Net
    resolution: int
    data: object                     # training.face_windows.FaceWindowSettings
    loop: LoopSettings
    loss: LatentSyncLoss
    vae: str                         # sd-vae-ft-mse's weights (its config.json beside them)
    train_clips: list                # training.latent_windows.LatentClip
    val_clips: list
    run_dir: str
    expert: str | None = None        # stable_syncnet.pt (with sync_weight)
    lpips: tuple[str, str] | None = None     # (vgg16 features, v0.1 heads) (with lpips_weight)
    trepa: str | None = None         # vit_g_hybrid_pt_1200e_ssv2_ft.pth (with trepa_weight)
    trepa_config: object = None      # networks.videomae.VideoMAEConfig of that file (None: the official)
    init: str | None = None          # a U-Net file to start from (--init)
    on_validate: Callable | None = None


def frozen_networks(job: LatentSyncJob) -> dict:
    """The VAE and the networks the job's losses need, loaded (strictly) on the CPU."""
    from networks.latentsync import load_vae

    networks: dict = {"vae": load_vae(job.vae)}
    terms = job.loss.pixel_terms
    if "sync" in terms:
        from networks.syncnet.experts import load_expert, read_checkpoint

        networks["expert_resolution"] = read_checkpoint(job.expert).resolution
        networks["expert"] = load_expert(job.expert, "cpu", arch="stable")[1]
    if "lpips" in terms:
        from networks.lpips import load_lpips

        networks["lpips"] = load_lpips(*job.lpips)
    if "trepa" in terms:
        from networks.videomae import OFFICIAL, load_videomae

        networks["trepa"] = TrepaLoss(load_videomae(job.trepa, "cpu", job.trepa_config or OFFICIAL),
                                      checkpointing=job.loop.gradient_checkpointing)
    if job.loop.gradient_checkpointing and terms:
        networks["vae"].enable_gradient_checkpointing()
    return networks


def train_latentsync(job: LatentSyncJob, placement: Placement = Placement()) -> dict:
    """One worker's part of training the U-Net: its share of the stream, the loop, and (rank 0) the validation
    windows. Returns the last metrics."""
    from training.latent_windows import LatentStream, LatentValWindows
    from training.windows import stream_batches

    val = (LatentValWindows(job.val_clips, job.resolution, job.data, job.loop.seed)
           if placement.main and job.val_clips else None)
    networks = frozen_networks(job)
    recipe = LatentSyncRecipe(job.unet, STAGES[job.stage], job.loss, job.resolution, networks["vae"],
                              networks.get("expert"), networks.get("expert_resolution"), networks.get("lpips"),
                              networks.get("trepa"), (lambda: val.batches()) if val is not None and len(val) else None,
                              job.loop.seed, precision_of(job.loop.precision, torch.device(placement.device)))
    batches, position_of = stream_batches(
        partial(LatentStream, job.train_clips, job.resolution, job.data, job.loop.micro_batch, job.loop.seed),
        placement.rank, placement.world_size, job.run_dir)
    return fit(recipe, job.loop, Path(job.run_dir), batches, placement, position_of=position_of,
               init=recipe.init_from(job.init) if job.init else None, on_validate=job.on_validate)


"""LatentSync's sampling, ours: the mouth mask, the VAE, the DDIM sampler, and one window of frames through them.

What a window of F aligned faces (F <= 24, 16 by default) and their audio features goes through, as LatentSync's
`LipsyncPipeline` does it (1.5 at 256 px, 1.6 at 512 px):

1. the faces in [-1, 1]; the mask (`mouth_mask`, 1 = keep, 0 = regenerate) multiplied in gives the masked faces;
2. the VAE (sd-vae-ft-mse, diffusers' `AutoencoderKL`) encodes the masked faces and the faces themselves (the
   reference) to latents x 0.18215, sampled from the posterior with the run's generator as the reference does;
   the mask is resized (nearest) to the latent size;
3. 20 DDIM steps (LatentSync's scheduler config) from one Gaussian noise of a single frame, the same for every
   frame of the video (the reference draws it once for the whole video and repeats it over time): the U-Net
   sees 13 channels (noisy latent 4, mask 1, masked latent 4, reference latent 4) and the audio; classifier-free
   guidance 1.5 against zero audio, both halves in one batch;
4. the VAE decodes; pixels the mask keeps are the input's again.

Memory is one window's: nothing here holds more than F frames, so a video of any length streams through.
Imports only torch and diffusers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors

SCALING_FACTOR = 0.18215          # sd-vae-ft-mse's latent scale (LatentSync sets shift_factor to 0)
STEPS = 20
GUIDANCE = 1.5
WINDOW = 16                        # frames a U-Net call sees (LatentSync's num_frames)
VAE_FILE = "diffusion_pytorch_model.safetensors"
VAE_CONFIG_FILE = "config.json"

# configs/scheduler_config.json of LatentSync
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}

# stabilityai/sd-vae-ft-mse's config.json (the SD 1.x VAE): what its weights load into
VAE_CONFIG = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
              "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 256,
              "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}

# The mouth mask, ours: the outline of the region LatentSync regenerates (its latentsync/utils/mask.png, 256 x 256,
# measured once: IoU 0.995 with it), as a polygon in pixel coordinates of a 256 x 256 face. The U shape: from the
# cheeks' height (row 95) down round the chin, with the nose cut out of its top (columns 78-177, rows 95-128).
MASK_OUTLINE_256 = (
    (9, 95), (9, 135), (12, 170), (22, 188), (34, 202), (49, 215), (60, 222), (95, 238), (108, 241), (152, 242),
    (164, 239), (183, 231), (202, 220), (223, 201), (240, 177), (244, 169), (247, 134), (246, 95), (178, 95),
    (177, 128), (78, 128), (77, 95))


class LatentSyncFileError(CheckpointError):
    """A file that is not the VAE (or another LatentSync part) this needs."""


def mouth_mask(size: int) -> torch.Tensor:
    """(size, size) float32, 1 where the face is kept, 0 where LatentSync regenerates it."""
    import numpy as np
    from PIL import Image, ImageDraw

    scale = size / 256
    picture = Image.new("L", (size, size), 255)
    # pixel centres: a 256 point (x, y) covers [x, x + 1) there, [x s, (x + 1) s) at `size`
    ImageDraw.Draw(picture).polygon([((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5) for x, y in MASK_OUTLINE_256],
                                    fill=0, outline=0)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)


def mouth_region(size: int) -> tuple[float, float, float, float]:
    """The box around what the mask regenerates, as fractions of the face: top, bottom, left, right."""
    remade = (mouth_mask(size) < 0.5).nonzero()
    rows, columns = remade[:, 0], remade[:, 1]
    return (int(rows.min()) / size, (int(rows.max()) + 1) / size, int(columns.min()) / size,
            (int(columns.max()) + 1) / size)


def build_vae(config: dict | None = None) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or VAE_CONFIG))


def read_vae_config(config_file: str | Path) -> dict:
    """The AutoencoderKL arguments of a diffusers `config.json` (its "_class_name" and such left out)."""
    import inspect
    import json

    from diffusers import AutoencoderKL

    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, ValueError) as exc:
        raise LatentSyncFileError(f"{config_file}: not a VAE config ({exc})") from None
    if not isinstance(config, dict) or "block_out_channels" not in config:
        raise LatentSyncFileError(f"{config_file}: not an AutoencoderKL config (no block_out_channels)")
    known = inspect.signature(AutoencoderKL.__init__).parameters
    return {key: value for key, value in config.items() if key in known}


def vae_config_beside(path: str | Path) -> dict | None:
    """The `config.json` in the VAE's weights' folder (as the Hugging Face folder has it), or None."""
    config_file = Path(path).parent / VAE_CONFIG_FILE
    return read_vae_config(config_file) if config_file.is_file() else None


def load_vae(path: str | Path, config: dict | None = None) -> nn.Module:
    """sd-vae-ft-mse's `diffusion_pytorch_model.safetensors` (or a torch file of a state_dict of the same keys),
    loaded strictly into the VAE of `config`, else of the `config.json` beside it, else sd-vae-ft-mse's. The
    format is told from the contents, not the name (a download is checked before it takes its name)."""
    path = Path(path)
    config = config or vae_config_beside(path)
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"      # torch.save's zip archive; safetensors starts otherwise
        if zipped:
            state = load_tensors(path, LatentSyncFileError)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
    except LatentSyncFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever stops it reading, it is not the VAE
        raise LatentSyncFileError(f"{path}: cannot read it as the VAE's weights ({type(exc).__name__}: "
                                  f"{str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise LatentSyncFileError(f"{path} holds no state_dict")
    vae = load_strict(build_vae(config), state, f"{path} is not sd-vae-ft-mse's VAE", LatentSyncFileError)
    return vae.eval()


def scheduler(steps: int = STEPS):
    from diffusers import DDIMScheduler

    schedule = DDIMScheduler(**SCHEDULER)
    schedule.set_timesteps(steps)
    return schedule


class LatentSyncSampler:
    """One window of aligned faces and their audio in, the same faces with the mouth remade out.

    `unet(sample (B, 13, F, h, w), timestep, encoder_hidden_states (B F, 50, 384)) -> (B, 4, F, h, w)`;
    `vae` an `AutoencoderKL`. `seed` fixes the initial noise (one frame's, shared by every frame of every window,
    as the reference shares it over the whole video) and the VAE's posterior samples, so that a video's windows
    are consistent and a run is repeatable."""

    def __init__(self, unet: nn.Module, vae: nn.Module, resolution: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, steps: int = STEPS, guidance: float = GUIDANCE, seed: int = 1247):
        if resolution % 8:
            raise ValueError(f"the resolution must be a multiple of 8, not {resolution}")
        self.unet, self.vae = unet.to(device, dtype).eval(), vae.to(device, dtype).eval()
        self.resolution, self.device, self.dtype = resolution, torch.device(device), dtype
        self.steps, self.guidance, self.seed = steps, guidance, seed
        self.mask = mouth_mask(resolution).to(self.device, dtype)
        latent = resolution // 8
        self.latent_mask = nn.functional.interpolate(self.mask[None, None], size=(latent, latent))[0]  # nearest
        noise = torch.randn((1, 4, 1, latent, latent), generator=torch.Generator().manual_seed(seed))
        self.noise = noise.to(self.device, dtype)      # x init_noise_sigma, which is 1 for DDIM

    def _encode(self, pictures: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(F, 3, S, S) in [-1, 1] -> (1, 4, F, S/8, S/8) scaled latents, sampled from the posterior."""
        posterior = self.vae.encode(pictures).latent_dist
        # the sample's noise drawn on the CPU, so that a seed gives the same latents on any device
        eps = torch.randn(posterior.mean.shape, generator=generator).to(self.device, self.dtype)
        latents = (posterior.mean + posterior.std * eps) * SCALING_FACTOR
        return latents.permute(1, 0, 2, 3)[None]

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """faces (F, 3, S, S) in [-1, 1], audio (F, 50, 384) -> (F, 3, S, S) in [-1, 1]."""
        frames = len(faces)
        faces = faces.to(self.device, self.dtype)
        audio = audio.to(self.device, self.dtype)
        generator = torch.Generator().manual_seed(self.seed + 1)
        masked = self._encode(faces * self.mask, generator)
        reference = self._encode(faces, generator)
        mask = self.latent_mask[:, None].expand(1, frames, *self.latent_mask.shape[1:])[None]   # (1, 1, F, h, w)
        guided = self.guidance > 1
        condition = torch.cat([mask, masked, reference], dim=1)
        if guided:   # the unconditional half (zero audio) and the conditional one in one batch
            condition = torch.cat([condition, condition])
            audio = torch.cat([torch.zeros_like(audio), audio])
        schedule = scheduler(self.steps)
        latents = self.noise.expand(-1, -1, frames, -1, -1).clone()
        for t in schedule.timesteps:
            noisy = torch.cat([latents, latents]) if guided else latents
            noisy = schedule.scale_model_input(noisy, t)
            predicted = self.unet(torch.cat([noisy, condition], dim=1), t, audio)
            predicted = getattr(predicted, "sample", predicted)
            if guided:
                unconditional, conditional = predicted.chunk(2)
                predicted = unconditional + self.guidance * (conditional - unconditional)
            latents = schedule.step(predicted, t, latents, eta=0.0).prev_sample
        decoded = self.vae.decode(latents[0].permute(1, 0, 2, 3) / SCALING_FACTOR).sample
        return decoded * (1 - self.mask) + faces * self.mask

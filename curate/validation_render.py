"""The validation renderer, kept apart from the trainer commands: after each validation, sample videos of
the first validation clips made by the model in training (through lipsync.pipeline, as `curate lipsync`
renders), their mouth region's PSNR and SSIM against the clip, and, with syncnet_v2.model in the models
folder, their LSE-D and LSE-C (the sync evaluation of `curate eval-sync`). SSIM is training.wav2lip's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class LatentSyncRenderer:
    """SampleVideos' renderer for a U-Net in training: LatentSync's sampler over it (a copy on a GPU, where the
    sampler runs it in fp16), with the VAE and Whisper loaded from their files."""
    vae: str
    whisper: str
    resolution: int
    steps: int
    guidance: float
    seed: int

    def __call__(self, model, device):
        import copy

        from lipsync.models import LatentSyncModel
        from networks.latentsync import load_vae
        from networks.whisper import load_whisper_encoder

        unet = copy.deepcopy(model) if device.type == "cuda" else model
        return LatentSyncModel(unet, load_vae(self.vae), load_whisper_encoder(self.whisper), self.resolution, device,
                               steps=self.steps, guidance=self.guidance, seed=self.seed)


@dataclasses.dataclass(frozen=True)
class SampleVideos:
    """`curate train wav2lip`'s on_validate (rank 0, after each validation): self-reenactment videos of the
    first validation clips, each clip's face made to say its own first `seconds` by the generator as it is
    (through lipsync.pipeline, as `curate lipsync` renders), in RUN/samples/step-N/; with syncnet_v2.model in
    the models folder, their LSE-D and LSE-C (`curate eval-sync`'s). A sample that fails is a warning: it never
    stops the training."""
    run_dir: str
    clips: tuple[str, ...]
    size: int
    seconds: float
    syncnet: str | None = None       # syncnet_v2.model, verified
    renderer: object = None          # (model, device) -> a lipsync.models renderer (None: Wav2Lip's)
    region: tuple[float, float, float, float] = (0.5, 1.0, 0.0, 1.0)   # what the model remakes: top, bottom,
                                                                     # left, right, as fractions of the clip

    def __call__(self, model, step: int) -> dict:
        import warnings

        from lipsync.framing import TemplateFraming
        from lipsync.models import Wav2LipModel
        from lipsync.pipeline import Options, lipsync

        folder = Path(self.run_dir) / "samples" / f"step-{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        renderer = (self.renderer(model, device) if self.renderer is not None else
                    Wav2LipModel(model, TemplateFraming(self.size), device, batch_size=16))
        written, scores = [], []
        for number, clip in enumerate(self.clips):
            name = f"{number:02d}_{Path(clip).parent.name}_{Path(clip).stem}"
            speech = folder / f"{name}.wav"
            try:
                _write_speech(Path(clip), speech, self.seconds)
                lipsync(Path(clip), speech, folder / f"{name}.mp4", renderer, Options())
                written.append(str(folder / f"{name}.mp4"))
                scores.append(region_scores(folder / f"{name}.mp4", Path(clip), self.region))
            except Exception as exc:  # noqa: BLE001 - a sample is a look at the model, never worth the run
                warnings.warn(f"no sample of {clip} at step {step}: {type(exc).__name__}: {exc}")
            finally:
                speech.unlink(missing_ok=True)
        numbers: dict = {"samples": len(written)}
        if scores:
            numbers["mouth_psnr"] = sum(psnr for psnr, _ in scores) / len(scores)
            numbers["mouth_ssim"] = sum(value for _, value in scores) / len(scores)
        if self.syncnet and written:
            try:
                numbers.update(_lse(written, self.syncnet, device))
            except Exception as exc:  # noqa: BLE001 - as above
                warnings.warn(f"no LSE of the samples at step {step}: {type(exc).__name__}: {exc}")
        return numbers


def region_scores(made: Path, truth: Path, region: tuple[float, float, float, float]) -> tuple[float, float]:
    """PSNR (dB) and SSIM of `region` (fractions of the frame: top, bottom, left, right) of a self-reenactment
    sample against the clip it remade, over the sample's frames (each against the clip's frame of that time)."""
    import torch

    from media.frames import rgb_frames
    from training.wav2lip import ssim

    psnrs, ssims = [], []
    for ours, theirs in zip(rgb_frames(made), rgb_frames(truth)):
        h, w = theirs.shape[:2]
        top, bottom, left, right = int(region[0] * h), int(region[1] * h), int(region[2] * w), int(region[3] * w)
        a, b = (torch.from_numpy(np.ascontiguousarray(x[top:bottom, left:right])).permute(2, 0, 1)[None].float() / 255
                for x in (ours, theirs))
        psnrs.append(float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-10))))
        ssims.append(float(ssim(a, b)[0]))
    if not psnrs:
        raise ValueError(f"{made} has no frames")
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def _write_speech(clip: Path, target: Path, seconds: float) -> None:
    """The first `seconds` of the clip's own audio, as a 16 kHz mono WAV."""
    from lipsync.media import SAMPLE_RATE, read_speech, write_speech

    write_speech(read_speech(clip)[:int(seconds * SAMPLE_RATE)], target)


def _lse(videos: list[str], weights: str, device) -> dict:
    """Mean LSE-D and LSE-C of the videos, as `curate eval-sync` measures them."""
    from faces.settings import FaceParams
    from networks.syncnet.syncnet_v2 import load_syncnet
    from stages.sync_eval import evaluate
    from stages.sync_score import SyncScorer

    scorer = SyncScorer(load_syncnet(weights, str(device)), str(device))
    results = [found.result for found in evaluate(videos, scorer, precropped=False, face=FaceParams())]
    return {"lse_d": sum(r.min_dist for r in results) / len(results),
            "lse_c": sum(r.conf for r in results) / len(results)}


def syncnet_weights() -> str | None:
    """syncnet_v2.model when the models folder has it (verified), else None: the samples go without LSE."""
    from curate.config import load_config
    from curate.models import ModelError, require, state

    settings = load_config(None).models
    if any(status == "missing" for _, _, status in state("syncnet", settings)):
        return None
    try:
        return str(require("syncnet", settings)[0])
    except ModelError:
        return None

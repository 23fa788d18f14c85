"""LatentSync's parts on the CPU, full size: what one window of 16 frames costs, by component.

The networks are the official sizes (the U-Net's 1.27 B parameters, Whisper tiny's encoder, sd-vae-ft-mse) with
the weights they are built with (speed does not depend on the values). One window of `curate lipsync --model
latentsync` is: the Whisper features of its audio (one 30 s encoder window serves 30 s of video), two VAE
encodes of 16 faces (the masked faces and the reference), 20 DDIM steps of the U-Net on 2 x 16 frames (the
unconditional and the audio-conditioned halves in one batch), one VAE decode of 16 faces. The U-Net is timed on
2 x `--frames` frames and scaled to 2 x 16 (its cost is linear in frames but for the motion modules' attention
over time, a small part at 16 frames), and the 20 steps are 20 such calls.

    python bench/bench_latentsync.py [--frames 2] [--threads 2] [--skip-512] [--device cuda]

On a GPU (`--device cuda`) the networks run in fp16, as `curate lipsync` runs them there, and `--frames 16`
times the U-Net on a whole window.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from networks.latentsync import STEPS, WINDOW, build_vae  # noqa: E402
from networks.latentsync_unet import LatentSyncUNet  # noqa: E402
from networks.whisper import WhisperEncoder, feature_chunks, whisper_features  # noqa: E402


DEVICE = torch.device("cpu")


def timed(call, repeat: int = 1) -> float:
    """The fastest of `repeat` runs, seconds (a GPU's queue drained before the clock stops)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2, help="frames per U-Net call measured (scaled to 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-512", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    dtype = torch.float16 if DEVICE.type == "cuda" else torch.float32
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        encoder = WhisperEncoder().eval().to(DEVICE)
        speech = (np.random.default_rng(0).standard_normal(16000 * 10) * 3000).astype(np.int16)
        seconds = timed(lambda: feature_chunks(whisper_features(encoder, speech)), repeat=2)
        rows.append(("Whisper tiny: features and chunks of 10 s of speech (one encoder window)", seconds, seconds / 250))
        vae = build_vae().eval().to(DEVICE, dtype)
        unet = LatentSyncUNet().eval().to(DEVICE, dtype)
        print(f"U-Net: {sum(p.numel() for p in unet.parameters()) / 1e9:.3f} B parameters", file=sys.stderr)
        for size in (256,) if args.skip_512 else (256, 512):
            faces = (torch.rand(WINDOW, 3, size, size) * 2 - 1).to(DEVICE, dtype)
            encode = timed(lambda: vae.encode(faces).latent_dist.mean)
            latents = torch.randn(WINDOW, 4, size // 8, size // 8).to(DEVICE, dtype)
            decode = timed(lambda: vae.decode(latents).sample)
            sample = torch.randn(2, 13, args.frames, size // 8, size // 8).to(DEVICE, dtype)
            audio = torch.randn(2 * args.frames, 50, 384).to(DEVICE, dtype)
            call = timed(lambda: unet(sample, torch.tensor(500), audio))
            step = call * WINDOW / args.frames
            rows += [(f"{size}: VAE encode, 16 faces (done twice a window)", encode, 2 * encode / WINDOW),
                     (f"{size}: VAE decode, 16 faces", decode, decode / WINDOW),
                     (f"{size}: U-Net, one step on 2 x 16 frames (from 2 x {args.frames})", step, STEPS * step / WINDOW),
                     (f"{size}: the window: 2 encodes, {STEPS} steps, 1 decode", 2 * encode + STEPS * step + decode,
                      (2 * encode + STEPS * step + decode) / WINDOW)]
    where = f"{DEVICE.type} ({'fp16' if DEVICE.type == 'cuda' else f'{args.threads} threads'})"
    print(f"\n| LatentSync, full size, {where} | seconds | seconds per output frame |")
    print("|---|---:|---:|")
    for name, seconds, per_frame in rows:
        print(f"| {name} | {seconds:.2f} | {per_frame:.2f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak:.0f} MB")
    if DEVICE.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

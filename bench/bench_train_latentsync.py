"""Training LatentSync's U-Net: samples per second and peak memory of each stage, through the harness
(training/loop.py's `fit`, the metrics' own samples/s, validation left out) on the curated shared clips.

    python bench/bench_train_latentsync.py [--from OUT] [--steps 8]                   # the CPU, the small config
    python bench/bench_train_latentsync.py --device cuda --full [--steps 6]           # a GPU, the full-size networks

- CPU (default): configs/latentsync-small.yaml (64 x 64 faces, a narrow U-Net, small VAE, StableSyncNet and
  TREPA ViT; LPIPS's VGG-16 full-size), stages 1, 2 and 2-efficient; peak memory is the process's maximum RSS.
- `--device cuda --full`: each stage's defaults at 256 (batch 4 for stage 2 and 2-efficient, fp16 autocast,
  gradient checkpointing), the full-size U-Net, sd-vae-ft-mse's VAE, StableSyncNet, LPIPS-VGG and VideoMAE-v2
  ViT-g with stand-in weights (random: they cost what the trained ones do); peak memory is
  torch.cuda.max_memory_allocated (LatentSync says about 20 GB for 2-efficient, 55 GB for stage 2). Stage 1 is
  left out there (its batch of 24 is sized for 80 GB GPUs).

Each measurement runs in its own process, so that one's peak memory is not another's. The Whisper features are
prepared first (a stand-in tiny encoder), as `curate train latentsync --prepare` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "talking-heads"
SMALL_VAE = {"block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4, "layers_per_block": 1}


def curated(out: Path | None, work: Path) -> list[str]:
    if out is None:
        out = work / "out"
        subprocess.run([sys.executable, "-m", "curate.cli", "run", "--input", str(SHARED), "--output", str(out),
                        "--skip", "sync,quality", "--no-progress"], check=True, capture_output=True)
    return sorted(str(p) for p in (out / "clips").glob("*/*.mp4"))


def prepare(paths: list[str], work: Path) -> list:
    """The clips with their mel and (stand-in) Whisper features, as `curate train latentsync --prepare`."""
    from networks.whisper import TINY_DIMS, WhisperEncoder
    from training.latent_windows import AudioFeatureCache, usable_latent
    from training.clips import FeatureCache

    encoder = work / "tiny.pt"
    torch.manual_seed(0)
    torch.save({"dims": {**TINY_DIMS, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6,
                         "n_text_layer": 4},
                "model_state_dict": {f"encoder.{k}": v for k, v in WhisperEncoder().state_dict().items()}}, encoder)
    cache = FeatureCache(work / "features")
    clips, _ = cache.prepare(paths)
    clips, _ = usable_latent(clips, "training")
    clips, _ = AudioFeatureCache(work / "features", encoder, "stand-in").attach(
        clips, {path: entry["sha256"] for path, entry in cache.entries.items()})
    return clips


def networks(full: bool):
    """VAE, StableSyncNet (and its resolution), LPIPS, TREPA: full-size or the small config's, random weights."""
    from curate.training_config import load_training_config
    from networks.latentsync import VAE_CONFIG, build_vae
    from networks.lpips import LPIPS
    from networks.videomae import OFFICIAL, SMALL, VideoMAEv2
    from training.losses import TrepaLoss
    from networks.syncnet.stable import StableSyncNet

    torch.manual_seed(0)
    vae = build_vae(VAE_CONFIG if full else {**VAE_CONFIG, **SMALL_VAE})
    if full:
        expert, resolution = StableSyncNet(), 256
    else:
        config = load_training_config("stable", ROOT / "configs" / "syncnet-stable-small.yaml").model
        expert, resolution = StableSyncNet(config.model_dump(mode="json")), 64
    trepa = TrepaLoss(VideoMAEv2(OFFICIAL if full else SMALL), checkpointing=True)
    return vae, expert, resolution, LPIPS(), trepa


def measure(stage: str, full: bool, device: str, steps: int, clips_file: Path, work: Path) -> dict:
    """One stage's training through the harness: samples/s (the loop's metrics, the first line left out: warming
    up) and peak memory."""
    import pickle

    from curate.training_config import load_latentsync_config
    from training.latentsync import STAGES, LatentSyncRecipe, unet_config
    from training.latent_windows import LatentStream
    from training.loop import Placement, fit, precision_of
    from training.metrics import read_metrics
    from training.windows import loader

    clips = pickle.loads(clips_file.read_bytes())
    config = load_latentsync_config(stage, None if full else ROOT / "configs" / "latentsync-small.yaml")
    data = dataclasses.replace(config.data, num_workers=2 if full else 1)
    loop = dataclasses.replace(config.train, max_steps=steps, validate_every=10 ** 9, checkpoint_every=10 ** 9,
                               log_every=1)
    vae, expert, expert_resolution, lpips, trepa = networks(full)
    terms = config.loss.pixel_terms
    recipe = LatentSyncRecipe(unet_config(config.model.unet, STAGES[stage]), STAGES[stage], config.loss,
                              config.model.resolution, vae, expert if "sync" in terms else None, expert_resolution,
                              lpips if "lpips" in terms else None, trepa if "trepa" in terms else None, None,
                              loop.seed, precision_of(loop.precision, torch.device(device)))
    if full and loop.gradient_checkpointing and terms:
        vae.enable_gradient_checkpointing()
    run = work / f"run-{stage}-{'full' if full else 'small'}"

    def batches(start: int):
        return loader(LatentStream(clips, config.model.resolution, data, loop.micro_batch, loop.seed, start=start))

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fit(recipe, loop, run, batches, Placement(device=device))
    lines = [line for line in read_metrics(run / "metrics.jsonl") if "loss" in line][1:]
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {"stage": stage, "batch": loop.batch_size, "resolution": config.model.resolution,
            "samples_per_s": float(np.mean([l["samples_per_s"] for l in lines])),
            "s_per_step": float(np.mean([loop.batch_size / l["samples_per_s"] for l in lines])),
            "data_wait_share": float(np.mean([l["data_wait_share"] for l in lines])),
            "peak_gib": peak, "trainable_m": start["trainable_parameters"] / 1e6, "precision": start["precision"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="a `curate run` output folder")
    parser.add_argument("--steps", type=int, default=8, help="training steps per stage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="the full-size networks at each stage's defaults")
    parser.add_argument("--stages", default=None, help="comma-separated (default: 1,2,2-efficient on the CPU, "
                                                       "2-efficient,2 with --full)")
    parser.add_argument("--one", nargs=2, metavar=("STAGE", "CLIPS"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        torch.set_num_threads(2)
        stage, clips_file = args.one
        result = measure(stage, args.full, args.device, args.steps, Path(clips_file), Path(clips_file).parent)
        print("RESULT " + json.dumps(result))
        return 0
    import pickle

    stages = (args.stages or ("2-efficient,2" if args.full else "1,2,2-efficient")).split(",")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clips = prepare(curated(args.source, work), work)
        clips_file = work / "clips.pkl"
        clips_file.write_bytes(pickle.dumps(clips))
        where = f"{args.device}, {'full-size networks' if args.full else 'configs/latentsync-small.yaml'}"
        print(f"{len(clips)} clips ({sum(c.frames for c in clips) / 25:.0f} s); {where}\n")
        print("| stage | faces | batch | precision | trainable | samples/s | s/step | waiting for data | peak memory |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for stage in stages:
            command = [sys.executable, __file__, "--one", stage, str(clips_file), "--steps", str(args.steps),
                       "--device", args.device] + (["--full"] if args.full else [])
            done = subprocess.run(command, capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not found:
                print(f"| {stage} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]} |")
                continue
            r = json.loads(found[0][7:])
            memory = "GPU" if args.device.startswith("cuda") else "RSS"
            print(f"| {r['stage']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['trainable_m']:.1f} M | "
                  f"{r['samples_per_s']:.2f} | {r['s_per_step']:.2f} | {r['data_wait_share']:.2f} | "
                  f"{r['peak_gib']:.2f} GiB {memory} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

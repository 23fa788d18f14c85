"""The experts' data path and training, on the CPU.

    python bench/bench_train.py [--from OUT] [--batches 4] [--reference-samples 64] [--steps 30]

1. Data: 16-frame StableSyncNet samples (frames of the lower half at 128 x 256, the mel window, the label) from
   the same aligned clips, two ways, each in one process (so per CPU-second = per core):
   - ours (training.windows.WindowStream, the default settings: each batch of 256 from 32 clips, a decoded clip
     serving 2 batches), mel from the feature cache;
   - LatentSync's loader's access pattern (latentsync/data/syncnet_dataset.py), re-created with PyAV: per
     sample a random clip, a seek and decode to a random 16-frame window and to a second ("wrong") window, both
     converted to RGB and normalised to [-1, 1] as its ImageProcessor does, and the clip's cached mel loaded
     (torch.load) and cut.
   Ours also through a DataLoader of 2 processes (this machine's cores), in wall time.
2. Training samples per second of the small configs (configs/syncnet-*-small.yaml, configs/wav2lip-small.yaml
   without and with --gan; the generator against a stand-in expert of random weights, which costs what a
   trained one does) in this process, from the loop's own metrics (validation left out). `--only generator`
   measures the generator alone.

Clips: the kept clips of a `curate run` output (--from), by default the README's run of the shared videos,
made here first (`curate run --skip sync,quality`).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.results import open_view, write_file_lists  # noqa: E402
from curate.training_config import load_training_config  # noqa: E402
from networks.syncnet.experts import framing_of  # noqa: E402
from media.mel import mel_start  # noqa: E402
from training.expert import ExpertJob, train_expert  # noqa: E402
from networks.syncnet.experts import official_layout  # noqa: E402
from networks.syncnet.wav2lip_expert import Wav2LipExpert  # noqa: E402
from training.wav2lip import Wav2LipJob, train_wav2lip  # noqa: E402
from curate.training_config import load_wav2lip_config  # noqa: E402
from training.metrics import read_metrics  # noqa: E402
from training.windows import WindowSettings, WindowStream, loader  # noqa: E402
from training.clips import FeatureCache

SHARED = ROOT.parent / "shared" / "data" / "talking-heads"


def curated(out: Path | None, work: Path) -> list[str]:
    if out is None:
        out = work / "out"
        subprocess.run([sys.executable, "-m", "curate.cli", "run", "--input", str(SHARED), "--output", str(out),
                        "--skip", "sync,quality", "--no-progress"], check=True, capture_output=True)
    lists = write_file_lists(open_view(out), work / "lists", val_fraction=0)
    return lists.written["train"].read_text().splitlines()


def ours(clips, batches: int, workers: int = 0) -> dict:
    settings = WindowSettings(num_workers=workers)
    stream = WindowStream(clips, framing_of("stable"), settings, micro_batch=256, seed=0)
    cpu, wall = time.process_time(), time.perf_counter()
    samples = 0
    source = loader(stream) if workers else iter(stream)
    for _, batch in zip(range(batches), source):
        samples += len(batch["label"])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"samples": samples, "cpu_s": cpu, "wall_s": wall}


def reference(paths: list[str], mel_files: dict, samples: int) -> dict:
    """LatentSync's SyncNetDataset.__getitem__, its decoding and its mel cache, with PyAV in place of decord."""
    rng = random.Random(0)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(samples):
        path = rng.choice(paths)
        with av.open(path) as container:
            total = container.streams.video[0].frames
        start = rng.randint(0, total - 16)
        wrong = start
        while wrong == start:
            wrong = rng.randint(0, total - 16)
        frames = _window(path, start)
        wrong_frames = _window(path, wrong)
        mel = torch.load(mel_files[path], weights_only=True)
        window = mel[:, mel_start(start):mel_start(start) + 52].unsqueeze(0)
        chosen = frames if rng.random() < 0.5 else wrong_frames
        pixels = (torch.from_numpy(chosen).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        assert window.shape[-1] == 52 and pixels.shape == (16, 3, 256, 256)
    return {"samples": samples, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def _window(path: str, start: int) -> np.ndarray:
    """16 frames from `start`: a seek to the key frame before it and decoding forward, as decord's get_batch."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        container.seek(int(start / 25 / stream.time_base), stream=stream, backward=True)
        out = []
        for frame in container.decode(stream):
            index = round(float(frame.pts * stream.time_base) * 25)
            if index >= start:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == 16:
                    break
    return np.stack(out)


def training(clips, arch: str, steps: int, work: Path) -> dict:
    config = load_training_config(arch, ROOT / "configs" / f"syncnet-{arch}-small.yaml")
    loop = dataclasses.replace(config.train, max_steps=steps, validate_every=10 ** 9, checkpoint_every=10 ** 9,
                               log_every=steps // 3)
    model = config.model.model_dump(mode="json") if config.model is not None else None
    run = work / f"train-{arch}"
    train_expert(ExpertJob(arch, model, config.data, loop, clips, [], str(run)))
    lines = [line for line in read_metrics(run / "metrics.jsonl") if "loss" in line][1:]  # the first: warming up
    return {"samples_per_s": float(np.mean([l["samples_per_s"] for l in lines])),
            "data_wait_share": float(np.mean([l["data_wait_share"] for l in lines])), "batch": loop.batch_size}


def generator_training(clips, steps: int, work: Path, gan: bool) -> dict:
    """configs/wav2lip-small.yaml's samples/s (5-frame windows a second), the expert a stand-in."""
    config = load_wav2lip_config(ROOT / "configs" / "wav2lip-small.yaml")
    loop = dataclasses.replace(config.train, max_steps=steps, validate_every=10 ** 9, checkpoint_every=10 ** 9,
                               log_every=max(steps // 3, 1))
    if gan:
        loop = dataclasses.replace(loop, betas=config.gan.generator_betas)
    expert = work / "stand_in_expert.pth"
    torch.save(official_layout("wav2lip", Wav2LipExpert(), 0, 0), expert)
    run = work / f"train-wav2lip{'-gan' if gan else ''}"
    train_wav2lip(Wav2LipJob(config.model.size, config.data, loop, config.loss, config.gan if gan else None,
                             str(expert), clips, [], str(run)))
    lines = [line for line in read_metrics(run / "metrics.jsonl") if "loss" in line][1:]  # the first: warming up
    return {"samples_per_s": float(np.mean([l["samples_per_s"] for l in lines])),
            "data_wait_share": float(np.mean([l["data_wait_share"] for l in lines])), "batch": loop.batch_size,
            "size": config.model.size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="a `curate run` output folder")
    parser.add_argument("--batches", type=int, default=4, help="batches of 256 for our data path")
    parser.add_argument("--reference-samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="training steps per small config")
    parser.add_argument("--generator-steps", type=int, default=12, help="training steps of the generator's config")
    parser.add_argument("--only", choices=["generator"], help="measure only this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        paths = curated(args.source, work)
        cache = FeatureCache(work / "features")
        cpu = time.process_time()
        clips, skipped = cache.prepare(paths)
        prepare_cpu = (time.process_time() - cpu) / len(paths)
        if args.only == "generator":
            torch.set_num_threads(2)
            _generator_rows(clips, args.generator_steps, work, header=True)
            return 0
        mel_files = {}
        for clip in clips:  # LatentSync caches each clip's mel as a .pt
            mel_files[clip.path] = work / f"{Path(clip.mel).stem}_mel.pt"
            torch.save(torch.from_numpy(np.load(clip.mel)), mel_files[clip.path])
        print(f"{len(clips)} clips ({sum(c.frames for c in clips) / 25:.0f} s), features prepared in "
              f"{prepare_cpu:.3f} CPU-s a clip")
        mine, theirs = ours(clips, args.batches), reference([c.path for c in clips], mel_files, args.reference_samples)
        parallel = ours(clips, args.batches, workers=2)
        rate = lambda r: r["samples"] / r["cpu_s"]
        print("\n| data path (16-frame samples) | samples per CPU-second | CPU-ms per sample |")
        print("|---|---:|---:|")
        print(f"| LatentSync's loader (a seek and two windows a sample) | {rate(theirs):.1f} | {1000 / rate(theirs):.1f} |")
        print(f"| ours (a clip decoded once for 16 windows) | {rate(mine):.1f} | {1000 / rate(mine):.1f} |")
        print(f"| ours / LatentSync's | {rate(mine) / rate(theirs):.1f}x | |")
        print(f"\nours through a DataLoader of 2 processes: {parallel['samples'] / parallel['wall_s']:.1f} samples/s "
              f"(wall, {args.batches} batches of 256)")
        torch.set_num_threads(2)
        print("\n| training on the CPU (2 threads) | batch | samples/s | share of time waiting for data |")
        print("|---|---:|---:|---:|")
        for arch in ("stable", "wav2lip"):
            result = training(clips, arch, args.steps, work)
            print(f"| {arch}, configs/syncnet-{arch}-small.yaml | {result['batch']} | {result['samples_per_s']:.1f} | "
                  f"{result['data_wait_share']:.2f} |")
        _generator_rows(clips, args.generator_steps, work, header=False)
    return 0


def _generator_rows(clips, steps: int, work: Path, header: bool) -> None:
    if header:
        print("\n| training on the CPU (2 threads) | batch | samples/s | share of time waiting for data |")
        print("|---|---:|---:|---:|")
    for gan in (False, True):
        result = generator_training(clips, steps, work, gan)
        print(f"| Wav2Lip generator at {result['size']}{' with --gan' if gan else ''}, configs/wav2lip-small.yaml "
              f"| {result['batch']} | {result['samples_per_s']:.2f} | {result['data_wait_share']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())

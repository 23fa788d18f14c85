"""HyperIQA scoring throughput on the CPU: clips per second, one clip at a time (LatentSync's filter: the three
key frames of one clip per forward pass) against the key frames of several clips in one batch (the quality
stage's way, `resources.quality.batch_frames`).

    python bench/bench_quality.py [--clips 8] [--threads 1] [--device cuda] [--batches 6 24]

Input: a 10 s 256 x 256 H.264 clip cut from a shared talking-head video (an aligned clip's size and length),
used as `--clips` clips. The network has its default initial weights: the speed does not depend on their
values. Reports clips per second and CPU seconds per clip, split into decoding the key frames and the network.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "talking-heads" / "man_kitchen_1080x1920_25fps.mp4"
sys.path.insert(0, str(ROOT))

from networks.hyperiqa import HyperIQA  # noqa: E402
from media.frames import key_frames  # noqa: E402
from stages.quality_score import QualityScorer  # noqa: E402


def make_clip(source: Path, target: Path) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-t", "10",
                    "-vf", "crop=1080:1080:0:300,scale=256:256", "-r", "25", "-an", "-c:v", "libx264",
                    "-crf", "18", "-pix_fmt", "yuv420p", str(target)], check=True)


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[6, 24],
                        help="network batch sizes (frames) to compare with one clip at a time (3)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HyperIQA().eval()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    n = args.clips
    with tempfile.TemporaryDirectory() as work:
        clip = str(Path(work) / "clip.mp4")
        make_clip(args.source, Path(clip))
        frames, decode_cpu, decode_wall = timed(lambda: [key_frames(clip) for _ in range(n)])
    rows = []
    for batch in [3, *args.batches]:
        scorer = QualityScorer(model, args.device, batch_size=batch)
        scorer.score_many(frames[:2])  # warm up
        if batch == 3:  # LatentSync's filter: one forward pass per clip
            _, cpu, wall = timed(lambda: ([scorer.score_many([f]) for f in frames], sync()))
            label = "network, one clip at a time, batch 3 (LatentSync's filter)"
        else:
            _, cpu, wall = timed(lambda: (scorer.score_many(frames), sync()))
            label = f"network, {n} clips in batches of {batch} frames"
        rows.append((label, wall, cpu))

    where = f"{args.threads} CPU thread(s)" if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(f"{n} clips of 10 s at 256x256, 3 key frames each, {where}\n")
    print("| | clips per second | CPU-s per clip |")
    print("|---|---:|---:|")
    print(f"| decoding the key frames | {n / decode_wall:.1f} | {decode_cpu / n:.3f} |")
    for label, wall, cpu in rows:
        print(f"| {label} | {n / wall:.2f} | {cpu / n:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

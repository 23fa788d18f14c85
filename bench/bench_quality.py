"""HyperIQA scoring throughput on the CPU: clips per second, one clip at a time (LatentSync's filter: the three
key frames of one clip per forward pass) against the key frames of several clips in one batch (the quality
stage's way).

    python bench/bench_quality.py [--clips 8] [--threads 1] [--device cuda]

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

from hyperiqa.model import HyperIQA  # noqa: E402
from hyperiqa.score import QualityScorer, key_frames  # noqa: E402


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
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HyperIQA().eval()
    single = QualityScorer(model, args.device, batch_size=3)
    batched = QualityScorer(model, args.device, batch_size=3 * args.clips)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as work:
        clip = str(Path(work) / "clip.mp4")
        make_clip(args.source, Path(clip))
        paths = [clip] * args.clips
        single.score_many([key_frames(clip)])   # warm up
        batched.score_many([key_frames(clip)] * 2)
        frames, decode_cpu, decode_wall = timed(lambda: [key_frames(p) for p in paths])
        _, one_cpu, one_wall = timed(lambda: ([single.score_many([f]) for f in frames], sync()))
        _, many_cpu, many_wall = timed(lambda: (batched.score_many(frames), sync()))

    n = args.clips
    where = f"{args.threads} CPU thread(s)" if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(f"{n} clips of 10 s at 256x256, 3 key frames each, {where}\n")
    print("| | clips per second | CPU-s per clip |")
    print("|---|---:|---:|")
    print(f"| decoding the key frames | {n / decode_wall:.1f} | {decode_cpu / n:.3f} |")
    print(f"| network, one clip at a time (LatentSync's filter) | {n / one_wall:.2f} | {one_cpu / n:.3f} |")
    print(f"| network, {n} clips batched (the quality stage) | {n / many_wall:.2f} | {many_cpu / n:.3f} |")
    total = decode_wall + many_wall
    print(f"| the quality stage, decoding included | {n / total:.2f} | {(decode_cpu + many_cpu) / n:.3f} |")
    print(f"| batched / one at a time (network) | {one_wall / many_wall:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

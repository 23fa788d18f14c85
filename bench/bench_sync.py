"""SyncNet scoring throughput on the CPU: one clip at a time (the reference evaluator's way, batch 20) against
windows of several clips batched together (the sync stage's way).

    python bench/bench_sync.py [--clips 8] [--threads 1] [--device cuda] [--batch 64]

Inputs: the golden 224 x 224 face crops and their audio (75 frames), repeated as `--clips` clips, scored with
stand-in weights of the official shapes (the speed does not depend on the weights' values). Reports windows
per second and CPU seconds per window, from the process's own CPU time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "syncnet"
sys.path.insert(0, str(ROOT))

from networks.syncnet.syncnet_v2 import SyncNet  # noqa: E402
from stages.sync_score import SyncScorer  # noqa: E402


def stand_in(model: torch.nn.Module) -> None:
    """Weights by the golden fill rule (any values would do for timing)."""
    state = {}
    for name, value in model.state_dict().items():
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(value)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.dim() >= 2:
            state[name] = torch.randn(value.shape, generator=generator) / math.sqrt(math.prod(value.shape[1:]))
        else:
            state[name] = 0.1 * torch.randn(value.shape, generator=generator)
    model.load_state_dict(state)


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the batched run")
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = np.load(args.golden / "syncnet_input.npz")["frames_bgr"]  # the same frames as crops_ffv1.mkv
    _, audio = wavfile.read(args.golden / "syncnet_audio.wav")
    model = SyncNet()
    stand_in(model)
    clips = [(frames, audio)] * args.clips
    windows = sum(len(f) - 5 for f, _ in clips)

    single = SyncScorer(model, args.device, batch_size=20)
    batched = SyncScorer(model, args.device, batch_size=args.batch)
    for scorer in (single, batched):  # warm up
        scorer.score_many(clips[:2])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    one_cpu, one_wall = timed(lambda: ([single.score(f, a) for f, a in clips], sync()))
    many_cpu, many_wall = timed(lambda: (batched.score_many(clips), sync()))

    where = f"{args.threads} CPU thread(s)" if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(f"{args.clips} clips of {len(frames)} frames, {windows} windows, {where}\n")
    print("| | windows per second | CPU-s per window |")
    print("|---|---:|---:|")
    print(f"| one clip at a time, batch 20 (the reference evaluator) | {windows / one_wall:.1f} | {one_cpu / windows:.3f} |")
    print(f"| {args.clips} clips batched, batch {args.batch} (the sync stage) | {windows / many_wall:.1f} | {many_cpu / windows:.3f} |")
    print(f"| batched / one at a time | {one_wall / many_wall:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

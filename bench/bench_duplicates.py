"""Benchmark: the duplicates stage's index at 10^6 clips (stages.duplicates.DuplicateIndex), synthetic.

    python bench/bench_duplicates.py [--clips 1000000] [--copies 0.01] [--loaded 0.5]

A share `--loaded` of the clips is loaded at once (an earlier run's kept clips, as curate.duplicates reads them
from the manifests); the rest are judged one by one as the driver judges a run's clips (find, then add when
none matches), a share `--copies` of them a copy of an earlier clip with 6 picture bits and 6 audio bits
flipped at random. The hashes are uniformly random, which is the best case for the keys' buckets: real picture
hashes of aligned faces share more bits, so their buckets are larger (capped at BUCKET_CAP). Prints the
seconds, the clips judged per second, the copies found and the false matches, and the process's peak resident
memory beside that of the hashes alone.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.duplicates import FRAMES, DuplicateIndex  # noqa: E402
from stages.settings import DuplicateParams  # noqa: E402


def flip(value: np.ndarray, bits: np.ndarray) -> np.ndarray:
    value = value.copy().reshape(-1)
    for bit in bits:
        value[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--copies", type=float, default=0.01)
    parser.add_argument("--loaded", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    video = rng.integers(0, 2 ** 64, (args.clips, FRAMES), dtype=np.uint64, endpoint=False)
    audio = rng.integers(0, 2 ** 64, args.clips, dtype=np.uint64, endpoint=False)
    loaded = int(args.clips * args.loaded)
    is_copy = rng.random(args.clips) < args.copies
    is_copy[:loaded] = False
    original = np.full(args.clips, -1)
    for i in np.flatnonzero(is_copy):
        original[i] = rng.integers(0, i)
        while original[original[i]] >= 0:       # a copy of a copy is a copy of its original
            original[i] = original[original[i]]
        video[i] = flip(video[original[i]], rng.choice(256, 6, replace=False)).reshape(FRAMES)
        audio[i] = flip(audio[original[i]:original[i] + 1], rng.choice(64, 6, replace=False))[0]
    index = DuplicateIndex(DuplicateParams())
    started = time.perf_counter()
    index.add(video[:loaded], audio[:loaded])
    load_s = time.perf_counter() - started
    positions = np.arange(args.clips)      # clip i's position in the index (a copy is not added)
    next_position = loaded
    found = missed = false = 0
    started = time.perf_counter()
    for i in range(loaded, args.clips):
        match = index.find(video[i], int(audio[i]))
        if match is None:
            index.add(video[i][None, :], audio[i:i + 1])
            positions[i] = next_position
            next_position += 1
            missed += int(is_copy[i])
        elif is_copy[i] and match.position == positions[original[i]]:
            found += 1
        else:
            false += 1
    judge_s = time.perf_counter() - started
    judged = args.clips - loaded
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"clips {args.clips:,}: {loaded:,} loaded in {load_s:.2f} s, {judged:,} judged one by one in {judge_s:.1f} s "
          f"({judged / judge_s:,.0f} clips/s, {1e6 * judge_s / judged:.0f} us a clip)")
    print(f"copies {int(is_copy.sum()):,}: found {found:,}, missed {missed:,}; false matches {false:,}")
    print(f"peak RSS {peak:.0f} MB (before the hashes {baseline:.0f} MB; the hashes themselves "
          f"{(video.nbytes + audio.nbytes) / 2 ** 20:.0f} MB, held twice here: the benchmark's and the index's)")


if __name__ == "__main__":
    main()

"""The experts' data path from shards against from files, on local disk and through a slow filesystem.

    python bench/bench_shards.py [--from OUT] [--voxceleb DIR] [--batches 4] [--latency-ms 20] [--mb-per-s 100]

Two sets of clips:
- the curated shared videos: the kept clips of a `curate run` output (--from; by default the README's run,
  made here first), 256 x 256, 5 to 10 s;
- a VoxCeleb2-shaped set (--voxceleb, made by bench/make_voxceleb_set.py; made here with 120 utterances when
  absent): 224 x 224 face tracks of 5.5 to 9.5 s, many small files, used as they are (square, 25 fps, with
  audio: what the trainers read).

Each set is read two ways by the same stream (training.windows.WindowStream, StableSyncNet's 16-frame windows,
the default data settings: batches of 256 from 32 clips, a decoded clip serving 2 batches, the same seed):
- files: the clips' mp4 files, their mel from the feature cache (training.clips.FeatureCache, prepared first);
- shards: `curate shards`' tars (about 1 GB each, the default; the sets are smaller, so one shard), each clip's
  sample read with one ranged read, its mel in the sample.

And each way twice: on local disk, and through "throttled://", a local fsspec filesystem that makes every
opened file cost --latency-ms before its first byte and every byte 1 / --mb-per-s (a model of an object store
or a network file system: the figures are this model's, not a measured network's). For files the mp4 goes
through it (the mel cache stays local, as it would on a training node); for shards the sample does.

Measured in this process, one loader process (num_workers 0), the ways in turn for --rounds rounds after a
warm-up read, the median of each: samples per wall second, CPU-ms per sample (only the batches' making is
timed), and
what starting costs (files: preparing the features the first time, then checking the cache on every later
start; shards: reading the index). The batches are checked equal (by digest) all four ways.

At a million clips (`--scale`, default 10^6): an index.parquet of that many VoxCeleb2-named samples in 1,000
shards (the offsets and sizes made up, the columns as `curate shards` writes them), read into the trainers'
clip list: its size on disk, seconds, and the memory the list holds (tracemalloc), against the list of the
same clips as files (training.clips.Clip with a path and a cached mel's path).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.results import open_view, write_file_lists  # noqa: E402
from curate.shards import write_shards  # noqa: E402
from networks.syncnet.experts import framing_of  # noqa: E402
from training.clips import Clip, FeatureCache, read_clip, read_lists  # noqa: E402
from training.windows import WindowSettings, WindowStream, decode_lower_halves  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "talking-heads"


class _SlowFile:
    """A file whose first read after opening waits `latency` s, and every read len / bandwidth s."""

    def __init__(self, handle, latency: float, bandwidth: float):
        self.handle, self.latency, self.bandwidth = handle, latency, bandwidth

    def read(self, size: int = -1) -> bytes:
        if self.latency:
            time.sleep(self.latency)
            self.latency = 0.0
        data = self.handle.read(size)
        time.sleep(len(data) / self.bandwidth)
        return data

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


class ThrottledFileSystem(LocalFileSystem):
    protocol = "throttled"
    latency, bandwidth = 0.02, 100e6

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        return _SlowFile(handle, self.latency, self.bandwidth) if "r" in mode else handle

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("throttled://"))


def curated(out: Path | None, work: Path) -> pa.Table:
    """The kept clips of a run as split.parquet's table (all in train)."""
    if out is None:
        out = work / "out"
        subprocess.run([sys.executable, "-m", "curate.cli", "run", "--input", str(SHARED), "--output", str(out),
                        "--skip", "sync,quality", "--no-progress"], check=True, capture_output=True)
    lists = write_file_lists(open_view(out), work / "lists", val_fraction=0)
    import pyarrow.parquet as pq

    return pq.read_table(lists.written["split"])


def voxceleb_rows(folder: Path, work: Path) -> pa.Table:
    """The short face tracks of a make_voxceleb_set folder as split rows (speaker idNNNNN, all in train)."""
    if not (folder / "short").is_dir():
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_voxceleb_set.py"), str(folder), "--utterances",
                        "120", "--long", "1"], check=True)
    rows = []
    for path in sorted((folder / "short").glob("*/*/*.mp4")):
        clip_id = str(path.relative_to(folder / "short").with_suffix(""))
        rows.append({"clip_id": clip_id, "speaker": clip_id.split("/")[0], "split": "train", "abs_path": str(path),
                     "duration_s": None})
    return pa.Table.from_pylist(rows)


def read(clips: list[Clip], batches: int) -> tuple[dict, list[str]]:
    """Samples, CPU and wall seconds of making `batches` batches (only that is timed), and a digest of each
    batch's frames and mel (each batch is dropped once hashed: kept, they would be gigabytes)."""
    stream = iter(WindowStream(clips, framing_of("stable"), WindowSettings(num_workers=0), micro_batch=256, seed=0))
    cpu = wall = 0.0
    samples, digests = 0, []
    for _ in range(batches):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        batch = next(stream)
        cpu, wall = cpu + time.process_time() - cpu_start, wall + time.perf_counter() - wall_start
        samples += len(batch["label"])
        digests.append(hashlib.sha1(batch["frames"].numpy().tobytes() + batch["mel"].numpy().tobytes()).hexdigest())
        del batch
    return {"samples": samples, "cpu_s": cpu, "wall_s": wall}, digests


def per_clip(clips: list[Clip], rounds: int) -> tuple[float, float]:
    """Median CPU-ms of reading a clip (`read_clip`: the file and cached mel, or the ranged read of its sample)
    and of decoding its lower halves, over the first 40 clips, `rounds` times."""
    framing = framing_of("stable")
    reads, decodes = [], []
    for _ in range(rounds):
        for clip in clips[:40]:
            start = time.process_time()
            data = read_clip(clip)
            middle = time.process_time()
            decode_lower_halves(data.video, framing, clip.last_start(16) + 16)
            reads.append(middle - start)
            decodes.append(time.process_time() - middle)
    return 1000 * float(np.median(reads)), 1000 * float(np.median(decodes))


def measure(name: str, split: pa.Table, work: Path, batches: int, rounds: int) -> list[str]:
    rows = split.select(["clip_id", "abs_path"]).to_pylist()
    cache = FeatureCache(work / f"features-{name}")
    cpu = time.process_time()
    files, skipped = cache.prepare([r["abs_path"] for r in rows])
    prepare_cpu = time.process_time() - cpu
    cpu = time.process_time()
    FeatureCache(cache.folder).prepare([r["abs_path"] for r in rows])          # a later start: cache lookups
    lookup_cpu = time.process_time() - cpu
    shards = work / f"shards-{name}"
    wall = time.perf_counter()
    write_shards(split, str(shards))
    write_s = time.perf_counter() - wall
    cpu = time.process_time()
    from_shards = read_lists(shards).shards[0]
    index_cpu = time.process_time() - cpu
    by_path = {c.path: c for c in files}
    files = [by_path[r["abs_path"]] for r in sorted(rows, key=lambda r: r["clip_id"]) if r["abs_path"] in by_path]
    assert [c.frames for c in files] == [c.frames for c in from_shards], "the two ways hold other clips"
    slow_files = [Clip(f"throttled://{c.path}", c.frames, c.mel) for c in files]
    slow_shards = [Clip(c.path, c.frames, "", dataclasses.replace(c.sample, shard=f"throttled://{c.sample.shard}"))
                   for c in from_shards]
    ways = {"files": files, "shards": from_shards, "files, throttled": slow_files,
            "shards, throttled": slow_shards}
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    reference = None
    read(files, 1)                       # warm up: the codec, the allocator
    names = list(ways)
    for number in range(rounds):         # the ways in turn, each round starting one further: the median of each
        for way in names[number % 4:] + names[:number % 4]:
            clips = ways[way]
            result, got = read(clips, batches)
            runs[way].append(result)
            reference = reference or got
            assert got == reference, f"{way} gave other batches"
    median = lambda values: float(np.median(values))  # noqa: E731
    results = {way: {"rate": median([r["samples"] / r["wall_s"] for r in rs]),
                     "low": min(r["samples"] / r["wall_s"] for r in rs), "high": max(r["samples"] / r["wall_s"] for r in rs),
                     "cpu_ms": median([1000 * r["cpu_s"] / r["samples"] for r in rs])} for way, rs in runs.items()}
    split_costs = {way: per_clip(ways[way], rounds) for way in ("files", "shards")}
    mb = sum(p.stat().st_size for p in shards.glob("*.tar")) / 1e6
    seconds = sum(c.frames for c in files) / 25
    lines = [f"\n{name}: {len(files)} clips ({seconds / 60:.1f} min; {len(skipped)} skipped), shards {mb:.0f} MB "
             f"written in {write_s:.1f} s; start: files {1000 * prepare_cpu / len(files):.1f} CPU-ms a clip to "
             f"prepare, then {1000 * lookup_cpu / len(files):.2f} a clip to check the cache at each start; shards "
             f"{1000 * index_cpu / len(files):.2f} CPU-ms a clip to read the index",
             "", f"| read (median of {rounds}) | samples/s, wall (lowest-highest) | CPU-ms per sample | shards / files (samples/s) |",
             "|---|---:|---:|---:|"]
    lines[0] += ("; a clip's read against its decode, CPU-ms (median): " + ", ".join(
        f"{way} {read_ms:.2f} against {decode_ms:.1f}" for way, (read_ms, decode_ms) in split_costs.items()))
    for way, r in results.items():
        base = results["files, throttled" if "throttled" in way else "files"]
        ratio = f"{r['rate'] / base['rate']:.2f}x" if way.startswith("shards") else ""
        lines.append(f"| {way} | {r['rate']:.1f} ({r['low']:.0f}-{r['high']:.0f}) | {r['cpu_ms']:.2f} | {ratio} |")
    return lines


def _held(clips: list) -> int:
    """Bytes of the Python objects a clip list holds (each object once: shared strings count once)."""
    seen: set[int] = set()
    total = sys.getsizeof(clips)
    stack = list(clips)
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif hasattr(item, "__slots__"):
            stack.extend(getattr(item, name) for cls in type(item).__mro__ for name in getattr(cls, "__slots__", ()))
    return total


def _rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def at_scale(count: int, work: Path) -> list[str]:
    import gc

    import pyarrow.parquet as pq

    from curate.shards import INDEX_SCHEMA

    rng = np.random.default_rng(0)
    sizes = rng.integers(100_000, 900_000, count)
    per_shard = count // 1000 or 1
    rows, offset = [], 0
    for i in range(count):
        if i % per_shard == 0:
            offset = 0
        clip_id = f"id{i // 150:05d}/{i // 8:011d}/{i % 8:05d}"
        video = int(sizes[i])
        members = [{"suffix": "mp4", "start": 512, "size": video},
                   {"suffix": "npz", "start": 1536 + video, "size": 30_000},
                   {"suffix": "mel.npy", "start": 33_000 + video, "size": 80 * 501 * 4 + 128},
                   {"suffix": "json", "start": 194_000 + video, "size": 900}]
        length = 196_000 + video
        rows.append({"shard": f"train-{i // per_shard:06d}.tar", "split": "train", "key": clip_id,
                     "clip_id": clip_id, "speaker": clip_id[:7], "bytes": length, "duration_s": 8.0,
                     "frames": 200, "offset": offset, "length": length, "members": members, "whisper_sha256": None})
        offset += length
    folder = work / "scale"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, INDEX_SCHEMA), folder / "index.parquet")
    del rows
    disk = (folder / "index.parquet").stat().st_size
    gc.collect()
    before = _rss()
    wall = time.perf_counter()
    lists = read_lists(folder)
    seconds = time.perf_counter() - wall
    gc.collect()
    shard_bytes = _rss() - before
    shard_objects = _held(lists.shards[0])
    del lists
    gc.collect()
    before = _rss()
    files = [Clip(f"/data/vox2/clips/id{i // 150:05d}/{i // 8:011d}/{i % 8:05d}.mp4", 200,
                  f"/home/user/.cache/lipsync-curate/features/{i % 256:02x}/{i:032x}.npy") for i in range(count)]
    gc.collect()
    file_bytes = _rss() - before
    file_objects = _held(files)
    del files
    return [f"\nat {count:,} clips: index.parquet {disk / 1e6:.0f} MB, read into the clip list in {seconds:.1f} s",
            "", "| the trainers' clip list | objects it holds, bytes a clip | resident memory it adds, bytes a clip | at 10^6 (objects) |",
            "|---|---:|---:|---:|",
            f"| from shards | {shard_objects / count:.0f} | {shard_bytes / count:.0f} | {shard_objects / count * 1e6 / 1e9:.2f} GB |",
            f"| from files | {file_objects / count:.0f} | {file_bytes / count:.0f} | {file_objects / count * 1e6 / 1e9:.2f} GB |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="a `curate run` output folder")
    parser.add_argument("--voxceleb", type=Path, help="a bench/make_voxceleb_set.py folder (made when absent)")
    parser.add_argument("--batches", type=int, default=8, help="batches of 256 read each way")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="throttled://: wait before a file's first byte")
    parser.add_argument("--mb-per-s", type=float, default=100.0, help="throttled://: bandwidth")
    parser.add_argument("--rounds", type=int, default=4, help="reads of each way, in turn (the median is shown)")
    parser.add_argument("--scale", type=int, default=10 ** 6, help="clips in the index read at scale (0: skip)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    ThrottledFileSystem.latency, ThrottledFileSystem.bandwidth = args.latency_ms / 1000, args.mb_per_s * 1e6
    fsspec.register_implementation("throttled", ThrottledFileSystem, clobber=True)
    print(f"throttled://: {args.latency_ms:g} ms before a file's first byte, {args.mb_per_s:g} MB/s")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        lines = measure("curated shared videos", curated(args.source, work), work, args.batches, args.rounds)
        lines += measure("VoxCeleb2-shaped", voxceleb_rows(args.voxceleb or work / "voxceleb", work), work,
                         args.batches, args.rounds)
        if args.scale:
            lines += at_scale(args.scale, work)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

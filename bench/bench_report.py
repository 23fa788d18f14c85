"""How long `curate report` takes, and how big the page is, on a large manifest.

    python bench/bench_report.py --from out [--clips 100000]

Takes a real output folder (e.g. the README job's `out`) and writes a copy of its manifests with `--clips`
clip rows (and one source per ten clips): the real rows repeated under new ids, pointing at the same clip
files, with scores drawn at random and a tenth of them rejected by each of several reasons. Then times the
report on the real folder and on the large one, in this process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifests.dataset import current_table  # noqa: E402

from curate.report import build_report  # noqa: E402
from manifests import schema  # noqa: E402

REASONS = [("face", "no_face"), ("face", "face_too_small"), ("sync", "low_sync_confidence"),
           ("sync", "large_av_offset"), ("quality", "low_visual_quality")]


def enlarge(real: Path, big: Path, n_clips: int) -> None:
    sources = current_table(real, "sources").to_pandas()
    clips = current_table(real, "clips").to_pandas()
    clips = clips[clips.status == "kept"]
    rng = np.random.default_rng(0)
    n_sources = max(1, n_clips // 10)
    new_sources = sources[sources.status == "ok"].sample(n=n_sources, replace=True, random_state=0).reset_index(drop=True)
    new_sources["source_id"] = [f"id{i // 20:05d}/v{i:06d}/00001.mp4" for i in range(n_sources)]
    new_clips = clips.sample(n=n_clips, replace=True, random_state=0).reset_index(drop=True)
    new_clips["source_id"] = new_sources.source_id.to_numpy()[np.arange(n_clips) % n_sources]
    new_clips["clip_id"] = [f"{s}/{i:07d}" for i, s in enumerate(new_clips.source_id)]
    new_clips["sync_conf"] = rng.gamma(4, 1.5, n_clips)
    new_clips["sync_offset"] = rng.integers(-8, 9, n_clips)
    new_clips["quality_score"] = rng.normal(55, 12, n_clips)
    which = rng.integers(0, 2 * len(REASONS), n_clips)  # about half rejected, spread over the reasons
    for number, (stage, reason) in enumerate(REASONS):
        mask = which == number
        new_clips.loc[mask, ["status", "reject_stage", "reject_reason"]] = ["rejected", stage, reason]
        new_clips.loc[mask, "reject_detail"] = f"synthetic {reason}"
    for name, table, table_schema in (("sources", new_sources, schema.SOURCES), ("clips", new_clips, schema.CLIPS)):
        (big / "manifests" / name).mkdir(parents=True)   # one part of each, as a run's manifests are read
        pq.write_table(pa.Table.from_pandas(table, schema=table_schema, preserve_index=False),
                       big / "manifests" / name / "part-0.parquet")
    shutil.copy(real / "manifests/runs.parquet", big / "manifests/runs.parquet")
    (big / "clips").symlink_to((real / "clips").resolve())


def timed_report(folder: Path, target: Path) -> tuple[float, int]:
    start = time.perf_counter()
    build_report(folder, target)
    return time.perf_counter() - start, target.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="real", type=Path, default=Path("out"))
    parser.add_argument("--clips", type=int, default=100_000)
    args = parser.parse_args()
    real_clips = len(current_table(args.real, "clips").to_pandas())
    with tempfile.TemporaryDirectory() as work:
        big = Path(work) / "big"
        enlarge(args.real, big, args.clips)
        small_s, small_bytes = timed_report(args.real, Path(work) / "small.html")
        big_s, big_bytes = timed_report(big, Path(work) / "big.html")
    print("| manifest | clips | report seconds | report size (KB) |")
    print("|---|---:|---:|---:|")
    print(f"| {args.real} (real) | {real_clips} | {small_s:.1f} | {small_bytes / 1024:.0f} |")
    print(f"| synthetic, from it | {args.clips} | {big_s:.1f} | {big_bytes / 1024:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What grows with the number of sources: plan time, the driver's peak memory, the time to append a manifest
part, and the time and memory of `curate filelist` and `curate report`.

    python bench/bench_state.py [--synthetic 10000 100000 1000000] [--real 200 2000] [--json FILE]
                                [--only dry_run rerun] [--work DIR]

`--only` measures only the figures named (of dry_run, rerun, filelist, report; the real set's first run is
always made); `--work DIR` keeps the synthetic sets in DIR and uses one made there before (the same N and
--part-sources) instead of making it again, so two checkouts can be measured on the same files.

Synthetic: for each size N, an input folder of N empty files in VoxCeleb2's shape (idNNNNN/<video>/NNNNN.mp4)
and the manifests a finished run over them would have left (one source row and one clip row each, scored by
sync and quality, in parts of run.part_sources), written by the real PartWriter. Then, each in a process of its
own: a dry run (scan and plan, with the clip stages' owed clips), a real rerun that finds nothing to do, the
file lists, and the report (no sample pictures: the clip files do not exist).

Real: N tiny real sources (1 s of a real talking head, 224x224, 25 fps, AAC 16 kHz), through `curate run
--skip face` (each is a Ray task that probes it and rejects it as shorter than one clip: the bookkeeping per
source, not the stages' work), then a rerun with nothing to do, the file lists and the report.

Peak memory is the driver process's own (getrusage RUSAGE_SELF ru_maxrss), not Ray's workers'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.config import Config  # noqa: E402
from manifests.dataset import PartWriter  # noqa: E402

KITCHEN = ROOT.parent / "shared" / "data" / "talking-heads" / "man_kitchen_1080x1920_25fps.mp4"
DRIVER = ("import resource, sys, time; from curate.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
          "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
          "file=sys.stderr); sys.exit(rc)")


def driver(*args: str) -> dict:
    """Run one curate command in a process of its own: wall seconds in the command, and its peak RSS in MB."""
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"curate {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stderr.splitlines() if line.startswith("BENCH "))
    _, seconds, peak_kb = line.split()
    return {"s": round(float(seconds), 2), "peak_mb": round(int(peak_kb) / 1024, 1), "stdout": done.stdout}


def voxceleb_ids(n: int) -> list[str]:
    """VoxCeleb2's shape: about 9 videos a speaker, 20 utterances a video."""
    return [f"id{i // 180:05d}/v{i // 20:07d}/{i % 20 + 1:05d}.mp4" for i in range(n)]


def synthetic_set(n: int, work: Path, part_sources: int) -> tuple[Path, Path, float]:
    """An input folder of n empty files and the manifests of a finished run over them; returns the folders
    and the mean seconds to append one part."""
    raw, out = work / "raw", work / "out"
    fingerprints = Config().stage_fingerprints()   # scored by sync and quality as the defaults set them
    writer = PartWriter(out, every_sources=part_sources, every_s=1e9)
    flush_s = []
    for number, source_id in enumerate(voxceleb_ids(n)):
        path = raw / source_id
        if number % 20 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        info = path.stat()
        writer.add(source_row(source_id, str(path), info.st_size, info.st_mtime_ns, fingerprints),
                   [clip_row(source_id, fingerprints)])
        if writer.due():
            started = time.perf_counter()
            writer.flush()
            flush_s.append(time.perf_counter() - started)
    writer.flush()
    return raw, out, sum(flush_s) / max(1, len(flush_s))


def source_row(source_id: str, path: str, size: int, mtime_ns: int, fingerprints: dict) -> dict:
    return {
        "source_id": source_id, "path": path, "size_bytes": size, "mtime_ns": mtime_ns, "sha256": "0" * 64,
        "status": "ok", "container": "mov,mp4,m4a,3gp,3g2,mj2", "duration_s": 7.8, "video_codec": "h264",
        "width": 224, "height": 224, "fps": 25.0, "declared_frames": 195, "pix_fmt": "yuv420p", "audio_codec": "aac",
        "sample_rate": 16000, "channels": 1, "rotation": 0, "decoded_s": 7.8, "source_frames": 195,
        "frames_out": 195, "dropped_frames": 0, "audio_gap_samples": 0, "shot_cuts": [], "shots_reused": False,
        "face_detections": 8, "n_clips": 1, "n_clips_kept": 1, "fingerprint": fingerprints["write"],
        "fingerprints": fingerprints, "generation": "f" * 32, "wall_s": 2.1,
        "cpu_s": {"probe": 0.01, "decode": 0.2, "resample": 0.01, "scale": 0.05, "shots": 0.1, "face": 0.9,
                  "write": 0.4},
    }


def clip_row(source_id: str, fingerprints: dict) -> dict:
    stem = source_id[:-4]
    return {
        "clip_id": f"{stem}/0000000-0000195", "source_id": source_id, "source_sha256": "0" * 64, "clip_index": 0,
        "shot_index": 0, "start_frame": 0, "end_frame": 195, "n_frames": 195, "start_s": 0.0, "end_s": 7.8,
        "duration_s": 7.8, "fps": 25, "sample_rate": 16000, "audio_samples": 124800,
        "path": f"clips/{stem}/0000000-0000195.mp4", "width": 256, "height": 256, "bytes": 350000,
        "status": "kept", "clips_status": "done", "face_status": "done", "write_status": "done",
        "sync_status": "done", "quality_status": "done", "face_backend": "dlib", "face_detection_rate": 1.0,
        "face_size_px": 110.0, "face_jitter_px": 0.4, "face_max_faces": 1, "aligned_size": 256,
        "landmarks_path": f"clips/{stem}/0000000-0000195.npz", "generation": "f" * 32, "sync_offset": 0,
        "sync_min_dist": 7.1, "sync_conf": 6.2, "quality_score": 48.0, "quality_frame_scores": [47.0, 48.0, 49.0],
        "sync_fingerprint": fingerprints["sync"], "quality_fingerprint": fingerprints["quality"],
    }


def tiny_sources(n: int, raw: Path, work: Path) -> None:
    """n copies, under VoxCeleb2 names, of 1 s of a real talking head at 224x224, 25 fps, AAC 16 kHz mono."""

    sys.path.insert(0, str(ROOT / "tests"))
    from footage import ffmpeg

    one = work / "tiny.mp4"
    if not one.exists():
        ffmpeg("-ss", "3", "-t", "1", "-i", KITCHEN, "-vf", "crop=1080:1080:0:300,scale=224:224", "-r", "25",
               "-c:v", "libx264", "-preset", "veryfast", "-ar", "16000", "-ac", "1", "-c:a", "aac", one)
    for source_id in voxceleb_ids(n):
        target = raw / source_id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(one, target)


FIGURES = ("dry_run", "rerun", "filelist", "report")


def measure(raw: Path, out: Path, lists: Path, real: bool, only: tuple[str, ...] = FIGURES) -> dict:
    """The real set: a first run, then the rest with the face stage left out as it was. The synthetic set was
    scored by every stage: its dry run plans the clip stages too (none owed), its rerun leaves them out (their
    weights are not needed to find that nothing is to do)."""
    figures = {}
    skip = ["--skip", "face"] if real else []
    if real:
        figures["run"] = driver("run", "--input", str(raw), "--output", str(out), "--no-progress", *skip)
    if "dry_run" in only:
        figures["dry_run"] = driver("run", "--input", str(raw), "--output", str(out), "--dry-run", *skip)
        assert " 0 would be processed" in figures["dry_run"]["stdout"], figures["dry_run"]["stdout"]
    if "rerun" in only:
        rerun_skip = skip or ["--skip", "sync,quality"]
        figures["rerun"] = driver("run", "--input", str(raw), "--output", str(out), "--no-progress", *rerun_skip)
        assert "0 processed now" in figures["rerun"]["stdout"], figures["rerun"]["stdout"]
    if "filelist" in only:
        figures["filelist"] = driver("filelist", str(out), "--out", str(lists))
    if "report" in only:
        figures["report"] = driver("report", str(out), "--samples", "6" if real else "0")
    for figure in figures.values():
        figure.pop("stdout")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--real", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--part-sources", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "state.json")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--work", type=Path, default=None, help="keep the synthetic sets here, and reuse them")
    args = parser.parse_args()
    only = tuple(args.only)
    results = {"synthetic": {}, "real": {}}
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        work = Path(tmp)
        for n in args.synthetic:
            folder = (args.work or work) / f"synthetic-{n}-{args.part_sources}"
            made = folder / "made.json"
            if args.work is not None and made.is_file():
                append_s, made_s = json.loads(made.read_text())
                raw, out = folder / "raw", folder / "out"
            else:
                shutil.rmtree(folder, ignore_errors=True)
                started = time.perf_counter()
                raw, out, append_s = synthetic_set(n, folder, args.part_sources)
                made_s = time.perf_counter() - started
                made.write_text(json.dumps([append_s, made_s]))
            figures = measure(raw, out, folder / "lists", real=False, only=only)
            figures["append_part_s"] = round(append_s, 4)
            figures["made_in_s"] = round(made_s, 1)
            results["synthetic"][n] = figures
            print(f"synthetic {n}: {json.dumps(figures)}", flush=True)
            if args.work is None:
                shutil.rmtree(folder)
        for n in args.real:
            folder = work / f"real-{n}"
            tiny_sources(n, folder / "raw", work)
            figures = measure(folder / "raw", folder / "out", folder / "lists", real=True, only=only)
            parts = sorted((folder / "out" / "manifests" / "sources").glob("part-*.parquet"))
            figures["parts"] = len(parts)
            results["real"][n] = figures
            print(f"real {n}: {json.dumps(figures)}", flush=True)
            shutil.rmtree(folder)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def table(results: dict) -> str:
    """A Markdown table: per size, each figure, and its growth per 10x sources."""
    lines = ["| set | sources | dry run s / MB | rerun s / MB | filelist s / MB | report s / MB | append a part s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in ("real", "synthetic"):
        for n, f in sorted(results[kind].items(), key=lambda item: int(item[0])):
            cells = [f"{f[k]['s']} / {f[k]['peak_mb']:.0f}" if k in f else "-" for k in FIGURES]
            append = f.get("append_part_s", "-")
            first = f" (first run {f['run']['s']} s / {f['run']['peak_mb']:.0f} MB)" if "run" in f else ""
            lines.append(f"| {kind}{first} | {int(n):,} | " + " | ".join(cells) + f" | {append} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

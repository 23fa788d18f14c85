"""Benchmark: this pipeline against the LatentSync recipe's commands for the same steps, on the same inputs.

    python bench/run_bench.py [--input DIR] [--cpus N] [--long-source-copies K]

The reference is what LatentSync's preprocess/ scripts run for these steps, as argument lists with the
imageio-ffmpeg binary (and the `scenedetect` CLI, with that binary on PATH):

    resample  ffmpeg -i IN [-c:v copy | -r 25] -ar 16000 -q:a 0 OUT       (copy when the source is 25 fps)
    shots     scenedetect -i IN detect-adaptive --threshold 2 split-video  (re-encodes every shot)
    segment   ffmpeg -i SHOT -map 0 -c:v copy -segment_time 5 -f segment -reset_timestamps 1 OUT_%03d.mp4

Each reference stage runs over all files with N processes at a time, as the recipe's Pool does, one stage
after the other. CPU seconds and peak memory come from the operating system's accounting of each finished
process (wait4), so they include everything the commands do. Our pipeline runs as `curate run` in a fresh
output folder; its whole-process CPU includes starting and stopping the embedded Ray, and its per-stage CPU
comes from the manifests. A second part decodes a short and a long source (the same video concatenated
without re-encoding) through the source pass alone, to show that memory does not grow with length.

Part 2 runs the chain through the face stage (dlib backend, `--skip sync,quality`: the clip stages need their
weights and are benchmarked apart) and reports its CPU per source-second next to the cost of decoding the
sources once, and the face stage's frames per CPU-second with tracking and with a
detection on every frame (`track: false`).

Results: tables on stdout and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av

from manifests.dataset import current_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "talking-heads"
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".flv", ".m4v"}


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; its CPU seconds, wall seconds and peak memory from wait4."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "maxrss_mb": usage.ru_maxrss / 1024}


def repeated_inputs(input_dir: Path, repeat: int, folder: Path) -> list[Path]:
    """`folder` filled with `repeat` symlinked copies of each video in `input_dir` (prefixed 0_, 1_, ...); the
    originals, or [] when there are none."""
    originals = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(repeat):
        for original in originals:
            (folder / f"{copy}_{original.name}").symlink_to(original.resolve())
    return originals


def machine_busy_s() -> float:
    """CPU seconds this machine has been busy since boot, all processes (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stage(commands: list[list[str]], workers: int, env: dict | None = None) -> dict:
    """Run one recipe stage over all files, `workers` at a time; totals."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda cmd: timed(cmd, env), commands))
    return {
        "cpu_s": sum(r["cpu_s"] for r in results),
        "wall_s": time.perf_counter() - start,
        "maxrss_mb": max((r["maxrss_mb"] for r in results), default=0.0),
    }


def video_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.streams.video[0].average_rate)


def duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def reference(sources: list[Path], work: Path, workers: int) -> dict:
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(ffmpeg)  # scenedetect's split-video calls `ffmpeg` from PATH
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    scenedetect = shutil.which("scenedetect", path=str(Path(sys.executable).parent)) or "scenedetect"

    resampled, shots, segmented = work / "resampled", work / "shot", work / "segmented"
    for folder in (resampled, shots, segmented):
        folder.mkdir()
    resample_cmds = []
    for src in sources:
        video = ["-c:v", "copy"] if round(video_fps(src), 3) == 25 else ["-r", "25"]
        resample_cmds.append([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *video,
                              "-ar", "16000", "-q:a", "0", str(resampled / src.name)])
    result = {"resample": stage(resample_cmds, workers, env)}
    shot_cmds = [[scenedetect, "--quiet", "-i", str(resampled / src.name), "detect-adaptive", "--threshold", "2",
                  "split-video", "--filename", f"{src.stem}_shot_$SCENE_NUMBER", "--output", str(shots)]
                 for src in sources]
    result["shots"] = stage(shot_cmds, workers, env)
    segment_cmds = [[ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(shot), "-map", "0", "-c:v", "copy",
                     "-segment_time", "5", "-f", "segment", "-reset_timestamps", "1", "-q:a", "0",
                     str(segmented / f"{shot.stem}_%03d.mp4")] for shot in sorted(shots.glob("*.mp4"))]
    result["segment"] = stage(segment_cmds, workers, env)
    result["clip_seconds"] = sorted(round(duration_s(p), 2) for p in segmented.glob("*.mp4"))
    return result


def ours(input_dir: Path, out: Path, cpus: int, *extra: str, skip: str = "sync,quality") -> dict:
    """`curate run` through the face stage by default: the clip stages (sync, quality) need their weights and
    have their own benchmarks (bench_sync.py, bench_quality.py)."""
    curate = shutil.which("curate", path=str(Path(sys.executable).parent)) or "curate"
    busy = machine_busy_s()
    whole = timed([curate, "run", "--input", str(input_dir), "--output", str(out), "--num-cpus", str(cpus),
                   "--no-progress", "--skip", skip, *extra])
    whole["machine_cpu_s"] = machine_busy_s() - busy
    sources = current_table(out, "sources").to_pandas()
    clips = current_table(out, "clips").to_pandas()
    stages = {c[4:-2]: float(sources[c].sum()) for c in sources.columns if c.startswith("cpu_") and c.endswith("_s")}
    return {"whole": whole, "stages": stages, "clip_seconds": sorted(clips[clips.status == "kept"].duration_s.round(2)),
            "frames": int(sources.frames_out.sum()), "face_detections": int(sources.face_detections.fillna(0).sum()),
            "per_source": sources[["source_id", "duration_s", *[c for c in sources.columns if c.startswith("cpu_")]]].to_dict("records")}


def decode_only(sources: list[Path]) -> float:
    """CPU seconds to decode every source's video once, one thread, nothing else (the floor of any pass)."""
    script = ("import av,sys\nfor p in sys.argv[1:]:\n c=av.open(p); s=c.streams.video[0]; s.thread_count=1\n"
              " for f in c.decode(s): pass\n")
    return timed([sys.executable, "-c", script, *map(str, sources)])["cpu_s"]


def face_without_tracking(source: Path, work: Path) -> dict:
    """The face stage detecting on every frame (`track: false`), on one source, for comparison."""
    config = work / "no_tracking.yaml"
    config.write_text("stages:\n  face:\n    track: false\n")
    folder = work / "one"
    folder.mkdir()
    (folder / source.name).symlink_to(source.resolve())
    return ours(folder, work / "ours_no_tracking", 1, "--config", str(config))


def memory_vs_length(source: Path, work: Path, copies: int) -> dict:
    """Peak memory of the source pass on one source and on `copies` of it back to back (no re-encode)."""
    import imageio_ffmpeg

    long_source = work / f"long_x{copies}{source.suffix}"
    listing = work / "concat.txt"
    listing.write_text("".join(f"file '{source}'\n" for _ in range(copies)))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "concat",
                    "-safe", "0", "-i", str(listing), "-c", "copy", str(long_source)], check=True)
    script = (
        "import os,sys; from curate.config import Config; from curate.source_pass import process_source; from curate.source_task import SourceTask\n"
        "p=sys.argv[1]; c=Config(); st=os.stat(p)\n"
        "t=SourceTask(source_id='s', path=p, out_key='s', output_dir=sys.argv[2], size_bytes=st.st_size,"
        " mtime_ns=st.st_mtime_ns, fingerprints=c.stage_fingerprints())\n"
        "n=sum(1 for e in process_source(t, c) if e['event']=='clip')\n"
        "assert n > 0\n"
    )
    result = {}
    for label, path in (("short", source), ("long", long_source)):
        measured = timed([sys.executable, "-c", script, str(path), str(work / f"mem_{label}")])
        result[label] = {"seconds": duration_s(path), **measured}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--long-source-copies", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1,
                        help="use each input this many times (symlinks), so fixed costs like starting Ray weigh less")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs"
        originals = repeated_inputs(args.input, args.repeat, inputs)
        if not originals:
            print(f"no videos in {args.input}", file=sys.stderr)
            return 2
        sources = sorted(inputs.iterdir())
        seconds = sum(duration_s(p) for p in sources)
        (work / "ref").mkdir()
        busy = machine_busy_s()
        ref = reference(sources, work / "ref", args.cpus)
        ref["machine_cpu_s"] = machine_busy_s() - busy
        steps_only = ours(inputs, work / "ours_steps", args.cpus, skip="face,sync,quality")
        full = ours(inputs, work / "ours_full", args.cpus)
        untracked = face_without_tracking(originals[0], work)
        decode_s = decode_only(sources)
        memory = memory_vs_length(originals[0], work, args.long_source_copies)

    steps = ("resample", "shots", "segment")
    ref_cpu = sum(ref[s]["cpu_s"] for s in steps)
    ref_wall = sum(ref[s]["wall_s"] for s in steps)
    ref_mem = max(ref[s]["maxrss_mb"] for s in steps)
    our = steps_only
    stage_cpu = sum(our["stages"].values())
    machine_ratio = ref["machine_cpu_s"] / our["whole"]["machine_cpu_s"]
    face_fps = full["frames"] / full["stages"]["face"]
    untracked_fps = untracked["frames"] / untracked["stages"]["face"]
    report = {
        "input": str(args.input), "repeat": args.repeat, "sources": len(sources), "source_seconds": seconds,
        "cpus": args.cpus, "reference": ref, "ours_steps": our, "ours_full": full, "face_untracked": untracked,
        "decode_only_cpu_s": decode_s, "memory_vs_length": memory,
        "ratios": {
            "cpu_per_source_second_machine": machine_ratio,
            "cpu_per_source_second_stages": ref_cpu / stage_cpu,
            "wall": ref_wall / our["whole"]["wall_s"],
            "peak_memory": ref_mem / our["whole"]["maxrss_mb"],
            "face_tracking_speedup": face_fps / untracked_fps,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))

    per = lambda value: f"{value / seconds:.3f}"  # noqa: E731 - CPU seconds per source second
    ours_stage = lambda *names: sum(our["stages"].get(n, 0.0) for n in names)  # noqa: E731
    print(f"{len(sources)} sources ({len(originals)} files x {args.repeat}), {seconds:.1f} s of video, {args.cpus} CPUs")
    print("\n1. The recipe's steps (resample, shots, clips) against ours without the face stage (`--skip face`).")
    print("CPU-seconds per source-second, by step:\n")
    print("| step | reference | ours |")
    print("|---|---:|---:|")
    print(f"| resample: `ffmpeg -r 25 -ar 16000` / decode, resample, scale | {per(ref['resample']['cpu_s'])} | "
          f"{per(ours_stage('probe', 'decode', 'resample', 'scale'))} |")
    print(f"| shots: `scenedetect detect-adaptive split-video` / shots | {per(ref['shots']['cpu_s'])} | {per(ours_stage('shots'))} |")
    print(f"| clips: `ffmpeg -segment_time 5 -c copy` / clips and write | {per(ref['segment']['cpu_s'])} | {per(ours_stage('write'))} |")
    print(f"| all steps | {per(ref_cpu)} | {per(stage_cpu)} |")
    print(f"| whole machine while it ran (Ray included for ours) | {per(ref['machine_cpu_s'])} | {per(our['whole']['machine_cpu_s'])} |")
    print("\n| | reference | ours | reference / ours |")
    print("|---|---:|---:|---:|")
    print(f"| CPU-s per source-second, whole machine | {per(ref['machine_cpu_s'])} | {per(our['whole']['machine_cpu_s'])} | {machine_ratio:.1f}x |")
    print(f"| CPU-s per source-second, the steps alone | {per(ref_cpu)} | {per(stage_cpu)} | {ref_cpu / stage_cpu:.1f}x |")
    print(f"| wall seconds | {ref_wall:.1f} | {our['whole']['wall_s']:.1f} | {ref_wall / our['whole']['wall_s']:.1f}x |")
    print(f"| peak memory of one process (MB) | {ref_mem:.0f} | {our['whole']['maxrss_mb']:.0f} | {ref_mem / our['whole']['maxrss_mb']:.1f}x |")
    bad = lambda durations: sum(1 for d in durations if not 5 <= d <= 10)  # noqa: E731
    print(f"| clips out (outside 5-10 s) | {len(ref['clip_seconds'])} ({bad(ref['clip_seconds'])}) | "
          f"{len(our['clip_seconds'])} ({bad(our['clip_seconds'])}) | |")

    print("\n2. The whole chain to here, with the face stage (dlib backend), CPU-seconds per source-second:\n")
    print("| part | CPU-s / source-s |")
    print("|---|---:|")
    print(f"| decoding the sources once, nothing else (separate run) | {per(decode_s)} |")
    for name in ("decode", "resample", "scale", "shots", "face", "write"):
        print(f"| {name} | {per(full['stages'].get(name, 0.0))} |")
    print(f"| **all stages** | **{per(sum(full['stages'].values()))}** |")
    print(f"| whole machine while it ran (Ray included) | {per(full['whole']['machine_cpu_s'])} |")
    print("\nFace stage alone (tracking, landmarks, smoothing, warp), frames per CPU-second:\n")
    print("| dlib backend | frames per CPU-second | detector passes per 100 frames |")
    print("|---|---:|---:|")
    print(f"| tracking (default: detect every 50 frames, and on a jump) | {face_fps:.1f} | "
          f"{100 * full['face_detections'] / full['frames']:.1f} |")
    print(f"| detect on every frame (`track: false`, {originals[0].name}) | {untracked_fps:.1f} | "
          f"{100 * untracked['face_detections'] / untracked['frames']:.1f} |")
    print(f"| tracking / detecting every frame | {face_fps / untracked_fps:.1f}x | |")
    print("(fan needs weights that cannot be fetched here; it is not measured)")

    short, long = memory["short"], memory["long"]
    print("\n3. The source pass alone on one source and on copies of it back to back:\n")
    print("| source | seconds | peak memory (MB) | CPU-s |")
    print("|---|---:|---:|---:|")
    print(f"| {originals[0].name} | {short['seconds']:.0f} | {short['maxrss_mb']:.0f} | {short['cpu_s']:.1f} |")
    print(f"| the same x{args.long_source_copies} | {long['seconds']:.0f} | {long['maxrss_mb']:.0f} | {long['cpu_s']:.1f} |")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

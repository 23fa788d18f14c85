"""Throughput of `curate run` on the same inputs with one worker, two workers, and two Ray nodes of one CPU each.

    python bench/bench_scaling.py [--input DIR] [--repeat 2] [--rounds 1] [--skip sync,quality]

Three runs, one after the other, each into a fresh output folder (with --rounds N, the three N times over,
interleaved, and the fastest of each kept):

    1 worker    curate run --num-cpus 1            (embedded Ray)
    2 workers   curate run --num-cpus 2            (embedded Ray)
    2 nodes     curate run --address HEAD          (`ray start --head` and `ray start --address HEAD` on this
                                                    machine, one CPU each: tests/ray_nodes.py)

Throughput is seconds of source video per wall-clock second of the whole `curate run` command, and seconds of
kept clips per wall second; ratios are against one worker. The embedded runs' wall time includes starting and
stopping Ray; the two nodes are started before their run (as a cluster is) and their start time is reported
apart. "Machine CPU-s" is this machine's busy time while the command ran (/proc/stat: Ray's daemons and anything
else running, so noisy on a shared machine). Every run must give the same clips (checked; exit status 1 if not).

Results: a markdown table on stdout and bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from manifests.dataset import current_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ray_nodes import LocalCluster  # noqa: E402
from run_bench import DEFAULT_INPUT, machine_busy_s, repeated_inputs  # noqa: E402


def curate_run(inputs: Path, out: Path, env: dict, skip: str, *extra: str) -> dict:
    command = [sys.executable, "-m", "curate.cli", "run", "--input", str(inputs), "--output", str(out),
               "--no-progress", *(["--skip", skip] if skip else []), *extra]
    busy = machine_busy_s()
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    sources = current_table(out, "sources").to_pandas()
    clips = current_table(out, "clips").to_pandas()
    runs = pd.read_parquet(out / "manifests" / "runs.parquet")
    kept = clips[clips.status == "kept"]
    return {
        "wall_s": wall, "run_wall_s": float(runs.wall_s.iloc[-1]), "machine_cpu_s": machine_busy_s() - busy,
        "cluster_cpus": float(runs.cluster_cpus.iloc[-1]), "sources": len(sources),
        "source_seconds": float(sources.duration_s.sum()), "clips_kept": len(kept),
        "clip_seconds": float(kept.duration_s.sum()),
        "source_pass_cpu_s": float(sum(sources[c].sum() for c in sources.columns if c.startswith("cpu_"))),
        "clips": sorted(zip(clips.clip_id, clips.status, clips.reject_reason.fillna(""))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--repeat", type=int, default=2,
                        help="use each input this many times (symlinks), so that two workers have work to share")
    parser.add_argument("--rounds", type=int, default=1, help="run the three this many times, interleaved, and keep "
                        "each one's fastest")
    parser.add_argument("--skip", default="sync,quality", help="stages to leave out (default: sync,quality)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scaling.json")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    rounds: dict[str, list[dict]] = {"1 worker": [], "2 workers": [], "2 nodes x 1 CPU": []}
    with tempfile.TemporaryDirectory(prefix="curate-scaling-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs"
        originals = repeated_inputs(args.input, args.repeat, inputs)
        if not originals:
            print(f"no videos in {args.input}", file=sys.stderr)
            return 2
        for original in originals:
            original.read_bytes()  # into the page cache, so that the first run does not pay for the disk
        for n in range(args.rounds):  # interleaved, so that a busy spell of the machine hits all three alike
            rounds["1 worker"].append(curate_run(inputs, work / f"one{n}", env, args.skip, "--num-cpus", "1"))
            rounds["2 workers"].append(curate_run(inputs, work / f"two{n}", env, args.skip, "--num-cpus", "2"))
            start = time.perf_counter()
            with LocalCluster(nodes=2, cpus=1) as cluster:
                started = time.perf_counter() - start
                result = curate_run(inputs, work / f"nodes{n}", cluster.env(), args.skip,
                                    "--address", cluster.address)
            result["cluster_start_s"] = started
            rounds["2 nodes x 1 CPU"].append(result)

    # the fastest round of each: on a shared machine the others are the same work plus someone else's
    results = {label: dict(min(runs, key=lambda r: r["wall_s"]), all_wall_s=[r["wall_s"] for r in runs])
               for label, runs in rounds.items()}
    base = results["1 worker"]
    for result in results.values():
        result["source_s_per_s"] = result["source_seconds"] / result["wall_s"]
        result["clip_s_per_s"] = result["clip_seconds"] / result["wall_s"]
        result["speedup"] = result["source_s_per_s"] / base["source_s_per_s"]
    same = all(r["clips"] == base["clips"] for runs in rounds.values() for r in runs)
    if results["2 nodes x 1 CPU"]["cluster_cpus"] != 2:
        print(f"warning: the driver saw {results['2 nodes x 1 CPU']['cluster_cpus']} CPUs on the 2-node cluster",
              file=sys.stderr)

    report = {"input": str(args.input), "repeat": args.repeat, "rounds": args.rounds, "skip": args.skip,
              "machine_cores": os.cpu_count(),
              "sources": base["sources"], "source_seconds": base["source_seconds"], "same_clips": same,
              "runs": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))

    print(f"{base['sources']} sources ({len(originals)} files x {args.repeat}), {base['source_seconds']:.1f} s of "
          f"video, --skip {args.skip or '(none)'}, {os.cpu_count()} cores, fastest of {args.rounds} round(s); the "
          f"same clips in every run: {'yes' if same else 'NO'}\n")
    print("| | Ray CPUs | wall s | source-s / s | clip-s / s | vs 1 worker | machine CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['cluster_cpus']:.0f} | {r['wall_s']:.1f} | {r['source_s_per_s']:.2f} | "
              f"{r['clip_s_per_s']:.2f} | {r['speedup']:.2f}x | {r['machine_cpu_s']:.0f} |")
    print(f"\n(starting the two nodes, not counted above: {results['2 nodes x 1 CPU']['cluster_start_s']:.1f} s)")
    print(f"written to {args.json}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Ray's fixed cost: the whole process tree of `curate run` against the stages alone, in the same run.

    python bench/bench_ray_overhead.py [--input DIR] [--skip sync,quality] [--num-cpus N] [--rounds 1]
                                       [--baseline bench/results/ray_overhead_before.json]

Runs `python -m curate.cli run --input DIR --output FRESH --skip sync,quality` (embedded Ray) and accounts for
every process of its tree: the CLI (the driver) and all its descendants, Ray's daemons and workers included.

- The tree: this script makes itself the tree's child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a process
  whose parent exits stays in the tree (it is handed to us, not to init) and we reap it.
- CPU: /proc is sampled every --interval seconds and each process's own CPU (user + system, without its
  children's) is kept as last seen, so a process loses at most its last interval; those we reap (the CLI,
  orphans) have their final CPU read from their zombie, so they lose nothing. The kernel's wait4
  accounting (a reaped child's time added to its parent's) is shown too, but it cannot be the total: the
  raylet ignores SIGCHLD, so the workers and agents it reaps vanish from it.
- Memory: every --memory-every samples (reading smaps costs more), from each process's /proc/PID/smaps: the
  tree's memory counting each page once (every process's anonymous memory, plus each mapped file once, as
  much of it as is resident in the process that has most of it: the shared libraries, the object store),
  and for comparison the summed PSS (a page shared by k processes counts 1/k in each, but that includes
  processes outside the tree mapping the same libraries, so it reads lower when other runs share the
  machine) and the summed RSS (every shared page counted in every process); peaks over the samples.
- The stages alone: the per-stage CPU seconds the run records in its sources manifest (cpu_*_s), i.e. the
  source pass's work measured inside the worker.
- The heavy libraries each process has loaded (torch, scipy, pyarrow, pandas, dlib): the files it maps.

The results are checked too: the clips manifest's decision columns (ids, statuses, frame spans, reject stage
and reason, face size) are hashed, and with --baseline compared row by row with an earlier result file
(exit status 1 if they differ), so a change to how Ray is started can be shown to give the same clips.

Results: tables on stdout and bench/results/ray_overhead.json (--json).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from manifests.dataset import current_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import DEFAULT_INPUT  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
DECISION_COLUMNS = ["clip_id", "source_id", "status", "reject_stage", "reject_reason", "start_frame", "end_frame",
                    "n_frames", "audio_samples", "face_status", "write_status", "face_size_px"]
# (kind, substring of the command line), first match wins; anything else is named after its parent's kind
# a worker's fixed costs, each measured apart in a fresh interpreter (CPU and peak memory from wait4), less a
# bare interpreter's
PARTS = [("Ray, imported (each worker and Python daemon starts with it)", "import ray"),
         ("the source pass's modules, imported", "import curate.source_pass"),
         ("the sync stage's module (torch, scipy), imported", "import stages.sync"),
         ("dlib imported and its face model loaded (once per worker)",
          "from faces.landmarks import get_backend; get_backend('dlib')")]
# a library counts as loaded when its file is mapped
LIBRARIES = {"torch": "libtorch", "scipy": "/scipy/", "pyarrow": "libarrow", "pandas": "/pandas/",
             "dlib": "_dlib_pybind11", "cv2": "/cv2/"}
KINDS = [("driver (curate run)", "curate.cli"), ("gcs_server", "gcs_server"), ("raylet", "raylet/raylet"),
         ("dashboard agent", "DashboardAgent"), ("dashboard agent", "dashboard/agent.py"),
         ("runtime-env agent", "RuntimeEnvAgent"), ("runtime-env agent", "runtime_env/agent"),
         ("dashboard / API server", "dashboard/dashboard.py"), ("log monitor", "log_monitor.py"),
         ("autoscaler monitor", "autoscaler/_private/monitor.py"), ("process reaper", "ray_process_reaper"),
         ("worker", "default_worker.py"), ("worker", "ray::")]


class TreeSampler(threading.Thread):
    """Samples this process's descendants from /proc: per pid its kind, last CPU, peak memory; tree peaks."""

    def __init__(self, interval: float, memory_every: int):
        super().__init__(daemon=True)
        self.interval, self.memory_every = interval, memory_every   # memory is dearer to read than CPU
        self.procs: dict[tuple[int, int], dict] = {}   # (pid, start time) -> what we know of it
        self.peak_pss = self.peak_rss = self.peak_once = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pss = rss = anon = 0
            files: dict[str, int] = {}   # file -> the most of it resident in any one process of the tree
            memory = self.samples % self.memory_every == 0
            table = processes()
            for pid in descendants(os.getpid(), table):
                try:
                    ppid, start, cpu_s = table[pid]
                    info = self.procs.get((pid, start))
                    if info is None:
                        info = self.procs[(pid, start)] = {"pid": pid, "ppid": ppid, "kind": None, "cpu_s": 0.0,
                                                           "peak_pss": 0, "peak_rss": 0, "libs": set(), "title": ""}
                    info["cpu_s"] = cpu_s
                    if not memory and info["kind"] is not None:
                        continue
                    # named again each time: a fork shows its parent's command line until it execs, and a
                    # worker's title changes with the task it runs
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    if cmdline or info["kind"] is None:   # empty once it is exiting
                        info["kind"] = self.classify(cmdline, ppid)
                    if not info["title"] or (cmdline.startswith("ray::") and "IDLE" not in cmdline):
                        info["title"] = cmdline[:80]
                    p_rss, p_pss, p_anon, p_files = smaps(pid)
                    info["peak_pss"] = max(info["peak_pss"], p_pss)
                    info["peak_rss"] = max(info["peak_rss"], p_rss)
                    info["libs"] |= {name for name, needle in LIBRARIES.items() if any(needle in f for f in p_files)}
                    pss, rss, anon = pss + p_pss, rss + p_rss, anon + p_anon
                    for path, resident in p_files.items():
                        files[path] = max(files.get(path, 0), resident)
                except (OSError, ValueError):
                    continue  # it exited while we looked
            if memory:
                self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
                self.peak_once = max(self.peak_once, anon + sum(files.values()))
            self.samples += 1
            self.stop.wait(self.interval)

    def last_look(self, pid: int) -> None:
        """A zombie's final CPU, read before we reap it (its stat stays readable until then)."""
        try:
            _, start, cpu_s = processes([pid])[pid]
        except (OSError, KeyError, IndexError, ValueError):
            return
        if (pid, start) in self.procs:
            self.procs[(pid, start)]["cpu_s"] = cpu_s

    def classify(self, cmdline: str, ppid: int) -> str:
        for kind, needle in KINDS:
            if needle in cmdline:
                return kind
        parents = [info["kind"] for (pid, _), info in self.procs.items() if pid == ppid and info["kind"]]
        if parents:
            return parents[-1] if parents[-1].endswith("(child)") else f"{parents[-1]} (child)"
        return cmdline.split(" ")[0].rsplit("/", 1)[-1] or "?"


def processes(pids: list[int] | None = None) -> dict[int, tuple[int, int, float]]:
    """Every process on the machine (or those of `pids`): pid -> (parent pid, start time in ticks, own
    user + system CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for pid in pids or [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # proc(5) fields 4, 14, 15 and 22 (ppid, utime, stime, starttime), counted from after the name
        table[pid] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def descendants(root: int, table: dict) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def smaps(pid: int) -> tuple[int, int, int, dict[str, int]]:
    """A process's RSS, PSS and anonymous RSS in bytes, and per file it maps the bytes of it resident (not
    counting the process's private copies, which are anonymous), from /proc/PID/smaps."""
    rss = pss = anon = resident = 0
    files: dict[str, int] = {}
    path = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0]:                   # a mapping: address range, perms, offset, device, inode, path
            path = head[5] if len(head) > 5 and head[5].startswith("/") else ""
        elif head[0] == "Rss:":
            resident = int(head[1]) * 1024
            rss += resident
        elif head[0] == "Pss:":
            pss += int(head[1]) * 1024
        elif head[0] == "Anonymous:":
            anon += int(head[1]) * 1024
            if path:
                files[path] = files.get(path, 0) + resident - int(head[1]) * 1024
    return rss, pss, anon, files


def reap_tree(cli: int, sampler: TreeSampler, linger_s: float) -> tuple[int, float, list[int]]:
    """Reap the CLI and every orphan handed to us until none is left, each one's final CPU read from its
    zombie first; (the CLI's exit status, the CPU-s wait4 gave for them, the pids still alive `linger_s` after
    the CLI exited, which are then killed)."""
    status, cpu, cli_done, left = None, 0.0, None, []
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return status, cpu, left
        if exited is None:
            if cli_done is not None and time.monotonic() - cli_done > linger_s and not left:
                left = descendants(os.getpid(), processes())
                for pid in left:  # a descendant of the run that outlived it: ours to end
                    os.kill(pid, 9)
            time.sleep(0.02)
            continue
        sampler.last_look(exited.si_pid)
        pid, wstatus, usage = os.wait4(exited.si_pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        if pid == cli:
            status, cli_done = os.waitstatus_to_exitcode(wstatus), time.monotonic()


def run_once(inputs: Path, out: Path, skip: str, num_cpus: int | None, interval: float, memory_every: int,
             log: Path) -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    command = [sys.executable, "-m", "curate.cli", "run", "--input", str(inputs), "--output", str(out),
               "--no-progress", *(["--skip", skip] if skip else []),
               *(["--num-cpus", str(num_cpus)] if num_cpus else [])]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the embedded Ray, always
    sampler = TreeSampler(interval, memory_every)
    self_before = time.process_time()
    sampler.start()
    start = time.perf_counter()
    with open(log, "wb") as sink:
        pid = _spawn(command, env, sink)
    status, wait4_cpu, lingering = reap_tree(pid, sampler, linger_s=30)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {status}:\n{log.read_text()[-3000:]}")

    sources = current_table(out, "sources").to_pandas()
    clips = current_table(out, "clips").to_pandas()
    runs = pd.read_parquet(out / "manifests" / "runs.parquet")
    stage_cols = [c for c in sources.columns if c.startswith("cpu_") and c.endswith("_s")]
    timings = list(runs.stage_timings.iloc[-1])
    kinds: dict[str, dict] = {}
    for info in sampler.procs.values():
        info["libs"] = sorted(info["libs"])
        entry = kinds.setdefault(info["kind"], {"processes": 0, "cpu_s": 0.0, "peak_pss_mb": 0.0,
                                                "peak_rss_mb": 0.0, "libs": []})
        entry["processes"] += 1
        entry["cpu_s"] += info["cpu_s"]
        entry["peak_pss_mb"] += info["peak_pss"] / 2**20   # sum of each one's own peak
        entry["peak_rss_mb"] += info["peak_rss"] / 2**20
        entry["libs"] = sorted(set(entry["libs"]) | set(info["libs"]))
    rows = json.loads(clips[DECISION_COLUMNS].sort_values("clip_id").to_json(orient="records"))  # NaN: null
    return {
        "command": " ".join(command), "wall_s": wall, "processes": len(sampler.procs),
        "tree_cpu_s": sum(i["cpu_s"] for i in sampler.procs.values()), "wait4_cpu_s": wait4_cpu,
        "samples": sampler.samples, "interval_s": interval,
        "sampler_cpu_s": time.process_time() - self_before, "peak_once_mb": sampler.peak_once / 2**20,
        "peak_pss_mb": sampler.peak_pss / 2**20,
        "peak_rss_mb": sampler.peak_rss / 2**20, "lingering": lingering,
        "source_seconds": float(sources.duration_s.sum()), "sources": len(sources),
        "stages_cpu_s": float(sum(sources[c].sum() for c in stage_cols)),
        "stages": {c[4:-2]: float(sources[c].sum()) for c in stage_cols},
        "stage_timings_cpu_s": float(sum(t["cpu_s"] for t in timings)),
        "clips_kept": int((clips.status == "kept").sum()), "clip_rows": rows,
        "decision_sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16],
        "kinds": kinds,
        "workers": [{k: i[k] for k in ("pid", "title", "cpu_s", "libs")} | {"peak_pss_mb": i["peak_pss"] / 2**20}
                    for i in sampler.procs.values() if i["kind"] == "worker"],
        "all_processes": list(sampler.procs.values()),
    }


def _spawn(command: list[str], env: dict, sink) -> int:
    """Start the run with its output to `sink`; its pid (reaped by reap_tree, not by subprocess)."""
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    process.returncode = 0  # reaped by reap_tree: keep Popen from waiting on it
    return process.pid


def fixed_costs() -> list[dict]:
    def measure(code: str) -> tuple[float, float]:
        """CPU-s (wait4) and peak RSS in MB (VmHWM, which, unlike ru_maxrss, starts afresh at exec) of `code`."""
        process = subprocess.Popen([sys.executable, "-c", code + "\nprint(open('/proc/self/status').read()"
                                    ".split('VmHWM:')[1].split()[0])"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak_kb = process.stdout.read().split()[-1]
        process.stdout.close()
        return usage.ru_utime + usage.ru_stime, int(peak_kb) / 1024

    bare_cpu, bare_mb = measure("pass")
    return [{"part": label, "code": code, "cpu_s": cpu - bare_cpu, "peak_rss_mb": mb - bare_mb}
            for label, code in PARTS for cpu, mb in [measure(code)]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--skip", default="sync,quality", help="stages to leave out (default: sync,quality)")
    parser.add_argument("--num-cpus", type=int, default=None, help="the embedded Ray's CPUs (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="run it this many times; the median ratio is reported")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples of CPU in /proc")
    parser.add_argument("--memory-every", type=int, default=20, help="sample memory every N-th CPU sample")
    parser.add_argument("--baseline", type=Path, help="an earlier result file whose clips must be the same")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ray_overhead.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="curate-ray-overhead-") as tmp:
        for n in range(args.rounds):
            results.append(run_once(args.input, Path(tmp) / f"out{n}", args.skip, args.num_cpus, args.interval,
                                    args.memory_every, Path(tmp) / f"log{n}"))
    parts = fixed_costs()
    for r in results:
        r["ratio"] = r["tree_cpu_s"] / r["stages_cpu_s"]
        r["workers_outside_stages_cpu_s"] = r["kinds"].get("worker", {}).get("cpu_s", 0.0) - r["stages_cpu_s"]
    middle = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    same_runs = len({r["decision_sha256"] for r in results}) == 1
    baseline_same = None
    if args.baseline:
        before = json.loads(args.baseline.read_text())["median_run"]
        baseline_same = before["clip_rows"] == middle["clip_rows"]
    report = {"input": str(args.input), "skip": args.skip, "machine_cores": os.cpu_count(), "rounds": args.rounds,
              "ratios": [r["ratio"] for r in results], "median_ratio": statistics.median(r["ratio"] for r in results),
              "same_clips_every_round": same_runs, "same_clips_as_baseline": baseline_same,
              "baseline": str(args.baseline) if args.baseline else None, "fixed_costs": parts, "median_run": middle,
              "runs": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))

    s = middle["source_seconds"]
    print(f"{middle['sources']} sources, {s:.1f} s of video, --skip {args.skip or '(none)'}, {os.cpu_count()} cores, "
          f"{args.rounds} round(s), the median one below\n")
    print("| | CPU-s | CPU-s per source-second |")
    print("|---|---:|---:|")
    print(f"| whole process tree ({middle['processes']} processes) | {middle['tree_cpu_s']:.1f} | "
          f"{middle['tree_cpu_s'] / s:.3f} |")
    print(f"| the stages alone (sources manifest cpu_*_s) | {middle['stages_cpu_s']:.1f} | "
          f"{middle['stages_cpu_s'] / s:.3f} |")
    print(f"| tree / stages | {middle['ratio']:.2f}x | |")
    outside = middle["workers_outside_stages_cpu_s"]
    print(f"| of the tree: in the workers but outside the stage clocks | {outside:.1f} | {outside / s:.3f} |")
    print(f"\npeak memory of the tree: {middle['peak_once_mb']:.0f} MB counting each page once; "
          f"{middle['peak_pss_mb']:.0f} MB PSS, {middle['peak_rss_mb']:.0f} MB RSS (summed over processes); "
          f"wall {middle['wall_s']:.1f} s; runs.parquet stage_timings: "
          f"{middle['stage_timings_cpu_s']:.1f} CPU-s; this sampler: {middle['sampler_cpu_s']:.1f} CPU-s "
          f"({middle['samples']} samples, not in the tree)")
    print(f"(the tree's CPU: each process's own, last seen by a sample every {args.interval:g} s, so each of the "
          f"daemons and workers loses at most its last {args.interval:g} s; the kernel's wait4 accounting gave "
          f"{middle['wait4_cpu_s']:.1f} CPU-s, which misses the processes the raylet reaps: it ignores SIGCHLD)")
    print("\nBy kind of process (memory: the sum of each process's own peak):\n")
    print("| kind | processes | CPU-s | peak PSS MB | peak RSS MB | heavy libraries loaded |")
    print("|---|---:|---:|---:|---:|---|")
    for kind, k in sorted(middle["kinds"].items(), key=lambda item: -item[1]["cpu_s"]):
        print(f"| {kind} | {k['processes']} | {k['cpu_s']:.1f} | {k['peak_pss_mb']:.0f} | {k['peak_rss_mb']:.0f} | "
              f"{', '.join(sorted(k['libs'])) or '-'} |")
    for w in middle["workers"]:
        print(f"  worker {w['pid']}: {w['title']!r}, {w['cpu_s']:.1f} CPU-s, peak {w['peak_pss_mb']:.0f} MB PSS, "
              f"loaded: {', '.join(w['libs']) or '-'}")
    print("\nA worker's fixed costs, each measured apart (a fresh interpreter, less a bare one):\n")
    print("| part | CPU-s | peak RSS MB |")
    print("|---|---:|---:|")
    for part in parts:
        print(f"| {part['part']} | {part['cpu_s']:.2f} | {part['peak_rss_mb']:.0f} |")
    if args.rounds > 1:
        print(f"\nratios of the {args.rounds} rounds: {', '.join(f'{x:.2f}x' for x in report['ratios'])}")
    print(f"\nclips kept: {middle['clips_kept']} of {len(middle['clip_rows'])}; decision columns' sha256: "
          f"{middle['decision_sha256']}; the same in every round: {'yes' if same_runs else 'NO'}")
    if args.baseline:
        print(f"the same clips as {args.baseline}: {'yes' if baseline_same else 'NO'}")
    if middle["lingering"]:
        print(f"warning: processes outlived the run by 30 s and were killed: {middle['lingering']}")
    print(f"written to {args.json}")
    return 0 if same_runs and baseline_same is not False else 1


if __name__ == "__main__":
    sys.exit(main())

"""The CPU cost of #29's checks: the source pass with every new check on against the code before them, each
check's own share timed apart, the sync stage's cost per extra face track, and the extra face tracker's cost.

    python bench/bench_checks.py [--before a46b6ce] [--after COMMIT] [--rounds 2] [--json FILE]

1. The source pass (curate.source_pass.process_source, as tests/test_face_checks.py's run_source calls it, with
   run.skip [sync, quality]) over the shared talking heads, in a fresh process per measurement: the code before
   #29 (`--before`, its own defaults) against `--after` (default: this checkout's working tree; a commit is run
   from a worktree) with every new check on (stages.speech.enabled: true; head pose, framing, speed, mouth
   sharpness and darkness, and the duplicates fingerprint are on by default). Interleaved rounds, A B A B. Each
   measurement's process CPU (the kernel's accounting of the finished child, every thread) and, inside it, the
   CPU of the pass alone (process_time around the three sources, after the imports and the models the
   process loads once: dlib's, and Silero VAD with torch where speech is on, which are shown apart).
2. Each check timed apart, in one process of the `--after` code, on what the last measurement of 1 wrote (its
   kept clips: the aligned frames, the landmarks, the audio): head_pose + mouth_sharpness + mouth_darkness per
   frame; SpeechStage.judge per second of audio; the duplicates fingerprint per clip; the speaking cue (speech
   envelope and speaking_cue) per clip and face; the driver's duplicates matching (DuplicateIndex.find, then
   add) per clip against 10^5 synthetic fingerprints.
3. The sync stage (stages.sync.SyncStage, stand-in weights of SyncNet v2's shapes as tests/conftest.py makes
   them; the speed does not depend on the values) on the longest clip of 1, one torch thread: CPU-s per
   clip-second, which is what each extra face track of a span costs it.
4. The source pass on a 10 s side-by-side of two real speakers (tests/test_speaker.py's `videos`, the larger one
   speaking) under stages.face.several_faces `speaker` (the second face followed, the cue computed) against
   `largest`, interleaved rounds.

Prints the tables; --json writes every figure.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TALKING_HEADS = ROOT.parent / "shared" / "data" / "talking-heads"
BEFORE = "a46b6ce"   # the commit before #29's first (ced3129, the speech stage)
# tests/test_speaker.py's side-by-side: the kitchen speaker (left, larger) and the garden speaker at 648x1152 each
SIDE_BY_SIDE = "[0:v]scale=648:1152,setsar=1[a];[1:v]scale=648:1152,setsar=1[b];[a][b]hstack[v]"


# -- workers: run in a fresh interpreter with the tree under test first on sys.path ------------------------

def worker_pass(args) -> dict:
    sys.path.insert(0, args.tree)
    import curate
    from curate.config import config_from_dict
    from curate.source_pass import process_source
    from curate.source_task import SourceTask
    from faces.landmarks import get_backend

    config = config_from_dict(json.loads(args.config))
    t0 = time.process_time()
    get_backend(config.stages.face.backend)            # loaded once per worker, as under Ray
    if getattr(config.stages, "speech", None) is not None and not config.skipped("speech"):
        import numpy as np

        from stages.speech import SpeechStage
        rate, fps = config.stages.resample.sample_rate, config.stages.resample.fps
        # loaded and called once (TorchScript optimizes its first calls), as a Ray worker has after its first clip
        SpeechStage(config.stages.speech, rate, fps).judge(np.zeros(rate, np.int16), fps)
    models_cpu = time.process_time() - t0
    out = Path(args.out)
    rows, sources = [], []
    t0 = time.process_time()
    for path in map(Path, args.sources):
        stat = os.stat(path)
        task = SourceTask(source_id=path.name, path=str(path), out_key=path.stem, output_dir=str(out),
                          size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, fingerprints=config.stage_fingerprints())
        for event in process_source(task, config):
            if event["event"] == "clip":
                rows.append(event["row"])
            elif event["event"] == "source":
                sources.append(event["row"])
    pass_cpu = time.process_time() - t0
    stages: dict[str, float] = {}
    for source in sources:
        for stage, seconds in source["cpu_s"].items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return {"code": str(Path(curate.__file__).parents[1]), "models_cpu": models_cpu, "pass_cpu": pass_cpu,
            "source_s": sum(s["decoded_s"] for s in sources), "stages": stages,
            "kept": sum(r["status"] == "kept" for r in rows), "clips": len(rows),
            "faces_followed": max((r.get("face_tracks") or 1 for r in rows), default=0),
            "kept_clips": [{"path": r["path"], "landmarks": r["landmarks_path"], "n_frames": r["n_frames"]}
                           for r in rows if r["status"] == "kept"]}


def cpu_of(fn, repeat: int = 3) -> float:
    """The median process CPU seconds of `repeat` calls of fn."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return sorted(times)[len(times) // 2]


def worker_parts(args) -> dict:
    sys.path.insert(0, args.tree)
    import av
    import numpy as np

    from curate.config import config_from_dict
    from faces.pose import MOUTH, head_pose, mouth_sharpness
    from faces.speaking import mouth_darkness, mouth_opening, speaking_cue, speech_envelope
    from stages.duplicates import FRAMES, DuplicateIndex, fingerprint
    from stages.settings import DuplicateParams

    config = config_from_dict({"stages": {"speech": {"enabled": True}}})
    sample_rate, fps = config.stages.resample.sample_rate, config.stages.resample.fps
    spf = sample_rate // fps
    clips = []
    for clip in json.loads(Path(args.clips).read_text()):
        arrays = dict(np.load(Path(args.out) / clip["landmarks"]))
        with av.open(str(Path(args.out) / clip["path"])) as container:
            pictures = list(container.decode(video=0))
        margin = int(arrays["audio_margin"])
        audio = arrays["audio_context"][margin:margin + clip["n_frames"] * spf]
        lumas = [p.to_ndarray(format="gray") for p in pictures]
        clips.append((arrays, pictures, lumas, audio, clip["n_frames"]))
    frames = sum(int(a["present"].sum()) for a, *_ in clips)
    seconds = sum(n for *_, n in clips) / fps
    width, height = args.frame_size

    def per_frame_checks():
        for arrays, _, lumas, _, _ in clips:
            source, aligned = arrays["landmarks_source"], arrays["landmarks_aligned"]
            for k in range(len(lumas)):
                if arrays["present"][k]:
                    head_pose(source[k], (width, height))
                    mouth = aligned[k][MOUTH]
                    mouth_sharpness(lumas[k], mouth)
                    mouth_darkness(lumas[k], mouth)

    def pose_only():
        for arrays, _, lumas, _, _ in clips:
            for k in range(len(lumas)):
                if arrays["present"][k]:
                    head_pose(arrays["landmarks_source"][k], (width, height))

    checks_cpu, pose_cpu = cpu_of(per_frame_checks), cpu_of(pose_only)

    from stages.speech import SpeechStage
    t0 = time.process_time()
    speech = SpeechStage(config.stages.speech, sample_rate, fps)   # loads the model (onnxruntime)
    speech_load_cpu = time.process_time() - t0
    speech.judge(clips[0][3][:sample_rate], fps)                       # warm
    speech_cpu = cpu_of(lambda: [speech.judge(audio, n) for *_, audio, n in clips], 1)

    fingerprint_cpu = cpu_of(lambda: [fingerprint(p, audio, sample_rate) for _, p, _, audio, _ in clips])

    def cues():
        for arrays, _, _, audio, n in clips:
            envelope = speech_envelope(audio, n, spf, sample_rate)
            speaking_cue([mouth_opening(arrays["landmarks_aligned"]), arrays["mouth_darkness"]], envelope,
                         config.stages.sync.max_offset, config.stages.face.speaker_window_frames)

    cue_cpu = cpu_of(cues)

    rng = np.random.default_rng(0)
    loaded, judged = args.index_clips, 2000
    video = rng.integers(0, 2 ** 64, (loaded + judged, FRAMES), dtype=np.uint64, endpoint=False)
    audio_hashes = rng.integers(0, 2 ** 64, loaded + judged, dtype=np.uint64, endpoint=False)
    index = DuplicateIndex(DuplicateParams())
    index.add(video[:loaded], audio_hashes[:loaded])

    def judge_new():
        for i in range(loaded, loaded + judged):
            if index.find(video[i], int(audio_hashes[i])) is None:
                index.add(video[i][None, :], audio_hashes[i:i + 1])

    match_cpu = cpu_of(judge_new, 1)
    return {"clips": len(clips), "frames": frames, "clip_s": seconds, "fps": fps,
            "per_frame_checks_cpu": checks_cpu, "pose_cpu": pose_cpu,
            "speech_load_cpu": speech_load_cpu, "speech_cpu": speech_cpu,
            "fingerprint_cpu": fingerprint_cpu, "cue_cpu": cue_cpu,
            "index_clips": loaded, "judged": judged, "match_cpu": match_cpu}


def worker_sync(args) -> dict:
    sys.path.insert(0, args.tree)
    sys.path.insert(0, str(Path(args.tree) / "tests"))
    import torch
    from golden import stand_in_state_dict

    from curate.config import config_from_dict
    from networks.syncnet.syncnet_v2 import SyncNet, load_syncnet
    from stages.sync import SyncJob, SyncStage
    from stages.sync_score import SyncScorer

    torch.set_num_threads(1)
    config = config_from_dict({})
    work = Path(args.out)
    weights = work / "syncnet_v2.model"
    torch.save(stand_in_state_dict(SyncNet()), weights)
    scorer = SyncScorer(load_syncnet(weights, "cpu"), "cpu", config.resources.sync.batch_windows)
    stage = SyncStage(config.stages.sync, scorer)
    clip = json.loads(Path(args.clips).read_text())
    job = SyncJob("bench", str(work / "clip.mp4"), str(work / "clip.npz"))
    shutil.copy(clip["video"], job.video)
    shutil.copy(clip["landmarks"], job.landmarks)
    import numpy as np
    frames = np.zeros((12, 224, 224, 3), np.uint8)
    scorer.score_many([(frames, np.zeros(12 * 640, np.int16))])     # warm: torch's first call
    t0, w0 = time.process_time(), time.perf_counter()
    [row] = stage.process([job])
    return {"cpu": time.process_time() - t0, "wall": time.perf_counter() - w0, "frames": clip["n_frames"],
            "windows": clip["n_frames"] - 5, "conf": row.get("sync_conf")}


WORKERS = {"pass": worker_pass, "parts": worker_parts, "sync": worker_sync}


# -- the driver ----------------------------------------------------------------------------------------

def run_worker(kind: str, tree: Path, **options) -> tuple[dict, float]:
    """A worker in a fresh interpreter, from `tree`; its result and the child's whole CPU (user + system)."""
    result = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--tree", str(tree),
               "--result", str(result)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        command += [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tree, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{kind} worker in {tree} failed ({process.returncode})")
    out = json.loads(result.read_text())
    result.unlink()
    return out, usage.ru_utime + usage.ru_stime


def short(commit: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", commit], check=True, capture_output=True,
                          text=True).stdout.strip()


def worktree(commit: str) -> Path:
    path = Path(f"/tmp/wt-bench-checks-{commit}")
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def side_by_side(work: Path) -> Path:
    import imageio_ffmpeg

    path = work / "two_speakers.mp4"
    kitchen = TALKING_HEADS / "man_kitchen_1080x1920_25fps.mp4"
    garden = TALKING_HEADS / "woman_garden_1080x1920_25fps.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-t", "10", "-i",
                    str(kitchen), "-t", "10", "-i", str(garden), "-filter_complex", SIDE_BY_SIDE, "-map", "[v]",
                    "-map", "0:a", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-t", "10", str(path)], check=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the code before #29 (a commit)")
    parser.add_argument("--after", default=None, help="a commit for the new side (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--input", type=Path, default=TALKING_HEADS)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--index-clips", type=int, default=100_000, help="synthetic clips in the duplicates index")
    # worker options
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sources", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--clips", help=argparse.SUPPRESS)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(1080, 1920), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](args)))
        return 0

    sources = sorted(map(str, args.input.glob("*.mp4")))
    args.before = short(args.before)
    args.after = None if args.after is None else short(args.after)
    made = []
    before = worktree(args.before)
    made.append(before)
    after = ROOT if args.after is None else worktree(args.after)
    if args.after is not None:
        made.append(after)
    work = Path(tempfile.mkdtemp(prefix="bench_checks_"))
    report: dict = {"before": args.before, "after": args.after or "working tree", "cpus": os.cpu_count(),
                    "load_start": load_average()}
    skip = {"run": {"skip": ["sync", "quality"]}}
    configs = {"before": skip, "after": {**skip, "stages": {"speech": {"enabled": True}}}}
    try:
        # 1. the pass, A B A B
        passes = {"before": [], "after": []}
        last_out = None
        for round_ in range(args.rounds):
            for side, tree in (("before", before), ("after", after)):
                out = work / f"{side}{round_}"
                result, process_cpu = run_worker("pass", tree, config=json.dumps(configs[side]), out=out,
                                                 sources=sources)
                result["process_cpu"] = process_cpu
                result["load"] = load_average()
                passes[side].append(result)
                print(f"pass {side} round {round_ + 1}: process {process_cpu:.1f} CPU-s, pass "
                      f"{result['pass_cpu']:.1f}, {result['source_s']:.1f} source-s, {result['kept']} of "
                      f"{result['clips']} kept, load {result['load']} ({result['code']})", flush=True)
                if side == "after" and round_ == args.rounds - 1:
                    last_out = out
                else:
                    shutil.rmtree(out, ignore_errors=True)
        report["pass"] = passes

        # 2. each check apart, on the last measurement's kept clips
        kept = passes["after"][-1]["kept_clips"]
        (work / "clips.json").write_text(json.dumps(kept))
        parts, parts_process = run_worker("parts", after, out=last_out, clips=work / "clips.json",
                                          index_clips=args.index_clips)
        report["parts"] = parts
        print("parts:", json.dumps(parts), flush=True)

        # 3. the sync stage on the longest kept clip
        longest = max(kept, key=lambda c: c["n_frames"])
        sync_dir = work / "sync"
        sync_dir.mkdir()
        (sync_dir / "clip.json").write_text(json.dumps({"video": str(last_out / longest["path"]),
                                                        "landmarks": str(last_out / longest["landmarks"]),
                                                        "n_frames": longest["n_frames"]}))
        sync, _ = run_worker("sync", after, out=sync_dir, clips=sync_dir / "clip.json")
        report["sync"] = sync
        print("sync:", json.dumps(sync), flush=True)

        # 4. two speakers: speaker against largest, interleaved
        video = side_by_side(work)
        trackers = {"speaker": [], "largest": []}
        for round_ in range(args.rounds):
            for policy in ("largest", "speaker"):
                config = {**skip, "stages": {"face": {"min_face_px": 64, "several_faces": policy}}}
                out = work / f"{policy}{round_}"
                result, process_cpu = run_worker("pass", after, config=json.dumps(config), out=out,
                                                 sources=[video], frame_size=(1296, 1152))
                result["process_cpu"] = process_cpu
                result.pop("kept_clips")
                trackers[policy].append(result)
                print(f"two speakers, {policy} round {round_ + 1}: process {process_cpu:.1f} CPU-s, pass "
                      f"{result['pass_cpu']:.2f}, face {result['stages'].get('face', 0):.2f}, faces followed "
                      f"{result['faces_followed']}, {result['kept']} of {result['clips']} kept", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        report["trackers"] = trackers
        report["load_end"] = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for tree in made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def print_tables(report: dict) -> None:
    passes = report["pass"]
    seconds = passes["after"][0]["source_s"]

    def per_s(values):
        return ", ".join(f"{v / seconds:.4f}" for v in values)

    print(f"\nmachine: {report['cpus']} CPUs, load average {report['load_start']} at the start, "
          f"{report['load_end']} at the end; {seconds:.1f} source-s")
    print(f"\n| CPU-s per source-second, rounds | {report['before']} (before #29) | {report['after']} (all checks on) "
          f"| difference |")
    print("|---|---:|---:|---:|")
    for key, name in (("process_cpu", "the whole process"), ("pass_cpu", "the pass (after imports and models)")):
        a = [p[key] for p in passes["before"]]
        b = [p[key] for p in passes["after"]]
        diff = [(y - x) / seconds for x, y in zip(a, b)]
        print(f"| {name} | {per_s(a)} | {per_s(b)} | {', '.join(f'{d:+.4f}' for d in diff)} |")
    stages = sorted(set().union(*(p["stages"] for side in passes.values() for p in side)))
    for stage in stages:
        a = [p["stages"].get(stage, 0.0) for p in passes["before"]]
        b = [p["stages"].get(stage, 0.0) for p in passes["after"]]
        print(f"| stage clock: {stage} | {per_s(a)} | {per_s(b)} | "
              f"{', '.join(f'{(y - x) / seconds:+.4f}' for x, y in zip(a, b))} |")
    a = [p["models_cpu"] for p in passes["before"]]
    b = [p["models_cpu"] for p in passes["after"]]
    print(f"| once per process: imports and models, CPU-s | {', '.join(f'{v:.2f}' for v in a)} | "
          f"{', '.join(f'{v:.2f}' for v in b)} | |")
    print(f"| clips kept / judged | {passes['before'][0]['kept']} / {passes['before'][0]['clips']} | "
          f"{passes['after'][0]['kept']} / {passes['after'][0]['clips']} | |")

    p = report["parts"]
    fps = p["fps"]
    frame = p["per_frame_checks_cpu"] / p["frames"]
    print(f"\neach check apart ({p['clips']} kept clips, {p['frames']} frames with the face, {p['clip_s']:.1f} s):")
    print("| check | CPU | CPU-s per source-second |\n|---|---:|---:|")
    print(f"| head pose + mouth sharpness + mouth darkness | {frame * 1e6:.0f} us a frame | {frame * fps:.4f} |")
    print(f"| of which head pose (solvePnP) | {p['pose_cpu'] / p['frames'] * 1e6:.0f} us a frame | "
          f"{p['pose_cpu'] / p['frames'] * fps:.4f} |")
    print(f"| speech (SpeechStage.judge) | {p['speech_cpu'] / p['clip_s']:.4f} CPU-s per audio second | "
          f"{p['speech_cpu'] / p['clip_s']:.4f} |")
    print(f"| speech: importing torch and loading Silero VAD, once a process | {p['speech_load_cpu']:.2f} CPU-s | |")
    print(f"| duplicates fingerprint | {p['fingerprint_cpu'] / p['clips'] * 1e3:.1f} ms a clip | "
          f"{p['fingerprint_cpu'] / p['clip_s']:.4f} |")
    print(f"| speaking cue (envelope + cue), only in a span with several faces | "
          f"{p['cue_cpu'] / p['clips'] * 1e3:.1f} ms a clip and face | {p['cue_cpu'] / p['clip_s']:.4f} per face |")
    print(f"| duplicates matching in the driver, at {p['index_clips']:,} clips | "
          f"{p['match_cpu'] / p['judged'] * 1e3:.3f} ms a clip | "
          f"{p['match_cpu'] / p['judged'] / (p['clip_s'] / p['clips']):.6f} |")

    s = report["sync"]
    print(f"\nsync stage, one {s['frames'] / fps:.1f} s clip ({s['windows']} windows), 1 thread, stand-in weights: "
          f"{s['cpu']:.1f} CPU-s, {s['cpu'] / (s['frames'] / fps):.2f} CPU-s per clip-second, "
          f"{s['cpu'] / s['windows'] * 1e3:.0f} ms a window")

    t = report["trackers"]
    length = t["speaker"][0]["source_s"]
    print(f"\ntwo speakers side by side ({length:.1f} s), CPU-s per source-second, rounds:")
    print("| | largest | speaker | difference |\n|---|---:|---:|---:|")
    for key, name in (("process_cpu", "the whole process"), ("pass_cpu", "the pass")):
        a, b = [r[key] for r in t["largest"]], [r[key] for r in t["speaker"]]
        print(f"| {name} | {', '.join(f'{v / length:.4f}' for v in a)} | {', '.join(f'{v / length:.4f}' for v in b)} "
              f"| {', '.join(f'{(y - x) / length:+.4f}' for x, y in zip(a, b))} |")
    a = [r["stages"].get("face", 0.0) for r in t["largest"]]
    b = [r["stages"].get("face", 0.0) for r in t["speaker"]]
    diff = ", ".join(f"{(y - x) / length:+.4f}" for x, y in zip(a, b))
    print(f"| stage clock: face | {', '.join(f'{v / length:.4f}' for v in a)} | "
          f"{', '.join(f'{v / length:.4f}' for v in b)} | {diff} |")
    print(f"| faces followed; kept / judged | {t['largest'][0]['faces_followed']}; {t['largest'][0]['kept']} / "
          f"{t['largest'][0]['clips']} | {t['speaker'][0]['faces_followed']}; {t['speaker'][0]['kept']} / "
          f"{t['speaker'][0]['clips']} | |")


if __name__ == "__main__":
    sys.exit(main())

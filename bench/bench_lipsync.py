"""`curate lipsync` on the CPU: inference frames/s by stage at the shared videos' resolution, and peak memory
against the length of the input, next to what holding every decoded frame in memory costs (the references' way).

    python bench/bench_lipsync.py [--quick] [--long-s 120] [--preset medium] [--memory-preset veryfast]
                                  [--batch-size 16] [--threads 1]

The model is Wav2Lip's official 96 x 96 generator (`networks.wav2lip.Wav2Lip`, 36 M parameters) with seeded
random weights (torch.manual_seed(0)), saved as an official-layout checkpoint and loaded with
`Wav2LipModel.from_file(..., cpu, batch_size)`: the model `curate lipsync --device cpu` runs (batch 16, the CLI's
CPU default). The speed does not depend on the weights' values. Torch runs one thread (`--threads`), as in the other
bench scripts; x264 and FFmpeg's decoder pick their own threads.

Every case runs `lipsync.pipeline.lipsync` in a fresh Python process of its own. Its peak resident memory is that
process's VmHWM (/proc/self/status, read at its end): the whole process, Python, torch, the model, PyAV, x264,
dlib. Not ru_maxrss: Linux carries the high-water mark of the image a process replaces at exec into it, so a
child's ru_maxrss (wait4 or its own getrusage) is at least what its parent held when it forked; the JSON keeps
ru_maxrss too. CPU seconds: the child's from wait4, and its own process_time around the call.

1. Speed: man_kitchen (HEVC 1080x1920, 25 fps, as shared, not re-encoded) with 10 s of woman_garden's speech
   (AAC, copied into the output): 250 frames, the video cut at the audio's end (so nothing is spooled). Per
   stage, the pipeline's own `Summary.seconds` (wall) and frames per second, and the process's CPU seconds inside
   the same spans (all threads; FFmpeg's decoder threads and x264's frame threads run in the background, so CPU
   may be counted in the span that is running while they work: the per-stage CPU split is approximate, the total
   is exact). "Outside the stages' spans" is the call's time no stage's span covers (opening the files, the
   landmark model, each frame's conversion to RGB). x264 preset `--preset` (default medium, the CLI's).
2. Memory against length, at 540x960 (the same resolution for every length, so the ratio means something): the
   first 10 s of man_kitchen scaled and encoded once; a 2-minute video made from it with `-stream_loop`,
   re-encoded the same way; woman_garden's speech cut to 10 s and looped to 2 minutes. Cases: 10 s video + 10 s
   audio, 2 min + 2 min, and 10 s video + 2 min audio (the video played back and forth from the frame spool).
   x264 preset `--memory-preset` (default veryfast, to keep the 2-minute runs short).
3. The references' pattern on the same inputs: Wav2Lip's inference.py reads every frame with cv2 into
   `full_frames` and LatentSync's pipeline reads the whole video (read_video) before any face is looked for. Here:
   a fresh process loads the same model (torch, the weights, as those scripts have by the time they infer), then
   decodes every frame with PyAV (as our reader does) to an RGB uint8 array and keeps them all in a list, nothing
   else; its peak is a lower bound of what those scripts hold (they keep face crops and outputs too).

`--quick`: 2 s and 6 s instead of 10 s and 2 minutes, a smoke run (under 2 minutes). The full run takes about 20
minutes on 2 shared cores: the model alone is about 0.11 CPU-s a frame, and the two 2-minute cases are 6,000 frames
(`--long-s 60` halves them). The machine is shared: wall seconds are noisy; "machine CPU-s" (all processes, from
/proc/stat) next to a case's own CPU seconds shows how busy it was.

Results: a markdown table on stdout and bench/results/lipsync.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KITCHEN = "man_kitchen_1080x1920_25fps.mp4"
GARDEN = "woman_garden_1080x1920_25fps.mp4"
SMALL = (540, 960)
STAGES = ("audio", "decode", "face", "crop", "model", "paste", "encode", "spool")


# ---------------------------------------------------------------- the child processes (one case each)

def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM).

    Not ru_maxrss: Linux carries the high-water mark of the image replaced at exec into it, so a child's
    ru_maxrss (from wait4 or its own getrusage) is at least what its parent held when it forked, here the
    parent's torch and model."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_pipeline(video: str, audio: str, out: str, checkpoint: str, preset: str, batch: int, threads: int,
                   result: str) -> None:
    """One `lipsync` call; wall and process CPU per stage, and for the whole call, into `result` (JSON)."""
    import torch

    from lipsync import pipeline
    from lipsync.models import Wav2LipModel

    if threads:
        torch.set_num_threads(threads)
    cpu_by_stage: dict[str, float] = {}

    class Clock(pipeline._Clock):   # the pipeline's clock, also adding up the process's CPU in each span
        def __call__(self, stage: str):
            wall_span = super().__call__(stage)

            class Span:
                def __enter__(self):
                    self.cpu = time.process_time()
                    wall_span.__enter__()

                def __exit__(self, *exc):
                    wall_span.__exit__(*exc)
                    cpu_by_stage[stage] = cpu_by_stage.get(stage, 0.0) + time.process_time() - self.cpu
            return Span()

    pipeline._Clock = Clock
    cpu, wall = time.process_time(), time.perf_counter()
    model = Wav2LipModel.from_file(Path(checkpoint), torch.device("cpu"), batch_size=batch)
    load = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "peak_rss_mb": peak_rss_mb()}
    cpu, wall = time.process_time(), time.perf_counter()
    summary = pipeline.lipsync(Path(video), Path(audio), Path(out), model, pipeline.Options(preset=preset))
    call = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    Path(result).write_text(json.dumps({
        "frames": summary.frames, "without_face": summary.without_face, "video_frames": summary.video_frames,
        "looped": summary.looped, "audio_s": summary.audio_s, "audio_mode": summary.audio_mode,
        "stage_wall_s": dict(summary.seconds), "stage_cpu_s": cpu_by_stage, "load": load, "call": call,
        "torch_threads": torch.get_num_threads(), "output_bytes": os.path.getsize(out),
        "peak_rss_mb": peak_rss_mb(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def child_all_frames(video: str, limit: str, checkpoint: str, threads: int, result: str) -> None:
    """The references' pattern: every frame decoded to RGB and kept in a list before anything else (the first
    `limit` frames where limit > 0), in a process that has loaded the same model as ours (torch, the weights), as
    those scripts have by the time they infer."""
    import av
    import torch

    from lipsync.models import Wav2LipModel

    if threads:
        torch.set_num_threads(threads)
    model = Wav2LipModel.from_file(Path(checkpoint), torch.device("cpu"), batch_size=16)
    before = peak_rss_mb()
    cpu = time.process_time()
    frames = []
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == int(limit):
                break
    Path(result).write_text(json.dumps({
        "frames": len(frames), "shape": list(frames[0].shape), "cpu_s": time.process_time() - cpu,
        "array_mb": sum(f.nbytes for f in frames) / 2 ** 20, "model": model.name,
        "peak_rss_before_frames_mb": before, "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


# ---------------------------------------------------------------- the parent

def run_child(*args: str) -> dict:
    """This script as a fresh process for one case; its own result plus the OS's accounting of it (wait4)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result = Path(handle.name)
    from run_bench import machine_busy_s

    cmd = [sys.executable, __file__, "--child", *args, str(result)]
    busy, start = machine_busy_s(), time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    measured = json.loads(result.read_text())
    result.unlink()
    measured["process"] = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start,
                           "ru_maxrss_mb": usage.ru_maxrss / 1024, "machine_cpu_s": machine_busy_s() - busy}
    return measured


def ffmpeg(*args: str | Path) -> None:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{done.stderr}")


def make_inputs(shared: Path, work: Path, short_s: float, long_s: float) -> dict[str, Path]:
    """The memory cases' videos at 540x960 (short, and the short one looped to long) and the speech files."""
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-g", "250"]
    loops = math.ceil(long_s / short_s) - 1
    paths = {"video_short": work / "kitchen_short.mp4", "video_long": work / "kitchen_long.mp4",
             "audio_short": work / "speech_short.m4a", "audio_long": work / "speech_long.m4a"}
    ffmpeg("-i", shared / KITCHEN, "-t", str(short_s), "-vf", f"scale={SMALL[0]}:{SMALL[1]}", *encode, "-c:a", "aac",
           paths["video_short"])
    ffmpeg("-stream_loop", str(loops), "-i", paths["video_short"], "-t", str(long_s), *encode, "-c:a", "aac",
           paths["video_long"])
    ffmpeg("-i", shared / GARDEN, "-t", str(short_s), "-vn", "-c:a", "aac", "-b:a", "128k", paths["audio_short"])
    ffmpeg("-stream_loop", str(math.ceil(long_s / 10) - 1), "-i", shared / GARDEN, "-t", str(long_s), "-vn",
           "-c:a", "aac", "-b:a", "128k", paths["audio_long"])
    return paths


def seconds_of(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return float(container.duration / 1_000_000)


def describe(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def main() -> int:
    from run_bench import DEFAULT_INPUT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="the shared talking-heads folder")
    parser.add_argument("--quick", action="store_true", help="2 s and 6 s inputs instead of 10 s and 2 minutes")
    parser.add_argument("--long-s", type=float, default=120.0, help="the long inputs' seconds (default 120)")
    parser.add_argument("--preset", default="medium", help="x264 preset of the speed case (default medium, the CLI's)")
    parser.add_argument("--memory-preset", default="veryfast", help="x264 preset of the memory cases (default "
                        "veryfast, to keep the 2-minute runs short)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per model call (default 16, the CLI's on "
                        "the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the cases (default 1, as the other "
                        "bench scripts; 0: torch's default, all cores)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lipsync.json")
    args = parser.parse_args()

    import torch

    from networks.wav2lip import Wav2Lip, official_layout

    short_s, long_s = (2.0, 6.0) if args.quick else (10.0, args.long_s)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="curate-bench-lipsync-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        generator = Wav2Lip()
        parameters = sum(p.numel() for p in generator.parameters())
        checkpoint = work / "wav2lip_random.pth"
        torch.save(official_layout(generator, 0, 0), checkpoint)
        del generator
        inputs = make_inputs(args.input, work, short_s, long_s)
        for path in (args.input / KITCHEN, *inputs.values()):
            path.read_bytes()   # into the page cache
        made_s = time.perf_counter() - started

        def pipeline(video: Path, audio: Path, name: str, preset: str) -> dict:
            return run_child("pipeline", str(video), str(audio), str(work / f"{name}.mp4"), str(checkpoint),
                             preset, str(args.batch_size), str(args.threads))

        def all_frames(video: Path, limit: int = 0) -> dict:
            return run_child("frames", str(video), str(limit), str(checkpoint), str(args.threads))

        speed = pipeline(args.input / KITCHEN, inputs["audio_short"], "speed", args.preset)
        memory = {
            "short": pipeline(inputs["video_short"], inputs["audio_short"], "short", args.memory_preset),
            "long": pipeline(inputs["video_long"], inputs["audio_long"], "long", args.memory_preset),
            "bounce": pipeline(inputs["video_short"], inputs["audio_long"], "bounce", args.memory_preset),
        }
        reference = {   # at full resolution: the frames the speed case shows (the file's first 10 s)
            "full_res_short": all_frames(args.input / KITCHEN, speed["frames"]),
            "short": all_frames(inputs["video_short"]),
            "long": all_frames(inputs["video_long"]),
        }
        lengths = {name: seconds_of(path) for name, path in inputs.items()}
    runtime_s = time.perf_counter() - started

    peak = lambda case: case["peak_rss_mb"]  # noqa: E731
    frames = speed["frames"]
    call_wall, call_cpu = speed["call"]["wall_s"], speed["call"]["cpu_s"]
    ratio = peak(memory["long"]) / peak(memory["short"])
    bounce_ratio = peak(memory["bounce"]) / peak(memory["short"])
    ref_ratio = peak(reference["long"]) / peak(reference["short"])
    report = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": speed["torch_threads"], "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "settings": {"quick": args.quick, "preset": args.preset, "memory_preset": args.memory_preset, "crf": 18,
                     "batch_size": args.batch_size, "threads": args.threads, "short_s": short_s, "long_s": long_s,
                     "memory_size": SMALL, "generator_parameters": parameters, "seed": 0},
        "input_seconds": lengths, "speed": speed, "memory": memory, "all_frames_in_memory": reference,
        "ratios": {"ours_long_over_short_peak_rss": ratio, "ours_bounce_over_short_peak_rss": bounce_ratio,
                   "all_frames_long_over_short_peak_rss": ref_ratio,
                   "all_frames_over_ours_short": peak(reference["short"]) / peak(memory["short"]),
                   "all_frames_over_ours_long": peak(reference["long"]) / peak(memory["long"]),
                   "all_frames_over_ours_full_res": peak(reference["full_res_short"]) / peak(speed)},
        "runtime_s": runtime_s, "inputs_made_s": made_s,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))

    proc = speed["process"]
    print(f"{os.cpu_count()} CPUs (shared with other work: wall seconds are noisy, CPU-s less so), torch "
          f"{torch.__version__} with {speed['torch_threads']} thread(s) in the cases; Wav2Lip 96 "
          f"({parameters / 1e6:.1f} M parameters, seeded random weights), batch {args.batch_size}, CRF 18"
          f"{'; --quick' if args.quick else ''}\n")
    print(f"1. Speed: {KITCHEN} (HEVC 1080x1920 as shared, {describe(lengths['audio_short'])} of "
          f"{GARDEN}'s speech, the video cut at its end): {frames} frames, {speed['without_face']} without the "
          f"face, audio {speed['audio_mode']}, x264 preset {args.preset}\n")
    print("| stage | wall s | frames/s (wall) | CPU-s | frames per CPU-s |")
    print("|---|---:|---:|---:|---:|")
    for stage in STAGES:
        if stage not in speed["stage_wall_s"]:
            continue
        w, c = speed["stage_wall_s"][stage], speed["stage_cpu_s"].get(stage, 0.0)
        print(f"| {stage} | {w:.2f} | {frames / w:.1f} | {c:.2f} | {frames / c if c else float('inf'):.1f} |")
    print(f"| outside the stages' spans | {call_wall - sum(speed['stage_wall_s'].values()):.2f} | | "
          f"{call_cpu - sum(speed['stage_cpu_s'].values()):.2f} | |")
    print(f"| **whole pipeline (the lipsync call)** | **{call_wall:.2f}** | **{frames / call_wall:.2f}** | "
          f"**{call_cpu:.2f}** | **{frames / call_cpu:.2f}** |")
    print(f"\n(the whole process: {proc['wall_s']:.1f} s wall, {proc['cpu_s']:.1f} CPU-s, of which loading the model "
          f"{speed['load']['wall_s']:.1f} s; the machine was busy {proc['machine_cpu_s']:.0f} CPU-s meanwhile, all "
          f"processes; peak RSS {peak(speed):.0f} MB)")

    def row(label: str, case: dict) -> str:
        p = case["process"]
        return (f"| {label} | {case['frames']} | {'yes' if 'spool' in case['stage_wall_s'] else 'no'} | "
                f"{case['load']['peak_rss_mb']:.0f} | {peak(case):.0f} | {p['wall_s']:.1f} | {p['cpu_s']:.1f} | "
                f"{case['frames'] / p['cpu_s']:.2f} | {p['machine_cpu_s']:.0f} |")

    print(f"\n2. Peak RSS of the whole process against length, {SMALL[0]}x{SMALL[1]}, x264 preset "
          f"{args.memory_preset}:\n")
    print("| case | frames | spooled | peak RSS MB with the model loaded | peak RSS MB | wall s | CPU-s | "
          "frames per CPU-s | machine CPU-s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    print(row(f"ours: {describe(short_s)} video, {describe(short_s)} audio", memory["short"]))
    print(row(f"ours: {describe(long_s)} video, {describe(long_s)} audio", memory["long"]))
    print(row(f"ours: {describe(short_s)} video, {describe(long_s)} audio (back and forth)", memory["bounce"]))
    print(f"| ours, {describe(long_s)} / {describe(short_s)} | | | | **{ratio:.2f}x** | | | | |")
    print(f"| ours, back and forth / {describe(short_s)} | | | | **{bounce_ratio:.2f}x** | | | | |")

    def ref_row(label: str, case: dict) -> str:
        return (f"| {label} | {case['frames']} | {case['peak_rss_before_frames_mb']:.0f} | {peak(case):.0f} | "
                f"{case['array_mb']:.0f} |")

    print("\n3. All frames in memory (the same model loaded, then every frame decoded to RGB into a list), "
          "same inputs:\n")
    print("| input | frames | peak RSS MB with the model loaded | peak RSS MB | the frames' arrays MB |")
    print("|---|---:|---:|---:|---:|")
    print(ref_row(f"{describe(short_s)}, {SMALL[0]}x{SMALL[1]}", reference["short"]))
    print(ref_row(f"{describe(long_s)}, {SMALL[0]}x{SMALL[1]}", reference["long"]))
    print(ref_row(f"{KITCHEN}'s first {frames} frames, 1080x1920", reference["full_res_short"]))
    print(f"| all frames, {describe(long_s)} / {describe(short_s)} | | | **{ref_ratio:.2f}x** | |")

    print("\n| peak RSS MB | ours (streaming) | all frames in memory | all frames / ours |")
    print("|---|---:|---:|---:|")
    for label, ours_case, ref_case in (
            (f"{describe(short_s)}, {SMALL[0]}x{SMALL[1]}", memory["short"], reference["short"]),
            (f"{describe(long_s)}, {SMALL[0]}x{SMALL[1]}", memory["long"], reference["long"]),
            (f"{describe(short_s)}, 1080x1920 (the speed case)", speed, reference["full_res_short"])):
        print(f"| {label} | {peak(ours_case):.0f} | {peak(ref_case):.0f} | {peak(ref_case) / peak(ours_case):.1f}x |")
    print(f"\nruntime {runtime_s / 60:.1f} min (making the inputs {made_s:.0f} s); written to {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "pipeline":
            video, audio, out, checkpoint, preset, batch, threads, result = rest
            child_pipeline(video, audio, out, checkpoint, preset, int(batch), int(threads), result)
        else:
            video, limit, checkpoint, threads, result = rest
            child_all_frames(video, limit, checkpoint, int(threads), result)
        sys.exit(0)
    sys.exit(main())

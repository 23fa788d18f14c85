"""`curate lipsync`'s memory against the audio's length: peak RSS for 10 s, 60 s, 180 s and 600 s of speech, both
models, a video as long as the audio and a 5 s one played back and forth, in one run.

    python bench/bench_lipsync_memory.py [--lengths 10,60,180,600] [--models wav2lip,latentsync]
                                         [--cases long,bounce] [--code DIR] [--bounce-memory-mb 512] [--features]

What is measured is the pipeline's memory (the decode loop, the tracker, the audio's features, the frames kept
for the way back, the writer), not a network's: each model is its real class in `lipsync.models` (Wav2Lip's
mel windows, LatentSync's Whisper chunks from the tiny encoder at its full size, seeded random weights) with the
network that makes the faces replaced by a stand-in of a few kilobytes (Wav2Lip: a 1x1 convolution of the
reference face plus the window's mean; LatentSync: the sampler returns its faces), so that 600 s of video run
on two shared CPU cores in minutes. A network's working memory is the same for every batch, whatever the length.

Inputs, made once: man_kitchen's seconds 12-17 scaled to 270x480 (x264 veryfast, CRF 18); that 5 s looped to
600 s (the "long" video, cut by the pipeline at the audio's end, so as long as the audio); the three shared
videos' speech concatenated (about 50 s) and looped to each length (AAC, copied into the output). Output x264
`ultrafast`, CRF 18, batch 16.

Every case is a fresh Python process running `lipsync.pipeline.lipsync` once; its peak is its VmHWM
(/proc/self/status) at the end, the whole process (Python, torch, the model, PyAV, x264, dlib). `--code DIR`
runs the cases on another checkout's `lipsync/` (and the rest of its tree), for a before/after in one run.
Results: a markdown table on stdout and bench/results/lipsync_memory.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KITCHEN = "man_kitchen_1080x1920_25fps.mp4"
SPEAKERS = ("woman_garden_1080x1920_25fps.mp4", "man_kitchen_1080x1920_25fps.mp4", "man_sofa_1080x1920_30fps.mp4")
SIZE = (270, 480)


def vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(code: str, model_name: str, video: str, audio: str, out: str, bounce_mb: str, result: str) -> None:
    sys.path.insert(0, code)
    import numpy as np
    import torch

    from lipsync import pipeline
    from lipsync.models import LatentSyncModel, Wav2LipModel, framing_named

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class StandInGenerator(torch.nn.Module):
        """Wav2Lip's generator's call (mel windows (B, 1, 80, 16), faces (B, 6, S, S) -> (B, 3, S, S)), tiny."""

        def __init__(self, size: int = 96):
            super().__init__()
            self.size = size
            self.mix = torch.nn.Conv2d(3, 3, 1)

        def forward(self, mel, faces):
            return torch.sigmoid(self.mix(faces[:, 3:]) + mel.mean((1, 2, 3))[:, None, None, None])

    if model_name == "wav2lip":
        model = Wav2LipModel(StandInGenerator(96), framing_named("box", 96), torch.device("cpu"), 16)
    else:
        from networks.latentsync import VAE_CONFIG, build_vae
        from networks.latentsync_unet import LatentSyncUNet, UNetConfig
        from networks.whisper import WhisperEncoder

        unet = LatentSyncUNet(UNetConfig(block_out_channels=(32, 64, 64, 64), norm_num_groups=8,
                                         attention_head_dim=8, motion_module_kwargs={"num_attention_heads": 8}))
        vae = build_vae({**VAE_CONFIG, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4,
                         "layers_per_block": 1})
        model = LatentSyncModel(unet.eval(), vae.eval(), WhisperEncoder().eval(), 256, torch.device("cpu"), 16)
        del unet, vae
        model.sampler = lambda faces, chunks: faces + 0 * chunks.mean()   # the chunks are read, the faces kept
    loaded = vm("VmHWM")
    if video == "-":   # --features: the audio side alone, every frame's features read in order, as the pipeline does
        from lipsync.media import frames_for, read_speech

        cpu = time.process_time()
        samples = read_speech(Path(audio))
        features = model.prepare_audio(samples)
        for start in range(0, frames_for(samples.size), 16):
            frames = list(range(start, min(start + 16, frames_for(samples.size))))
            if model_name == "wav2lip":
                model.generate(np.zeros((len(frames), 96, 96, 3), np.uint8), frames, features)
            else:
                features.get(frames)
        Path(result).write_text(json.dumps({"frames": frames_for(samples.size), "peak_rss_loaded_mb": loaded,
                                            "peak_rss_mb": vm("VmHWM"), "cpu_s": time.process_time() - cpu}))
        return
    options = pipeline.Options(crf=18, preset="ultrafast")
    if hasattr(options, "bounce_memory_mb"):
        options.bounce_memory_mb = float(bounce_mb)
    cpu, wall = time.process_time(), time.perf_counter()
    summary = pipeline.lipsync(Path(video), Path(audio), Path(out), model, options)
    Path(result).write_text(json.dumps({
        "frames": summary.frames, "looped": summary.looped, "video_frames": summary.video_frames,
        "spooled": getattr(summary, "spooled", summary.looped), "frames_held_mb": getattr(summary, "frames_held_mb", 0),
        "seconds": dict(summary.seconds), "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
        "peak_rss_loaded_mb": loaded, "peak_rss_mb": vm("VmHWM"), "end_rss_mb": vm("VmRSS"),
        "output_bytes": os.path.getsize(out), "numpy": np.__version__,
    }))


def ffmpeg(*args) -> None:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{done.stderr}")


def make_inputs(shared: Path, work: Path, lengths: list[int]) -> dict[str, Path]:
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-g", "125"]
    short, long = work / "kitchen_5s.mp4", work / "kitchen_long.mp4"
    ffmpeg("-ss", "12", "-i", shared / KITCHEN, "-t", "5", "-vf", f"scale={SIZE[0]}:{SIZE[1]}", *encode,
           "-c:a", "aac", short)
    ffmpeg("-stream_loop", str(math.ceil(max(lengths) / 5)), "-i", short, "-t", str(max(lengths) + 1), "-c", "copy",
           long)
    speech = work / "speech.m4a"
    inputs = [x for name in SPEAKERS for x in ("-i", shared / name)]
    ffmpeg(*inputs, "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1[a]", "-map", "[a]", "-ar", "44100",
           "-c:a", "aac", "-b:a", "128k", speech)
    paths = {"short": short, "long": long}
    for seconds in lengths:
        paths[f"audio_{seconds}"] = work / f"speech_{seconds}.m4a"
        ffmpeg("-stream_loop", str(math.ceil(seconds / 40)), "-i", speech, "-t", str(seconds), "-c", "copy",
               paths[f"audio_{seconds}"])
    return paths


def main() -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from run_bench import DEFAULT_INPUT, machine_busy_s

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--lengths", default="10,60,180,600", help="seconds of audio (default 10,60,180,600)")
    parser.add_argument("--models", default="wav2lip,latentsync")
    parser.add_argument("--cases", default="long,bounce", help="long: a video as long as the audio; bounce: 5 s "
                        "played back and forth")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose lipsync/ runs (default this one)")
    parser.add_argument("--bounce-memory-mb", type=float, default=512.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lipsync_memory.json")
    parser.add_argument("--features", action="store_true", help="the audio side alone (speech read, features made "
                        "and every frame's read in order, no video): seconds a case, for a before/after with --code")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="curate-bench-lipsync-memory-") as tmp:
        work = Path(tmp)
        paths = make_inputs(args.input, work, lengths)
        for model in args.models.split(","):
            for case in (["features"] if args.features else args.cases.split(",")):
                for seconds in lengths:
                    result = work / "result.json"
                    busy, t0 = machine_busy_s(), time.perf_counter()
                    subprocess.run([sys.executable, __file__, "--child", str(args.code), model,
                                    "-" if case == "features" else str(paths["long" if case == "long" else "short"]),
                                    str(paths[f"audio_{seconds}"]),
                                    str(work / "out.mp4"), str(args.bounce_memory_mb), str(result)], check=True)
                    row = {"model": model, "case": case, "audio_s": seconds, **json.loads(result.read_text()),
                           "process_wall_s": time.perf_counter() - t0, "machine_cpu_s": machine_busy_s() - busy}
                    rows.append(row)
                    print(f"{model} {case} {seconds} s: peak {row['peak_rss_mb']:.0f} MB "
                          f"(loaded {row['peak_rss_loaded_mb']:.0f}), {row['frames']} frames, "
                          f"{row['process_wall_s']:.0f} s, spool {row.get('seconds', {}).get('spool', 0):.1f} s",
                          file=sys.stderr, flush=True)
    runtime = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"code": str(args.code), "lengths": lengths, "size": SIZE, "rows": rows,
                                     "bounce_memory_mb": args.bounce_memory_mb, "cpu_count": os.cpu_count(),
                                     "runtime_s": runtime}, indent=2))
    print(f"peak RSS MB of the whole process ({SIZE[0]}x{SIZE[1]}, code {args.code}); the last column: the "
          f"longest over the shortest\n")
    print("| model | video | " + " | ".join(f"{s} s" for s in lengths) + " | ratio |")
    print("|---|---|" + "---:|" * (len(lengths) + 1))
    for model in args.models.split(","):
        for case in (["features"] if args.features else args.cases.split(",")):
            peaks = [r["peak_rss_mb"] for r in rows if r["model"] == model and r["case"] == case]
            label = {"long": "as long as the audio", "bounce": "5 s, back and forth",
                     "features": "none: the audio's features alone"}[case]
            print(f"| {model} | {label} | " + " | ".join(f"{p:.0f}" for p in peaks)
                  + f" | {peaks[-1] / peaks[0]:.2f}x |")
    print(f"\nruntime {runtime / 60:.1f} min")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        sys.exit(0)
    sys.exit(main())

"""A personal Wav2Lip model judged on held-out speech (issue #31): the table and the frame strip of
docs/personal-model.md.

    python bench/bench_personal.py --lists LISTS --generator RUN --other-speech FILE --out DIR

LISTS is a `curate filelist --split time` folder of one speaker (train.txt: the earlier clips; val.txt: the
last ones, disjoint in time); RUN the generator's run folder (`curate train wav2lip ... --config
configs/wav2lip-personal.yaml`). Every video below is made with the user's commands (`curate lipsync`,
`curate eval-sync --weight-free --json`), in subprocesses.

The held-out speech is the held-out clip's own sound. Each training clip is a face to drive (the user's case:
footage of the person, new words), and every row is scored against the held-out speech by the weight-free
speaking cue (the tracked mouth's opening against the speech's loudness at the best lag, over 3 s windows;
`faces/speaking.py`):
- real: the held-out clip itself, its own speech (what sync looks like);
- unchanged: each training clip, its video untouched, its sound replaced by the held-out speech;
- generated: `curate lipsync` of each training clip with the held-out speech;
- mismatched: `curate lipsync` of each training clip driven by another person's speech, its sound then replaced
  by the held-out speech (a model that moves the mouth, but not to these words).
Mouth PSNR and SSIM (lower half, against copying the reference) are the run's own validation on the held-out
clip's windows (metrics.jsonl). `--curve` also scores every kept checkpoint on the first training clip.
Results: DIR/personal.json, DIR/strip.png (real, generated and reference frames, and the mouth's opening against
the speech's loudness), and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def curate(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"curate {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result.stdout


def lipsync(video: Path, audio: Path, out: Path, checkpoint: Path) -> Path:
    if not out.exists():
        curate("lipsync", video, audio, "-o", out, "--checkpoint", checkpoint, "--no-progress", "--preset", "veryfast")
    return out


def with_speech(video: Path, speech: np.ndarray, out: Path) -> Path:
    from media.encode import remux_with_audio

    if not out.exists():
        remux_with_audio(video, out, speech, 16000)
    return out


def wav(samples: np.ndarray, out: Path) -> Path:
    from lipsync.media import write_speech

    write_speech(samples, out)
    return out


def cue_scores(videos: list[Path]) -> list[float]:
    rows = json.loads(curate("eval-sync", *videos, "--weight-free", "--json"))
    by_path = {Path(r["video"]).resolve(): r for r in rows}
    return [float(by_path[Path(v).resolve()].get("speaking_cue", float("nan"))) for v in videos]


def strip(out: Path, real: Path, generated: Path, reference: Path, frames: int = 8) -> dict:
    """Real, generated and reference faces at `frames` evenly spaced times, and the real and generated mouths'
    opening against the held-out speech's loudness (z-scores), with each one's weight-free score."""
    from faces import speaking
    from faces.settings import FaceParams
    from lipsync.preview import Curve, draw_strip, zscored
    from stages.sync_eval import SAMPLE_RATE, SAMPLES_PER_FRAME, load, speaking_cue

    loaded = {name: load(str(path), False, FaceParams()) for name, path in
              (("real", real), ("generated", generated), ("reference", reference))}
    count = min(len(v.pictures) for v in loaded.values())
    shown = np.linspace(0, count - 1, frames + 2).round().astype(int)[1:-1]
    rows = [(name, [np.ascontiguousarray(v.pictures[k][..., ::-1]) for k in shown]) for name, v in loaded.items()]
    envelope = speaking.speech_envelope(loaded["real"].samples, count, SAMPLES_PER_FRAME, SAMPLE_RATE)
    cues = {name: speaking_cue(v, 6).score for name, v in loaded.items()}
    curves = [Curve(f"real mouth opening (score {cues['real']:.2f})", zscored(loaded["real"].openings[0][:count]),
                    "tab:blue"),
              Curve(f"generated mouth opening (score {cues['generated']:.2f})",
                    zscored(loaded["generated"].openings[0][:count]), "tab:red"),
              Curve("held-out speech envelope", zscored(envelope.astype(np.float64)), "0.55")]
    draw_strip(out, rows, curves, title="held-out speech: the real clip, a training clip's face made to say it, "
               "and that face unchanged", marks=[k / 25 for k in shown], tile_height=96)
    return {"frames": shown.tolist(), "scores": cues}


def lines(path: Path) -> list[Path]:
    return [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", type=Path, required=True)
    parser.add_argument("--generator", type=Path, required=True, help="the generator's run folder")
    parser.add_argument("--other-speech", type=Path, required=True, help="another person's speech (any file "
                        "with sound, as long as the held-out speech or longer)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--faces", type=int, help="drive only the first N training clips (default: every one)")
    parser.add_argument("--checkpoint", type=Path, help="the generator's checkpoint (default: its last)")
    parser.add_argument("--curve", action="store_true", help="score every kept checkpoint on the first face")
    args = parser.parse_args()
    from lipsync.media import read_speech

    args.out.mkdir(parents=True, exist_ok=True)
    faces, held = lines(args.lists / "train.txt")[:args.faces], lines(args.lists / "val.txt")[0]
    speech = read_speech(held)
    other_speech = read_speech(args.other_speech)[:len(speech)]
    if len(other_speech) < len(speech):
        raise SystemExit(f"{args.other_speech} is shorter than the held-out speech ({len(speech) / 16000:.1f} s)")
    other_speech = wav(other_speech, args.out / "other_speech.wav")
    checkpoints = sorted((args.generator / "checkpoints").glob("step-*"))
    last = args.checkpoint or checkpoints[-1]
    made, unchanged, mismatched = [], [], []
    for k, face in enumerate(faces):
        unchanged.append(with_speech(face, speech, args.out / f"unchanged-{k}.mp4"))
        made.append(lipsync(face, held, args.out / f"generated-{k}.mp4", last))
        other = lipsync(face, other_speech, args.out / f"other-{k}.mp4", last)
        mismatched.append(with_speech(other, speech, args.out / f"mismatched-{k}.mp4"))
    rows = {"real": [held], "unchanged": unchanged, "generated": made, "mismatched": mismatched}
    scores = {name: cue_scores(videos) for name, videos in rows.items()}
    curve = []
    if args.curve:
        for checkpoint in checkpoints:
            step = int(checkpoint.name.removeprefix("step-"))
            video = lipsync(faces[0], held, args.out / f"curve-{step}.mp4", checkpoint)
            curve.append({"step": step, "speaker_cue": cue_scores([video])[0]})
    metrics = [json.loads(line) for line in (args.generator / "metrics.jsonl").read_text().splitlines()]
    validations = [m for m in metrics if "val_l1" in m]
    final = validations[-1]
    result = {"held_out": str(held), "faces": [str(f) for f in faces], "checkpoint": str(last),
              "scores": scores, "curve": curve,
              "validation": {k: final[k] for k in ("step", "val_l1", "val_copy_l1", "val_psnr", "val_copy_psnr",
                                                   "val_ssim", "val_copy_ssim", "val_sync", "val_sync_truth")
                             if k in final},
              "validations": [{k: v for k, v in m.items() if k.startswith("val_") or k == "step"}
                              for m in validations]}
    result["strip"] = strip(args.out / "strip.png", held, made[0], unchanged[0])
    (args.out / "personal.json").write_text(json.dumps(result, indent=1))
    print("| speech-driven video, scored against the held-out speech | videos | weight-free sync score (mean) |")
    print("|---|---:|---:|")
    for name, values in scores.items():
        print(f"| {name} | {len(values)} | {np.nanmean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)}) |")
    v = result["validation"]
    print(f"\nheld-out windows at step {v['step']}: lower-half PSNR {v['val_psnr']:.2f} dB (copying the reference "
          f"{v.get('val_copy_psnr', float('nan')):.2f}), SSIM {v['val_ssim']:.3f} "
          f"({v.get('val_copy_ssim', float('nan')):.3f}), L1 {v['val_l1']:.4f} ({v['val_copy_l1']:.4f})")
    for point in curve:
        print(f"step {point['step']}: weight-free sync score {point['speaker_cue']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A VoxCeleb2-shaped set built from the real talking heads: short 224x224 face tracks, 25 fps, AAC 16 kHz mono.

    python bench/make_voxceleb_set.py OUT [--utterances 120] [--long 12]

OUT/short/idNNNNN/<video>/NNNNN.mp4: `--utterances` face tracks of 5.5 to 9.5 s, cut at staggered times from
the three real videos (each a square around the speaker's face, the face about half its width, as VoxCeleb2's
are). OUT/long/idNNNNN/long_NN.mp4: the same content as `--long` longer files, each the concatenation of
consecutive utterances (so the per-file cost can be set against the same seconds in a few files). The face's
place is found once per video with dlib's detector.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import av
import dlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADS = ROOT.parent / "shared" / "data" / "talking-heads"
VIDEOS = ["man_kitchen_1080x1920_25fps.mp4", "man_sofa_1080x1920_30fps.mp4", "woman_garden_1080x1920_25fps.mp4"]


def ffmpeg_exe() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from footage import ffmpeg_exe as found

    return found()


def face_square(path: Path) -> tuple[int, int, int, float]:
    """(x, y, side) of a square twice the face's width around it, in the upright picture; and the duration."""
    detector = dlib.get_frontal_face_detector()
    with av.open(str(path)) as container:
        duration = container.duration / 1e6
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    small = frame[::4, ::4].copy()
    [box] = sorted(detector(small, 1), key=lambda b: -b.width())[:1]
    cx, cy, width = (box.left() + box.right()) * 2, (box.top() + box.bottom()) * 2, box.width() * 4
    side = min(2 * width, frame.shape[1], frame.shape[0])
    x = int(np.clip(cx - side // 2, 0, frame.shape[1] - side))
    y = int(np.clip(cy - side // 2, 0, frame.shape[0] - side))
    return x, y, side, duration


def cut(exe: str, source: Path, start: float, seconds: float, square: tuple[int, int, int], target: Path) -> None:
    x, y, side = square
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-v", "error", "-y", "-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", str(source),
                    "-vf", f"crop={side}:{side}:{x}:{y},scale=224:224", "-r", "25", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-ar", "16000", "-ac", "1",
                    "-c:a", "aac", str(target)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--utterances", type=int, default=120)
    parser.add_argument("--long", type=int, default=12)
    args = parser.parse_args()
    exe = ffmpeg_exe()
    found = {name: face_square(HEADS / name) for name in VIDEOS}
    per_long = max(1, args.utterances // args.long)
    plan = []                      # (video, start, seconds) per utterance
    for number in range(args.utterances):
        name = VIDEOS[number % len(VIDEOS)]
        *_, duration = found[name]
        seconds = 5.5 + (number * 0.37) % 4.0
        start = (number * 2.3) % max(0.1, duration - seconds - 0.2)
        plan.append((name, start, seconds))
        speaker = f"id{number // 20:05d}"
        cut(exe, HEADS / name, start, seconds, found[name][:3],
            args.out / "short" / speaker / f"v{number // 5:05d}" / f"{number % 5 + 1:05d}.mp4")
    for group in range(args.long):
        pieces = plan[group * per_long:(group + 1) * per_long]
        if not pieces:
            break
        listing = args.out / "long" / f"pieces_{group:02d}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        names = [args.out / "short" / f"id{(group * per_long + k) // 20:05d}" / f"v{(group * per_long + k) // 5:05d}"
                 / f"{(group * per_long + k) % 5 + 1:05d}.mp4" for k in range(len(pieces))]
        listing.write_text("".join(f"file '{path.resolve()}'\n" for path in names))
        target = args.out / "long" / f"id{group:05d}" / f"long_{group:02d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                        str(target)], check=True)
        listing.unlink()
    seconds = sum(s for _, _, s in plan)
    print(f"{len(plan)} utterances, {seconds:.0f} s, in {args.out / 'short'}; the same in {args.long} files in "
          f"{args.out / 'long'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

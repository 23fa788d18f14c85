"""Test media made on the spot: FFmpeg (the imageio-ffmpeg binary) with argument lists, never a shell."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import av
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
TALKING_HEADS = SHARED / "data" / "talking-heads"
KITCHEN = TALKING_HEADS / "man_kitchen_1080x1920_25fps.mp4"
SOFA = TALKING_HEADS / "man_sofa_1080x1920_30fps.mp4"
GARDEN = TALKING_HEADS / "woman_garden_1080x1920_25fps.mp4"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str | Path) -> None:
    """Run ffmpeg; the last argument is the output file, whose folder is made first."""
    Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{result.stderr}")


def unseekable_mkv(path: Path, seconds: float) -> Path:
    """Matroska written to a pipe, as live recorders do: no duration in its header."""
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
           f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i", f"sine=duration={seconds}",
           *x264(), "-c:a", "aac", "-f", "matroska", "pipe:1"]
    with open(path, "wb") as out:
        subprocess.run(cmd, stdout=out, check=True)
    return path


def x264(crf: int = 20) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p"]


def synthetic(path: Path, seconds: float, fps: str = "25", size: str = "320x240", sample_rate: int = 16000,
              channels: int = 1, video: bool = True, audio: bool = True) -> Path:
    """A moving test pattern with a tone: lavfi testsrc2 and sine."""
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        layout = "mono" if channels == 1 else "stereo"
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}",
                 "-af", f"aformat=channel_layouts={layout}"]
    if video:
        args += x264()
    if audio:
        args += ["-c:a", "aac", "-b:a", "96k"]
    ffmpeg(*args, path)
    return path


def av_markers(path: Path, seconds: float, fps: str, sample_rate: int, channels: int, marks: list[float]) -> Path:
    """Moving pattern with a white box flashing and a 1 kHz beep starting at the same instants (`marks`).

    The box covers a small corner of the picture, so the shot detector does not take the flash for a cut.
    """
    flash = "+".join(f"between(t,{m},{m + 0.2})" for m in marks)
    beep = "+".join(f"between(t,{m},{m + 0.2})" for m in marks)
    layout = "mono" if channels == 1 else "stereo"
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i",
        f"aevalsrc=exprs='0.8*sin(2*PI*1000*t)*gt({beep},0)':sample_rate={sample_rate}:duration={seconds}",
        "-vf", f"drawbox=x=0:y=0:w=48:h=48:color=white:t=fill:enable='{flash}'",
        "-af", f"aformat=channel_layouts={layout}",
        *x264(10), "-c:a", "pcm_s16le" if path.suffix in (".mov", ".mkv") else "aac", "-b:a", "192k",
        path,
    )
    return path


def hard_cut(path: Path, first: Path, first_s: float, second: Path, second_s: float, size: str = "360x640") -> Path:
    """Two real videos back to back: a hard cut at `first_s` seconds."""
    width, height = size.split("x")
    ffmpeg(
        "-t", str(first_s), "-i", first, "-t", str(second_s), "-i", second,
        "-filter_complex",
        f"[0:v]scale={width}:{height},fps=25,setsar=1[v0];[1:v]scale={width}:{height},fps=25,setsar=1[v1];"
        "[0:a]aresample=44100[a0];[1:a]aresample=44100[a1];[v0][a0][v1][a1]concat=n=2:v=1:a=1[v][a]",
        "-map", "[v]", "-map", "[a]", *x264(), "-c:a", "aac", path,
    )
    return path


def downscaled(path: Path, source: Path, size: str = "360x640", seconds: float | None = None, extra: list[str] | None = None) -> Path:
    """A real video made small, so tests run fast; `extra` adds output options (e.g. -r 30000/1001)."""
    args = ["-i", source]
    if seconds is not None:
        args += ["-t", str(seconds)]
    ffmpeg(*args, "-vf", f"scale={size.replace('x', ':')}", *(extra or []), *x264(), "-c:a", "aac", path)
    return path


def with_cover_art(path: Path, source: Path, work: Path) -> Path:
    """`source` with a cover picture as its first video stream, as music and phone apps write them."""
    cover = work / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=64x64", "-frames:v", "1", cover)
    ffmpeg("-i", cover, "-i", source, "-map", "0", "-map", "1", "-c", "copy", "-c:v:0", "png",
           "-disposition:v:0", "attached_pic", "-disposition:v:1", "0", path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def read_clip(path: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Frames (RGB), mono int16 audio and stream facts of a written clip."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        facts = {
            "fps": float(video.average_rate), "width": video.codec_context.width,
            "height": video.codec_context.height, "sample_rate": audio.codec_context.sample_rate,
            "channels": audio.codec_context.channels, "audio_codec": audio.codec_context.name,
            "video_codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
        }
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
    with av.open(str(path)) as container:
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    return frames, samples, facts

"""Write stage: the end of the chain. Encodes a clip's frames and audio into one MP4, atomically.

Video is H.264 yuv420p (libx264, CRF), audio mono at the pipeline's sample rate; FLAC by default, because
it is lossless (the sync stage and the trainers read exactly the samples that were cut) and MP4 readers
built on FFmpeg (PyAV, decord, torchaudio, ffmpeg itself) decode it. The file appears under its final name
only when complete, so a crash never leaves a half-written clip under a name a rerun would trust.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

from stages.settings import WriteParams
from manifests.files import OutputError

STAGE = "write"


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the shorter side at `short_side` (never upscaled), aspect kept, both sides even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then fsync it and rename it into place, so the file
    appears under its name only when complete. A failure to write is an OutputError: the run must stop."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        _discard(partial)
        raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(partial)
        raise


def _discard(partial: Path) -> None:
    """Remove a half-written file if the disk lets us; if not (read-only now), the next run's sweep does."""
    try:
        partial.unlink(missing_ok=True)
    except OSError:
        pass


def write_arrays(path: Path, arrays: dict) -> None:
    """Per-frame arrays beside a clip (.npz)."""

    def save(target: Path) -> None:
        with open(target, "wb") as handle:  # a handle: given a name, numpy would append ".npz" to it
            np.savez_compressed(handle, **arrays)

    write_atomically(path, save)


class ClipWriter:
    def __init__(self, params: WriteParams, fps: int, sample_rate: int, threads: int = 1):
        self.params = params
        self.fps = fps
        self.sample_rate = sample_rate
        self.threads = max(1, int(threads))

    def prepare(self, frame: av.VideoFrame, size: tuple[int, int], rotation: int = 0) -> av.VideoFrame:
        """The picture this writer will store for `frame` (yuv420p): scaled once, as soon as it is decoded.

        `size` is the stored frame's size before `rotation` (degrees counter-clockwise, a multiple of 90)
        turns it upright.
        """
        width, height = size
        small = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
        if rotation % 360 == 0:
            return small
        upright = np.ascontiguousarray(np.rot90(small.to_ndarray(format="bgr24"), rotation // 90))
        return av.VideoFrame.from_ndarray(upright, format="bgr24").reformat(format="yuv420p")

    def write(self, path: Path, frames: Sequence[av.VideoFrame], audio: np.ndarray) -> dict:
        """Encode `frames` (all the same size, any pixel format) and mono int16 `audio` into `path`."""
        if not frames:
            raise ValueError("a clip needs at least one frame")
        write_atomically(path, lambda target: self._encode(target, frames, audio))
        return {"bytes": path.stat().st_size, "width": frames[0].width, "height": frames[0].height}

    def _encode(self, target: Path, frames: Sequence[av.VideoFrame], audio: np.ndarray) -> None:
        p = self.params
        with av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            video = out.add_stream(
                "libx264", rate=self.fps,
                options={"crf": str(p.crf), "preset": p.preset, "threads": str(self.threads)},
            )
            video.width, video.height = frames[0].width, frames[0].height
            video.pix_fmt = "yuv420p"
            sound = out.add_stream(p.audio_codec, rate=self.sample_rate, layout="mono")
            if p.audio_codec == "aac":
                sound.bit_rate = 128_000
            time_base = Fraction(1, self.fps)
            chunk = sound.codec_context.frame_size or 4096
            cursor = 0
            for i, picture in enumerate(frames):
                # the encoder takes its own reference with the pts it has now, so a picture repeated by
                # frame-rate conversion can be given again with the next pts
                frame = picture.reformat(format="yuv420p")
                frame.pts, frame.time_base = i, time_base
                out.mux(video.encode(frame))
                # keep the streams interleaved: audio up to the end of this frame
                while cursor < len(audio) and cursor * self.fps < (i + 1) * self.sample_rate:
                    out.mux(sound.encode(self._audio_frame(audio, cursor, chunk)))
                    cursor += chunk
            while cursor < len(audio):
                out.mux(sound.encode(self._audio_frame(audio, cursor, chunk)))
                cursor += chunk
            out.mux(video.encode(None))
            out.mux(sound.encode(None))

    def _audio_frame(self, audio: np.ndarray, start: int, chunk: int) -> av.AudioFrame:
        piece = np.ascontiguousarray(audio[start:start + chunk], dtype=np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.sample_rate, start, Fraction(1, self.sample_rate)
        return frame


"""Writing video: a clip's frames and audio encoded into one MP4, the picture a clip stores for a decoded frame,
and a clip's audio replaced without re-encoding its video.

Video is H.264 yuv420p (libx264, CRF), audio mono at the pipeline's sample rate; FLAC by default, because it is
lossless (the sync stage and the trainers read exactly the samples that were cut) and MP4 readers built on
FFmpeg (PyAV, decord, torchaudio, ffmpeg itself) decode it. Callers write to a temporary name and rename
(manifests.files.write_atomically).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from media.frames import reformat, to_ndarray


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the shorter side at `short_side` (never upscaled), aspect kept, both sides even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def stored_picture(frame: av.VideoFrame, size: tuple[int, int], rotation: int = 0) -> av.VideoFrame:
    """The picture a clip stores for `frame` (yuv420p): scaled once, as soon as it is decoded.

    `size` is the stored frame's size before `rotation` (degrees counter-clockwise, a multiple of 90)
    turns it upright.
    """
    width, height = size
    small = reformat(frame, width=width, height=height, format="yuv420p", interpolation="AREA")
    if rotation % 360 == 0:
        return small
    upright = np.ascontiguousarray(np.rot90(to_ndarray(small, "bgr24"), rotation // 90))
    return reformat(av.VideoFrame.from_ndarray(upright, format="bgr24"), format="yuv420p")


def encode_clip(target: Path, frames: Sequence[av.VideoFrame], audio: np.ndarray, fps: int, sample_rate: int,
                crf: int, preset: str, audio_codec: str, threads: int = 1) -> None:
    """`frames` (all the same size, any pixel format) and mono int16 `audio` encoded into the MP4 `target`."""
    with av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream(
            "libx264", rate=fps,
            options={"crf": str(crf), "preset": preset, "threads": str(threads)},
        )
        video.width, video.height = frames[0].width, frames[0].height
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
        if audio_codec == "aac":
            sound.bit_rate = 128_000
        time_base = Fraction(1, fps)
        chunk = sound.codec_context.frame_size or 4096
        cursor = 0
        for i, picture in enumerate(frames):
            # the encoder takes its own reference with the pts it has now, so a picture repeated by
            # frame-rate conversion can be given again with the next pts
            frame = reformat(picture, format="yuv420p")
            frame.pts, frame.time_base = i, time_base
            out.mux(video.encode(frame))
            # keep the streams interleaved: audio up to the end of this frame
            while cursor < len(audio) and cursor * fps < (i + 1) * sample_rate:
                out.mux(sound.encode(_audio_frame(audio, cursor, chunk, sample_rate)))
                cursor += chunk
        while cursor < len(audio):
            out.mux(sound.encode(_audio_frame(audio, cursor, chunk, sample_rate)))
            cursor += chunk
        out.mux(video.encode(None))
        out.mux(sound.encode(None))


def _audio_frame(audio: np.ndarray, start: int, chunk: int, sample_rate: int) -> av.AudioFrame:
    piece = np.ascontiguousarray(audio[start:start + chunk], dtype=np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
    return frame


def remux_with_audio(path: Path, target: Path, audio: np.ndarray, sample_rate: int) -> None:
    """`path` written to `target` with `audio` (mono int16) in place of its audio, the video packets as they are
    (no re-encode), the audio in the codec it had."""
    with av.open(str(path)) as source, \
            av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        video_in = source.streams.video[0]
        codec = source.streams.audio[0].codec_context.name
        video_out = out.add_stream_from_template(video_in)
        sound = out.add_stream(codec, rate=sample_rate, layout="mono")
        for packet in source.demux(video_in):
            if packet.dts is None:
                continue
            packet.stream = video_out
            out.mux(packet)
        chunk = sound.codec_context.frame_size or 4096
        for start in range(0, len(audio), chunk):
            out.mux(sound.encode(_audio_frame(audio, start, chunk, sample_rate)))
        out.mux(sound.encode(None))

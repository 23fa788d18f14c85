"""Decoded pictures: a short clip's as one array (the one loop the trainers read clips with: whole faces for
the generators, the lower half of the face for the experts), a clip's key frames, every frame in turn, and a
source's frames at given times (the report's samples); and a decoded frame scaled or converted in the calling
thread (`reformat`, `to_ndarray`), as every per-frame conversion in the project is."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

FFmpegError = av.error.FFmpegError    # what any read of a broken file raises, for callers that catch it


class MediaUnreadable(Exception):
    """A file that cannot be decoded as far as asked; the message says why in one line."""


def _one_thread() -> dict:
    """swscale in the calling thread, where this PyAV lets us ask (`threads`, from the PyAV that scales through
    sws_scale_frame): its default is a pool of one thread per core, started and stopped for every frame."""
    try:
        av.VideoFrame(16, 16, "yuv420p").reformat(format="gray", threads=1)
    except TypeError:
        return {}
    return {"threads": 1}


_ONE_THREAD = _one_thread()


def reformat(frame: av.VideoFrame, **options) -> av.VideoFrame:
    """`frame.reformat(**options)` in the calling thread. A frame's own reformat makes a scaler per frame, and
    PyAV's scaler (threads=0, automatic) starts a thread per core for it and stops them after: in the source
    pass that was hundreds of threads a second, their CPU outside every stage clock, on top of the task's one
    core. One thread scales the same pixels."""
    return frame.reformat(**options, **_ONE_THREAD)


def to_ndarray(frame: av.VideoFrame, format: str) -> np.ndarray:
    """`frame.to_ndarray(format=format)`, converted in the calling thread (see `reformat`)."""
    return reformat(frame, format=format).to_ndarray()


def read_pictures(path: str, count: int, size: tuple[int, int], channel_order: str = "bgr",
                  lower_half: bool = False) -> np.ndarray:
    """The first `count` frames of `path` as (count, height, width, 3) uint8 in `channel_order` ("bgr" or "rgb"),
    scaled to `size` (height, width) where they differ. `lower_half`: only the lower half of each picture,
    converted from YUV straight from the decoder's planes."""
    height, width = size
    out = np.empty((count, height, width, 3), np.uint8)
    code = cv2.COLOR_YUV2RGB_I420 if channel_order == "rgb" else cv2.COLOR_YUV2BGR_I420
    got = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1       # one process per core already
            for frame in container.decode(stream):
                if got == count:
                    break
                if lower_half:
                    if frame.format.name != "yuv420p" or frame.height % 4:
                        frame = reformat(frame, format="yuv420p", height=frame.height // 4 * 4)
                    picture = cv2.cvtColor(lower_i420(frame), code)
                else:
                    if frame.format.name != "yuv420p" or frame.height % 2 or frame.width % 2:
                        frame = reformat(frame, format="yuv420p", width=frame.width // 2 * 2,
                                         height=frame.height // 2 * 2)
                    picture = cv2.cvtColor(frame.to_ndarray(), code)
                if picture.shape[:2] != (height, width):
                    picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
                out[got] = picture
                got += 1
    except (OSError, av.error.FFmpegError) as exc:
        raise MediaUnreadable(f"{type(exc).__name__}: {exc}") from None
    if got < count:
        raise MediaUnreadable(f"decoded {got} frames, {count} expected")
    return out


def lower_i420(frame: av.VideoFrame) -> np.ndarray:
    """The lower half of a yuv420p frame as one I420 buffer (rows of luma, then the two chroma planes)."""
    h, w = frame.height, frame.width
    y, u, v = frame.planes
    luma = np.frombuffer(y, np.uint8).reshape(h, y.line_size)[h // 2:, :w]
    cb = np.frombuffer(u, np.uint8).reshape(h // 2, u.line_size)[h // 4:, :w // 2]
    cr = np.frombuffer(v, np.uint8).reshape(h // 2, v.line_size)[h // 4:, :w // 2]
    return np.concatenate([luma, cb.reshape(-1, w), cr.reshape(-1, w)])


def count_frames(path: str, video_index: int) -> tuple[int, float]:
    """Video frames (packets, no decoding) and the first one's time, where the clip's timeline starts."""
    count, first = 0, None
    with av.open(path) as container:
        stream = container.streams[video_index]
        for packet in container.demux(stream):
            if packet.size:
                count += 1
                if packet.pts is not None:
                    t = float(packet.pts * stream.time_base)
                    first = t if first is None else min(first, t)
    return count, first or 0.0


def key_frames(path: str) -> np.ndarray:
    """The first, middle (index n // 2) and last frame of a video, RGB, decoded in one pass where the
    container states its frame count (a second pass only when that count turns out wrong)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        declared = stream.frames
        wanted = {0, declared // 2} if declared > 0 else {0}
        kept, last, count = {}, None, 0
        for count, frame in enumerate(container.decode(stream), start=1):
            if count - 1 in wanted:
                kept[count - 1] = to_ndarray(frame, "rgb24")
            last = frame
    if last is None:
        raise ValueError(f"{path} has no video frames")
    if count // 2 not in kept:             # frame count unknown or misstated: take the middle frame again
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index == count // 2:
                    kept[index] = to_ndarray(frame, "rgb24")
                    break
    return np.stack([kept[0], kept[count // 2], to_ndarray(last, "rgb24")])


def rgb_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every frame of `path`'s video stream as RGB, in decoding order."""
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            yield to_ndarray(frame, "rgb24")


def frames_at(path: str, times: list[float]) -> list[np.ndarray]:
    """The source's frames nearest after each time (seconds from its first frame), seeking for each."""
    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time * stream.time_base if stream.start_time is not None else 0
        for t in times:
            container.seek(int((float(start) + t) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is None or frame.time - float(start) >= t - 0.02:
                    out.append(upright(frame))
                    break
    return out


def upright(frame: av.VideoFrame) -> np.ndarray:
    """A frame as RGB, turned as its display rotation says."""
    rgb = to_ndarray(frame, "rgb24")
    return np.ascontiguousarray(np.rot90(rgb, (frame.rotation or 0) // 90)) if frame.rotation else rgb


def ffmpeg_version() -> str:
    """The version of the libavcodec PyAV was built with."""
    return ".".join(map(str, av.library_versions["libavcodec"]))


def all_frames(path: str, pixel_format: str = "bgr24") -> np.ndarray:
    """Every frame of a short clip as one (N, H, W, 3) array in `pixel_format`."""
    with av.open(path) as container:
        return np.stack([to_ndarray(frame, pixel_format) for frame in container.decode(video=0)])

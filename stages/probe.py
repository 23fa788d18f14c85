"""Corrupt-file stage: open a source, read its facts, and reject what cannot become a clip.

Nothing here deletes or changes a file. The checks that need the whole stream (a decode error partway,
a file truncated after its header) happen during the single decoding pass and are reported by
`decode_error` / `check_truncation` against this stage too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from stages.base import Rejected

STAGE = "probe"


@dataclass(frozen=True)
class SourceFacts:
    video_index: int           # the streams the pass decodes (cover art and thumbnails are skipped)
    audio_index: int
    container: str
    size_bytes: int
    duration_s: float          # the video's declared duration (the container's when the stream has none)
    video_codec: str
    width: int
    height: int
    fps: float                 # declared average frame rate (0 when unknown)
    declared_frames: int       # 0 when the container does not say
    pix_fmt: str
    audio_codec: str
    sample_rate: int
    channels: int

    def as_row(self) -> dict:
        row = asdict(self)
        del row["video_index"], row["audio_index"]
        return row


def probe(path: str | Path, min_duration_s: float) -> SourceFacts:
    """Open `path` and check that it holds a decodable video and audio stream of usable length."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Rejected(STAGE, "unreadable", f"cannot stat the file: {exc.strerror}") from None
    if size == 0:
        raise Rejected(STAGE, "empty_file", "the file is zero bytes long")
    if not os.access(path, os.R_OK):
        raise Rejected(STAGE, "unreadable", "permission denied")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise Rejected(STAGE, "unreadable_container", f"not a readable media container: {_text(exc)}") from None
    except OSError as exc:
        raise Rejected(STAGE, "unreadable", f"cannot open the file: {exc.strerror or exc}") from None
    with container:
        video, audio = pick_streams(container)
        if video is None:
            raise Rejected(STAGE, "no_video_stream", f"{container.format.name} file with no video stream")
        if audio is None:
            raise Rejected(STAGE, "no_audio_stream", f"{container.format.name} file with no audio stream")
        vctx, actx = video.codec_context, audio.codec_context
        if not vctx.width or not vctx.height:
            raise Rejected(STAGE, "no_picture_size", f"video stream reports a {vctx.width}x{vctx.height} picture")
        if not actx.sample_rate:
            raise Rejected(STAGE, "no_sample_rate", "audio stream reports no sample rate")
        duration = _declared_duration(container, video)
        if duration is None:
            raise Rejected(STAGE, "unknown_duration", "neither the video stream nor the container declares a duration")
        if duration <= 0:
            raise Rejected(STAGE, "zero_duration", f"declared duration is {duration:.3f} s")
        if duration < min_duration_s:
            raise Rejected(
                STAGE, "too_short", f"{duration:.2f} s is shorter than one {min_duration_s:g} s clip"
            )
        rate = video.average_rate or video.guessed_rate
        return SourceFacts(
            video_index=video.index,
            audio_index=audio.index,
            container=container.format.name,
            size_bytes=size,
            duration_s=round(duration, 6),
            video_codec=vctx.name,
            width=vctx.width,
            height=vctx.height,
            fps=round(float(rate), 6) if rate else 0.0,
            declared_frames=int(video.frames or 0),
            pix_fmt=vctx.pix_fmt or "",
            audio_codec=actx.name,
            sample_rate=actx.sample_rate,
            channels=actx.channels,
        )


# picture codecs that, as a "video" stream, are a cover or thumbnail (Matroska stores covers so)
_PICTURE_CODECS = {"png", "bmp", "tiff", "webp", "gif"}


def pick_streams(container) -> tuple:
    """The video and audio streams to use: the default one of each kind, else the first; a video stream
    that is only a cover picture or thumbnail track never counts."""
    still = av.stream.Disposition.attached_pic | av.stream.Disposition.still_image | av.stream.Disposition.timed_thumbnails
    videos = [s for s in container.streams.video
              if not (s.disposition & still) and s.codec_context.name not in _PICTURE_CODECS]
    audios = list(container.streams.audio)

    def best(streams):
        defaults = [s for s in streams if s.disposition & av.stream.Disposition.default]
        return (defaults or streams or [None])[0]

    return best(videos), best(audios)


def _declared_duration(container, video) -> float | None:
    if video.duration is not None and video.time_base is not None and video.duration > 0:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode_error(exc: Exception, at_s: float) -> Rejected:
    """A decode or read failure partway through the stream."""
    return Rejected(STAGE, "decode_error", f"decoding failed at {at_s:.2f} s: {_text(exc)}")


def check_truncation(decoded_s: float, facts: SourceFacts, tolerance_s: float) -> None:
    """Reject a stream that ends well before its declared duration: a cut-off download or copy."""
    if decoded_s < facts.duration_s - tolerance_s:
        raise Rejected(
            STAGE,
            "truncated",
            f"video decodes to {decoded_s:.2f} s but the file declares {facts.duration_s:.2f} s",
        )


def _text(exc: Exception) -> str:
    # FFmpeg errors carry the file name in str(); the manifest already has it.
    return getattr(exc, "strerror", None) or str(exc)

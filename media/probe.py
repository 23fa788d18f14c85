"""Corrupt-file stage: open a source, read its facts, and reject what cannot become a clip.

Nothing here deletes or changes a file. The checks that need the whole stream (a decode error partway,
a file truncated after its header, timestamps or packets a real recording cannot have) happen during the
single decoding pass and are reported by `decode_error`, `check_truncation`, `check_timeline` and
`check_packet_rate` against this stage too.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from manifests.rejected import Rejected

STAGE = "probe"

# Sanity limits for files that lie about themselves. Real recordings are far inside them; past them the pass
# would spend hours, or gigabytes, on a header's claim, so the source is rejected with the reason instead.
MIN_BYTES_PER_S = 512         # 4 kbit/s for picture and sound together: no recording of a face is smaller
MAX_PACKETS_PER_S = 1000      # per stream: video has 24-60 frames a second (240 on phones), audio 15-400 packets
MAX_FRAME_HOLD_S = 60.0       # one video frame standing for a minute is a hole in the stream, not a picture
OVERRUN_GRACE_S = 60.0        # how far the timeline may run past twice the declared duration


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
        raise unreadable(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise Rejected(STAGE, "unreadable_container", f"not a readable media container: {error_text(exc)}") from None
    except OSError as exc:
        raise unreadable(path, exc) from None
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
        duration = declared_duration(container, video)
        if duration is None:
            raise Rejected(STAGE, "unknown_duration", "neither the video stream nor the container declares a duration")
        if duration <= 0:
            raise Rejected(STAGE, "zero_duration", f"declared duration is {duration:.3f} s")
        if duration < min_duration_s:
            raise Rejected(
                STAGE, "too_short", f"{duration:.2f} s is shorter than one {min_duration_s:g} s clip"
            )
        if duration * MIN_BYTES_PER_S > size:
            # checked before any decoding: a few hundred kilobytes that claim ten hours would otherwise be
            # stretched into ten hours of output frames
            raise Rejected(
                STAGE, "implausible_duration",
                f"the file declares {_span(duration)} but holds only {size:,} bytes ({size / duration:.0f} bytes/s, "
                f"under {MIN_BYTES_PER_S} for any real recording)",
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


def declared_duration(container, video) -> float | None:
    if video.duration is not None and video.time_base is not None and video.duration > 0:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def unreadable(path: str | Path, exc: OSError) -> Rejected:
    """A file this process may not read (or that went away): the reason, and for a permission problem the
    file's mode and owner against who the worker runs as, which is what one needs to fix it."""
    detail = f"cannot read the file: {exc.strerror or exc}"
    if isinstance(exc, PermissionError):
        try:
            info = os.stat(path)
            detail += (f" (mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}; "
                       f"the worker runs as uid {os.geteuid()})")
        except OSError:
            pass
    return Rejected(STAGE, "unreadable", detail)


def decode_error(exc: Exception, at_s: float) -> Rejected:
    """A decode or read failure partway through the stream."""
    return Rejected(STAGE, "decode_error", f"decoding failed at {at_s:.2f} s: {error_text(exc)}")


def check_truncation(decoded_s: float, facts: SourceFacts, tolerance_s: float) -> None:
    """Reject a stream that ends well before its declared duration: a cut-off download or copy."""
    if decoded_s < facts.duration_s - tolerance_s:
        raise Rejected(
            STAGE,
            "truncated",
            f"video decodes to {decoded_s:.2f} s but the file declares {facts.duration_s:.2f} s",
        )


def check_timeline(t: float, latest_t: float, facts: SourceFacts) -> None:
    """Reject a video frame at timeline time `t` (seconds) that a real stream cannot have: one after a hole
    longer than MAX_FRAME_HOLD_S since the latest frame (`latest_t`), or one far past the declared duration.
    Each second of timeline costs 25 output frames of work, so the timestamps may not claim more than the
    header, and the header may not claim more than the file's size (`implausible_duration`)."""
    if t - latest_t > MAX_FRAME_HOLD_S:
        raise Rejected(
            STAGE, "timestamp_gap",
            f"the video stream has no frame between {latest_t:.2f} s and {t:.2f} s (a hole of {_span(t - latest_t)})",
        )
    limit = 2 * facts.duration_s + OVERRUN_GRACE_S
    if t > limit:
        raise Rejected(
            STAGE, "longer_than_declared",
            f"the video's timestamps reach {t:.2f} s but the file declares {facts.duration_s:.2f} s",
        )


def check_packet_rate(kind: str, packets: int, seconds: float) -> None:
    """Reject a stream of tiny packets: each costs a decode call and a few Python objects whatever it holds,
    so a flood of them costs far more than its content (a million one-sample audio packets, one minute of
    sound, took 50 s and 700 MB to decode)."""
    if packets > MAX_PACKETS_PER_S * (seconds + 1.0):
        raise Rejected(
            STAGE, "packet_flood",
            f"the {kind} stream has {packets:,} packets in its first {seconds:.2f} s "
            f"(over {MAX_PACKETS_PER_S} a second; real streams have at most a few hundred)",
        )


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def error_text(exc: Exception) -> str:
    # FFmpeg errors carry the file name in str(); the manifest already has it.
    return getattr(exc, "strerror", None) or str(exc)

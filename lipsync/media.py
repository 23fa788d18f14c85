"""Reading the inputs and writing the lip-synced video, streamed.

- `VideoReader`: the video on the 25 fps timeline the curation's resample stage makes (nearest frame; any
  frame rate, variable rate, rotation), decoded once, one frame at a time.
- `read_speech`: the audio at 16 kHz mono for the model. It is held whole: 1.9 MB a minute, against the
  frames, which are never held.
- `VideoWriter`: H.264 (CRF) with the input audio muxed at its own quality, interleaved as frames come, into
  a hidden partial file that takes the output's name only once complete.
- `FrameStore`: the upright frames kept when the audio outlasts the video and the video must be played back and
  forth without decoding it again: in memory up to a bound (`Options.bounce_memory_mb`), beyond it on disk in a
  `FrameSpool` (lossless PNG).
"""

from __future__ import annotations

import os
import tempfile
import wave
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from media import probe as probe_stage
from media.frames import reformat
from media.timeline import DecodedTimeline

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


class LipsyncError(RuntimeError):
    """An input, model or output that makes the job impossible; the message is one line that says why."""


def _open(path: Path, what: str):
    if not path.exists():
        raise LipsyncError(f"{what} {path} does not exist")
    if path.is_dir():
        raise LipsyncError(f"{what} {path} is a folder, not a file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise LipsyncError(f"{what} {path} is not a readable media file ({probe_stage.error_text(exc)})") from None
    except OSError as exc:
        raise LipsyncError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


class VideoReader:
    """The video stream of `path` on the 25 fps timeline: `frames()` yields (index, av.VideoFrame)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with _open(self.path, "video") as container:
            video, _ = probe_stage.pick_streams(container)
            if video is None:
                raise LipsyncError(f"video {self.path} has no video stream")
            self.index = video.index
            self.width, self.height = video.codec_context.width, video.codec_context.height
            if not self.width or not self.height:
                raise LipsyncError(f"video {self.path} reports a {self.width}x{self.height} picture")
            duration = probe_stage.declared_duration(container, video)
            self.declared_s = duration or 0.0
            rate = video.average_rate or video.guessed_rate
            self.source_fps = float(rate) if rate else float(FPS)
        self.rotation = 0
        self.frames_out = 0

    @property
    def upright(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    def frames(self, threads: int = 0) -> Iterator[tuple[int, av.VideoFrame]]:
        with av.open(str(self.path)) as container:
            stream = container.streams[self.index]
            stream.thread_type = "AUTO"
            stream.thread_count = threads
            timeline = DecodedTimeline(container, stream, self.source_fps, 1.0 / FPS)
            slots = timeline.at_rate(FPS)
            while True:
                try:
                    slot = next(slots)
                except StopIteration:
                    break
                except (av.error.FFmpegError, ValueError) as exc:
                    raise LipsyncError(f"video {self.path} cannot be decoded after {timeline.last:.2f} s "
                                       f"({probe_stage.error_text(exc)})") from None
                self.rotation = timeline.rotation
                self.frames_out = slot[0] + 1
                yield slot
        if timeline.t0 is None:
            raise LipsyncError(f"video {self.path} decodes to no frames")


def audio_stream(container, path: Path):
    _, audio = probe_stage.pick_streams(container)
    if audio is None:
        raise LipsyncError(f"audio {path} has no audio stream")
    if not audio.codec_context.sample_rate:
        raise LipsyncError(f"audio {path} reports no sample rate")
    return audio


def read_speech(path: Path) -> np.ndarray:
    """The audio stream of `path` (any file with one: wav, mp3, m4a, a video) as 16 kHz mono int16, from its
    first sample."""
    path = Path(path)
    chunks = []
    with _open(path, "audio") as container:
        stream = audio_stream(container, path)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as exc:
            raise LipsyncError(f"audio {path} cannot be decoded ({probe_stage.error_text(exc)})") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if samples.size < SAMPLES_PER_FRAME:
        raise LipsyncError(f"audio {path} holds {samples.size / SAMPLE_RATE:.3f} s of sound, less than one frame")
    return samples


def write_speech(samples: np.ndarray, target: Path) -> None:
    """16 kHz mono int16 samples as a WAV file (what `read_speech` gives back)."""
    with wave.open(str(target), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(np.asarray(samples).astype("<i2").tobytes())


def frames_for(samples: int) -> int:
    """Output frames for `samples` of 16 kHz audio: the frames it covers at 25 fps (to the nearest frame)."""
    return max(1, round(samples / SAMPLES_PER_FRAME))


# containers an MP4 can carry as they are
_MP4_AUDIO = {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"}


class VideoWriter:
    """H.264 video of upright RGB frames plus the audio of `audio_path`, cut to the video's length.

    `audio`: "copy" remuxes the input's audio packets untouched (when MP4 can hold the codec), "aac" encodes
    its samples at their own rate and channels (256 kbit/s), "auto" copies AAC and encodes anything else.
    """

    def __init__(self, out: Path, size: tuple[int, int], frames: int, audio_path: Path, crf: int = 18,
                 preset: str = "medium", audio: str = "auto"):
        self.out = Path(out)
        self.frames = frames
        self.end_s = frames / FPS
        self.partial = self.out.with_name(f".{self.out.name}.partial.mp4")
        self._container = av.open(str(self.partial), "w", format="mp4", options={"movflags": "+faststart"})
        width, height = size
        self._video = self._container.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": preset})
        self._video.width, self._video.height = width - width % 2, height - height % 2
        self._video.pix_fmt = "yuv420p"
        self._written = 0
        self._audio_in = av.open(str(audio_path))
        source = audio_stream(self._audio_in, audio_path)
        self._source = source
        codec = source.codec_context.name
        self.audio_mode = ("copy" if codec == "aac" else "aac") if audio == "auto" else audio
        if self.audio_mode == "copy":
            if codec not in _MP4_AUDIO:
                raise LipsyncError(f"audio {audio_path} is {codec}, which an MP4 cannot carry as it is: use --audio aac")
            self._sound = self._container.add_stream_from_template(source)
            self._packets = self._audio_in.demux(source)
        else:
            rate = source.codec_context.sample_rate
            layout = _standard_layout(source.codec_context)
            self._sound = self._container.add_stream("aac", rate=rate, layout=layout)
            self._sound.bit_rate = 256_000
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate,
                                                frame_size=self._sound.codec_context.frame_size or 1024)
            self._decoded = self._audio_in.decode(source)
            self._samples_out = 0
            self._end_samples = round(self.end_s * rate)
            self._first_pts: int | None = None
        self._audio_t = 0.0
        self._audio_done = False

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb[:self._video.height, :self._video.width], format="rgb24")
        frame = reformat(frame, format="yuv420p")
        frame.pts, frame.time_base = self._written, Fraction(1, FPS)
        self._container.mux(self._video.encode(frame))
        self._written += 1
        self._audio_until(self._written / FPS)   # keep the streams interleaved

    def close(self) -> None:
        """Flush, mux the rest of the audio and give the file its name."""
        self._audio_until(self.end_s)
        self._container.mux(self._video.encode(None))
        if self.audio_mode != "copy":
            self._container.mux(self._sound.encode(None))
        self._container.close()
        self._audio_in.close()
        os.replace(self.partial, self.out)

    def abort(self) -> None:
        for container in (self._container, self._audio_in):
            try:
                container.close()
            except Exception:  # noqa: BLE001 - closing a half-written file may fail; the file goes anyway
                pass
        self.partial.unlink(missing_ok=True)

    def _audio_until(self, t: float) -> None:
        t = min(t, self.end_s)
        while not self._audio_done and self._audio_t < t:
            if self.audio_mode == "copy":
                self._copy_next()
            else:
                self._encode_next()

    def _copy_next(self) -> None:
        packet = next(self._packets, None)
        if packet is None:
            self._audio_done = True
            return
        if packet.dts is None or packet.size == 0:
            return
        start = float(packet.pts * packet.time_base) if packet.pts is not None else self._audio_t
        if not hasattr(self, "_copy_t0"):
            self._copy_t0 = start
        self._audio_t = start - self._copy_t0
        if self._audio_t >= self.end_s:
            self._audio_done = True
            return
        packet.stream = self._sound
        self._container.mux(packet)

    def _encode_next(self) -> None:
        frame = next(self._decoded, None)
        frames = self._resampler.resample(frame)
        if frame is None:
            self._audio_done = True
        for out in frames:
            room = self._end_samples - self._samples_out
            if room <= 0:
                self._audio_done = True
                break
            if out.samples > room:   # the last piece, cut at the video's end
                array = out.to_ndarray()[:, :room]
                cut = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format="fltp", layout=out.layout.name)
                cut.sample_rate = out.sample_rate
                out = cut
            out.pts, out.time_base = self._samples_out, Fraction(1, out.sample_rate)
            self._samples_out += out.samples
            self._container.mux(self._sound.encode(out))
        self._audio_t = self._samples_out / self._sound.codec_context.sample_rate


def _standard_layout(context) -> str:
    """The input's channel layout as the AAC encoder takes it ("2 channels" from a WAV is stereo)."""
    named = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
    name = context.layout.name if context.layout else ""
    if " channels" in name or not name:
        return named.get(context.channels, "stereo")
    return name


class FrameSpool:
    """Upright RGB frames on disk, lossless, read back in any order: what lets a video shorter than its audio
    be played back and forth from one decode, with memory flat in the video's length."""

    def __init__(self, folder: Path | None = None):
        self._file = tempfile.TemporaryFile(dir=folder)
        self._offsets: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._offsets)

    def add(self, rgb: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        self._file.seek(0, os.SEEK_END)
        self._offsets.append((self._file.tell(), len(data)))
        self._file.write(data.tobytes())

    def get(self, index: int) -> np.ndarray:
        offset, size = self._offsets[index]
        self._file.seek(offset)
        data = np.frombuffer(self._file.read(size), np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)

    def close(self) -> None:
        self._file.close()


class FrameStore:
    """The frames of a video to be played back and forth: held in memory (copies) while they fit `limit_bytes`,
    all moved to a `FrameSpool` on disk the moment one more would not, and spooled from then on. A short video's
    frames are read back as they are, with no PNG round trip; a long one's memory stays at the bound."""

    def __init__(self, limit_bytes: int, folder: Path | None = None):
        self.limit_bytes = limit_bytes
        self.folder = folder
        self.held_bytes = 0                 # frames in memory now
        self.peak_bytes = 0                 # and at most (a test reads it)
        self._frames: list[np.ndarray] = []
        self._spool: FrameSpool | None = None

    @property
    def spooled(self) -> bool:
        return self._spool is not None

    def __len__(self) -> int:
        return len(self._spool) if self._spool is not None else len(self._frames)

    def add(self, rgb: np.ndarray) -> None:
        if self._spool is None and self.held_bytes + rgb.nbytes <= self.limit_bytes:
            self._frames.append(rgb.copy())
            self.held_bytes += rgb.nbytes
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            return
        if self._spool is None:
            self._spool = FrameSpool(self.folder)
            for frame in self._frames:
                self._spool.add(frame)
            self._frames, self.held_bytes = [], 0
        self._spool.add(rgb)

    def get(self, index: int) -> np.ndarray:
        """A copy of frame `index`, the caller's to change."""
        return self._spool.get(index) if self._spool is not None else self._frames[index].copy()

    def close(self) -> None:
        self._frames, self.held_bytes = [], 0
        if self._spool is not None:
            self._spool.close()


def bounce(k: int, frames: int) -> int:
    """The source frame shown at output frame `k` when the video is played forth, back, forth...: 0, 1, ...,
    n-1, n-2, ..., 1, 0, 1, ... (each end shown once per turn)."""
    if frames == 1:
        return 0
    period = 2 * frames - 2
    m = k % period
    return m if m < frames else period - m

"""The timeline (the resample stage's work): any frame rate to constant `fps`, any audio to mono `sample_rate`,
on one timeline, and the one loop that decodes a video stream onto it (`DecodedTimeline`).

The timeline starts at the first video frame's timestamp. Output frame k shows time k / fps; output audio
sample j plays at j / sample_rate. Frame k's audio is therefore samples [k * spf, (k + 1) * spf) with
spf = sample_rate / fps (640 at 25 fps / 16 kHz), which is what makes clip cuts sample-exact.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Iterator

import av
import numpy as np

from media import probe as probe_stage

STAGE = "resample"


class FrameRateConverter:
    """Maps source frames with timestamps to constant-rate output slots, nearest frame wins.

    A source frame's decision waits for the next frame's timestamp (the midpoint between them is where
    one frame's slots end), so `push` returns the slots of the previous frame. Drops and duplicates fall
    out of the same rule: 30 fps -> 25 fps skips one source frame in six, 24 -> 25 repeats one in 24.
    """

    def __init__(self, fps: int):
        self.fps = fps
        self.next_slot = 0
        self._held: tuple[Any, float] | None = None  # (frame, time) awaiting the next timestamp
        self.dropped = 0                              # source frames that got no slot

    def push(self, frame: Any, t: float) -> list[tuple[int, Any]]:
        """Add a source frame shown from time `t` (seconds on the timeline); returns (slot, frame) pairs."""
        if self._held is None:
            self._held = (frame, t)
            return []
        held, held_t = self._held
        if t <= held_t:  # a repeated or backwards timestamp: the later frame replaces the held one
            self._held = (frame, held_t)
            self.dropped += 1
            return []
        out = self._emit(held, until=(held_t + t) / 2)
        self._held = (frame, t)
        return out

    def flush(self, end_t: float) -> list[tuple[int, Any]]:
        """Emit the last frame's slots up to the end of the stream (its last frame's end time)."""
        if self._held is None:
            return []
        held, _ = self._held
        self._held = None
        last = round(end_t * self.fps)  # the number of whole output frames the stream spans
        out = []
        while self.next_slot < last:
            out.append((self.next_slot, held))
            self.next_slot += 1
        return out

    def _emit(self, frame: Any, until: float) -> list[tuple[int, Any]]:
        out = []
        # slot k belongs to this frame while its time k / fps is before the midpoint to the next frame
        while self.next_slot < until * self.fps - 1e-9:
            out.append((self.next_slot, frame))
            self.next_slot += 1
        if not out:
            self.dropped += 1
        return out


class DecodedTimeline:
    """The one decode loop that puts a video stream on the timeline: each decoded frame with its time in seconds
    from the first frame (its timestamp, or frames so far / `fallback_rate` where it has none). The source pass,
    inference and `curate eval-sync` all read video through it. `t0` is the first frame's timestamp, `last` the
    latest frame's time, `duration` that frame's own duration, `count` the frames decoded. Decoding errors (PyAV's
    FFmpegError, ValueError) reach the caller, which knows what they mean for its input."""

    def __init__(self, container, stream, fallback_rate: float, default_duration: float):
        self._decoded = container.decode(stream)
        self.fallback_rate = fallback_rate
        self.t0: float | None = None
        self.last = 0.0
        self.duration = default_duration
        self.count = 0
        self.rotation = 0             # the first frame's display rotation

    def __iter__(self) -> "DecodedTimeline":
        return self

    def __next__(self) -> tuple[av.VideoFrame, float]:
        frame = next(self._decoded)
        self.count += 1
        t = timeline_seconds(frame)
        if t is None:
            t = (self.count - 1) / self.fallback_rate
        if self.t0 is None:
            self.t0 = t
            self.rotation = frame.rotation or 0
        self.last = t - self.t0
        if frame.duration and frame.time_base:
            self.duration = float(frame.duration * frame.time_base)
        return frame, self.last

    def at_rate(self, fps: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """(output frame index, frame) at constant `fps` to the end of the stream, nearest frame wins."""
        converter = FrameRateConverter(fps)
        for frame, t in self:
            yield from converter.push(frame, t)
        yield from converter.flush(self.last + self.duration)


class AudioTrack:
    """Pull-based decoder of a source's audio stream into mono s16 at `sample_rate` on the timeline.

    It opens its own demuxer on the file, so audio is read as far as a clip needs whatever the container's
    interleaving, and memory holds only the samples not yet handed out (`release`).
    """

    def __init__(self, path: str, stream_index: int, sample_rate: int, t0: float):
        self.sample_rate = sample_rate
        self._container = av.open(path)
        stream = self._container.streams[stream_index]
        self._frames: Iterator[av.AudioFrame] = self._container.decode(stream)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        self._t0 = t0
        self._chunks: list[np.ndarray] = []
        self._base = 0            # timeline sample index of the first sample held
        self._end = 0             # timeline sample index after the last sample held
        self.eof = False
        self.gaps_filled = 0      # samples of silence inserted where the stream had holes
        self._skip = 0            # samples still to drop because the audio starts before the video
        self._gap_tolerance = sample_rate // 25
        # silence still owed before the samples decoded after a hole: (samples, counted as a gap, what follows).
        # It is laid down only as far as a caller asks, so a timestamp that jumps hours ahead costs nothing
        # until (unless) the video gets there.
        self._owed: tuple[int, bool, list[av.AudioFrame]] | None = None
        self._packets = 0         # frames decoded, and the seconds of sound in them: a flood of tiny packets
        self._sound_s = 0.0       # is rejected rather than decoded for minutes

    @property
    def available(self) -> int:
        return self._end

    def ensure(self, upto: int) -> None:
        """Decode until samples [.., upto) are held or the stream ends. Raises the decoder's errors, and
        Rejected for a stream of tiny packets."""
        while self._end < upto and not self.eof:
            if self._owed is not None:
                self._pay_silence(upto)
                continue
            try:
                frame = next(self._frames)
            except StopIteration:
                self._append_all(self._resampler.resample(None))
                self.eof = True
                self._container.close()
                return
            self._packets += 1
            if frame.sample_rate:
                self._sound_s += frame.samples / frame.sample_rate
            probe_stage.check_packet_rate("audio", self._packets, self._sound_s)
            silence, is_gap = self._place(frame)
            resampled = self._resampler.resample(frame)
            if silence:
                self._owed = (silence, is_gap, resampled)
            else:
                self._append_all(resampled)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the timeline; the caller checks `available` first."""
        held = np.concatenate(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks = [held] if held.size else []
        lo, hi = start - self._base, stop - self._base
        if lo < 0 or hi > held.size:
            raise ValueError(f"audio samples [{start}, {stop}) are not held ([{self._base}, {self._end}))")
        return held[lo:hi]

    def take_padded(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) with zeros where the timeline has none (before 0, past the stream's end)."""
        out = np.zeros(stop - start, np.int16)
        lo, hi = max(start, self._base), min(stop, self._end)
        if lo < hi:
            out[lo - start:hi - start] = self.take(lo, hi)
        return out

    def release(self, before: int) -> None:
        """Forget samples before `before`: no clip will ask for them again."""
        if before <= self._base or not self._chunks:
            return
        held = np.concatenate(self._chunks)
        cut = min(before - self._base, held.size)
        self._chunks = [held[cut:]]
        self._base += cut

    def close(self) -> None:
        if not self.eof:
            self._container.close()

    def _place(self, frame: av.AudioFrame) -> tuple[int, bool]:
        """Line the next decoded frame up with its timestamp: the silence to lay down before it (and whether
        that is a hole rather than a late start), or trim what precedes t0."""
        if frame.pts is None or frame.time_base is None:
            return 0, False
        # samples still inside the resampler are not yet counted in _end; its delay is small and constant,
        # so only differences beyond a frame's worth are treated as real gaps or overlaps
        expected = round((float(frame.pts * frame.time_base) - self._t0) * self.sample_rate)
        behind = expected - self._end
        if self._end == 0 and not self._chunks and expected != 0:
            if expected > 0:
                return expected, False
            self._skip = -expected
        elif behind > self._gap_tolerance:
            return behind, True
        return 0, False

    def _pay_silence(self, upto: int) -> None:
        """Lay down owed silence as far as `upto`; once all of it is down, the samples that follow it."""
        silence, is_gap, following = self._owed
        now = min(silence, max(upto - self._end, 1))
        self._append(np.zeros(now, np.int16))
        if is_gap:
            self.gaps_filled += now
        if now < silence:
            self._owed = (silence - now, is_gap, following)
        else:
            self._owed = None
            self._append_all(following)

    def _append_all(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            samples = out.to_ndarray().reshape(-1)
            if self._skip:
                drop = min(self._skip, samples.size)
                samples = samples[drop:]
                self._skip -= drop
            self._append(samples)

    def _append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self._end += samples.size


def timeline_seconds(frame: av.VideoFrame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


def samples_per_frame(fps: int, sample_rate: int) -> int:
    spf = Fraction(sample_rate, fps)
    assert spf.denominator == 1, "validated by the config"
    return int(spf)

"""Clipping stage: cut each shot into clips of min..max seconds, frame-exact, never across a shot boundary.

A shot of L frames that is known whole becomes n = ceil(L / max) near-equal clips (their lengths differ by at
most one frame). The splitter works while frames stream in, without knowing a shot's length in advance: once
a shot has run max + min frames past the current clip's start with no cut, the next clip cannot end up
shorter than min, so a full max-length clip is emitted at once. What is left when the shot ends (between
min and max + min frames) is split equally. So at most max + min frames are ever held, however long the
shot, and every clip is between min and max long.

With annotated intervals (HDTF), IntervalSplitter keeps the clips inside them: frames outside every interval
belong to no clip, and each interval's start and end cut like a shot boundary.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from manifests.rejected import Rejected

STAGE = "clips"


@dataclass(frozen=True)
class Span:
    shot_index: int
    start: int                 # first frame on the output timeline
    end: int                   # one past the last frame
    rejected: Rejected | None = None

    @property
    def frames(self) -> int:
        return self.end - self.start


class ClipSplitter:
    def __init__(self, min_frames: int, max_frames: int, fps: int):
        if not 0 < min_frames <= max_frames:
            raise ValueError(f"need 0 < min_frames <= max_frames, got {min_frames}, {max_frames}")
        self.min = min_frames
        self.max = max_frames
        self.fps = fps
        self.shot_index = 0
        self.clip_start = 0
        self.shot_start = 0
        self.outside = False       # between annotated intervals: no clip takes these frames

    @property
    def held_from(self) -> int:
        """The first frame a future span can start at; frames before it can be let go."""
        return self.clip_start

    def cut(self, at: int) -> list[Span]:
        """A new shot starts at frame `at`; returns the spans that close the previous shot."""
        spans = self._close_shot(at)
        self.shot_index += 1
        self.clip_start = self.shot_start = at
        return spans

    def leave(self, at: int) -> list[Span]:
        """Frames from `at` on belong to no clip (until `enter`); returns the spans that close the shot."""
        spans = self._close_shot(at)
        if at > self.shot_start:
            self.shot_index += 1
        self.outside = True
        self.clip_start = at
        return spans

    def enter(self, at: int) -> list[Span]:
        """Frames from `at` on may be cut into clips again, as a new shot."""
        self.outside = False
        self.clip_start = self.shot_start = at
        return []

    def settle(self, upto: int) -> list[Span]:
        """Frames before `upto` have no cut left to report: emit the full-length clips that are now certain."""
        if self.outside:
            self.clip_start = max(self.clip_start, upto)
            return []
        spans = []
        while upto - self.clip_start >= self.max + self.min:
            spans.append(Span(self.shot_index, self.clip_start, self.clip_start + self.max))
            self.clip_start += self.max
        return spans

    def finish(self, end: int) -> list[Span]:
        """The timeline ends at frame `end` (exclusive); returns the spans of the last shot."""
        spans = [] if self.outside else self._close_shot(end)
        self.clip_start = max(self.clip_start, end)
        return spans

    def _close_shot(self, end: int) -> list[Span]:
        start = self.clip_start
        length = end - start
        if length <= 0:
            return []
        if length < self.min:
            # after a full-length clip at least `min` frames remain, so this shot never had a clip
            return [Span(self.shot_index, start, end, Rejected(
                STAGE, "shot_too_short",
                f"shot of {length / self.fps:.2f} s is shorter than {self.min / self.fps:g} s",
            ))]
        n = math.ceil(length / self.max)
        if length // n < self.min:
            # only when max < 2 * min: no equal split fits, so keep one full clip and drop the rest
            return [
                Span(self.shot_index, start, start + self.max),
                Span(self.shot_index, start + self.max, end, Rejected(
                    STAGE, "shot_remainder",
                    f"{(length - self.max) / self.fps:.2f} s left after a {self.max / self.fps:g} s clip "
                    f"is shorter than {self.min / self.fps:g} s",
                )),
            ]
        bounds = [start + (i * length) // n for i in range(n + 1)]
        return [Span(self.shot_index, a, b) for a, b in zip(bounds, bounds[1:])]


class IntervalSplitter:
    """A ClipSplitter kept inside annotated frame ranges (sorted, merged, [start, end)): each range's ends act
    as shot boundaries and the frames between ranges are skipped. Same calls as a ClipSplitter; the detector's
    cuts arrive in order, each after the settles of the frames before it."""

    def __init__(self, splitter: ClipSplitter, intervals: list[tuple[int, int]]):
        self.splitter = splitter
        self._bounds: deque[tuple[int, bool]] = deque()   # (frame, entering) in order
        for start, end in intervals:
            self._bounds += [(start, True), (end, False)]
        if self._bounds and self._bounds[0][0] == 0:
            self._bounds.popleft()       # inside from the first frame
        else:
            splitter.leave(0)

    @property
    def held_from(self) -> int:
        return self.splitter.held_from

    def cut(self, at: int) -> list[Span]:
        spans = self._cross(at, inclusive=True)
        if not self.splitter.outside and at > self.splitter.shot_start:   # a cut between ranges changes nothing
            spans += self.splitter.cut(at)
        return spans

    def settle(self, upto: int) -> list[Span]:
        return self._cross(upto, inclusive=False) + self.splitter.settle(upto)

    def finish(self, end: int) -> list[Span]:
        """The ranges are clipped to `end`; what lies past it is dropped."""
        spans = self._cross(end, inclusive=False)
        self._bounds.clear()
        return spans + self.splitter.finish(end)

    def _cross(self, upto: int, inclusive: bool) -> list[Span]:
        spans = []
        while self._bounds and (self._bounds[0][0] < upto or (inclusive and self._bounds[0][0] == upto)):
            at, entering = self._bounds.popleft()
            spans += self.splitter.enter(at) if entering else self.splitter.leave(at)
        return spans


def frames_past(intervals: list[tuple[int, int]], end: int) -> int:
    """Frames of `intervals` at or after frame `end` (the part past a video's end)."""
    return sum(stop - max(start, end) for start, stop in intervals if stop > end)

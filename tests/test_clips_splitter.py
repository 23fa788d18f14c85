"""The streaming clip splitter: every clip within min..max, frame-exact, never across a shot boundary."""

import math
import random

import pytest

from stages.clips import ClipSplitter

FPS = 25
MIN, MAX = 125, 250   # 5 s and 10 s


def split_stream(cuts: list[int], end: int, min_frames: int = MIN, max_frames: int = MAX, lag: int = 2):
    """Drive the splitter the way the source pass does: frame by frame, cuts reported `lag` frames late."""
    splitter = ClipSplitter(min_frames, max_frames, FPS)
    spans = []
    pending = sorted(cuts)
    held_max = 0
    for index in range(end):
        while pending and pending[0] <= index - lag:
            spans += splitter.cut(pending.pop(0))
        spans += splitter.settle(index - lag + 1)
        held_max = max(held_max, index + 1 - splitter.held_from)
    for cut in pending:
        spans += splitter.cut(cut)
    spans += splitter.finish(end)
    return spans, held_max


def shots_of(cuts: list[int], end: int) -> list[tuple[int, int]]:
    bounds = [0, *cuts, end]
    return list(zip(bounds, bounds[1:]))


@pytest.mark.parametrize("seed", range(200))
def test_random_shot_layouts(seed):
    rng = random.Random(seed)
    end = rng.randint(1, 4000)
    cuts = sorted(rng.sample(range(1, end), k=min(end - 1, rng.randint(0, 8)))) if end > 1 else []
    spans, held_max = split_stream(cuts, end)
    kept = [s for s in spans if s.rejected is None]
    rejected = [s for s in spans if s.rejected is not None]
    shots = shots_of(cuts, end)

    # spans tile the timeline exactly: no frame lost, none used twice
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    assert sum(s.frames for s in spans) == end
    for a, b in zip(spans, spans[1:]):
        assert a.end == b.start
    for span in kept:
        assert MIN <= span.frames <= MAX
        shot = shots[span.shot_index]
        assert shot[0] <= span.start and span.end <= shot[1], "a clip crosses a shot boundary"
    # a shot is rejected whole exactly when it is shorter than one clip
    for index, (a, b) in enumerate(shots):
        if b - a < MIN:
            assert [(s.start, s.end) for s in rejected if s.shot_index == index] == [(a, b)]
            assert rejected[[s.shot_index for s in rejected].index(index)].rejected.reason == "shot_too_short"
        else:
            assert not [s for s in rejected if s.shot_index == index]
    # what it holds is bounded by one clip's lookahead, whatever the shot length
    assert held_max <= MAX + MIN + 2


def test_long_shot_gives_full_clips_then_the_rest_in_equal_parts():
    # a 23 s shot: one 10 s clip as soon as 15 s have passed without a cut, then 13 s left -> two halves
    spans, _ = split_stream([575], 700)
    assert [(s.shot_index, s.start, s.end) for s in spans] == [
        (0, 0, 250), (0, 250, 412), (0, 412, 575), (1, 575, 700),
    ]
    assert all(s.rejected is None for s in spans)


@pytest.mark.parametrize("length", [125, 200, 250, 251, 300, 374, 375, 376, 500, 501, 1000, 2513])
def test_single_shot_lengths(length):
    spans, _ = split_stream([], length)
    assert all(s.rejected is None for s in spans)
    assert all(MIN <= s.frames <= MAX for s in spans)
    assert sum(s.frames for s in spans) == length
    if length <= MAX + MIN:  # short enough to be known whole before anything is emitted: equal parts
        n = math.ceil(length / MAX)
        assert len(spans) == n
        assert max(s.frames for s in spans) - min(s.frames for s in spans) <= 1


def test_twenty_second_source_gives_two_ten_second_clips():
    spans, _ = split_stream([], 500)
    assert [(s.start, s.end) for s in spans] == [(0, 250), (250, 500)]


def test_short_shot_between_two_long_ones_is_rejected_alone():
    spans, _ = split_stream([200, 260], 600)
    assert [(s.start, s.end, s.rejected.reason if s.rejected else None) for s in spans] == [
        (0, 200, None), (200, 260, "shot_too_short"), (260, 430, None), (430, 600, None),
    ]


def test_max_below_twice_min_keeps_a_full_clip_and_rejects_the_rest():
    # min 5 s, max 8 s: a 9 s shot cannot be split into two clips of at least 5 s
    spans, _ = split_stream([], 225, min_frames=125, max_frames=200)
    assert [(s.start, s.end) for s in spans] == [(0, 200), (200, 225)]
    assert spans[0].rejected is None
    assert spans[1].rejected.reason == "shot_remainder"


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        ClipSplitter(0, 10, FPS)
    with pytest.raises(ValueError):
        ClipSplitter(20, 10, FPS)

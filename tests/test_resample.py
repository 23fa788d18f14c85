"""Frame-rate conversion: nearest source frame per output slot, on a timeline starting at the first frame."""

from fractions import Fraction

import pytest

from media.timeline import FrameRateConverter


def convert(times: list[float], end: float, fps: int = 25) -> list[int]:
    """Source frame index shown in each output slot."""
    frc = FrameRateConverter(fps)
    slots = []
    for index, t in enumerate(times):
        slots += frc.push(index, t)
    slots += frc.flush(end)
    assert [slot for slot, _ in slots] == list(range(len(slots))), "slots come in order, none skipped"
    return [frame for _, frame in slots]


@pytest.mark.parametrize("rate, seconds", [(Fraction(30), 20), (Fraction(30000, 1001), 20), (Fraction(24), 10),
                                           (Fraction(25), 10), (Fraction(50), 4), (Fraction(60000, 1001), 4)])
def test_constant_rates_land_on_25_fps(rate, seconds):
    count = int(seconds * rate)
    times = [float(i / rate) for i in range(count)]
    end = float(count / rate)
    shown = convert(times, end)
    assert len(shown) == round(end * 25)                       # the duration is kept
    for slot, frame in enumerate(shown):                       # and each slot shows the nearest frame
        assert abs(times[frame] - slot / 25) <= 0.5 / float(rate) + 1e-9


def test_30_to_25_drops_one_frame_in_six():
    frc = FrameRateConverter(25)
    for i in range(600):
        frc.push(i, i / 30)
    frc.flush(20.0)
    assert frc.dropped == 100


def test_25_fps_is_passed_through_frame_for_frame():
    assert convert([i / 25 for i in range(250)], 10.0) == list(range(250))


def test_variable_frame_rate_and_repeated_timestamps():
    # a phone-style stream: irregular gaps, one duplicated timestamp
    times = [0.0, 0.03, 0.1, 0.1, 0.2, 0.21, 0.33, 0.4]
    shown = convert(times, 0.44)
    assert len(shown) == 11
    assert shown[0] == 0 and shown[-1] == 7
    assert 2 not in shown  # a frame whose timestamp repeats the previous one's is replaced, not shown twice

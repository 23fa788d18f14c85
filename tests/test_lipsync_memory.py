"""`curate lipsync`'s memory does not grow with the audio's length (#30 item 2): the audio's features are read a
block at a time, and a video played back and forth is held in memory only up to its bound, spooled beyond it.
bench/bench_lipsync_memory.py measures the whole process to 10 minutes; these guard the two mechanisms."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from test_lipsync import frames_of, render

pytestmark = pytest.mark.usefixtures("talking_heads")


class StandInGenerator(torch.nn.Module):
    """Wav2Lip's generator's call, tiny: the pipeline is what these tests look at, not the network."""

    size = 96

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Conv2d(3, 3, 1)

    def forward(self, mel, faces):
        return torch.sigmoid(self.mix(faces[:, 3:]) + mel.mean((1, 2, 3))[:, None, None, None])


def speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    return (3000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 300, t.size)
            ).astype(np.int16)


def traced_peak_of_all_windows(seconds: float) -> int:
    """The most bytes Python and numpy held while Wav2Lip's audio features of `seconds` of speech were made and
    every frame's window read in order, as the pipeline reads them."""
    from lipsync.models import Wav2LipModel, framing_named
    from lipsync.media import frames_for

    samples = speech(seconds)
    model = Wav2LipModel(StandInGenerator(), framing_named("box", 96), torch.device("cpu"))
    tracemalloc.start()
    try:
        features = model.prepare_audio(samples)
        for k in range(frames_for(samples.size)):
            features.window(k)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_audio_features_are_the_whole_mels_and_their_memory_does_not_grow_with_the_speech():
    from lipsync.models import WINDOW, MelWindows
    from media.mel import mel_start, melspectrogram

    samples = speech(23.7)
    whole = melspectrogram(samples)
    windows = MelWindows(samples)
    last = whole.shape[1] - WINDOW
    for k in [*range(0, 600, 7), 591, 592, 593, 3, 0]:          # in order, past the end, then back
        start = min(mel_start(k), last)
        assert np.array_equal(windows.window(k), whole[:, start:start + WINDOW]), k
    # the whole mel of 60 s is made of about 30 MB of float64 temporaries, of 20 s a third of that: held a block
    # at a time, both peak at the same few MB
    short, long = traced_peak_of_all_windows(20), traced_peak_of_all_windows(60)
    assert long < 8 * 2 ** 20 and long - short < 2 ** 20, (short, long)


@pytest.fixture(scope="module")
def cheap_model():
    from lipsync.models import Wav2LipModel, framing_named

    return Wav2LipModel(StandInGenerator(), framing_named("box", 96), torch.device("cpu"), batch_size=16)


def test_a_short_video_plays_back_and_forth_from_memory_within_its_bound_and_spools_beyond(cheap_model, work,
                                                                                            tmp_path):
    """The 2 s, 50-frame video under 3.2 s of speech: its 50 frames (1.5 MB each) held in memory at the default
    bound, with nothing written beside the output; under a 10 MB bound at most 10 MB of them held and the rest
    spooled; the two videos the same frame for frame."""
    held, spooled = tmp_path / "held.mp4", tmp_path / "spooled.mp4"
    in_memory = render(cheap_model, work / "kitchen.mp4", work / "speech_long.m4a", held)
    assert in_memory.looped and not in_memory.spooled and in_memory.frames == 80
    assert 50 * 1.4 < in_memory.frames_held_mb <= 512
    on_disk = render(cheap_model, work / "kitchen.mp4", work / "speech_long.m4a", spooled, bounce_memory_mb=10)
    assert on_disk.looped and on_disk.spooled and on_disk.frames == 80
    assert 0 < on_disk.frames_held_mb <= 10
    first, second = frames_of(held), frames_of(spooled)
    assert len(first) == len(second) == 80
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.mp4", "spooled.mp4"]

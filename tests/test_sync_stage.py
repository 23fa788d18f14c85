"""The sync stage: SyncNet on the aligned clips in an actor pool, the audio shifted sample-exactly, skip and fill."""

import numpy as np
import pytest

from curate.config import config_from_dict
from footage import read_manifest, KITCHEN, downscaled, read_clip
from stages.sync import shifted_audio


def test_shift_delays_the_audio_by_the_offset_sample_exactly():
    margin, samples = 15 * 640, 100 * 640
    context = np.arange(samples + 2 * margin, dtype=np.int64).astype(np.int16)
    original = shifted_audio(context, 0, samples, margin)
    assert np.array_equal(original, context[margin:margin + samples])
    for offset in (3, -2, 15, -15):
        out = shifted_audio(context, offset, samples, margin)
        # sample j now plays what the source played at j - offset * 640: later for a positive offset
        assert np.array_equal(out[offset * 640 + 1000], original[1000]) if offset > 0 else \
            np.array_equal(out[1000], original[1000 - offset * 640])
        assert len(out) == samples
    with pytest.raises(ValueError):
        shifted_audio(context, 16, samples, margin)


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("sync_raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=3)
    return raw


# one short clip keeps SyncNet's CPU time down (about 14 windows a second per core)
SHORT_CLIPS = {"clips": {"min_seconds": 2, "max_seconds": 4}}


def settings(models, **sync):
    """The sync stage alone (the quality stage after it has tests of its own)."""
    return config_from_dict({"run": {"skip": ["quality", "duplicates"]}, "models": {"dir": str(models)},
                             "stages": {**SHORT_CLIPS, "sync": sync}})


def test_sync_fills_in_what_was_skipped_shifts_once_and_rejects_by_threshold(raw, tmp_path, curate, stand_in_models):
    out = tmp_path / "out"
    curate(raw, out, config_from_dict({"run": {"skip": ["sync", "quality", "duplicates"]}, "stages": SHORT_CLIPS}))
    [clip] = read_manifest(out, "clips").itertuples()
    assert (clip.status, clip.sync_status) == ("kept", "skipped")
    frames_before, audio_before, _ = read_clip(out / clip.path)
    arrays = np.load(out / clip.landmarks_path)
    margin = int(arrays["audio_margin"])
    assert np.array_equal(arrays["audio_context"][margin:margin + len(audio_before)], audio_before)

    # with the weights there, a rerun scores only what is missing: the source pass is not run again
    keep_all = settings(stand_in_models, min_confidence=0, max_offset=15)
    summary = curate(raw, out, keep_all)
    assert (summary.sources_processed, summary.clips_staged) == (0, {"sync": 1})
    [clip] = read_manifest(out, "clips").itertuples()
    assert (clip.status, clip.sync_status) == ("kept", "done")
    assert np.isfinite([clip.sync_min_dist, clip.sync_conf]).all()
    frames_after, audio_after, facts = read_clip(out / clip.path)
    assert all(np.array_equal(a, b) for a, b in zip(frames_before, frames_after))  # video untouched
    assert facts["audio_codec"] == "flac" and len(audio_after) == len(audio_before)
    expected = shifted_audio(arrays["audio_context"], int(clip.sync_offset), len(audio_before), margin)
    assert np.array_equal(audio_after, expected)
    assert np.load(out / clip.landmarks_path)["sync_frame_conf"].shape == (clip.n_frames - 5,)

    # nothing left to do
    assert curate(raw, out, keep_all).clips_staged == {}

    # stricter settings: scored again, rejected with the reason; the source pass still not rerun
    strict = settings(stand_in_models, min_confidence=1000)
    summary = curate(raw, out, strict)
    assert (summary.sources_processed, summary.clips_staged) == (0, {"sync": 1})
    [clip] = read_manifest(out, "clips").itertuples()
    assert (clip.status, clip.reject_stage, clip.reject_reason, clip.sync_status) == \
        ("rejected", "sync", "low_sync_confidence", "rejected")

    # back again: the shift is made from the stored original, so it is not applied twice
    curate(raw, out, keep_all)
    [clip] = read_manifest(out, "clips").itertuples()
    assert clip.status == "kept"
    assert np.array_equal(read_clip(out / clip.path)[1], expected)


def test_offset_beyond_the_maximum_is_rejected(raw, tmp_path, curate, stand_in_models):
    out = tmp_path / "out"
    curate(raw, out, settings(stand_in_models, min_confidence=0, max_offset=0))
    [clip] = read_manifest(out, "clips").itertuples()
    if clip.sync_offset == 0:
        pytest.skip("the stand-in weights happen to give offset 0 here")
    assert (clip.status, clip.reject_reason) == ("rejected", "large_av_offset")
    assert f"{int(clip.sync_offset):+d} frames" in clip.reject_detail

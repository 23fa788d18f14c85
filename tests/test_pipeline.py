"""End to end: a folder of real and broken videos through `curate run --skip face`, checked from the manifests
and the clips (unaligned: the face stage is tested in test_face.py)."""

from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.config import config_from_dict
from manifests import schema
from footage import (read_manifest, GARDEN, KITCHEN, SOFA, av_markers, downscaled, ffmpeg, hard_cut, read_clip, synthetic,
                   tree_hashes, unseekable_mkv, with_cover_art)

MARKS = [1.0, 3.0, 7.5, 9.0]  # seconds at which the marker videos flash and beep together

# file -> expected reject reason (None: kept)
EXPECTED = {
    "speaker1/talk 1.mp4": None,                     # real, 25 fps, 44.1 kHz stereo, a space in the name
    "speaker1/it's \"quoted\".mp4": None,            # real, 30 fps
    "speaker2/ünïcødé 话.mkv": None,                 # real, Matroska
    "speaker2/$(touch PWNED).mp4": None,             # markers at 30 fps, 48 kHz stereo
    "speaker3/markers 29.97.mov": None,              # markers at 29.97 fps, 44.1 kHz stereo PCM
    "cuts/hard_cut.mp4": None,                       # 6 s + 7 s of two real videos
    "speaker4/cover art first.mkv": None,            # a cover picture is video stream 0 (Matroska)
    "speaker5/phone rotated.mp4": None,              # portrait stored with a 90-degree display rotation
    "bad/empty.mp4": "empty_file",
    "bad/notes.mp4": "unreadable_container",         # a text file named .mp4
    "bad/truncated.mp4": "decode_error",             # index up front, data cut at 30 %
    "bad/truncated_late.mp4": "decode_error",        # the same, cut at 85 %: fails after a clip was written
    "bad/truncated_no_index.mp4": "unreadable_container",  # index at the end, cut off
    "bad/audio_only.mp4": "no_video_stream",
    "bad/video_only.mp4": "no_audio_stream",
    "bad/three_seconds.mp4": "too_short",
    "bad/live recording.mkv": "unknown_duration",    # written to a pipe: no duration in the header
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("raw")
    made = tmp_path_factory.mktemp("made")
    for name in EXPECTED:
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
    downscaled(raw / "speaker1/talk 1.mp4", KITCHEN)
    downscaled(raw / "speaker1/it's \"quoted\".mp4", SOFA)
    downscaled(raw / "speaker2/ünïcødé 话.mkv", GARDEN)
    av_markers(raw / "speaker2/$(touch PWNED).mp4", 12, "30", 48000, 2, MARKS)
    av_markers(raw / "speaker3/markers 29.97.mov", 12, "30000/1001", 44100, 2, MARKS)
    hard_cut(raw / "cuts/hard_cut.mp4", KITCHEN, 6, GARDEN, 7)
    with_cover_art(raw / "speaker4/cover art first.mkv", raw / "cuts/hard_cut.mp4", made)
    ffmpeg("-display_rotation", "90", "-i", raw / "speaker1/talk 1.mp4", "-c", "copy", raw / "speaker5/phone rotated.mp4")
    (raw / "bad/empty.mp4").write_bytes(b"")
    (raw / "bad/notes.mp4").write_text("meeting notes, not a video\n" * 40)
    ffmpeg("-i", raw / "speaker1/talk 1.mp4", "-c", "copy", "-movflags", "+faststart", made / "faststart.mp4")
    data = (made / "faststart.mp4").read_bytes()
    (raw / "bad/truncated.mp4").write_bytes(data[: len(data) * 3 // 10])
    (raw / "bad/truncated_late.mp4").write_bytes(data[: len(data) * 85 // 100])
    (raw / "bad/truncated_no_index.mp4").write_bytes(KITCHEN.read_bytes()[:600_000])
    synthetic(raw / "bad/audio_only.mp4", 8, video=False)
    synthetic(raw / "bad/video_only.mp4", 8, audio=False)
    synthetic(raw / "bad/three_seconds.mp4", 3)
    unseekable_mkv(raw / "bad/live recording.mkv", 8)
    (raw / "bad/readme.txt").write_text("not an input")
    return raw


@pytest.fixture(scope="module")
def result(corpus, tmp_path_factory, curate):
    before = tree_hashes(corpus)
    out = tmp_path_factory.mktemp("out")
    # the chain up to the clip writer; the face stage has its own tests (most of these sources have no face), and
    # so has the duplicates stage: here the rotated phone video, the file with cover art and the two marker files
    # are copies of others on purpose, each to be kept as a file of its own kind
    summary = curate(corpus, out, config_from_dict({"run": {"skip": ["face", "speech", "duplicates"]}}))
    sources = read_manifest(out, "sources")
    clips = read_manifest(out, "clips")
    return {"raw": corpus, "out": out, "summary": summary, "sources": sources, "clips": clips, "before": before}


def test_every_input_has_a_row_with_the_right_verdict(result):
    sources = result["sources"].set_index("source_id")
    assert sorted(sources.index) == sorted(EXPECTED)
    for name, reason in EXPECTED.items():
        row = sources.loc[name]
        if reason is None:
            assert row.status == "ok", (name, row.reject_reason, row.reject_detail)
            assert row.n_clips_kept >= 1
        else:
            assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", "probe", reason), name
            assert row.reject_detail


def test_truncated_file_is_caught_partway(result):
    row = result["sources"].set_index("source_id").loc["bad/truncated.mp4"]
    assert "decoding failed at" in row.reject_detail
    assert 2.0 < row.decoded_s < 10.0  # it decoded a few seconds of the 20 before failing
    clips = result["clips"]
    assert (clips[clips.source_id == "bad/truncated.mp4"].status == "rejected").all()


def test_source_failing_after_a_clip_was_written_leaves_no_clip_behind(result):
    clips = result["clips"][result["clips"].source_id == "bad/truncated_late.mp4"]
    assert len(clips) >= 1, "the failure should come after the first clip was cut"
    assert (clips.status == "rejected").all() and (clips.reject_reason == "decode_error").all()
    assert clips.path.isna().all()
    assert all(detail.startswith("source rejected: decoding failed at") for detail in clips.reject_detail)


def test_inputs_are_untouched_and_nothing_ran_in_a_shell(result):
    assert tree_hashes(result["raw"]) == result["before"]
    for folder in (result["raw"], result["out"], Path.cwd()):
        assert not list(folder.rglob("PWNED"))


def test_clips_are_25_fps_16_khz_mono_and_frame_exact(result):
    kept = result["clips"][result["clips"].status == "kept"]
    assert len(kept) >= 10
    for clip in kept.itertuples():
        frames, audio, facts = read_clip(result["out"] / clip.path)
        assert facts["fps"] == 25 and facts["video_codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
        assert facts["sample_rate"] == 16000 and facts["channels"] == 1 and facts["audio_codec"] == "flac"
        assert len(frames) == clip.n_frames == clip.end_frame - clip.start_frame
        assert len(audio) == clip.audio_samples == clip.n_frames * 640
        assert 5.0 <= clip.duration_s <= 10.0
        assert min(facts["width"], facts["height"]) <= 256


def test_durations_follow_the_sources(result):
    sources = result["sources"].set_index("source_id")
    clips = result["clips"]
    for name in ("speaker1/talk 1.mp4", "speaker1/it's \"quoted\".mp4"):
        row = sources.loc[name]
        assert row.frames_out == pytest.approx(row.duration_s * 25, abs=1)
        kept = clips[(clips.source_id == name) & (clips.status == "kept")]
        # a 20 s single-shot source is cut into two 10 s clips, with at most a frame lost to the audio's end
        assert kept.duration_s.sum() >= row.duration_s - 0.1
    assert sources.loc["speaker1/it's \"quoted\".mp4"].dropped_frames == pytest.approx(100, abs=2)  # 30 -> 25 fps


def test_clips_respect_the_hard_cut(result):
    row = result["sources"].set_index("source_id").loc["cuts/hard_cut.mp4"]
    assert len(row.shot_cuts) == 1 and abs(row.shot_cuts[0] - 150) <= 1
    cut = row.shot_cuts[0]
    clips = result["clips"][result["clips"].source_id == "cuts/hard_cut.mp4"]
    assert sorted(zip(clips.start_frame, clips.end_frame, clips.shot_index)) == [(0, cut, 0), (cut, 325, 1)]


@pytest.mark.parametrize("name", ["speaker2/$(touch PWNED).mp4", "speaker3/markers 29.97.mov"])
def test_audio_stays_in_sync_after_resampling(result, name):
    clips = result["clips"]
    kept = clips[(clips.source_id == name) & (clips.status == "kept")]
    found = []
    for clip in kept.itertuples():
        frames, audio, _ = read_clip(result["out"] / clip.path)
        lit = np.array([frame[:24, :24].mean() > 200 for frame in frames])
        flashes = [i for i in range(len(lit)) if lit[i] and (i == 0 or not lit[i - 1])]
        loud = np.abs(audio.astype(np.int32)) > 8000
        beeps = [i for i in np.flatnonzero(loud) if i == 0 or not loud[max(0, i - 200):i].any()]
        assert len(flashes) == len(beeps), (clip.clip_id, flashes, beeps)
        for flash, beep in zip(flashes, beeps):
            # the flash's first frame and the beep's first sample are within one frame (640 samples)
            assert abs(flash * 640 - beep) <= 640, (clip.clip_id, flash, beep)
            found.append(clip.start_frame + flash)
    assert [round(f / 25, 1) for f in found] == pytest.approx(MARKS, abs=0.05)


def test_display_rotation_is_applied_as_ffmpeg_plays_it(result, tmp_path):
    clips = result["clips"]
    clip = clips[(clips.source_id == "speaker5/phone rotated.mp4") & (clips.status == "kept")].iloc[0]
    assert (clip.width, clip.height) == (456, 256)  # 360x640 stored, shown turned: landscape
    ours = read_clip(result["out"] / clip.path)[0][0].astype(np.float32)
    shown = tmp_path / "shown.png"
    ffmpeg("-i", result["raw"] / "speaker5/phone rotated.mp4", "-frames:v", "1", "-vf", "scale=456:256", shown)
    with av.open(str(shown)) as image:
        reference = next(image.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    assert np.abs(ours - reference).mean() < 6
    assert np.abs(ours - reference[::-1, ::-1]).mean() > 20  # turned the other way would not match


def test_manifests_have_the_documented_schema(result):
    out = result["out"]
    for name, expected in (("sources", schema.SOURCES), ("clips", schema.CLIPS), ("runs", schema.RUNS)):
        # sources and clips are datasets of parts, readable as one by pyarrow (or DuckDB) as they are
        path = out / "manifests" / (name if name != "runs" else "runs.parquet")
        table = pq.read_table(path)
        assert table.schema.names == expected.names
        assert all(field.metadata and b"description" in field.metadata for field in table.schema)
    runs = read_manifest(out, "runs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run.sources_found == len(EXPECTED) and run.sources_processed == len(EXPECTED)
    assert dict(run.versions)["av"] and run.config_hash
    assert {t["stage"] for t in run.stage_timings} == set(schema.TIMED_STAGES)


def test_summary_counts_match_the_manifests(result):
    summary, sources, clips = result["summary"], result["sources"], result["clips"]
    assert summary.sources_found == len(sources)
    assert summary.sources_rejected == (sources.status == "rejected").sum()
    assert summary.clips_kept == (clips.status == "kept").sum()
    assert sum(summary.rejects.values()) == summary.sources_rejected + summary.clips_rejected


def test_clip_files_are_exactly_the_kept_rows(result):
    out = result["out"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "clips").rglob("*") if p.is_file())
    kept = sorted(result["clips"][result["clips"].status == "kept"].path)
    assert on_disk == kept


def test_the_driver_and_a_source_pass_worker_import_only_what_they_use():
    """Every process pays for what it imports (Ray's fixed cost, benchmark 8): the driver of `curate run` needs
    Ray and Parquet, not the pass's decoders and face models; a source-pass worker needs those, not torch or
    scipy (the sync stage's). Each in a fresh interpreter, as Ray starts them."""
    import json
    import subprocess
    import sys

    def loaded(statement: str, modules: tuple[str, ...]) -> list[str]:
        code = f"import json, sys; {statement}; print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    heavy = ("av", "cv2", "scenedetect", "dlib", "torch", "scipy", "pandas")
    assert loaded("import curate.cli, curate.runner, curate.run_checks, curate.run_plan, curate.run_execute, "
                  "curate.run_finish, curate.run_types, curate.clip_chain, curate.models, curate.source_task, "
                  "curate.source_entry", heavy) == []
    assert loaded("import curate.source_pass", heavy) == ["av", "cv2", "scenedetect"]

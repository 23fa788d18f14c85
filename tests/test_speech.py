"""The speech stage: Silero VAD on the clip's 16 kHz audio in the source pass, before the writer and SyncNet."""

import os

import numpy as np
import pytest
from footage import GARDEN, ffmpeg, x264

from curate.config import config_from_dict
from curate.source_pass import process_source
from curate.source_task import SourceTask

# the face stage on a half-size copy (its face is then about 75 px wide, as in test_face)
CONFIG = {"stages": {"face": {"min_face_px": 64}, "speech": {"enabled": True}}}


def garden_with(path, audio: list[str] | None):
    """The garden talking head at half size, with its own audio or with `audio` (lavfi input options) instead."""
    args = ["-i", GARDEN]
    if audio is not None:
        args += [*audio, "-map", "0:v", "-map", "1:a", "-t", "10"]
    ffmpeg(*args, "-vf", "scale=540:960", *x264(), "-c:a", "aac", path)
    return path


def clip_rows(source, out, config):
    stat = os.stat(source)
    task = SourceTask(source_id=source.name, path=str(source), out_key=source.stem, output_dir=str(out),
                      size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, fingerprints=config.stage_fingerprints())
    return [event["row"] for event in process_source(task, config) if event["event"] == "clip"]


def test_a_talking_face_keeps_its_clip_with_its_speech_per_frame(tmp_path, talking_heads):
    out = tmp_path / "out"
    [row] = clip_rows(garden_with(tmp_path / "garden.mp4", None), out, config_from_dict(CONFIG))
    assert row["speech_status"] == "done" and row["speech_fraction"] > 0.7, row   # measured: 0.95
    assert row["status"] == "kept", row                                           # the face stage keeps it too
    prob = np.load(out / row["landmarks_path"])["speech_prob"]
    assert prob.shape == (row["n_frames"],)
    assert abs(float(np.mean(prob >= 0.5)) - row["speech_fraction"]) < 0.1


@pytest.mark.parametrize("name, audio", [
    ("silence", ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono"]),
    # loud noise: an energy gate would call it voice, a voice-activity model does not
    ("noise", ["-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=0.3:r=44100"]),
])
def test_a_talking_face_over_silence_or_noise_is_rejected_for_speech(tmp_path, talking_heads, name, audio):
    out = tmp_path / "out"
    [row] = clip_rows(garden_with(tmp_path / f"{name}.mp4", audio), out, config_from_dict(CONFIG))
    assert (row["status"], row["reject_stage"], row["reject_reason"]) == ("rejected", "speech", "too_little_speech")
    assert row["speech_status"] == "rejected" and row["face_status"] == "done"   # judged after the face's verdict
    assert row["speech_fraction"] < 0.1
    assert row["path"] is None and not list(out.rglob("*.mp4"))                # nothing encoded


def test_the_minimum_is_a_setting_and_the_stage_can_be_left_out(tmp_path, talking_heads):
    source = garden_with(tmp_path / "silence.mp4", ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono"])
    [row] = clip_rows(source, tmp_path / "out", config_from_dict({"run": {"skip": ["speech", "face"]}}))  # silence kept
    assert row["status"] == "kept" and row["speech_status"] == "skipped" and row["speech_fraction"] is None
    base, looser = (config_from_dict({"stages": {"speech": {"enabled": True, **s}}}).stage_fingerprints()
                    for s in ({}, {"min_fraction": 0.2}))
    assert not config_from_dict({}).skipped("speech")   # on by default
    assert config_from_dict({"stages": {"speech": {"enabled": False}}}).skipped("speech")
    assert [stage for stage in base if base[stage] != looser[stage]] == ["speech", "write", "sync", "quality",
                                                                      "duplicates"]

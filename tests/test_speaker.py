"""Several faces in a shot: each followed, the one that speaks kept (stages.face.several_faces), by the weight-free
speaking cue when sync is skipped and by SyncNet with the cue as tie-breaker when it runs."""

import os

import numpy as np
import pytest
from footage import GARDEN, KITCHEN, ffmpeg, read_manifest, x264

from curate.config import config_from_dict
from curate.source_pass import process_source
from curate.source_task import SourceTask
from faces.speaking import mouth_opening, speaking_cue, speech_envelope

# the two speakers side by side at 648x1152 each: the kitchen's face about 158 px wide, the garden's about 112
SIDE_BY_SIDE = "[0:v]scale=648:1152,setsar=1[a];[1:v]scale=648:1152,setsar=1[b];[a][b]hstack[v]"
SMALL_FACES = {"face": {"min_face_px": 64}}   # the garden's face is under the 96 px default at this size


def run_source(path, out, config) -> list[dict]:
    stat = os.stat(path)
    task = SourceTask(source_id=path.name, path=str(path), out_key=path.stem, output_dir=str(out),
                      size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, fingerprints=config.stage_fingerprints())
    return [event["row"] for event in process_source(task, config) if event["event"] == "clip"]


def settings(skip=("sync", "quality"), **face) -> object:
    return config_from_dict({"run": {"skip": list(skip)}, "stages": {"face": {**SMALL_FACES["face"], **face}}})


@pytest.fixture(scope="module")
def videos(tmp_path_factory, talking_heads):
    """10 s of the kitchen speaker (left, larger) beside the garden speaker (right, smaller), under the garden's
    speech, under the kitchen's, and under the kitchen's for 5 s then the garden's."""
    work = tmp_path_factory.mktemp("speaker")
    made = {}
    turns = "[0:a]atrim=0:5,asetpts=PTS-STARTPTS[x];[1:a]atrim=5:10,asetpts=PTS-STARTPTS[y];[x][y]concat=n=2:v=0:a=1[au]"
    for name, graph, audio in [("smaller_speaks", SIDE_BY_SIDE, "1:a"), ("larger_speaks", SIDE_BY_SIDE, "0:a"),
                               ("turns", f"{SIDE_BY_SIDE};{turns}", "[au]")]:
        path = work / f"{name}.mp4"
        ffmpeg("-t", "10", "-i", KITCHEN, "-t", "10", "-i", GARDEN, "-filter_complex", graph, "-map", "[v]",
               "-map", audio, *x264(), "-c:a", "aac", "-t", "10", path)
        made[name] = path
    return work, made


@pytest.fixture(scope="module")
def chosen(videos):
    """Each video through the source pass with sync skipped: the cue chooses."""
    work, made = videos
    return {name: run_source(path, work / "out", settings()) for name, path in made.items()}


def by_face(rows: list[dict]) -> dict[int, dict]:
    return {row["face_track"]: row for row in rows}


@pytest.mark.parametrize("name, speaker", [("smaller_speaks", 1), ("larger_speaks", 0)])
def test_the_face_that_speaks_is_kept_and_the_other_dropped_naming_it(chosen, videos, name, speaker):
    rows = by_face(chosen[name])
    assert set(rows) == {0, 1}, chosen[name]
    kept, other = rows[speaker], rows[1 - speaker]
    assert (kept["status"], kept["speaker_choice"], kept["face_tracks"]) == ("kept", "cue", 2), kept
    assert (other["status"], other["reject_stage"], other["reject_reason"]) == ("rejected", "face", "not_the_speaker")
    assert kept["clip_id"] in other["reject_detail"]
    assert kept["speaker_cue"] > other["speaker_cue"] + 0.05
    assert kept["speaker_group"] == other["speaker_group"] == rows[0]["clip_id"]
    # the smaller face's clip has its own name and files; its side file holds its own face
    assert kept["clip_id"].endswith("-f1") == (speaker == 1)
    arrays = np.load(videos[0] / "out" / kept["landmarks_path"])
    assert {"landmarks_aligned", "mouth_darkness", "pose"} <= set(arrays.files)
    source = arrays["landmarks_source"]
    assert (np.nanmedian(source[:, :, 0]) > 648) == (speaker == 1)   # the garden speaker is on the right
    assert not (videos[0] / "out" / (other["clip_id"] + ".mp4")).exists()


def test_two_faces_that_speak_in_turn_drop_the_clip(chosen):
    [row] = chosen["turns"]
    assert (row["status"], row["reject_stage"], row["reject_reason"]) == ("rejected", "face", "speakers_take_turns")


def test_the_policy_decides_how_much_a_two_shot_keeps(videos, chosen):
    """`reject` (the behaviour before) drops the two-shot, `largest` keeps the larger face whoever speaks,
    `speaker` keeps the speaking one: 10 s more than `reject` of each single-speaker two-shot."""
    work, made = videos
    path = made["smaller_speaks"]
    [rejected] = run_source(path, work / "reject", settings(several_faces="reject"))
    assert (rejected["status"], rejected["reject_reason"]) == ("rejected", "several_faces")
    [largest] = run_source(path, work / "largest", settings(several_faces="largest"))
    assert (largest["status"], largest["face_track"], largest["face_tracks"]) == ("kept", 0, 1)
    kept_s = sum(row["duration_s"] for row in chosen["smaller_speaks"] if row["status"] == "kept")
    assert kept_s == pytest.approx(10.0)


def test_the_cue_follows_a_face_under_its_own_speech_not_another_or_a_shifted_one(chosen, videos):
    """The weight-free cue on the kept clip: its own speech beats another speaker's and its own a second later."""
    row = by_face(chosen["larger_speaks"])[0]
    arrays = np.load(videos[0] / "out" / row["landmarks_path"])
    margin = int(arrays["audio_margin"])
    own = arrays["audio_context"][margin:]
    other_row = by_face(chosen["smaller_speaks"])[1]
    other = np.load(videos[0] / "out" / other_row["landmarks_path"])["audio_context"][margin:]
    openings = [mouth_opening(arrays["landmarks_aligned"]), arrays["mouth_darkness"]]
    n = len(arrays["present"])

    def cue(audio):
        return speaking_cue(openings, speech_envelope(audio, n, 640, 16000), 6).score

    assert cue(own) > cue(other) + 0.05
    assert cue(own) > cue(np.roll(own, 25 * 640)) + 0.05


def test_sync_scores_every_face_and_keeps_one_per_span(tmp_path, curate, stand_in_models, talking_heads):
    """With the sync stage, every face's clip is written and scored as one group: the best confidence is kept,
    the other dropped as sync/not_the_speaker naming it; within speaker_tie_conf the cue decides."""
    raw = tmp_path / "raw"
    raw.mkdir()
    ffmpeg("-t", "3", "-i", KITCHEN, "-t", "3", "-i", GARDEN, "-filter_complex", SIDE_BY_SIDE, "-map", "[v]",
           "-map", "0:a", *x264(), "-c:a", "aac", "-t", "3", raw / "two.mp4")
    out = tmp_path / "out"
    stages = {**SMALL_FACES, "clips": {"min_seconds": 2, "max_seconds": 3}}

    def run(tie):
        config = config_from_dict({"run": {"skip": ["quality", "duplicates"]}, "models": {"dir": str(stand_in_models)},
                                   "stages": {**stages, "sync": {"min_confidence": 0, "max_offset": 15,
                                                                 "speaker_tie_conf": tie}}})
        curate(raw, out, config)
        return read_manifest(out, "clips")

    clips = run(tie=0.0)
    assert len(clips) == 2 and clips.speaker_group.nunique() == 1
    kept = clips[clips.status == "kept"]
    dropped = clips[clips.status == "rejected"]
    assert len(kept) == 1 and len(dropped) == 1
    assert kept.sync_conf.iloc[0] >= dropped.sync_conf.iloc[0]
    assert kept.speaker_choice.iloc[0] == "syncnet"
    assert (dropped.reject_stage.iloc[0], dropped.reject_reason.iloc[0]) == ("sync", "not_the_speaker")
    assert kept.clip_id.iloc[0] in dropped.reject_detail.iloc[0]

    # every confidence "tied": the cue chooses, and a rerun of the sync stage alone may change sides
    clips = run(tie=1e9)
    kept = clips[clips.status == "kept"]
    assert len(kept) == 1 and kept.speaker_choice.iloc[0] == "syncnet+cue"
    assert kept.speaker_cue.iloc[0] == clips.speaker_cue.max()

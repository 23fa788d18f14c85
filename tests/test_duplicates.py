"""Near-duplicates across sources: a source copied under another name with a re-encode keeps one copy of each clip,
the other rejected naming it, in one run and when the copy comes in a later run; the file lists never split two
copies; the stage's settings redo the stage alone."""

import shutil

import av
import numpy as np
import pytest
from footage import GARDEN, KITCHEN, downscaled, read_manifest

from curate.cli import main
from curate.config import config_from_dict
from stages.duplicates import DuplicateIndex, popcount
from stages.settings import DuplicateParams


def settings(**duplicates) -> dict:
    """Three-second clips of small pictures (the face minimum lowered to match), sync and quality left out (their
    weights are not here); one part at the end of a run."""
    return {"run": {"skip": ["sync", "quality"], "part_seconds": 3600},
            "stages": {"clips": {"min_seconds": 2, "max_seconds": 3}, "face": {"min_face_px": 40},
                       "duplicates": duplicates}}


def reencode(source, target, crf: int, audio_bit_rate: int) -> None:
    """`source` encoded again by PyAV, as a re-upload is: libx264 at another CRF, AAC at another bit rate."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        video_in, audio_in = inp.streams.video[0], inp.streams.audio[0]
        video = out.add_stream("libx264", rate=video_in.average_rate, options={"crf": str(crf), "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = video_in.codec_context.width, video_in.codec_context.height, "yuv420p"
        video.time_base = video_in.time_base
        audio = out.add_stream("aac", rate=audio_in.codec_context.sample_rate)
        audio.bit_rate = audio_bit_rate
        for packet in inp.demux(video_in, audio_in):
            for frame in packet.decode():
                if packet.stream.type == "audio":
                    frame.pts = None
                out.mux((video if packet.stream.type == "video" else audio).encode(frame))
        out.mux(video.encode())
        out.mux(audio.encode())


@pytest.fixture(scope="module")
def media(tmp_path_factory, talking_heads):
    """Six seconds of two real speakers at 360x640, and the kitchen speaker's re-encoded at CRF 32 and 48 kb/s."""
    work = tmp_path_factory.mktemp("duplicates")
    kitchen = downscaled(work / "kitchen.mp4", KITCHEN, size="360x640", seconds=6)
    garden = downscaled(work / "garden.mp4", GARDEN, size="360x640", seconds=6)
    copy = work / "reupload.mp4"
    reencode(kitchen, copy, crf=32, audio_bit_rate=48000)
    assert copy.read_bytes() != kitchen.read_bytes()
    return {"kitchen.mp4": kitchen, "garden.mp4": garden, "reupload.mp4": copy}


def inputs(folder, media, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(media[name], folder / name)
    return folder


def assert_copies(clips, original="kitchen", copy="reupload"):
    """Every clip of `copy` is rejected as the duplicate of `original`'s clip over the same span, which is kept."""
    clips = clips.set_index("clip_id")
    copies = clips[clips.source_id == f"{copy}.mp4"]
    assert len(copies) == 2
    for clip_id, row in copies.iterrows():
        kept_id = clip_id.replace(copy, original)
        assert (row.status, row.reject_stage, row.reject_reason, row.duplicates_of) == \
            ("rejected", "duplicates", "duplicate_clip", kept_id), row
        assert kept_id in row.reject_detail
        assert clips.loc[kept_id, "status"] == "kept" and clips.loc[kept_id, "duplicates_status"] == "done"
        assert row.duplicates_video_distance <= DuplicateParams().max_video_distance
    others = clips[clips.source_id != f"{copy}.mp4"]
    assert (others.status == "kept").all(), others[["status", "reject_reason", "reject_detail"]]


def file_lists(out, lists, capsys):
    assert main(["filelist", str(out), "--out", str(lists), "--val-fraction", "0.5"]) == 0
    capsys.readouterr()
    return {split: (lists / f"{split}.txt").read_text().split() for split in ("train", "val")}


def test_a_reencoded_copy_is_rejected_as_the_duplicate_of_the_kept_clip_and_never_split(media, tmp_path, curate,
                                                                                         capsys):
    raw = inputs(tmp_path / "raw", media, ["kitchen.mp4", "garden.mp4", "reupload.mp4"])
    out = tmp_path / "out"
    summary = curate(raw, out, config_from_dict(settings()))
    assert summary.rejects[("clip", "duplicates", "duplicate_clip")] == 2
    clips = read_manifest(out, "clips")
    # the copy that is kept is the first judged: with one batch per source, either may be
    original = clips[clips.status == "kept"].source_id.isin(["kitchen.mp4", "reupload.mp4"])
    kept = set(clips[clips.status == "kept"].source_id[original])
    assert len(kept) == 1
    assert_copies(clips, *(("kitchen", "reupload") if kept == {"kitchen.mp4"} else ("reupload", "kitchen")))
    assert clips.video_phash.map(len).eq(4).all() and clips.audio_hash.notna().all()
    # the fingerprints tell the two speakers apart by far
    by_id = clips.set_index("clip_id")
    garden = np.array(list(by_id.video_phash[by_id.source_id == "garden.mp4"]), np.uint64)
    kitchen = np.array(list(by_id.video_phash[by_id.source_id == "kitchen.mp4"]), np.uint64)
    assert popcount(garden[:, None, :] ^ kitchen[None, :, :]).sum(-1).min() > 2 * DuplicateParams().max_video_distance

    rejected = capsys.readouterr() and main(["rejects", str(out), "--stage", "duplicates"])
    assert rejected == 0 and capsys.readouterr().out.count("duplicate_clip") == 2

    # whichever split the kept copy falls in, the other copy is in none; the two speakers are on both sides
    lists = file_lists(out, tmp_path / "lists", capsys)
    listed = [path for paths in lists.values() for path in paths]
    assert len(listed) == 4 and all(lists.values())
    for clip_id in clips.clip_id[clips.reject_stage == "duplicates"]:
        assert not any(clip_id in path for path in listed)


def test_a_copy_added_in_a_later_run_is_found_against_the_first_runs_clips(media, tmp_path, curate, capsys):
    raw = inputs(tmp_path / "raw", media, ["kitchen.mp4", "garden.mp4"])
    out = tmp_path / "out"
    curate(raw, out, config_from_dict(settings()))
    first = read_manifest(out, "clips").set_index("clip_id")
    assert (first.status == "kept").all() and (first.duplicates_status == "done").all()

    inputs(raw, media, ["reupload.mp4"])
    second = curate(raw, out, config_from_dict(settings()))
    assert (second.sources_processed, second.sources_reused) == (1, 2)
    clips = read_manifest(out, "clips")
    assert_copies(clips)
    # the first run's clips stand as they were
    again = clips.set_index("clip_id").loc[first.index]
    assert (again.generation == first.generation).all() and (again.status == "kept").all()

    # looser distances are the duplicates stage's alone: the dry run says so, and the run redoes that stage only
    looser = config_from_dict(settings(max_audio_distance=20))
    dry = curate(raw, out, looser, dry_run=True)
    assert dry.planned_clips == {"duplicates": {"stages.duplicates settings changed": 6}} and not dry.planned
    third = curate(raw, out, looser)
    assert third.sources_processed == 0 and third.clips_staged == {"duplicates": 6}
    assert_copies(read_manifest(out, "clips"))

    lists = file_lists(out, tmp_path / "lists", capsys)
    for clip_id in clips.clip_id[clips.source_id == "reupload.mp4"]:
        assert not any(clip_id in path for path in lists["train"] + lists["val"])


def test_the_index_finds_a_copy_among_many_by_its_keys_and_never_an_unrelated_clip():
    rng = np.random.default_rng(0)
    index = DuplicateIndex(DuplicateParams())
    video = rng.integers(0, 2 ** 63, (20000, 4), dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, (20000, 4),
                                                                                                   dtype=np.uint64)
    audio = rng.integers(0, 2 ** 63, 20000, dtype=np.uint64) * np.uint64(2)
    index.add(video, audio)
    for position in (0, 4095, 15000, 19999):
        # 12 picture bits and 10 audio bits flipped, every audio key touched: found through a picture key
        flips = rng.choice(256, 12, replace=False)
        copy = video[position].copy()
        for bit in flips:
            copy[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        sound = audio[position] ^ np.uint64(sum(1 << b for b in (0, 1, 2, 16, 17, 32, 33, 48, 49, 50)))
        match = index.find(copy, sound)
        assert (match.position, match.video_distance, match.audio_distance) == (position, 12, 10)
    assert index.find(rng.integers(0, 2 ** 63, 4, dtype=np.uint64), int(rng.integers(0, 2 ** 63))) is None

"""Input layouts (curate.layouts): HDTF's annotation files, clips kept inside the annotated intervals, and the
speakers and held-out test speakers of `curate filelist` for HDTF and VoxCeleb2."""

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from footage import GARDEN, KITCHEN, downscaled

from curate.cli import main
from curate.config import Config, ConfigError, config_from_dict
from curate.layouts import (
    AnnotationError, annotation_files, hdtf_speaker, match, merge, parse_annotations, parse_time, read_annotations,
    read_speaker_list
)
from curate.results import speaker_of
from curate.scan import scan_inputs
from manifests.dataset import new_tag, write_part
from manifests.io import manifest_path, write_table
from manifests.schema import RUNS
from stages.clips import ClipSplitter, IntervalSplitter, frames_past


def read_manifest(out: Path, name: str) -> pd.DataFrame:
    """A manifest of a run's output folder (one place to change when the manifests' layout changes)."""
    try:
        from footage import read_manifest as current  # the manifests' current layout, where the tree has it
    except ImportError:
        return pd.read_parquet(out / "manifests" / f"{name}.parquet")
    return current(out, name)


def parsed(text: str, name: str = "WDA_annotion_time.txt", fps: int = 25):
    return {note.name: note.intervals for note in parse_annotations(Path(name), fps, text)}


# -- the annotation files ---------------------------------------------------------------------------

def test_hdtf_lines_become_frame_ranges_named_with_their_set():
    # lines as HDTF's RD_annotion_time.txt and WRA_annotion_time.txt write them (a trailing space, one
    # interval out of order and overlapping the other)
    notes = parsed("Radio11.mp4 00:30-01:00 01:30-02:30\nRadio13.mp4 00:00-00:35\n", "RD_annotion_time.txt")
    assert notes == {"RD_Radio11": ((750, 1500), (2250, 3750)), "RD_Radio13": ((0, 875),)}
    notes = parsed("AdamKinzinger2.mp4 00:40-01:20 02:00-02:40 03:30-03:50 \r\n"
                   "MittRomney.mp4 08:10-08:30 00:33-08:53\r\n", "WRA_annotion_time.txt")
    assert notes == {"WRA_AdamKinzinger2": ((1000, 2000), (3000, 4000), (5250, 5750)),
                     "WRA_MittRomney": ((825, 13325),)}
    # a name that has its set already, HDTF's other spelling, names with a dash, blank lines and comments
    notes = parsed("\ufeff# mine\n\nWDA_Lucille-Allard_000.mp4 00:01-00:02 00:02-00:04\n", "WDA_annotation_time.txt")
    assert notes == {"WDA_Lucille-Allard_000": ((25, 100),)}          # touching intervals merged
    assert parsed("Talk.mp4 01:00:00-01:00:02.5", "annotion_time.txt", fps=30) == {"Talk": ((108000, 108075),)}


def test_times_and_merging():
    assert parse_time("05") == 5 and parse_time("01:05") == 65 and parse_time("1:02:03.5") == 3723.5
    for bad in ("1:75", "1:60:00", "aa:bb", "1:2:3:4", "-1:00", ""):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert merge([(50, 60), (0, 10), (10, 20), (55, 70), (30, 40)]) == ((0, 20), (30, 40), (50, 70))
    # frame-exact: round(seconds * fps) at both ends
    assert parsed("A.mp4 00:00.02-00:01.5") == {"WDA_A": ((round(0.02 * 25), round(1.5 * 25)),)}


@pytest.mark.parametrize("line, words", [
    ("Bad.mp4 00:75-01:00", ["'00:75' is not a time"]),
    ("Bad.mp4 01:00-00:30", ["ends before it starts"]),
    ("Bad.mp4 00:10-00:10", ["ends before it starts"]),
    ("Bad.mp4", ["no time intervals"]),
    ("Bad.mp4 00:10", ["not an interval"]),
    ("Bad.mp4 00:10-00:20-00:30", ["not an interval"]),
])
def test_a_malformed_line_is_one_line_naming_file_and_line(tmp_path, line, words):
    path = tmp_path / "WDA_annotion_time.txt"
    path.write_text(f"Good.mp4 00:01-00:09\n\n{line}\n")
    with pytest.raises(AnnotationError) as error:
        read_annotations(path, 25)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}, line 3: ")
    for word in words:
        assert word in message


def test_where_annotations_are_looked_for(tmp_path):
    with pytest.raises(AnnotationError, match=r"no annotation file .*\*_annotion_time\.txt"):
        annotation_files(tmp_path)
    with pytest.raises(AnnotationError, match="does not exist"):
        annotation_files(tmp_path / "nothing.txt")
    (tmp_path / "WDA_annotion_time.txt").write_text("A.mp4 00:01-00:09\n")
    (tmp_path / "RD_annotation_time.txt").write_text("A.mp4 00:01-00:09\n")
    (tmp_path / "WDA_video_url.txt").write_text("A https://www.youtube.com/watch?v=x\n")
    assert [p.name for p in annotation_files(tmp_path)] == ["RD_annotation_time.txt", "WDA_annotion_time.txt"]
    assert set(read_annotations(tmp_path, 25)) == {"WDA_A", "RD_A"}
    (tmp_path / "WDA_annotion_time.txt").write_text("A.mp4 00:01-00:09\nWDA_A.mp4 00:20-00:29\n")
    with pytest.raises(AnnotationError, match="WDA_A.mp4 is annotated twice"):
        read_annotations(tmp_path, 25)


def test_config_takes_the_layouts():
    assert Config().inputs.layout == "folder" and Config().inputs.annotations is None
    config = config_from_dict({"inputs": {"layout": "hdtf", "annotations": "HDTF_dataset"}})
    assert config.inputs.annotations == Path("HDTF_dataset")
    with pytest.raises(ConfigError, match="inputs.layout"):
        config_from_dict({"inputs": {"layout": "hdft"}})
    with pytest.raises(ConfigError, match="layout hdtf only"):
        config_from_dict({"inputs": {"annotations": "x.txt"}})
    # layout hdtf bounds the clips: turning it on or off redoes them
    changed = config.stage_fingerprints()
    assert [s for s, f in Config().stage_fingerprints().items() if changed[s] != f][0] == "clips"


# -- the scan ---------------------------------------------------------------------------------------

def test_the_scan_attaches_intervals_and_reports_what_does_not_match(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("WDA_Whole.mp4", "WDA_Cut_000.mp4", "WDA_Cut_001.mp4", "RD_Radio1.mp4", "stray.mp4"):
        (raw / name).write_bytes(b"never opened here")
    (raw / "WDA_annotion_time.txt").write_text("Whole.mp4 00:01-00:09\nCut.mp4 00:00-00:20\nGone.mp4 00:00-00:10\n")
    (raw / "RD_annotion_time.txt").write_text("Radio1.mp4 01:00-01:30\n")
    scan = scan_inputs(raw, config_from_dict({"inputs": {"layout": "hdtf"}}).inputs, fps=25)
    found = {source.source_id: source.intervals for source in scan.sources}
    # a whole video gets its intervals; a clip HDTF's download already cut is kept whole
    assert found == {"WDA_Whole.mp4": ((25, 225),), "WDA_Cut_000.mp4": None, "WDA_Cut_001.mp4": None,
                     "RD_Radio1.mp4": ((1500, 2250),)}
    assert scan.intervals == {"WDA_Whole.mp4": ((25, 225),), "RD_Radio1.mp4": ((1500, 2250),)}
    assert scan.reasons == {"stray.mp4": "not_annotated", "WDA_Gone.mp4": "missing_annotated_video"}
    why = dict(scan.skipped)
    assert why["WDA_Gone.mp4"] == f"named in {raw / 'WDA_annotion_time.txt'} (line 3) but not in the input folder"
    # annotations elsewhere; none found is an error naming where it looked
    elsewhere = tmp_path / "HDTF_dataset"
    elsewhere.mkdir()
    (raw / "WDA_annotion_time.txt").rename(elsewhere / "WDA_annotion_time.txt")
    settings = config_from_dict({"inputs": {"layout": "hdtf", "annotations": str(elsewhere)}}).inputs
    assert {s.source_id for s in scan_inputs(raw, settings).sources} == {"WDA_Whole.mp4", "WDA_Cut_000.mp4",
                                                                         "WDA_Cut_001.mp4"}
    (raw / "RD_annotion_time.txt").unlink()
    with pytest.raises(AnnotationError, match=re.escape(str(raw / "*_annotion_time.txt"))):
        scan_inputs(raw, config_from_dict({"inputs": {"layout": "hdtf"}}).inputs)


def test_voxceleb2_layout_leaves_out_videos_outside_a_speaker_folder(tmp_path):
    for name in ("dev/mp4/id00012/21Uxsk56VDQ/00001.mp4", "id00017/abc/00002.mp4", "other/talk.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    scan = scan_inputs(tmp_path, config_from_dict({"inputs": {"layout": "voxceleb2"}}).inputs)
    assert [s.source_id for s in scan.sources] == ["dev/mp4/id00012/21Uxsk56VDQ/00001.mp4", "id00017/abc/00002.mp4"]
    assert scan.reasons == {"other/talk.mp4": "not_in_layout"}
    assert match("WDA_X_012", {}) is None


# -- the clip splitter inside intervals -------------------------------------------------------------

def _spans(splitter_events, splitter):
    spans = []
    for kind, at in splitter_events:
        spans += getattr(splitter, kind)(at)
    return [(s.start, s.end, s.rejected.reason if s.rejected else None) for s in spans]


def test_intervals_bound_the_clips_like_shot_cuts():
    """Streaming, with detector cuts and settles as the source pass gives them, the spans are exactly those of
    each piece of an interval between cuts, streamed on its own as a shot; nothing outside the intervals."""
    rng = random.Random(7)
    for _ in range(300):
        total = rng.randrange(50, 900)
        cuts = sorted(rng.sample(range(1, total), rng.randrange(0, 6)))
        starts = rng.sample(range(0, total + 100), rng.randrange(1, 5))
        intervals = merge([(a, a + rng.randrange(1, 400)) for a in starts])
        events, at = [], 0
        for cut in cuts:   # settles up to each cut, then the cut
            events += [("settle", f) for f in range(at, cut + 1, rng.randrange(1, 30))] + [("cut", cut)]
            at = cut
        events += [("settle", f) for f in range(at, total + 1, 13)] + [("finish", total)]
        got = _spans(events, IntervalSplitter(ClipSplitter(125, 250, 25), intervals))
        want = []
        for start, end in intervals:
            end = min(end, total)
            bounds = [start] + [c for c in cuts if start < c < end] + [end]
            for a, b in zip(bounds, bounds[1:]):
                piece = ClipSplitter(125, 250, 25)   # the piece alone, as a shot of its own streams
                piece.clip_start = a
                want += _spans([e for e in events if e[0] == "settle" and a < e[1] <= b] + [("finish", b)], piece)
        assert got == want, (total, cuts, intervals)
    assert frames_past([(0, 100), (250, 400), (500, 600)], 300) == 200


# -- speakers and file lists ------------------------------------------------------------------------

def test_speakers_of_each_layout():
    assert hdtf_speaker("WDA_BarackObama_000.mp4") == "WDA_BarackObama" == hdtf_speaker("sub/WDA_BarackObama.mp4")
    assert speaker_of("WDA_BarackObama_001.mp4", layout="hdtf") == "WDA_BarackObama"
    assert speaker_of("WDA_BarackObama_001.mp4") == "WDA_BarackObama_001.mp4"
    assert speaker_of("dev/mp4/id00012/x/00001.mp4", layout="voxceleb2") == "id00012"


def test_held_out_speakers_go_to_test_only(tmp_path):
    clips = pd.DataFrame({
        "source_id": [f"id{s:05d}/vid{v}/0000{k}.mp4" for s in (12, 17, 18, 20, 21, 22)
                      for v in (1, 2) for k in (1, 2)],
        "status": "kept", "duration_s": 6.0, "sync_conf": 5.0, "quality_score": 50.0})
    clips["clip_id"] = clips.source_id.str.removesuffix(".mp4") + "/0000000-0000150"
    clips["path"] = "clips/" + clips.clip_id + ".mp4"
    config = config_from_dict({"inputs": {"layout": "voxceleb2"}})
    out = tmp_path / "out"
    for half in (clips[:10], clips[10:]):   # two parts: the lists are written a part at a time
        write_part(out, new_tag(), [{"source_id": s, "status": "ok"} for s in half.source_id], half.to_dict("records"))
    write_table(manifest_path(out, "runs"), [{"config_json": json.dumps(config.model_dump(mode="json"))}], RUNS)
    held = tmp_path / "voxceleb2_test.txt"
    held.write_text("# VoxCeleb2's test speakers\nid00017\n\nhttps://example.org/vox/id00018/abc/00001.wav\n")
    assert read_speaker_list(held) == {"id00017", "id00018"}
    lists = tmp_path / "lists"
    assert main(["filelist", str(out), "--out", str(lists), "--val-fraction", "0.3",
                 "--hold-out-speakers", str(held)]) == 0
    table = pd.read_parquet(lists / "split.parquet")
    assert set(table.speaker[table.split == "test"]) == {"id00017", "id00018"}
    assert not {"id00017", "id00018"} & set(table.speaker[table.split != "test"])
    assert set(table.split) == {"train", "val", "test"}
    # test.txt beside train.txt and val.txt
    test = (lists / "test.txt").read_text().splitlines()
    assert len(test) == 8 and all("/id00017/" in p or "/id00018/" in p for p in test)
    others = (lists / "train.txt").read_text().splitlines() + (lists / "val.txt").read_text().splitlines()
    assert len(others) == 16 and not set(test) & set(others)
    # without the list, every speaker is in train or val, and the old test.txt is gone
    assert main(["filelist", str(tmp_path / "out"), "--out", str(lists)]) == 0
    assert not (lists / "test.txt").exists()
    assert main(["filelist", str(tmp_path / "out"), "--out", str(lists), "--hold-out-speakers",
                 str(tmp_path / "absent.txt")]) == 2


# -- end to end on real talking heads ---------------------------------------------------------------

# HDTF's two files for a small set: the kitchen speaker's video, the garden speaker's, one video not downloaded
ANNOTATIONS = {
    "WDA_annotion_time.txt": "Someone.mp4 00:01-00:07 00:08-00:10 00:11-00:20\nMissing.mp4 00:00-00:10\n",
    "RD_annotion_time.txt": "Other.mp4 00:03-00:09 00:00-00:04\n",   # overlapping: one interval, 0-9 s
}


@pytest.fixture(scope="module")
def hdtf_run(tmp_path_factory, talking_heads, curate):
    raw = tmp_path_factory.mktemp("hdtf")
    downscaled(raw / "WDA_Someone.mp4", KITCHEN, size="360x640", seconds=12)
    downscaled(raw / "RD_Other.mp4", GARDEN, size="360x640")   # all of its 10 s
    (raw / "Unlisted.mp4").write_bytes(b"not annotated, so never opened")
    for name, text in ANNOTATIONS.items():
        (raw / name).write_text(text)
    out = tmp_path_factory.mktemp("hdtf_out")
    config = config_from_dict({"run": {"skip": ["sync", "quality"]}, "inputs": {"layout": "hdtf"},
                               "stages": {"face": {"min_face_px": 40}}})
    curate(raw, out, config)
    return out


def test_clips_lie_inside_the_annotated_intervals_frame_exact(hdtf_run):
    sources = read_manifest(hdtf_run, "sources").set_index("source_id")
    clips = read_manifest(hdtf_run, "clips")
    someone, other = sources.loc["WDA_Someone.mp4"], sources.loc["RD_Other.mp4"]
    assert [list(r) for r in someone.annotated_intervals] == [[25, 175], [200, 250], [275, 500]]
    assert [list(r) for r in other.annotated_intervals] == [[0, 225]]
    # the interval past the end of 12 s is cut short there, and what it lost counted
    assert abs(someone.frames_out - 300) <= 1 and someone.annotated_frames_clipped == 500 - someone.frames_out
    assert other.annotated_frames_clipped == 0
    for source_id, source in ((s, sources.loc[s]) for s in ("WDA_Someone.mp4", "RD_Other.mp4")):
        spans = clips[clips.source_id == source_id]
        intervals = [(a, min(b, source.frames_out)) for a, b in source.annotated_intervals]
        for clip in spans.itertuples():   # kept or rejected, every span lies inside one interval
            assert any(a <= clip.start_frame and clip.end_frame <= b for a, b in intervals), clip.clip_id
        # and the spans are each interval cut at the shot cuts, each piece split as a shot is
        want = []
        for a, b in intervals:
            bounds = [a] + [c for c in source.shot_cuts if a < c < b] + [b]
            for start, end in zip(bounds, bounds[1:]):
                piece = ClipSplitter(125, 250, 25)
                piece.clip_start = start
                want += [(s.start, s.end) for s in piece.finish(end)]
        assert sorted(zip(spans.start_frame, spans.end_frame)) == want
    kept = clips[clips.status == "kept"]
    assert set(kept.source_id) == {"WDA_Someone.mp4", "RD_Other.mp4"}
    short = clips[(clips.source_id == "WDA_Someone.mp4") & (clips.start_frame == 200)]
    assert list(short.reject_reason) == ["shot_too_short"]       # 2 s interval: rejected as a short shot is


def test_missing_and_unannotated_videos_have_rows(hdtf_run):
    sources = read_manifest(hdtf_run, "sources").set_index("source_id")
    missing = sources.loc["WDA_Missing.mp4"]
    assert (missing.status, missing.reject_stage) == ("rejected", "scan")
    assert missing.reject_reason == "missing_annotated_video"
    assert "named in" in missing.reject_detail and "WDA_annotion_time.txt (line 2)" in missing.reject_detail
    assert sources.loc["Unlisted.mp4"].reject_reason == "not_annotated"


def test_filelist_speakers_are_the_hdtf_names(hdtf_run, tmp_path):
    assert main(["filelist", str(hdtf_run), "--out", str(tmp_path), "--val-fraction", "0.5"]) == 0
    split = pd.read_parquet(tmp_path / "split.parquet")
    assert set(split.speaker) == {"WDA_Someone", "RD_Other"}
    assert set(split.split) == {"train", "val"}


def test_an_edited_annotation_redoes_only_its_video(hdtf_run, tmp_path, curate):
    raw = Path(read_manifest(hdtf_run, "sources").set_index("source_id").loc["WDA_Someone.mp4"].path).parent
    edited = tmp_path / "annotations"
    edited.mkdir()
    (edited / "WDA_annotion_time.txt").write_text(ANNOTATIONS["WDA_annotion_time.txt"].replace("00:11-", "00:12-"))
    (edited / "RD_annotion_time.txt").write_text(ANNOTATIONS["RD_annotion_time.txt"])
    config = config_from_dict({"run": {"skip": ["sync", "quality"]},
                               "inputs": {"layout": "hdtf", "annotations": str(edited)},
                               "stages": {"face": {"min_face_px": 40}}})
    planned = curate(raw, hdtf_run, config, dry_run=True)
    assert planned.planned_sample == [("WDA_Someone.mp4", "annotated intervals changed")]
    assert planned.sources_reused == 1

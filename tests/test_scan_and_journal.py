"""The input walker and the journal that makes runs resumable."""

import os

from curate.config import InputSettings
from curate.scan import scan_inputs
from manifests.io import Journal


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_recursive_scan_mirrors_layout_and_filters_extensions(tmp_path):
    raw = tmp_path / "raw"
    touch(raw / "id00012" / "abc" / "00001.mp4")
    touch(raw / "id00012" / "abc" / "00002.MOV")
    touch(raw / "flat.webm")
    touch(raw / "notes.txt")
    touch(raw / "id00012" / "cover.jpg")
    result = scan_inputs(raw, InputSettings())
    assert [s.source_id for s in result.sources] == ["flat.webm", "id00012/abc/00001.mp4", "id00012/abc/00002.MOV"]
    assert [s.out_key for s in result.sources] == ["flat", "id00012/abc/00001", "id00012/abc/00002"]
    assert all(os.path.isabs(s.path) for s in result.sources)


def test_same_stem_different_extension_get_distinct_outputs(tmp_path):
    raw = tmp_path / "raw"
    touch(raw / "talk.mp4")
    touch(raw / "talk.mkv")
    keys = {s.source_id: s.out_key for s in scan_inputs(raw, InputSettings()).sources}
    assert keys == {"talk.mkv": "talk_mkv", "talk.mp4": "talk_mp4"}


def test_symlink_loop_is_skipped_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    touch(raw / "a" / "one.mp4")
    os.symlink(raw, raw / "a" / "loop")
    result = scan_inputs(raw, InputSettings())
    assert [s.source_id for s in result.sources] == ["a/one.mp4"]
    assert result.skipped == [("a/loop", "folder already visited (symlink loop)")]


def test_output_inside_input_is_not_scanned(tmp_path):
    raw = tmp_path / "raw"
    touch(raw / "one.mp4")
    touch(raw / "out" / "clips" / "one" / "0000000-0000250.mp4")
    result = scan_inputs(raw, InputSettings(), exclude=raw / "out")
    assert [s.source_id for s in result.sources] == ["one.mp4"]


def test_journal_ignores_a_line_torn_by_a_crash_and_repairs_it(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"source_id": "a.mp4", "n": 1})
    journal.append({"source_id": "b.mp4", "n": 1})
    journal.close()
    with open(journal.path, "ab") as handle:
        handle.write(b'{"source_id": "c.mp4", "n"')  # the process died mid-write
    assert sorted(Journal(tmp_path).latest()[0]) == ["a.mp4", "b.mp4"]
    again = Journal(tmp_path)
    again.append({"source_id": "a.mp4", "n": 2})
    again.close()
    latest = Journal(tmp_path).latest()[0]
    assert latest["a.mp4"]["n"] == 2 and "c.mp4" not in latest
    assert journal.path.read_bytes().count(b"\n") == 3


def test_journal_rewrite_keeps_only_what_it_is_given(tmp_path):
    journal = Journal(tmp_path)
    for n in range(3):
        journal.append({"source_id": "a.mp4", "n": n})
    journal.rewrite([{"source_id": "a.mp4", "n": 2}])
    assert list(Journal(tmp_path).records()) == [{"source_id": "a.mp4", "n": 2}]


def test_journal_keeps_clip_stage_records_apart_from_sources(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"source_id": "a.mp4", "n": 1})
    journal.append({"kind": "stage", "stage": "sync", "source_id": "a.mp4", "clip_id": "a/0-250", "n": 1})
    journal.append({"kind": "stage", "stage": "sync", "source_id": "a.mp4", "clip_id": "a/0-250", "n": 2})
    journal.close()
    sources, stages = Journal(tmp_path).latest()
    assert list(sources) == ["a.mp4"] and sources["a.mp4"]["n"] == 1
    assert list(stages) == [("a/0-250", "sync")] and stages[("a/0-250", "sync")]["n"] == 2

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
    assert result.reasons == {"a/loop": "symlink_loop"}


def test_links_to_nothing_or_to_each_other_are_skipped_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    touch(raw / "a" / "one.mp4")
    os.symlink("self.mp4", raw / "self.mp4")               # a link to itself
    os.symlink("pong.mkv", raw / "ping.mkv")               # two links to each other
    os.symlink("ping.mkv", raw / "pong.mkv")
    os.symlink("deleted.mp4", raw / "gone.mp4")            # a link whose file was deleted
    os.symlink("deleted", raw / "notes")                   # not a video's name: not ours to report
    os.mkdir(raw / "b")
    os.symlink("../a", raw / "b" / "again")                # a second way to a folder, not a loop
    os.mkfifo(raw / "fifo.mp4")                            # opening it would wait for a writer forever
    result = scan_inputs(raw, InputSettings())
    assert [s.source_id for s in result.sources] == ["a/one.mp4"]
    loop = "symlink loop: too many levels of symbolic links"
    assert result.skipped == [("b/again", "folder already scanned as 'a' (linked twice)"),
                              ("fifo.mp4", "not a regular file: a named pipe"),
                              ("gone.mp4", "broken symlink: deleted.mp4 does not exist"),
                              ("ping.mkv", loop), ("pong.mkv", loop), ("self.mp4", loop)]
    assert result.reasons == {"b/again": "linked_twice", "fifo.mp4": "not_a_file", "gone.mp4": "broken_symlink",
                              "ping.mkv": "symlink_loop", "pong.mkv": "symlink_loop", "self.mp4": "symlink_loop"}


def test_a_tree_deeper_than_the_recursion_limit_is_walked(tmp_path):
    folders = [tmp_path / "raw"]
    for _ in range(1500):  # a path of about 3 kB, inside PATH_MAX; a recursive walk died at ~1000 levels
        folders.append(folders[-1] / "d")
    for folder in folders:
        folder.mkdir()
    try:
        touch(folders[-1] / "deep.mp4")
        result = scan_inputs(folders[0], InputSettings())
        assert [s.source_id for s in result.sources] == ["d/" * 1500 + "deep.mp4"] and result.skipped == []
    finally:  # bottom up: shutil.rmtree, which pytest cleans up with, is recursive too
        (folders[-1] / "deep.mp4").unlink(missing_ok=True)
        for folder in reversed(folders):
            folder.rmdir()


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
    assert [r["source_id"] for r in Journal(tmp_path).records()] == ["a.mp4", "b.mp4"]
    again = Journal(tmp_path)
    again.append({"source_id": "a.mp4", "n": 2})
    again.close()
    assert [(r["source_id"], r["n"]) for r in Journal(tmp_path).records()] == [("a.mp4", 1), ("b.mp4", 1), ("a.mp4", 2)]
    assert journal.path.read_bytes().count(b"\n") == 3


def test_journal_rewrite_keeps_only_what_it_is_given(tmp_path):
    journal = Journal(tmp_path)
    for n in range(3):
        journal.append({"source_id": "a.mp4", "n": n})
    journal.rewrite([{"source_id": "a.mp4", "n": 2}])
    assert list(Journal(tmp_path).records()) == [{"source_id": "a.mp4", "n": 2}]

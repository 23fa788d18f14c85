"""Hostile inputs: each one is rejected or skipped with its reason, in bounded time and memory, and none of them
hangs or crashes the run.

The files are real media with lying headers (bytes patched) or muxed by hand, made here from lavfi sources, so
nothing from ../shared is needed. Time is not measured (speed is proven in bench/): boundedness is shown by what
the manifests say was decoded, and memory by the peak RSS of the source pass run on the worst of them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate.config import config_from_dict
from footage import (read_manifest, audio_jump, mkv_claim_duration, mp4_claim_duration, mp4_picture_size, mp4_stretch_video,
                   synthetic, tiny_packets)
from media import probe as probe_stage

# a hang fails the module instead of stalling the suite; the run itself takes well under a minute
pytestmark = pytest.mark.timeout(600)

TEN_HOURS = 10 * 3600.0
MILLION = 1_000_000

# file -> (stage, reason) of its reject; None: kept
EXPECTED = {
    "good.mp4": None,
    "random bytes.mp4": ("probe", "unreadable_container"),            # 50 MB of noise
    "ten hours.mkv": ("probe", "implausible_duration"),               # Segment Duration says 10 h
    "ten hours.mp4": ("probe", "implausible_duration"),               # header and sample table: 200 frames of 3 min
    "header says ten hours.mp4": None,                                # mvhd/tkhd/mdhd/elst only: FFmpeg believes the samples
    "three-minute frames.mp4": ("probe", "timestamp_gap"),            # sample table 10 h, header 8 s
    "runs past its header.mp4": ("probe", "longer_than_declared"),    # frames to 100 s, video header 8 s
    "0x0.mp4": ("probe", "no_picture_size"),                          # 0x0 in the header, SPS zeroed
    "0x0 header only.mp4": None,                                      # 0x0 in the header, the SPS knows 320x240
    "million video packets.mkv": ("probe", "packet_flood"),           # 2x2 frames at 25,000 fps
    "million audio packets.mkv": ("probe", "packet_flood"),           # one-sample PCM packets
    "audio jumps ten hours.mp4": None,                                # the hole is silence, laid down as needed
    "playlist.mp4": ("probe", "unreadable_container"),                # HLS pointing at the network and /etc
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("hostile")
    work = tmp_path_factory.mktemp("hostile-work")
    good = synthetic(raw / "good.mp4", 8)
    mp4 = good.read_bytes()
    small = synthetic(work / "small.mp4", 8, size="64x64").read_bytes()

    (raw / "random bytes.mp4").write_bytes(np.random.default_rng(7).bytes(50 << 20))
    synthetic(work / "good.mkv", 8)
    (raw / "ten hours.mkv").write_bytes(mkv_claim_duration((work / "good.mkv").read_bytes(), TEN_HOURS))
    (raw / "ten hours.mp4").write_bytes(mp4_claim_duration(mp4_stretch_video(mp4, TEN_HOURS), TEN_HOURS))
    (raw / "header says ten hours.mp4").write_bytes(mp4_claim_duration(mp4, TEN_HOURS))
    (raw / "three-minute frames.mp4").write_bytes(mp4_stretch_video(mp4, TEN_HOURS))
    (raw / "runs past its header.mp4").write_bytes(
        mp4_claim_duration(mp4_stretch_video(small, 100), 100, video_media_s=8))
    (raw / "0x0.mp4").write_bytes(mp4_picture_size(mp4, 0, 0, keep_parameter_sets=False))
    (raw / "0x0 header only.mp4").write_bytes(mp4_picture_size(mp4, 0, 0))
    tiny_packets(raw / "million video packets.mkv", MILLION, "video", work)
    tiny_packets(raw / "million audio packets.mkv", MILLION, "audio", work)
    audio_jump(raw / "audio jumps ten hours.mp4", good, at_s=4, jump_s=TEN_HOURS)

    (raw / "playlist.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://10.255.255.1/0.ts\n"
                                      "#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")

    # links that lead nowhere or back: a loop to the top, a link to itself, one to a file that is gone; and
    # things named like videos that would block whoever opened them
    (raw / "links").mkdir()
    os.symlink(raw, raw / "links" / "back")
    os.symlink("self.mp4", raw / "self.mp4")
    os.symlink("nowhere.mp4", raw / "gone.mp4")
    os.mkfifo(raw / "pipe.mp4")
    os.symlink("/dev/zero", raw / "zeros.mp4")
    return raw


@pytest.fixture(scope="module")
def result(hostile, tmp_path_factory, curate):
    out = tmp_path_factory.mktemp("hostile-out")
    summary = curate(hostile, out, config_from_dict({"run": {"skip": ["face", "speech", "duplicates"]}}))
    sources = read_manifest(out, "sources").set_index("source_id")
    clips = read_manifest(out, "clips")
    return {"out": out, "summary": summary, "sources": sources, "clips": clips}


def test_every_hostile_input_has_a_row_with_its_reason(result):
    sources = result["sources"]
    sources = sources[sources.reject_stage != "scan"]  # the paths never opened: see the links test
    assert sorted(sources.index) == sorted(EXPECTED)
    for name, verdict in EXPECTED.items():
        row = sources.loc[name]
        if verdict is None:
            assert row.status == "ok", (name, row.reject_reason, row.reject_detail)
            assert row.n_clips_kept >= 1, name
        else:
            assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", *verdict), (name, row.reject_detail)
            assert row.reject_detail, name


def test_reject_details_say_what_is_wrong(result):
    detail = result["sources"].reject_detail
    assert detail["ten hours.mkv"].startswith("the file declares 10.0 h but holds only")
    assert "bytes/s" in detail["ten hours.mp4"]
    assert detail["three-minute frames.mp4"] == \
        "the video stream has no frame between 0.00 s and 180.00 s (a hole of 3.0 min)"
    assert detail["runs past its header.mp4"].endswith("but the file declares 8.00 s")
    assert detail["0x0.mp4"] == "video stream reports a 0x0 picture"
    assert detail["million video packets.mkv"].startswith("the video stream has 1,0")
    assert detail["million audio packets.mkv"].startswith("the audio stream has 1,0")
    assert detail["random bytes.mp4"].startswith("not a readable media container")


def test_lying_headers_are_never_decoded_for_what_they_claim(result):
    """Boundedness, shown by what was decoded: no ten-hour claim becomes ten hours of frames, and a flood of
    tiny packets is stopped after about a thousand of them."""
    sources = result["sources"]
    for name in ("ten hours.mkv", "ten hours.mp4", "random bytes.mp4", "0x0.mp4"):
        assert pd.isna(sources.loc[name, "frames_out"]), name   # rejected by the probe, before any decoding
    assert sources.loc["three-minute frames.mp4", "frames_out"] == 0
    assert sources.loc["runs past its header.mp4", "frames_out"] <= 25 * (2 * 8 + probe_stage.OVERRUN_GRACE_S) + 1
    assert sources.loc["million video packets.mkv", "source_frames"] < 1.1 * probe_stage.MAX_PACKETS_PER_S
    assert sources.loc["million audio packets.mkv", "decoded_s"] < 20   # the first clip's worth, then stopped
    # nor do the claims swell the run's totals
    assert result["summary"].seconds_in < 300


def test_what_ffmpeg_can_see_through_is_kept_as_it_really_is(result):
    sources = result["sources"]
    # the sample table, not mvhd/mdhd, decides an MP4's duration; the SPS, not tkhd/avc1, its picture size
    assert sources.loc["header says ten hours.mp4", "duration_s"] == pytest.approx(8.0)
    row = sources.loc["0x0 header only.mp4"]
    assert (row.width, row.height, row.frames_out) == (320, 240, 200)
    # ten hours of missing audio is four seconds of silence where the video needs it
    row = sources.loc["audio jumps ten hours.mp4"]
    assert 3.5 * 16000 < row.audio_gap_samples < 4.5 * 16000


def test_rejected_sources_leave_no_clips(result):
    out, clips = result["out"], result["clips"]
    rejected = [name for name, verdict in EXPECTED.items() if verdict]
    assert (clips[clips.source_id.isin(rejected)].status == "rejected").all()
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "clips").rglob("*.mp4"))
    assert on_disk == sorted(clips[clips.status == "kept"].path)


def test_links_that_lead_nowhere_or_back_are_skipped_with_a_reason(result):
    skipped = dict(result["summary"].skipped_paths)
    assert skipped == {
        "links/back": "folder already visited (symlink loop)",
        "self.mp4": "symlink loop: too many levels of symbolic links",
        "gone.mp4": "broken symlink: nowhere.mp4 does not exist",
        "pipe.mp4": "not a regular file: a named pipe",
        "zeros.mp4": "not a regular file: a character device",
    }
    assert result["summary"].sources_found == len(EXPECTED)
    # and each is in the manifest, with a code to group by
    scanned = result["sources"][result["sources"].reject_stage == "scan"]
    assert dict(zip(scanned.index, scanned.reject_reason)) == {
        "links/back": "symlink_loop", "self.mp4": "symlink_loop", "gone.mp4": "broken_symlink",
        "pipe.mp4": "not_a_file", "zeros.mp4": "not_a_file"}
    assert (scanned.status == "rejected").all() and dict(zip(scanned.index, scanned.reject_detail)) == skipped


def test_an_audio_hole_is_silence_laid_down_only_as_far_as_asked(hostile):
    import av

    from media.timeline import AudioTrack

    path = str(hostile / "audio jumps ten hours.mp4")
    with av.open(path) as container:
        index = container.streams.audio[0].index
    track = AudioTrack(path, index, 16000, 0.0)
    try:
        track.ensure(10 * 16000)
        assert track.available >= 10 * 16000 and not track.eof
        held = track.take(0, 10 * 16000)
        assert np.abs(held[16000:3 * 16000]).max() > 1000       # the tone before the hole
        assert not held[int(4.1 * 16000):].any()                # silence after it
        track.release(9 * 16000)
        track.ensure(60 * 16000)                                # a minute in: still a minute, not ten hours
        assert 60 * 16000 <= track.available < 61 * 16000
        assert sum(chunk.size for chunk in track._chunks) < 52 * 16000
    finally:
        track.close()


# the source pass asks Ray for this much memory per task (resources.source_pass.memory_mb)
MEMORY_LIMIT_MB = 1024

_PASS = r"""
import json, os, sys
from curate.config import config_from_dict
from curate.source_pass import process_source
from curate.source_task import SourceTask

config = config_from_dict({"run": {"skip": ["face", "speech", "duplicates"]}})
for path in sys.argv[2:]:
    info = os.stat(path)
    task = SourceTask(source_id=os.path.basename(path), path=path, out_key=str(len(path)), output_dir=sys.argv[1],
                      size_bytes=info.st_size, mtime_ns=info.st_mtime_ns, fingerprints=config.stage_fingerprints())
    row = [event["row"] for event in process_source(task, config) if event["event"] == "source"][0]
    # VmHWM, not ru_maxrss: the latter keeps the peak of the forked pytest process across exec
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"name": task.source_id, "reason": row["reject_reason"], "peak_mb": peak}), flush=True)
"""


def test_source_pass_memory_stays_bounded_on_hostile_files(hostile, tmp_path):
    """The worst of them one after another in one process, its peak RSS under what a source-pass task asks Ray
    for. (Before the audio track laid silence down lazily, the ten-hour audio hole alone took 2.6 GB.)"""
    names = ["random bytes.mp4", "million audio packets.mkv", "million video packets.mkv",
             "audio jumps ten hours.mp4", "three-minute frames.mp4", "runs past its header.mp4", "good.mp4"]
    result = subprocess.run([sys.executable, "-c", _PASS, str(tmp_path), *[str(hostile / n) for n in names]],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["name"], row["reason"]) for row in rows] == \
        [(n, EXPECTED[n] and EXPECTED[n][1]) for n in names]
    assert max(row["peak_mb"] for row in rows) < MEMORY_LIMIT_MB, rows


_UNREADABLE = r"""
import json, sys
from curate.config import InputSettings, config_from_dict
from curate.scan import scan_inputs
from curate.source_pass import process_source
from curate.source_task import SourceTask
from pathlib import Path

raw = Path(sys.argv[1])
try:
    open(raw / "locked.mp4", "rb")
    sys.exit("the file could be read: this process is not subject to permission bits")
except PermissionError:
    pass
scan = scan_inputs(raw, InputSettings())
config = config_from_dict({"run": {"skip": ["face", "speech", "duplicates"]}})
source = scan.sources[0]
task = SourceTask(source_id=source.source_id, path=source.path, out_key=source.out_key, output_dir=sys.argv[2],
                  size_bytes=source.size_bytes, mtime_ns=source.mtime_ns, fingerprints=config.stage_fingerprints())
row = [event["row"] for event in process_source(task, config) if event["event"] == "source"][0]
print(json.dumps({"sources": [s.source_id for s in scan.sources], "skipped": scan.skipped, "reasons": scan.reasons,
                  "row": [row["status"], row["reject_stage"], row["reject_reason"], row["reject_detail"]]}))
"""


def _without_root_powers():
    """Run as root without the capabilities that let root read any file (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH): dropped from the bounding set before exec, so the new process never has them and
    permission bits apply to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_file_and_folder_are_rejected_with_the_reason(hostile, tmp_path):
    raw = tmp_path / "raw"
    (raw / "sealed").mkdir(parents=True)
    (raw / "locked.mp4").write_bytes((hostile / "good.mp4").read_bytes())
    (raw / "sealed" / "inside.mp4").write_bytes(b"")
    os.chmod(raw / "locked.mp4", 0o000)
    os.chmod(raw / "sealed", 0o000)
    try:
        command = [sys.executable, "-c", _UNREADABLE, str(raw), str(tmp_path / "out")]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                    cwd=Path(__file__).parents[1],
                                    preexec_fn=_without_root_powers if os.geteuid() == 0 else None)
        except subprocess.TimeoutExpired:
            raise
        except subprocess.SubprocessError as exc:  # the capabilities could not be dropped (preexec_fn failed)
            pytest.skip(f"cannot run a process that permission bits apply to: {exc}")
    finally:
        os.chmod(raw / "sealed", 0o755)
        os.chmod(raw / "locked.mp4", 0o644)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["sources"] == ["locked.mp4"]              # its name and size can be seen, its bytes not
    assert found["skipped"] == [["sealed", "cannot list folder: Permission denied"]]
    assert found["reasons"] == {"sealed": "unreadable_folder"}
    status, stage, reason, detail = found["row"]
    assert (status, stage, reason) == ("rejected", "probe", "unreadable")
    assert detail.startswith("cannot read the file: Permission denied (mode ----------, owner uid ")


def test_the_report_of_hostile_inputs_opens_no_pipe_and_lists_every_reason(result):
    from curate.cli import main

    assert main(["report", str(result["out"]), "--samples", "2"]) == 0
    page = (result["out"] / "report.html").read_text()
    from curate.report import section_id

    for stage, reason in (("scan", "symlink_loop"), ("scan", "not_a_file"), ("probe", "packet_flood"),
                          ("probe", "implausible_duration"), ("probe", "unreadable_container")):
        assert f"id='{section_id('source', stage, reason)}'" in page, reason
    assert "not a regular file" in page

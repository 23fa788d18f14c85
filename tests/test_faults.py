"""Faults in a run: a clip-stage worker killed mid-clip, two runs on one output, a crashed driver, a disk that
fills up or turns read-only partway. Each ends with the manifests of an uninterrupted run, and nothing
half-written left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.config import config_from_dict
from footage import read_manifest, GARDEN, KITCHEN, assert_same_run, downscaled, hard_cut, synthetic
from ray_workers import SignalWorkers, alive

SHORT_CLIPS = {"clips": {"min_seconds": 2, "max_seconds": 4}}


# -- a clip-stage worker killed in the middle of a clip ---------------------------------------------------

@pytest.fixture(scope="module")
def one_clip(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("one_clip")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=3)
    return raw


def test_sync_worker_killed_mid_clip_is_restarted_and_the_clip_processed_once(one_clip, tmp_path, curate,
                                                                               stand_in_models):
    config = config_from_dict({"models": {"dir": str(stand_in_models)}, "stages": {
        **SHORT_CLIPS, "sync": {"min_confidence": 0, "max_offset": 15}, "quality": {"min_score": -1000}}})
    reference = tmp_path / "reference"
    curate(one_clip, reference, config)

    # well into the batch: SyncNet is running on the clip
    with SignalWorkers(b"ray::SyncWorker.process", signal.SIGKILL, after_s=0.3) as killer:
        summary = curate(one_clip, tmp_path / "out", config)
    killed = killer.hit
    assert killed, "the sync worker was never seen at work"
    # counted once: Ray retried it on a new actor
    assert summary.clips_staged == {"sync": 1, "quality": 1, "duplicates": 1}
    clips = read_manifest(tmp_path / "out", "clips")
    assert list(clips.status) == ["kept"] and list(clips.sync_status) == ["done"]
    assert_same_run(tmp_path / "out", reference)  # shifted once, scored once: as if nothing happened


# -- a worker that hangs ----------------------------------------------------------------------------------

def test_a_hung_source_task_is_killed_and_its_source_rejected_and_the_run_ends(tmp_path, curate, talking_heads):
    """A worker that stops making progress (here SIGSTOP, as a decoder stuck in a system call would look)
    is killed after run.stall_timeout_s; the source gets a reject row and the run finishes."""
    downscaled(tmp_path / "raw" / "kitchen.mp4", KITCHEN, size="540x960", seconds=20)
    config = config_from_dict({"run": {"skip": ["face"], "stall_timeout_s": 3}, "stages": SHORT_CLIPS})
    # past its first event: the driver watches a task once it has started
    with SignalWorkers(b"ray::source_pass", signal.SIGSTOP, after_s=0.3) as stopper:
        try:
            summary = curate(tmp_path / "raw", tmp_path / "out", config)
            gone = wait_until(lambda: all(not alive(pid) for pid in stopper.hit), seconds=20)
        finally:
            for pid in stopper.hit:  # in case the run did not kill it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    stopped = stopper.hit
    assert stopped, "no source task was seen at work"
    [row] = read_manifest(tmp_path / "out", "sources").itertuples()
    assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", "worker", "stalled")
    assert "no sign of life for 3 s" in row.reject_detail
    assert summary.rejects == {("source", "worker", "stalled"): 1}
    assert not [p for p in (tmp_path / "out/clips").rglob("*") if p.is_file()]
    assert gone, "the hung worker was left behind"


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- runs as a user starts them: separate processes, each with its embedded Ray ---------------------------

@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("faults_raw")
    downscaled(raw / "a" / "kitchen.mp4", KITCHEN, size="180x320", seconds=14)
    hard_cut(raw / "a" / "cut.mp4", KITCHEN, 6, GARDEN, 7, size="180x320")
    synthetic(raw / "b" / "pattern.mp4", 12, fps="30", sample_rate=48000, channels=2)
    return raw


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_reference") / "out"
    result = subprocess.run(run_command(raw, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def run_command(raw: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "curate.cli", "run", "--input", str(raw), "--output", str(out), "--num-cpus", "1",
            "--no-progress", "--skip", "face,sync,quality"]


def journal_lines(out: Path) -> int:
    journal = out / ".curate" / "journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def wait_for(condition, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_run_is_refused_and_a_killed_run_leaves_no_lock_behind(raw, reference, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(run_command(raw, out), start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".curate" / "lock"
        wait_for(lambda: lock.exists() and lock.read_text().startswith("pid"), first)
        second = subprocess.run(run_command(raw, out), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"another curate run (pid {first.pid} on" in second.stderr
        assert "wait for it to finish or use another output folder" in second.stderr

        # the driver dies mid-run (and its embedded Ray with it): no clean-up of any kind
        wait_for(lambda: journal_lines(out) >= 1, first)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done = journal_lines(out)
    assert 1 <= done < 3, "the run should have been killed with work left"

    again = subprocess.run(run_command(raw, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr  # the dead run's lock went with it
    assert f"{3 - done} processed now, {done} unchanged" in again.stdout
    assert_same_run(out, reference)


# -- a disk that fills up, or turns read-only, partway --------------------------------------------------

# Runs the command twice in a mount namespace of its own, on a tmpfs mounted on the output folder: first with
# the disk as the scenario makes it, then with room to spare. After each, the output is copied out as it was.
ON_A_SMALL_DISK = r"""
set -u
out=$1 size=$2 scenario=$3 save=$4; shift 4
mount -t tmpfs -o "size=$size" tmpfs "$out" || exit 90
if [ "$scenario" = read-only ]; then
    "$@" >"$save/first.out" 2>"$save/first.err" & pid=$!
    n=0
    until [ -s "$out/.curate/journal.jsonl" ] || [ $n -ge 6000 ]; do sleep 0.05; n=$((n + 1)); done
    # a read-only mount on top: files already open stay writable (remount,ro would refuse: busy), new ones not
    mount --bind "$out" "$out" && mount -o remount,bind,ro "$out"
    wait $pid; echo $? >"$save/first.rc"
    umount "$out"
else
    "$@" >"$save/first.out" 2>"$save/first.err"; echo $? >"$save/first.rc"
fi
cp -a "$out/." "$save/first"
mount -o remount,size=512m "$out"
"$@" >"$save/second.out" 2>"$save/second.err"; echo $? >"$save/second.rc"
cp -a "$out/." "$save/second"
"""


@pytest.fixture(scope="module")
def own_mounts():
    """A mount namespace where this user may mount a tmpfs (util-linux unshare; as root or not)."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here to simulate a full disk: {probe.stderr.strip()}")


def in_namespace(raw: Path, tmp_path: Path, size: str, scenario: str) -> Path:
    out, save = tmp_path / "out", tmp_path / "save"
    out.mkdir()
    (save / "first").mkdir(parents=True)
    (save / "second").mkdir()
    command = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c",
               ON_A_SMALL_DISK, "sh", str(out), size, scenario, str(save), *run_command(raw, out)]
    subprocess.run(command, check=True, timeout=900)
    return save


def recorded_clips_are_on_disk(out: Path) -> int:
    """Every clip the journal says is done is on disk, whole; returns how many sources it records."""
    records = [json.loads(line) for line in (out / ".curate/journal.jsonl").read_text().splitlines()]
    records = [record for record in records if record.get("kind") != "stage"]   # a clip stage's verdicts
    for record in records:
        for clip in record["clips"]:
            if clip["status"] == "kept":
                assert (out / clip["path"]).stat().st_size == clip["bytes"], clip["path"]
    return len(records)


@pytest.mark.parametrize("scenario", ["full", "read-only"])
def test_a_disk_full_or_read_only_partway_stops_cleanly_and_a_rerun_continues(raw, reference, tmp_path, own_mounts,
                                                                               scenario):
    # room for the biggest source's clips and a little more, not for all of them
    clips = read_manifest(reference, "clips")
    per_source = clips.groupby("source_id").bytes.sum()
    size = int(per_source.max() + 0.5 * per_source.min()) + 256 * 1024 if scenario == "full" else 512 * 2**20
    save = in_namespace(raw, tmp_path, str(size), scenario)

    first_rc, first_err = int((save / "first.rc").read_text()), (save / "first.err").read_text()
    assert first_rc == 2, first_err
    reason = "No space left on device" if scenario == "full" else "Read-only file system"
    assert reason in first_err and "rerun" in first_err.lower(), first_err
    assert "Traceback" not in first_err
    done = recorded_clips_are_on_disk(save / "first")
    assert done < 3
    assert not (save / "first/manifests/clips.parquet").exists()

    second_rc, second_out = int((save / "second.rc").read_text()), (save / "second.out").read_text()
    assert second_rc == 0, (save / "second.err").read_text()
    assert f"{3 - done} processed now, {done} unchanged" in second_out
    assert_same_run(save / "second", reference)


# -- a cluster that cannot do the work ------------------------------------------------------------------------

def test_an_actor_no_node_can_hold_is_a_clear_error_not_a_wait(one_clip, tmp_path, curate, stand_in_models):
    from curate.errors import RunError

    config = config_from_dict({"models": {"dir": str(stand_in_models)}, "run": {"skip": ["sync"]},
                               "stages": SHORT_CLIPS, "resources": {"quality": {"num_gpus": 1}}})
    with pytest.raises(RunError, match="resources.quality.num_gpus is 1 but no node of the cluster has more than 0 GPUs"):
        curate(one_clip, tmp_path / "out", config)


def test_an_address_where_nothing_answers_fails_at_once(tmp_path):
    import socket

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "raw").mkdir()
    synthetic(tmp_path / "raw" / "a.mp4", 6)
    result = subprocess.run([sys.executable, "-m", "curate.cli", "run", "--input", str(tmp_path / "raw"),
                             "--output", str(tmp_path / "out"), "--skip", "face,sync,quality",
                             "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot attach to the Ray cluster at 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr

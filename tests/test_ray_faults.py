"""Ray: a worker that dies mid-source is retried; one that keeps dying becomes a reject row, not a crash."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from curate.config import config_from_dict
from footage import read_manifest, KITCHEN, downscaled
from ray_workers import SignalWorkers, alive, descendants


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="360x640")
    return raw


def run_with_killer(curate, raw, out, times, retries):
    """Kills every worker that starts the source (after it got into its decoding loop), `times` times in all."""
    with SignalWorkers(b"ray::source_pass", signal.SIGKILL, after_s=0.5, times=times) as killer:
        summary = curate(raw, out, config_from_dict({"run": {"max_retries": retries, "skip": ["face"]}}))
    return summary, killer


def test_killed_worker_is_retried_and_the_source_completes(raw, tmp_path, curate, ray_cluster):
    summary, killer = run_with_killer(curate, raw, tmp_path / "out", times=1, retries=2)
    assert len(killer.hit) == 1
    sources = read_manifest(tmp_path / "out", "sources")
    assert list(sources.status) == ["ok"]
    clips = read_manifest(tmp_path / "out", "clips")
    assert list(clips.status) == ["kept", "kept"] and clips.clip_id.is_unique
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_worker_that_keeps_dying_becomes_a_reject_row(raw, tmp_path, curate, ray_cluster):
    summary, killer = run_with_killer(curate, raw, tmp_path / "out", times=2, retries=1)
    assert len(killer.hit) == 2
    sources = read_manifest(tmp_path / "out", "sources")
    row = sources.iloc[0]
    assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", "worker", "worker_crashed")
    assert summary.sources_rejected == 1
    assert not list((tmp_path / "out" / "clips").rglob("*.mp4"))


def test_the_embedded_ray_runs_without_monitors_and_dies_with_a_killed_driver(tmp_path):
    """`curate run`'s own Ray stops the autoscaler and log monitors (a one-machine run has nothing to scale and
    forwards no logs; they were a tenth of the run's memory), still runs tasks, and takes all its processes
    down when the driver is killed outright, as ray.init's reaper did before."""
    ready = tmp_path / "ready"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time, ray
        from curate.cluster import connect_ray
        assert connect_ray(None, 1)
        assert ray.get(ray.remote(lambda x: 2 * x).remote(21)) == 42
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(600)
        """)], cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert driver.poll() is None and time.monotonic() < deadline, "the driver did not start Ray"
            time.sleep(0.2)
        tree = descendants(driver.pid)
        commands = [cmd.split(" --")[0] for cmd in tree.values()]
        assert any(cmd.endswith("/raylet") for cmd in commands) and any(cmd.endswith("/gcs_server") for cmd in commands)
        # autoscaler/_private/monitor.py and _private/log_monitor.py
        assert not [cmd for cmd in commands if cmd.endswith("monitor.py")]
    finally:
        driver.kill()
        driver.wait()
    # Ray's reaper takes down the driver's process group at once; the raylet's agents are not in it and leave
    # about a minute later, when they see the raylet gone (the same under plain ray.init): not waited for here
    core = {pid: cmd for pid, cmd in tree.items() if "Agent" not in cmd}
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in core) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [cmd for pid, cmd in core.items() if alive(pid)]

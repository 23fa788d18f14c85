"""Ray: a worker that dies mid-source is retried; one that keeps dying becomes a reject row, not a crash."""

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from curate.config import config_from_dict
from media import KITCHEN, downscaled


def source_pass_workers() -> list[int]:
    """Worker processes of this session's Ray busy with a source (Ray names the process after the task it runs)."""
    from test_faults import processes_named

    return processes_named(b"ray::source_pass")


class Killer(threading.Thread):
    """Kills every worker that starts a source, `times` times in all."""

    def __init__(self, times: int):
        super().__init__(daemon=True)
        self.times, self.killed, self.stop = times, [], threading.Event()

    def run(self):
        while not self.stop.is_set() and len(self.killed) < self.times:
            for pid in source_pass_workers():
                if pid not in self.killed:
                    time.sleep(0.5)  # let it get into the decoding loop
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="360x640")
    return raw


def run_with_killer(curate, raw, out, times, retries):
    killer = Killer(times)
    killer.start()
    try:
        summary = curate(raw, out, config_from_dict({"run": {"max_retries": retries, "skip": ["face"]}}))
    finally:
        killer.stop.set()
        killer.join()
    return summary, killer


def test_killed_worker_is_retried_and_the_source_completes(raw, tmp_path, curate, ray_cluster):
    summary, killer = run_with_killer(curate, raw, tmp_path / "out", times=1, retries=2)
    assert len(killer.killed) == 1
    sources = pd.read_parquet(tmp_path / "out/manifests/sources.parquet")
    assert list(sources.status) == ["ok"]
    clips = pd.read_parquet(tmp_path / "out/manifests/clips.parquet")
    assert list(clips.status) == ["kept", "kept"] and clips.clip_id.is_unique
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_worker_that_keeps_dying_becomes_a_reject_row(raw, tmp_path, curate, ray_cluster):
    summary, killer = run_with_killer(curate, raw, tmp_path / "out", times=2, retries=1)
    assert len(killer.killed) == 2
    sources = pd.read_parquet(tmp_path / "out/manifests/sources.parquet")
    row = sources.iloc[0]
    assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", "worker", "worker_crashed")
    assert summary.sources_rejected == 1
    assert not list((tmp_path / "out" / "clips").rglob("*.mp4"))

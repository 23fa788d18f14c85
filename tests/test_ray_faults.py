"""Ray: a worker that dies mid-source is retried; one that keeps dying becomes a reject row, not a crash."""

import signal

import pandas as pd
import pytest

from curate.config import config_from_dict
from media import KITCHEN, downscaled
from ray_workers import SignalWorkers


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
    sources = pd.read_parquet(tmp_path / "out/manifests/sources.parquet")
    assert list(sources.status) == ["ok"]
    clips = pd.read_parquet(tmp_path / "out/manifests/clips.parquet")
    assert list(clips.status) == ["kept", "kept"] and clips.clip_id.is_unique
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_worker_that_keeps_dying_becomes_a_reject_row(raw, tmp_path, curate, ray_cluster):
    summary, killer = run_with_killer(curate, raw, tmp_path / "out", times=2, retries=1)
    assert len(killer.hit) == 2
    sources = pd.read_parquet(tmp_path / "out/manifests/sources.parquet")
    row = sources.iloc[0]
    assert (row.status, row.reject_stage, row.reject_reason) == ("rejected", "worker", "worker_crashed")
    assert summary.sources_rejected == 1
    assert not list((tmp_path / "out" / "clips").rglob("*.mp4"))

"""On a Ray cluster of two nodes (`ray start --head` and a second `ray start --address`, one CPU each, on this
machine), `curate run --address` gives the same sources, clips, decisions and clip files as the embedded Ray."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from footage import read_manifest, GARDEN, KITCHEN, assert_same_run, downscaled, tree_hashes
from ray_nodes import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    """Two sources: the kitchen's face is kept, the garden's (93 px wide at this size) is too small."""
    raw = tmp_path_factory.mktemp("raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=11)
    downscaled(raw / "garden.mp4", GARDEN, size="540x960", seconds=11)
    return raw


@pytest.fixture
def two_nodes():
    """Two Ray nodes of one CPU each; stopped afterwards, and nothing of them may be left running."""
    with LocalCluster(nodes=2, cpus=1) as cluster:
        yield cluster
    assert not cluster.processes_left()


def curate_run(raw: Path, out: Path, config: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "curate.cli", "run", "--input", str(raw), "--output", str(out),
               "--config", str(config), "--no-progress", *extra]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.timeout(600)
def test_two_nodes_give_the_same_manifests_and_clips_as_the_embedded_ray(raw, tmp_path, stand_in_models, two_nodes):
    # the face stage and the quality stage's actor pool (stand-in weights, every score kept); SyncNet is left
    # out, it takes about 20 CPU-seconds a clip here
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"run:\n  skip: [sync]\nmodels:\n  dir: {stand_in_models}\n"
                      "stages:\n  quality:\n    min_score: -1000\n")
    embedded_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    curate_run(raw, tmp_path / "single", config, embedded_env, "--num-cpus", "2")
    curate_run(raw, tmp_path / "cluster", config, two_nodes.env(), "--address", two_nodes.address)

    single, cluster = tmp_path / "single", tmp_path / "cluster"
    assert_same_run(cluster, single)
    clips = read_manifest(cluster, "clips")
    # decisions both ways: the kitchen's clips kept (and scored by the quality actor), the garden's rejected
    kept, rejected = clips[clips.status == "kept"], clips[clips.status == "rejected"]
    assert set(kept.source_id) == {"kitchen.mp4"} and (kept.quality_status == "done").all()
    assert set(zip(rejected.source_id, rejected.reject_reason)) == {("garden.mp4", "face_too_small")}
    assert len(tree_hashes(cluster / "clips")) == 2 * len(kept)  # each clip and its .npz

    # the driver saw both nodes, and each node ran some of the work. Ray marks every task and actor a worker
    # process runs in that worker's log files, which are the node's own (its --temp-dir). The quality actor
    # holds one CPU, a whole node here, for the run, so the source passes run on the other node and the actor
    # reads clips written there (typically: node 0 the actor, node 1 both source passes)
    runs = read_manifest(cluster, "runs")
    assert (runs.ray_address.tolist(), runs.cluster_cpus.tolist()) == ([two_nodes.address], [2.0])
    work = []
    for node in range(2):
        logs = two_nodes.worker_logs(node)
        work.append({name for name in (":task_name:source_pass", ":actor_name:QualityWorker") if name in logs})
    print(f"work per node: {work}")
    assert all(work), f"work per node: {work}"
    assert set().union(*work) == {":task_name:source_pass", ":actor_name:QualityWorker"}

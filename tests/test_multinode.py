"""On a Ray cluster of two nodes (`ray start --head` and a second `ray start --address`, one CPU each, on this
machine), `curate run --address` gives the same sources, clips, decisions and clip files as the embedded Ray;
over many sources its one driver writes the manifests' parts as they finish, and a killed driver keeps them."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from curate.config import CLIP_STAGES, config_from_dict
from footage import read_manifest, GARDEN, KITCHEN, assert_same_run, downscaled, ffmpeg, tree_hashes, x264
from manifests import dataset, io as mio
from ray_nodes import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    """Two sources: the kitchen's face is kept, the garden's (93 px wide at this size) is too small."""
    raw = tmp_path_factory.mktemp("raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=11)
    downscaled(raw / "garden.mp4", GARDEN, size="540x960", seconds=11)
    return raw


@pytest.fixture(scope="module")
def two_nodes():
    """Two Ray nodes of one CPU each, for the tests of this module in turn (starting them takes several
    seconds); stopped afterwards, and nothing of them may be left running."""
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


# -- many sources on the cluster: one driver writes the parts as they finish ------------------------------

TINY = 400          # sources rejected at the probe (1 s, shorter than a clip): Ray tasks with little work each
PART_SOURCES = 50   # a manifest part every 50 finished sources

# `curate run` in a process whose own calls of manifests.dataset.write_part (every part goes through it) are
# logged as "pid host part-name": the parts on disk can then be checked against what the driver wrote. Ray's
# worker processes import the module afresh, without this hook.
DRIVER = """
import os, socket, sys
from manifests import dataset, io as mio
from curate.cli import main
log = open(sys.argv.pop(1), "a")
write_part = dataset.write_part
def logged(output_dir, tag, *rows):
    write_part(output_dir, tag, *rows)
    log.write(f"{os.getpid()} {socket.gethostname()} part-{tag}.parquet\\n")
    log.flush()
dataset.write_part = logged
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def many(tmp_path_factory, talking_heads):
    """A VoxCeleb2-shaped input (`idNNNNN/<video>/NNNNN.mp4`, 224² around the face, the face about half its
    width, 25 fps, AAC 16 kHz mono) of TINY + 1 real sources: TINY copies of 1 s of the kitchen speaker, and 6 s
    of him, which gives a kept clip."""
    raw, work = tmp_path_factory.mktemp("many"), tmp_path_factory.mktemp("many-work")
    square = ["-vf", "crop=540:540:290:200,scale=224:224", "-r", "25", *x264(), "-ar", "16000", "-ac", "1",
              "-c:a", "aac"]
    ffmpeg("-t", "6", "-i", KITCHEN, *square, raw / "id00000" / "v00000" / "00001.mp4")
    ffmpeg("-ss", "3", "-t", "1", "-i", KITCHEN, *square, work / "tiny.mp4")
    for n in range(TINY):
        target = raw / f"id{1 + n // 100:05d}" / f"v{n // 10 % 10:05d}" / f"{n % 10 + 1:05d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "tiny.mp4", target)
    return raw


def part_names(out: Path) -> set[str]:
    return {p.name for p in dataset.parts(out, "sources")}


def source_passes(cluster: LocalCluster) -> list[int]:
    """How often each node's worker logs name a source task so far (a few times per task)."""
    return [cluster.worker_logs(node).count(":task_name:source_pass") for node in range(cluster.nodes)]


@pytest.mark.timeout(600)
def test_many_sources_on_two_nodes_one_driver_writes_the_parts(many, tmp_path, curate, two_nodes):
    config = {"run": {"skip": ["sync", "quality"], "part_sources": PART_SOURCES}}
    single = tmp_path / "single"
    curate(many, single, config_from_dict(config))
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(json.dumps(config))  # YAML reads JSON

    out, log = tmp_path / "cluster", tmp_path / "parts.log"
    command = [sys.executable, "-c", DRIVER, str(log), "run", "--input", str(many), "--output", str(out),
               "--config", str(config_file), "--no-progress", "--address", two_nodes.address]
    before = source_passes(two_nodes)

    # parts appear while the run goes: the driver is killed (SIGKILL, no clean-up) once it has written one
    first = subprocess.Popen(command, env=two_nodes.env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and log.read_text()):
            assert first.poll() is None, f"the run ended before its first part: {first.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no part in 300 s"
            time.sleep(0.01)
        first.kill()
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL, "the run should have been killed with work left"
    # every source it finished is kept, as its readers see them: the parts, and the journal since the last one
    folded = dataset.fold_journal(mio.Journal(out).records(), CLIP_STAGES)
    done = dataset.current_table(out, "sources", journal=folded).to_pandas().set_index("source_id")
    reference = read_manifest(single, "sources").set_index("source_id")
    assert PART_SOURCES <= len(done) < TINY + 1, "the run should have been killed with work left"
    columns = ["status", "reject_stage", "reject_reason"]
    pd.testing.assert_frame_equal(done[columns].sort_index(), reference.loc[done.index, columns].sort_index())

    # the same command again finishes the run, on the same cluster, and ends as the embedded Ray did
    second = subprocess.Popen(command, env=two_nodes.env(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-4000:]
    assert f"{TINY + 1 - len(done)} processed now, {len(done)} unchanged" in stdout
    assert_same_run(out, single)
    sources, clips = read_manifest(out, "sources"), read_manifest(out, "clips")
    assert (sources.reject_reason == "too_short").sum() == TINY, sources.reject_reason.value_counts()
    assert set(clips[clips.status == "kept"].source_id) == {"id00000/v00000/00001.mp4"}

    # one driver at a time wrote every part: each part on disk is one that a curate process wrote (the killed
    # one, then the second; their pids, this host), several of them; and the journal is settled (empty) at the end
    written = [line.split() for line in log.read_text().splitlines()]
    assert {name for _, _, name in written} == part_names(out)
    drivers = {(str(first.pid), socket.gethostname()), (str(second.pid), socket.gethostname())}
    assert {(pid, host) for pid, host, _ in written} == drivers
    assert len(part_names(out)) >= (TINY + 1) // PART_SOURCES
    journal = out / ".curate" / "journal.jsonl"
    assert not journal.exists() or journal.stat().st_size == 0
    runs = read_manifest(out, "runs")
    assert set(runs.ray_address) == {two_nodes.address}
    # the source tasks ran in the cluster's workers (how Ray spreads these short tasks over the two nodes
    # varies: the first test checks that both nodes work)
    after = source_passes(two_nodes)
    print(f"killed after {len(done)} sources; source-task marks in the node logs: "
          f"{[a - b for a, b in zip(after, before)]}; parts: {len(part_names(out))}")
    assert sum(after) > sum(before)

"""`curate train syncnet` and `curate eval-syncnet` as a user runs them: the README's tour on the curated shared
videos (StableSyncNet), a rerun that continues, what is refused before any work, and Wav2Lip's expert on a Ray
cluster of two nodes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curate.cli import main
from curate.lock import OutputLock
from ray_nodes import LocalCluster
from training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMALL = {arch: str(ROOT / "configs" / f"syncnet-{arch}-small.yaml") for arch in ("stable", "wav2lip")}


@pytest.fixture
def features(tmp_path, monkeypatch):
    folder = tmp_path / "features"
    monkeypatch.setenv("CURATE_FEATURES_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def lists(readme_run, tmp_path_factory):
    """The README's lists: `curate filelist out --out lists` on its run of the shared videos (5 clips, 3
    speakers; a third of the speakers for validation)."""
    folder = tmp_path_factory.mktemp("lists")
    assert main(["filelist", str(readme_run["out"]), "--out", str(folder), "--val-fraction", "0.34"]) == 0
    return folder


def losses(run: Path) -> list[tuple]:
    return [(line["step"], line.get("loss"), line.get("val_loss")) for line in read_metrics(run / "metrics.jsonl")
            if "step" in line]


@pytest.mark.timeout(900)
def test_train_continue_and_evaluate_as_the_readme_says(lists, tmp_path, features, ray_cluster, capsys):
    run = tmp_path / "run"
    train = ["train", "syncnet", str(lists), "--out", str(run), "--config", SMALL["stable"], "--no-progress"]
    assert main([*train, "--max-steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "trained: step 10" in out and "val:     loss" in out and f"best:    {run}/checkpoints/step-" in out
    assert (run / "checkpoints" / "step-000000010" / "stable_syncnet.pt").is_file()
    assert (run / "metrics.png").is_file() and json.loads((run / "run.json").read_text())["arch"] == "stable"
    first = losses(run)
    assert [step for step, loss, _ in first if loss is not None] == [10]
    assert [step for step, _, val in first if val is not None] == [0, 10]

    # the same command, further: it continues from step 10, the first ten steps' numbers left as they were
    assert main([*train, "--max-steps", "20"]) == 0
    capsys.readouterr()
    assert losses(run)[:len(first)] == first and losses(run)[-1][0] == 20
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.json", "step-000000010", "step-000000020"]
    # once there, the same command has nothing to do
    assert main([*train, "--max-steps", "20"]) == 0
    assert capsys.readouterr().out.startswith(f"{run} is at step 20 already (train.max_steps 20)")

    # other settings on the same run folder: refused, unless asked for
    other = tmp_path / "other.yaml"
    other.write_text(Path(SMALL["stable"]).read_text().replace("lr: 6.0e-5", "lr: 3.0e-5"))
    assert main(["train", "syncnet", str(lists), "--out", str(run), "--config", str(other)]) == 2
    assert "holds a run with other settings (train.lr: 6e-05 -> 3e-05)" in capsys.readouterr().err

    # any checkpoint, or the run folder (its best), evaluated on the val split
    assert main(["eval-syncnet", str(run), str(lists), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["arch"] == "stable" and row["split"] == "val" and row["clips"] == 3 and row["windows"] == 12
    assert 0 <= row["offset_accuracy"] <= 1 and row["loss"] > 0
    assert main(["eval-syncnet", str(run / "checkpoints" / "step-000000020" / "stable_syncnet.pt"), str(lists)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["loss", "accuracy", "offset"] and "(stable, step 20)" in table[1]
    # (the other expert, Wav2Lip's, is trained through the command in test_two_nodes_train_one_expert)


def test_prepare_only_caches_the_features(lists, tmp_path, features, ray_cluster, capsys):
    run = tmp_path / "run"
    assert main(["train", "syncnet", str(lists), "--out", str(run), "--prepare"]) == 0
    assert capsys.readouterr().out.startswith(f"prepared: 2 training and 3 validation clips; features in {features}")
    assert len((features / "index.jsonl").read_text().splitlines()) == 5
    assert not run.exists()


def test_what_is_refused_before_any_work(lists, tmp_path, features, ray_cluster, capsys):
    def refused(*args: str) -> str:
        """The error: one line, the last one (warnings about skipped clips may come before it)."""
        assert main(["train", "syncnet", *args]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("curate: error: "), err
        return err

    assert "nowhere does not exist" in refused(str(tmp_path / "nowhere"), "--out", str(tmp_path / "r1"))
    assert ("--init: " in (err := refused(str(lists), "--out", str(tmp_path / "r2"), "--init", str(tmp_path / "x.pt")))
            and "curate models download stable-syncnet" in err)
    (tmp_path / "not_a_model.pt").write_bytes(b"junk")
    assert "cannot load" in refused(str(lists), "--out", str(tmp_path / "r3"), "--init", str(tmp_path / "not_a_model.pt"))
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in refused(str(lists), "--out", str(tmp_path / "file"))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path / 'missing.mp4'}\n{tmp_path / 'file'}\n")
    err = refused(str(bad), "--out", str(tmp_path / "r4"))
    assert "2 training clip(s) skipped" in err and "missing.mp4: missing: no such file" in err
    assert "file: empty_file" in err and "no usable training clips in" in err.splitlines()[-1]
    assert "unknown key 'train.lrr' (did you mean 'train.lr'?)" in refused(
        str(lists), "--out", str(tmp_path / "r5"), "--config", str(_yaml(tmp_path, "train:\n  lrr: 1\n")))
    assert "the cluster holds 1 training worker(s) of 2 CPUs and 0 GPUs, not the 3 asked for" in refused(
        str(lists), "--out", str(tmp_path / "r6"), "--config", SMALL["stable"], "--workers", "3")
    with OutputLock(tmp_path / "busy"):
        assert "another curate run" in refused(str(lists), "--out", str(tmp_path / "busy"))
    assert main(["eval-syncnet", str(tmp_path / "r1"), str(lists)]) == 2
    assert "does not exist" in capsys.readouterr().err


def _yaml(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.timeout(900)
def test_two_nodes_train_one_expert(lists, tmp_path):
    """`ray start` twice on this machine, one CPU each: `curate train syncnet --address --workers 2` puts a DDP
    rank on each node, and the run ends as on one machine."""
    # one CPU a node: a worker without loader processes; the features where both nodes see them
    config = _yaml(tmp_path, Path(SMALL["wav2lip"]).read_text().replace("num_workers: 1", "num_workers: 0")
                   .replace("data:\n", f"data:\n  cache_dir: {tmp_path / 'features'}\n"))
    with LocalCluster(nodes=2, cpus=1) as cluster:
        command = [sys.executable, "-m", "curate.cli", "train", "syncnet", str(lists), "--out", str(tmp_path / "run"),
                   "--arch", "wav2lip", "--config", str(config), "--max-steps", "4", "--workers", "2",
                   "--address", cluster.address, "--no-progress"]
        result = subprocess.run(command, env=cluster.env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        logs = [cluster.worker_logs(node) for node in range(2)]
    assert "trained: step 4" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "step-000000004" / "lipsync_expert.pth").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["arch"] == "wav2lip"
    start = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert start["event"] == "start" and start["world_size"] == 2
    assert all("RayTrainWorker" in log for log in logs), "a training worker on each node"

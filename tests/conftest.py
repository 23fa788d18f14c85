import logging
from pathlib import Path

import pytest

from footage import TALKING_HEADS


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole test session; `curate run` attaches to it instead of starting its own."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def talking_heads() -> Path:
    if not TALKING_HEADS.is_dir():
        pytest.skip(f"{TALKING_HEADS} is absent: these tests need the shared talking-head videos (../shared)")
    return TALKING_HEADS


@pytest.fixture(scope="session")
def curate(ray_cluster):
    """Run the pipeline in this process, the way `curate run` does, on the session's Ray."""
    from curate.config import Config
    from curate.run_types import RunOptions
    from curate.runner import run

    def run_curate(input_dir: Path, output_dir: Path, config=None, **options):
        return run(RunOptions(input_dir=input_dir, output_dir=output_dir, config=config or Config(),
                              progress=False, **options))

    return run_curate


@pytest.fixture(scope="session")
def stand_in_models(tmp_path_factory) -> Path:
    """A models folder with syncnet_v2.model and koniq_pretrained.pkl of stand-in weights (the official files
    cannot be fetched here)."""
    import torch

    from golden import stand_in_state_dict
    from networks.hyperiqa import HyperIQA
    from networks.syncnet.syncnet_v2 import SyncNet

    folder = tmp_path_factory.mktemp("models")
    torch.save(stand_in_state_dict(SyncNet()), folder / "syncnet_v2.model")
    torch.save(stand_in_state_dict(HyperIQA()), folder / "koniq_pretrained.pkl")
    return folder


@pytest.fixture(scope="session")
def readme_run(talking_heads, tmp_path_factory):
    """The README's main job, run once as a newcomer runs it: `curate run` on the shared videos, defaults but
    for the sync and quality stages, whose official weights cannot be fetched on this machine (they have tests
    of their own). Made once for the whole session: under pytest-xdist the other worker waits for it and reads
    it, instead of running it again beside it."""
    import json
    import os
    import subprocess
    import sys

    from filelock import FileLock

    # each xdist worker has its own basetemp; their parent is the session's, shared by all of them
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, record = root / "readme", root / "readme.json"
    with FileLock(root / "readme.lock"):
        if record.is_file():
            run = json.loads(record.read_text())
            return {"out": Path(run["out"]), "stdout": run["stdout"], "command": run["command"]}
        out = folder / "out"
        command = [sys.executable, "-m", "curate.cli", "run", "--input", str(talking_heads), "--output",
                   str(out), "--skip", "sync,quality"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr
        record.write_text(json.dumps({"out": str(out), "stdout": result.stdout, "command": command}))
        return {"out": out, "stdout": result.stdout, "command": command}


def pytest_terminal_summary(terminalreporter):
    """Free disk where the tests write: a full disk fails tests far from its cause."""
    import shutil
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    terminalreporter.write_line(f"free disk in {tempfile.gettempdir()} at the end: {free:.1f} GiB")


@pytest.fixture(scope="session")
def work(tmp_path_factory, talking_heads) -> Path:
    """The lip-sync tests' inputs: 2 s of the kitchen speaker at 540x960 (H.264, AAC), and the garden speaker's
    speech as a 1.6 s 44.1 kHz stereo WAV and a 3.2 s AAC file."""
    from footage import GARDEN, KITCHEN, ffmpeg, x264

    folder = tmp_path_factory.mktemp("lipsync")
    ffmpeg("-i", KITCHEN, "-t", "2", "-vf", "scale=540:960", *x264(12), "-c:a", "aac", folder / "kitchen.mp4")
    ffmpeg("-i", GARDEN, "-ss", "1", "-t", "1.6", "-vn", "-ar", "44100", "-ac", "2", folder / "speech.wav")
    ffmpeg("-i", GARDEN, "-ss", "1", "-t", "3.2", "-vn", "-c:a", "aac", "-b:a", "96k", folder / "speech_long.m4a")
    return folder


@pytest.fixture
def one_torch_thread(request):
    """Small models' ops are tiny: one torch thread, which a busy machine does not stall (restored after); the
    full-size golden forwards (tests named *reproduces*) keep all threads."""
    import torch

    if "reproduces" in request.node.name:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

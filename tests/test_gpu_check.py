"""bench/gpu_check.py, the one script that takes every GPU figure, run as the suite runs it: on the CPU at small
sizes (`--device cpu --small`), so that it cannot rot before the day a GPU is lent. Every section must give
finite figures, the trainers' losses must be finite and fall on the fixed batch, the device's output must agree
with the CPU's on the golden inputs, and the run must import nothing the lent GPU machine lacks."""

import importlib.metadata
import json
import math
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from golden import golden_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = {"agreement", "sync", "hyperiqa", "training", "inference"}

# The GPU machine's image ('cuda'), as /work/.library/device/KINDS.md lists it ("Python packages already there")
GPU_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
CARRIED = {"diffusers", "python-speech-features"}     # the wheels the docs say to carry (.whl)
NEVER = {"ray", "av", "pydantic", "pydantic-core"}    # not on the GPU machine, and no model or step code needs them


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements_closure(names) -> set[str]:
    """`names` and everything they require as installed here (a package the GPU machine has brings its own needs
    there, whatever this machine's version of it imports)."""
    seen, todo = set(), [_normal(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_normal(re.split(r"[ ;<>=!~\[(]", line, maxsplit=1)[0]) for line in requires if "extra ==" not in line]
    return seen


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    golden = golden_dir("")   # skips without ../shared/golden
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--json", str(out),
                           "--golden", str(golden), "--threads", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    data["stdout"], data["returncode"] = done.stdout, done.returncode
    return data


pytestmark = pytest.mark.timeout(1800)


def test_the_run_passes_and_prints_one_table(result):
    assert result["returncode"] == 0, result["failed"]
    assert result["ok"] and result["failed"] == []
    assert set(result["sections"]) == SECTIONS
    for name, section in result["sections"].items():
        assert "error" not in section, (name, section["error"])
        assert not section.get("left_out"), name          # --small runs everything
        assert section["seconds"] > 0
    table = [line for line in result["stdout"].splitlines() if line.startswith("|")]
    assert table[0] == "| section | what | figure |"
    assert {line.split("|")[1].strip() for line in table[2:]} >= SECTIONS


def test_scoring_figures_are_finite(result):
    sync = result["sections"]["sync"]["rows"]
    assert {row["dtype"] for row in sync} == {"fp32", "bf16"}    # the CPU's half is bf16
    assert any("SyncScorer" in row["what"] for row in sync)       # the stage's own path too
    assert all(math.isfinite(row["windows_per_s"]) and row["windows_per_s"] > 0 for row in sync)
    hyper = result["sections"]["hyperiqa"]["rows"]
    assert {row["dtype"] for row in hyper} == {"fp32", "bf16"}
    assert all(math.isfinite(row["frames_per_s"]) and row["frames_per_s"] > 0 for row in hyper)


def test_each_trainer_steps_with_finite_falling_losses(result):
    rows = result["sections"]["training"]["rows"]
    assert [row["model"].split()[0] for row in rows] == ["StableSyncNet", "Wav2Lip", "LatentSync"]
    for row in rows:
        assert row["steps"] == len(row["losses"]) >= 3
        assert row["finite"] and all(math.isfinite(x) for x in row["losses"]), row
        assert row["falling"] and row["losses"][-1] < row["losses"][0], row
        for key in ("samples_per_s", "s_per_step", "peak_gib", "trainable_m"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["model"], key)


def test_inference_frames_per_second_and_flat_memory(result):
    inference = result["sections"]["inference"]
    assert inference["rows"] and all(math.isfinite(row["frames_per_s"]) and row["frames_per_s"] > 0
                                      for row in inference["rows"])
    flat = inference["flat"]
    assert flat["frames"][1] >= 6 * flat["frames"][0]
    assert all(math.isfinite(x) and x > 0 for x in flat["peak_gib"])
    assert flat["flat"], flat


def test_agreement_within_tolerance(result):
    rows = result["sections"]["agreement"]["rows"]
    assert [row["network"] for row in rows] == ["SyncNet v2", "HyperIQA", "Wav2Lip 96 generator", "Wav2Lip expert"]
    for row in rows:
        assert row["fp32"] <= 1e-3 and row["fp32_ok"], row
        assert row["bf16"] <= 5e-2 and row["bf16_ok"], row
        # the CPU's output is the golden reference's (the stand-in weights are the golden ones)
        assert row["cpu_vs_reference"] is not None and row["cpu_vs_reference"] < 1e-4, row


def test_imports_nothing_the_gpu_machine_lacks(result):
    imported = set(result["imported"])
    assert not imported & NEVER, imported & NEVER
    allowed = {_normal(n) for n in GPU_IMAGE} | CARRIED | _requirements_closure(GPU_IMAGE)
    assert imported - allowed == set(), f"not on the GPU machine nor carried: {sorted(imported - allowed)}"
    assert {"torch", "diffusers", "python-speech-features"} <= imported


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of a module `name` whose value is 42."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        wheel.writestr(f"{name}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        wheel.writestr(f"{name}-0.1.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{name}-0.1.dist-info/RECORD", "")
    return path


def test_carried_wheels_are_installed_where_their_module_is_missing(tmp_path):
    """The GPU machine's start: a wheel whose module cannot be imported is installed into a folder of the run's
    and found; one whose module is there already (diffusers here) is left alone."""
    folder = tmp_path / "whl"
    folder.mkdir()
    _wheel(folder, "gpu_check_carried")
    (folder / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")   # importable here: never opened
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_check; "
            f"print(gpu_check.use_carried_wheels(__import__('pathlib').Path({str(folder)!r}))); "
            "import gpu_check_carried; print(gpu_check_carried.VALUE)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "TMPDIR": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['gpu_check_carried-0.1-py3-none-any.whl']", "42"]
    assert (tmp_path / "gpu_check_site" / "gpu_check_carried" / "__init__.py").is_file()

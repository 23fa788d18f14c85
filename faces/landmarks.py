"""Face detectors and 68-point landmark models behind one small interface.

- ``dlib``: dlib's HOG face detector and its 68-point shape predictor, with the model file shipped in the
  ``face_recognition_models`` package. Runs offline on the CPU; the default.
- ``fan``: the ``face-alignment`` package (S3FD detector and 2D-FAN-4), on the GPU when the worker has one.
  Its weights live in torch's hub cache; `curate models download fan` fetches them.

Both give the iBUG 68-point layout in the coordinates of the picture they are handed. Backends are built
once per worker process (`get_backend`), so weights load once per worker, not once per source.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here: the message names what is missing and how to get it."""


@dataclass(frozen=True)
class FaceBox:
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def size(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2])

    def scaled(self, factor: float) -> "FaceBox":
        return FaceBox(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score)


class LandmarkBackend(Protocol):
    name: str
    channels: int   # 1: wants grey pictures, 3: wants RGB

    def detect(self, picture: np.ndarray) -> list[FaceBox]:
        """Faces in `picture`, largest first, in its pixel coordinates."""

    def landmarks(self, picture: np.ndarray, box: FaceBox) -> np.ndarray | None:
        """68 (x, y) points of the face in `box`, in `picture`'s coordinates; `picture` need only hold the
        face and a margin around it."""


# -- dlib ----------------------------------------------------------------------------------------------

def dlib_model_path() -> Path:
    # face_recognition_models' __init__ imports pkg_resources, which current setuptools lacks: find its
    # folder without importing it
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            "the dlib landmark backend needs the 68-point model of the face_recognition_models package; "
            "install it with `pip install face_recognition_models`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise BackendUnavailable(f"the dlib landmark model is missing: {path} (reinstall face_recognition_models)")
    return path


class DlibBackend:
    name = "dlib"
    channels = 1

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise BackendUnavailable("the dlib landmark backend needs dlib: `pip install dlib-bin`") from None
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))

    def detect(self, picture: np.ndarray) -> list[FaceBox]:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(picture), 0, 0.0)
        boxes = [FaceBox(r.left(), r.top(), r.right(), r.bottom(), float(s)) for r, s in zip(rects, scores)]
        return sorted(boxes, key=lambda b: -b.size)

    def landmarks(self, picture: np.ndarray, box: FaceBox) -> np.ndarray | None:
        rect = self._dlib.rectangle(int(round(box.x0)), int(round(box.y0)), int(round(box.x1)), int(round(box.y1)))
        shape = self._predictor(np.ascontiguousarray(picture), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# -- face-alignment (FAN) ------------------------------------------------------------------------------

FAN_FILES = ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")


def fan_weights_dir() -> Path:
    try:
        import torch.hub
    except ImportError:
        raise BackendUnavailable("the fan landmark backend needs torch and face-alignment: "
                                 "`pip install 'lipsync-curate[fan]'`") from None
    return Path(torch.hub.get_dir()) / "checkpoints"


def check_fan_weights() -> None:
    if importlib.util.find_spec("face_alignment") is None:
        raise BackendUnavailable("the fan landmark backend needs face-alignment: `pip install 'lipsync-curate[fan]'`")
    folder = fan_weights_dir()
    missing = [name for name in FAN_FILES if not (folder / name).is_file()]
    if missing:
        raise BackendUnavailable(
            f"the fan landmark backend needs {' and '.join(missing)} in {folder} (torch's hub cache, "
            "set by TORCH_HOME); fetch them with `curate models download fan`, "
            "or use the offline backend with `stages.face.backend: dlib`"
        )


class FanBackend:
    name = "fan"
    channels = 3

    def __init__(self, device: str):
        check_fan_weights()
        import face_alignment

        self.device = device
        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd", compile=False,
        )

    def detect(self, picture: np.ndarray) -> list[FaceBox]:
        found = self._fa.face_detector.detect_from_image(np.ascontiguousarray(picture))
        boxes = [FaceBox(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4])) for b in found]
        return sorted(boxes, key=lambda b: -b.size)

    def landmarks(self, picture: np.ndarray, box: FaceBox) -> np.ndarray | None:
        result = self._fa.get_landmarks_from_image(
            np.ascontiguousarray(picture), detected_faces=[np.array([box.x0, box.y0, box.x1, box.y1])])
        if not result:
            return None
        return np.asarray(result[0], dtype=np.float32)[:, :2]


# -- one per worker ------------------------------------------------------------------------------------

_BACKENDS: dict[tuple[str, str], LandmarkBackend] = {}


def torch_device() -> str:
    """cuda when this process sees a GPU (under Ray: when the task was given one), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_backend(name: str) -> LandmarkBackend:
    """The named backend, built on first use in this process and kept."""
    device = torch_device() if name == "fan" else "cpu"
    key = (name, device)
    if key not in _BACKENDS:
        if name == "dlib":
            _BACKENDS[key] = DlibBackend()
        elif name == "fan":
            _BACKENDS[key] = FanBackend(device)
        else:
            raise BackendUnavailable(f"unknown landmark backend {name!r} (dlib or fan)")
    return _BACKENDS[key]


def check_backend(name: str) -> None:
    """Fail before any work when the backend's code or weights are missing."""
    if name == "dlib":
        dlib_model_path()
        if importlib.util.find_spec("dlib") is None:
            raise BackendUnavailable("the dlib landmark backend needs dlib: `pip install dlib-bin`")
    elif name == "fan":
        check_fan_weights()
    else:
        raise BackendUnavailable(f"unknown landmark backend {name!r} (dlib or fan)")

"""Model weights the stages need: where each file lives, whether it is there, and fetching it.

`curate models list` shows them; `curate models download NAME` fetches a model's files from their public
locations, resuming a download that was cut, and puts each file in place only once it is complete.
"""

from __future__ import annotations

import http.client
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stages import face_landmarks


@dataclass(frozen=True)
class ModelFile:
    name: str
    url: str | None                 # None: shipped inside a Python package, nothing to fetch
    folder: Callable[[], Path]

    @property
    def path(self) -> Path:
        return self.folder() / self.name


def _dlib_folder() -> Path:
    return face_landmarks.dlib_model_path().parent


_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/"

MODELS: dict[str, tuple[str, list[ModelFile]]] = {
    "dlib": ("68-point landmarks for the face stage's dlib backend (in face_recognition_models)",
             [ModelFile("shape_predictor_68_face_landmarks.dat", None, _dlib_folder)]),
    "fan": ("S3FD face detector and 2D-FAN-4 landmarks for the face stage's fan backend (face-alignment)",
            [ModelFile(name, _FAN_URL + name, face_landmarks.fan_weights_dir) for name in face_landmarks.FAN_FILES]),
}


class DownloadError(RuntimeError):
    pass


def describe() -> list[tuple[str, str, Path | None, bool]]:
    """(model, file, path, present) for every file of every model."""
    rows = []
    for model, (_, files) in MODELS.items():
        for file in files:
            try:
                path = file.path
            except face_landmarks.BackendUnavailable:
                rows.append((model, file.name, None, False))
                continue
            rows.append((model, file.name, path, path.is_file()))
    return rows


def download_model(name: str, progress: Callable[[str], None] = print, timeout: float = 60.0) -> list[Path]:
    if name not in MODELS:
        raise DownloadError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    paths = []
    for file in MODELS[name][1]:
        target = file.path
        if target.is_file():
            progress(f"{name}: {target} is already there")
        elif file.url is None:
            raise DownloadError(f"{name}: {target} is missing; it comes with a Python package (reinstall it)")
        else:
            progress(f"{name}: fetching {file.url}")
            download(file.url, target, timeout=timeout)
            progress(f"{name}: {target}")
        paths.append(target)
    return paths


def download(url: str, target: Path, chunk: int = 1 << 20, timeout: float = 60.0) -> None:
    """Fetch `url` into `target`, resuming from `target.partial` if an earlier attempt was cut off.

    The bytes go to the .partial file and it is renamed to `target` only when the server's full length has
    arrived, so an interrupted download never looks like a model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start again
                have = 0
            total = _total_length(response, have)
            with open(partial, "ab" if have else "wb") as out:
                while True:
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
    except (OSError, http.client.HTTPException) as exc:  # URLError, a reset, a body cut short
        raise DownloadError(f"downloading {url} failed ({exc}); run the same command again to resume") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"downloading {url} stopped at {size} of {total} bytes; run the same command again to resume")
    os.replace(partial, target)


def _total_length(response, have: int) -> int | None:
    content_range = response.headers.get("Content-Range")  # bytes 100-999/1000
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + have if length and length.isdigit() else None

"""How a model sees the face: the crop it was trained on, as one affine map from the frame.

- `BoxFraming`: Wav2Lip's official checkpoints were trained on detector boxes (S3FD), 10 px more below, resized
  to 96 x 96 without keeping the aspect. The box is made here from the 68 landmarks: jaw to jaw across, the
  chin at the bottom, and above the brows by a fifth of the brow-to-chin height, which is about where S3FD
  puts its top edge on frontal faces.
- `TemplateFraming`: a model trained here on curated clips sees what the curation wrote: LatentSync's
  three-point template (`faces.align`), the same warp at the model's size.

Either way the crop is `matrix` (frame pixels -> crop pixels), so the paste-back inverts one matrix and the
generated face is resampled once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faces import align as face_align

JAW = list(range(0, 17))
BROWS = list(range(17, 27))
GREY = (127, 127, 127)   # outside the picture, as the curation's warp fills it


@dataclass(frozen=True)
class BoxFraming:
    size: int = 96
    pad_bottom: float = 10.0     # source pixels, as Wav2Lip's --pads 0 10 0 0
    name: str = "box"

    def box(self, landmarks: np.ndarray) -> tuple[float, float, float, float]:
        x0, x1 = float(landmarks[JAW, 0].min()), float(landmarks[JAW, 0].max())
        brow, chin = float(landmarks[BROWS, 1].min()), float(landmarks[:, 1].max())
        return x0, brow - 0.2 * (chin - brow), x1, chin + self.pad_bottom

    def matrix(self, landmarks: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box(landmarks)
        sx, sy = self.size / max(x1 - x0, 1.0), self.size / max(y1 - y0, 1.0)
        return np.array([[sx, 0.0, -sx * x0], [0.0, sy, -sy * y0]])


@dataclass(frozen=True)
class TemplateFraming:
    size: int = 256
    name: str = "template"

    def matrix(self, landmarks: np.ndarray) -> np.ndarray:
        return face_align.align_matrix(face_align.anchors(landmarks), self.size)


Framing = BoxFraming | TemplateFraming


def crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The model's input picture: the frame warped by `matrix` (pre-shrunk when it shrinks a lot, so the crop
    does not alias), grey outside the picture."""
    return face_align.warp_plane(frame, matrix, (size, size), GREY)

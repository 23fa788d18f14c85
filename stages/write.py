"""Write stage: the end of the chain. Encodes a clip's frames and audio into one MP4 (media.encode), atomically:
the file appears under its final name only when complete, so a crash never leaves a half-written clip under a
name a rerun would trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from manifests.files import write_atomically
from media.encode import encode_clip, stored_picture
from stages.settings import WriteParams

if TYPE_CHECKING:
    import av

STAGE = "write"


class ClipWriter:
    def __init__(self, params: WriteParams, fps: int, sample_rate: int, threads: int = 1):
        self.params = params
        self.fps = fps
        self.sample_rate = sample_rate
        self.threads = max(1, int(threads))

    def prepare(self, frame: av.VideoFrame, size: tuple[int, int], rotation: int = 0) -> av.VideoFrame:
        """The picture this writer will store for `frame` (yuv420p): scaled once, as soon as it is decoded.
        `size` is the stored frame's size before `rotation` (degrees counter-clockwise) turns it upright."""
        return stored_picture(frame, size, rotation)

    def write(self, path: Path, frames: Sequence[av.VideoFrame], audio: np.ndarray) -> dict:
        """Encode `frames` (all the same size, any pixel format) and mono int16 `audio` into `path`."""
        if not frames:
            raise ValueError("a clip needs at least one frame")
        p = self.params
        write_atomically(path, lambda target: encode_clip(target, frames, audio, self.fps, self.sample_rate, p.crf,
                                                          p.preset, p.audio_codec, self.threads))
        return {"bytes": path.stat().st_size, "width": frames[0].width, "height": frames[0].height}

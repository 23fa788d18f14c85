"""`lipsync(video, audio, out, model)`: the pipeline every model runs through, streaming.

Per output frame k, in one pass over the decoded video:
1. the source frame shown at k: frame k of the 25 fps timeline, or, when the audio outlasts the video, the
   video played back and forth (`media.bounce`); the frames and their tracked faces are then kept on the first
   pass (`media.FrameStore`: in memory up to `Options.bounce_memory_mb`, on disk beyond it) and read back,
   never decoded or tracked again;
2. the face: tracked (`faces.FaceFollower`), its landmarks smoothed; a frame without it is written unchanged
   and counted;
3. the crop in the model's framing, batched (`model.batch_size` crops of consecutive frames) into
   `model.generate`;
4. the new lower face pasted back (`paste.paste`), the frame encoded (`media.VideoWriter`) with the input
   audio.

On a GPU the model runs on a thread of its own (`Options.overlap`): while it makes batch n, the main thread
pastes and encodes batch n - 1 and decodes, tracks and crops batch n + 1, so the GPU waits on the CPU stages
only when they are slower than it. The output is the same either way.

Only a batch of frames and the tracker's window are in memory at a time (and a video played back and forth,
up to its bound); the audio's features are read a block at a time as the frames ask (`models.prepare_audio`).
The output appears under its name only once complete; a video in which the face is never found is an error,
with nothing written. With `Options.preview`, `lipsync.preview` gathers per frame only the mouths' openings (input
and written) and about 8 frames' faces, and draws OUT.preview.png once the video is written.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faces.landmarks import get_backend
from faces.settings import FaceParams
from faces.tracker import FrameView
from lipsync.faces import FaceFollower, Tracked
from lipsync.framing import crop
from lipsync.media import (
    FPS, SAMPLE_RATE, FrameStore, LipsyncError, VideoReader, VideoWriter, bounce, frames_for, read_speech
)
from lipsync.models import LipsyncModel
from lipsync.paste import paste
from lipsync.preview import Preview, PreviewRecorder


@dataclass
class Options:
    face: int | None = None            # --face N: the N-th face from the left; None: the largest
    crf: int = 18
    preset: str = "medium"
    audio: str = "auto"                 # auto | copy | aac
    face_params: FaceParams = field(default_factory=FaceParams)
    feather: float = 0.06
    threads: int = 0                    # decoder threads (0: FFmpeg's choice)
    # the model on a thread of its own, a batch behind: the next batch is decoded, tracked and cropped, and the
    # last one pasted and encoded, while it works (None: when the model is on a GPU, where that is free time)
    overlap: bool | None = None
    # a video shorter than the audio is played back and forth from its frames kept in memory up to this many MB
    # (512: 13 s at 540x960, 3.3 s at 1080x1920), from a lossless spool on disk beyond it
    bounce_memory_mb: float = 512.0
    # OUT.preview.png beside the output: ~8 frames as given and as written, their mouths' opening against the
    # speech and the weight-free sync cue of each (runs the landmark model again on every written face)
    preview: bool = False
    preview_max_lag: int = 6            # the cue's lag range, frames (the sync stage's max_offset)


@dataclass
class Summary:
    output: Path
    frames: int = 0                     # written
    without_face: int = 0               # written unchanged: the face was not found
    video_frames: int = 0               # the input video's frames at 25 fps
    looped: bool = False                # played back and forth to cover the audio
    spooled: bool = False               # its frames did not fit bounce_memory_mb: read back from disk
    frames_held_mb: float = 0.0         # the most frames held in memory for the way back, MB
    audio_s: float = 0.0
    audio_mode: str = ""
    faces_seen: int = 0                 # faces in the first frame with any
    preview: Preview | None = None      # with Options.preview
    seconds: dict = field(default_factory=lambda: defaultdict(float))

    def lines(self) -> list[str]:
        total = sum(self.seconds.values())
        out = [f"wrote {self.output}: {self.frames} frames ({self.frames / FPS:.2f} s) for {self.audio_s:.2f} s "
               f"of audio, {self.without_face} without the face (written unchanged)"
               + (f"; the {self.video_frames}-frame video played back and forth "
                  f"({'spooled to disk' if self.spooled else 'from memory'})" if self.looped else "")
               + f"; audio {self.audio_mode}"]
        if self.preview is not None:
            out.append(self.preview.line())
        for stage, seconds in self.seconds.items():
            rate = self.frames / seconds if seconds > 0 else float("inf")
            out.append(f"  {stage:<8} {seconds:7.2f} s  {rate:8.1f} frames/s")
        out.append(f"  {'total':<8} {total:7.2f} s  {self.frames / max(total, 1e-9):8.1f} frames/s")
        return out


class _Clock:
    def __init__(self, seconds: dict):
        self.seconds = seconds

    def __call__(self, stage: str):
        clock = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                clock.seconds[stage] += time.perf_counter() - self.t0
        return _Span()


TAIL = 6   # frames kept to turn back on when the video is a few frames shorter than the audio


class _SpoolNeeded(Exception):
    """The video declared itself longer than it is, and turned out shorter than the audio."""


def lipsync(video: Path, audio: Path, out: Path, model: LipsyncModel, options: Options = Options(),
            progress=None) -> Summary:
    """Write `out`: `video` with its mouth following `audio`. `progress(done, total)` is called per frame."""
    try:
        return _lipsync(video, audio, out, model, options, progress, spool_frames=None)
    except _SpoolNeeded:
        # only a file whose header overstates its length gets here: start again, keeping the frames this time
        return _lipsync(video, audio, out, model, options, progress, spool_frames=True)


def _lipsync(video: Path, audio: Path, out: Path, model: LipsyncModel, options: Options, progress,
             spool_frames: bool | None) -> Summary:
    video, audio, out = Path(video), Path(audio), Path(out)
    summary = Summary(output=out)
    clock = _Clock(summary.seconds)
    reader = VideoReader(video)
    with clock("audio"):
        speech = read_speech(audio)
        features = model.prepare_audio(speech)
    total = frames_for(speech.size)
    summary.audio_s = speech.size / SAMPLE_RATE
    if out.exists() and out.is_dir():
        raise LipsyncError(f"output {out} is a folder")
    if not out.parent.is_dir():
        raise LipsyncError(f"the output's folder {out.parent} does not exist")
    backend = get_backend(options.face_params.backend)

    # the audio may outlast the video: keep what the way back needs (frames on disk, faces in memory)
    # (a video about as long as the audio, a few frames short, turns back on the last frames, kept in memory)
    if spool_frames is None:
        spool_frames = reader.declared_s * FPS < total - TAIL + 2
    spool = FrameStore(int(options.bounce_memory_mb * 2 ** 20), out.parent) if spool_frames else None
    preview = PreviewRecorder(total, backend) if options.preview else None
    faces_kept: list[np.ndarray | None] = []
    tail: deque[tuple[int, np.ndarray, np.ndarray | None]] = deque(maxlen=TAIL)   # the last frames, unpasted
    seen = 0
    writer: VideoWriter | None = None
    batch: list[tuple[np.ndarray, np.ndarray | None, int]] = []   # (frame, landmarks, output index)
    written = 0

    overlap = options.overlap
    if overlap is None:
        overlap = getattr(getattr(model, "device", None), "type", "cpu") not in ("cpu", "mps")
    worker = ThreadPoolExecutor(1, thread_name_prefix="lipsync-model") if overlap else None
    pending: list = []          # the batch the model is making on its thread: (items, with face, matrices, future)

    def generate(crops: np.ndarray, frames: list[int]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        faces = model.generate(crops, frames, features)
        return faces, time.perf_counter() - started

    def finish(items: list, with_face: list, matrices: list, made) -> None:
        """Paste a batch's new faces (`made`: the model's result, or its future) and encode its frames."""
        nonlocal written
        if preview is not None:
            with clock("preview"):
                for frame, landmarks, k in items:
                    preview.before(k, frame, landmarks)
        if with_face:
            faces, seconds = made.result() if worker is not None else made
            summary.seconds["model"] += seconds      # the model's own time, on whichever thread
            with clock("paste"):
                for (_, item), face, matrix in zip(with_face, faces, matrices):
                    paste(item[0], face, matrix, item[1], options.feather)
        if preview is not None:
            with clock("preview"):
                for frame, landmarks, k in items:
                    preview.after(k, k if k < seen else bounce(k, seen), frame, landmarks)
        with clock("encode"):
            for frame, landmarks, _ in items:
                writer.write(frame)
                summary.without_face += landmarks is None
                written += 1
                if progress:
                    progress(written, total)

    def flush() -> None:
        items = list(batch)
        batch.clear()
        with_face = [(i, item) for i, item in enumerate(items) if item[1] is not None]
        made, matrices = None, []
        if with_face:
            size = model.framing.size
            with clock("crop"):
                matrices = [model.framing.matrix(item[1]) for _, item in with_face]
                crops = np.stack([crop(item[0], m, size) for (_, item), m in zip(with_face, matrices)])
            indices = [item[2] for _, item in with_face]
            made = worker.submit(generate, crops, indices) if worker is not None else generate(crops, indices)
        if worker is None:
            finish(items, with_face, matrices, made)
            return
        drain()
        pending.append((items, with_face, matrices, made))

    def drain() -> None:
        while pending:
            finish(*pending.pop(0))

    def queued() -> int:
        """Frames taken but not yet written."""
        return len(batch) + sum(len(job[0]) for job in pending)

    def take(tracked: Tracked) -> None:
        nonlocal writer, seen
        if tracked.index >= total:
            return   # the audio is shorter: the video is cut
        frame = np.ascontiguousarray(tracked.view.full(3))
        seen = tracked.index + 1
        if preview is not None:
            with clock("preview"):
                preview.source(tracked)
        if spool is not None:
            with clock("spool"):
                spool.add(frame)
            faces_kept.append(tracked.landmarks)
        else:
            tail.append((tracked.index, frame.copy(), tracked.landmarks))
        if writer is None:
            height, width = frame.shape[:2]
            writer = VideoWriter(out, (width, height), total, audio, options.crf, options.preset, options.audio)
            summary.audio_mode = writer.audio_mode
        batch.append((frame, tracked.landmarks, tracked.index))
        if len(batch) >= model.batch_size:
            flush()

    follower: FaceFollower | None = None
    try:
        decoded = reader.frames(options.threads)
        while True:
            with clock("decode"):
                item = next(decoded, None)
            if item is None:
                break
            index, frame = item
            view = FrameView(frame, reader.rotation)
            if follower is None:
                follower = FaceFollower(options.face_params, backend, view.size[0], options.face)
            if index >= total + follower.lag:
                break   # frames past the audio's end are not shown (the last shown ones have their window)
            with clock("face"):
                ready = follower.push(index, view)
            for tracked in ready:
                take(tracked)
        with clock("face"):
            ready = follower.finish() if follower is not None else []
        for tracked in ready:
            take(tracked)
        summary.faces_seen = len(follower.picker.found) if follower is not None else 0
        if follower is None or follower.found == 0:
            raise LipsyncError(f"video {video}: no face found in any frame ({options.face_params.backend} "
                               f"landmarks); nothing written")
        summary.video_frames = reader.frames_out
        # the rest of the audio: the video back and forth, from the spool
        if written + queued() < total:
            summary.looped = True
            kept = {index: (frame, landmarks) for index, frame, landmarks in tail}
            for k in range(written + queued(), total):
                source = bounce(k, seen)
                if spool is not None:
                    with clock("spool"):
                        frame, landmarks = spool.get(source), faces_kept[source]
                elif source in kept:
                    frame, landmarks = kept[source][0].copy(), kept[source][1]
                else:
                    raise _SpoolNeeded()
                batch.append((frame, landmarks, k))
                if len(batch) >= model.batch_size:
                    flush()
        if batch:
            flush()
        drain()
        if spool is not None:
            summary.spooled, summary.frames_held_mb = spool.spooled, spool.peak_bytes / 2 ** 20
        with clock("encode"):
            writer.close()
        summary.frames = written
        if preview is not None:
            strip = out.with_suffix(".preview.png")
            try:
                with clock("preview"):
                    summary.preview = preview.finish(strip, seen, speech, options.preview_max_lag,
                                                     f"{out.name}: {model.name}")
            except OSError as exc:
                raise LipsyncError(f"wrote {out}, but not its preview: {exc.strerror or exc}") from None
        return summary
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        if spool is not None:
            spool.close()

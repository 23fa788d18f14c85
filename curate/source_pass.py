"""One source, decoded once, streamed through probe -> resample -> shots -> clips -> face -> speech -> write.

This is the body of the Ray task that handles a source. Each decoded frame gives, right away, a small picture
for the shot detector and the picture the writer stores: the face stage's aligned frame (a few frames later,
once its smoothing window is complete), or with the face stage skipped the frame scaled down. The clip
splitter holds at most one clip's lookahead of stored pictures, so memory does not grow with the source's
length, and no full-resolution frame outlives the face stage's short window. Clips are written as soon as
their span is settled and yielded one by one, so they can move on before the source is finished.

Events yielded, in order: ``started``, ``probed`` (unless the probe rejects), one ``clip`` per clip span
(written or rejected), then ``source`` with the source's row; ``alive`` now and then between them, so that
the driver can tell a slow source from a hung one. A source rejected after some clips were yielded (a decode
error partway, a truncated file) ends with a rejected ``source`` event; the runner then rejects its clips too.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from curate.config import Config
from curate.source_task import SourceTask, TransientSourceError
from faces.landmarks import get_backend
from faces.speaking import speaking_cue, speech_envelope
from faces.tracker import FrameView
from manifests.files import OutputError, file_sha256, write_arrays
from manifests.rejected import Rejected
from media import probe as probe_stage
from media.encode import scaled_size
from media.frames import reformat
from media.timeline import AudioTrack, DecodedTimeline, FrameRateConverter, samples_per_frame
from stages.clips import ClipSplitter, IntervalSplitter, Span, frames_past
from stages.duplicates import fingerprint as clip_fingerprint
from stages.face import ClipFaces, FaceStage
from stages.shots import KnownShots, ShotDetector
from stages.speech import SpeechStage
from stages.write import ClipWriter

CLIPS_DIR = "clips"
# audio kept beyond each end of a clip: the largest offset SyncNet can report (stages.sync_score.VSHIFT); defined
# here, not in stages.sync, whose import pulls in torch and scipy, which a source-pass worker does not need
CONTEXT_FRAMES = 15


# columns a clip has only once written (or once the face stage looked at it)
_NOT_WRITTEN = {
    "path": None, "width": None, "height": None, "bytes": None, "audio_samples": None, "landmarks_path": None,
    "face_backend": None, "face_detection_rate": None, "face_size_px": None, "face_jitter_px": None,
    "face_max_faces": None, "aligned_size": None, "speech_fraction": None,
}


@dataclass
class _OtherFace:
    """A face besides the largest, followed from the frame a detection first found it on, and its aligned
    pictures [base, base + len(frames))."""

    stage: FaceStage
    base: int
    frames: deque = field(default_factory=deque)


class StageClock:
    """CPU and wall seconds spent per stage inside the pass.

    CPU is this thread's time: decoding, encoding, swscale and OpenCV run single-threaded in it (thread count
    1, the default: media.frames.reformat, cv2.setNumThreads), and Ray's own threads in the worker process are
    left out.
    """

    def __init__(self):
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[stage] += time.thread_time() - c0
            self.wall[stage] += time.perf_counter() - w0


def process_source(task: SourceTask, config: Config) -> Iterator[dict]:
    clock = StageClock()
    started = time.perf_counter()
    row: dict = {
        "source_id": task.source_id, "path": task.path, "size_bytes": task.size_bytes,
        "mtime_ns": task.mtime_ns, "fingerprint": task.fingerprints["write"],
        "annotated_intervals": [list(r) for r in task.intervals] if task.intervals else None,
    }
    yield {"event": "started", "source_id": task.source_id}  # from here on the driver watches for stalls
    try:
        with clock("probe"):
            row["sha256"] = task.sha256 or file_sha256(task.path)
            facts = probe_stage.probe(task.path, min_duration_s=config.stages.clips.min_seconds)
    except OSError as exc:  # vanished or unreadable between the scan and now
        yield _source_event(row, clock, started, probe_stage.unreadable(task.path, exc))
        return
    except Rejected as rejected:
        yield _source_event(row, clock, started, rejected)
        return
    row.update(facts.as_row())
    _remove_partials(Path(task.output_dir) / CLIPS_DIR / task.out_key)
    yield {"event": "probed", "source_id": task.source_id, "duration_s": facts.duration_s}

    the_pass = _Pass(task, config, facts, clock, row["sha256"])
    try:
        yield from the_pass.run()
    except av.error.FFmpegError as exc:  # the file could be probed but not opened again for decoding
        row.update(the_pass.summary())
        yield _source_event(row, clock, started, probe_stage.decode_error(exc, 0.0))
        return
    except Rejected as rejected:
        row.update(the_pass.summary())
        yield _source_event(row, clock, started, rejected)
        return
    finally:
        the_pass.close()
    row.update(the_pass.summary())
    yield _source_event(row, clock, started, None)


def source_pass(task: SourceTask, config: Config) -> Iterator[dict]:
    """The source pass as the Ray task runs it (through curate.source_entry.source_pass): an unexpected
    error becomes a TransientSourceError, which Ray retries."""
    try:
        yield from process_source(task, config)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TransientSourceError(f"{type(exc).__name__}: {exc}") from exc


def _remove_partials(folder: Path) -> None:
    """Clip files an interrupted attempt left half-written (they never got their final name)."""
    try:
        if folder.is_dir():
            for partial in folder.glob("*.partial"):
                partial.unlink(missing_ok=True)
    except OSError as exc:  # the output side failing is not this source's fault: the run must stop
        raise OutputError(exc.errno, f"cannot clean {folder}: {exc.strerror or exc}") from exc


def _rejected(row: dict, rejected: Rejected) -> dict:
    return {**row, "status": "rejected", "reject_stage": rejected.stage, "reject_reason": rejected.reason,
            "reject_detail": rejected.detail}


def _distinct_faces(faces: list) -> list:
    """The faces judged on a span less any other face's stage that followed the largest face itself (a
    detection that lost its own face can land on it): same place in most frames."""
    first = faces[0][1].arrays.get("landmarks_source")
    if first is None or len(faces) == 1:
        return faces
    kept = faces[:1]
    for other, verdict in faces[1:]:
        points = verdict.arrays.get("landmarks_source")
        if points is not None:
            apart = np.linalg.norm(np.nanmean(points, 1) - np.nanmean(first, 1), axis=1)
            width = np.nanmedian(np.ptp(first[:, :, 0], axis=1))
            with np.errstate(invalid="ignore"):
                if np.nanmean(apart < 0.5 * width) > 0.5:
                    continue
        kept.append((other, verdict))
    return kept


def _turn_shares(cues: list, margin: float) -> list[float]:
    """Per face, the share of the windows where its cue leads every other face's by at least `margin`."""
    count = min(cue.windows.size for cue in cues)
    if count == 0:
        return [0.0] * len(cues)
    windows = np.stack([cue.windows[:count] for cue in cues])
    shares = []
    for k in range(len(cues)):
        rest = np.delete(windows, k, axis=0).max(0)
        shares.append(float(np.mean(windows[k] >= rest + margin)))
    return shares


def _source_event(row: dict, clock: StageClock, started: float, rejected: Rejected | None) -> dict:
    row = dict(row)
    row["status"] = "rejected" if rejected else "ok"
    row["reject_stage"] = rejected.stage if rejected else None
    row["reject_reason"] = rejected.reason if rejected else None
    row["reject_detail"] = rejected.detail if rejected else None
    row["cpu_s"] = {stage: round(seconds, 4) for stage, seconds in clock.cpu.items()}
    row["wall_s"] = round(time.perf_counter() - started, 4)
    return {"event": "source", "source_id": row["source_id"], "row": row}


class _Pass:
    def __init__(self, task: SourceTask, config: Config, facts: probe_stage.SourceFacts, clock: StageClock, sha256: str):
        stages = config.stages
        self.task, self.config, self.facts, self.clock, self.sha256 = task, config, facts, clock, sha256
        self.fps = stages.resample.fps
        self.sample_rate = stages.resample.sample_rate
        self.spf = samples_per_frame(self.fps, self.sample_rate)
        threads = max(1, round(config.resources.source_pass.num_cpus))
        # OpenCV's pool (the face warp, the shot detector's conversions) as wide as the task's CPUs, like the decoder
        # and encoder: by default it is one thread per core of the machine, whose share of the work no stage clock
        # sees, and which wait for work spinning, on cores the other source tasks hold
        cv2.setNumThreads(threads)
        self.writer = ClipWriter(stages.write, self.fps, self.sample_rate, threads)
        self.frc = FrameRateConverter(self.fps)
        skip = set(config.run.skip)
        if "shots" in skip:
            self.detector = KnownShots([])
        elif task.known_cuts is not None:
            self.detector = KnownShots(task.known_cuts)
        else:
            self.detector = ShotDetector(stages.shots, self.fps)
        self.face_on = "face" not in skip
        self.faces: FaceStage | None = None
        self.others: list[_OtherFace] = []   # the other faces' stages under several_faces: speaker
        self.speech = None if config.skipped("speech") else SpeechStage(stages.speech, self.sample_rate, self.fps)
        self.analysis_width = stages.shots.analysis_width
        self.splitter = ClipSplitter(
            min_frames=round(stages.clips.min_seconds * self.fps),
            max_frames=round(stages.clips.max_seconds * self.fps),
            fps=self.fps,
        )
        if task.intervals:   # clips only inside these frame ranges (HDTF's annotations)
            self.splitter = IntervalSplitter(self.splitter, task.intervals)
        self.frames: deque[av.VideoFrame] = deque()   # pictures of output frames [self.base, self.base + len)
        self.base = 0
        self.audio: AudioTrack | None = None
        self.ready: list[dict] = []
        self.clip_index = 0
        self.decoded_s = 0.0
        self.frames_out = 0
        self.source_frames = 0
        self._threads = threads
        self._container = None
        self._size: tuple[int, int] | None = None
        self._rotation = 0
        self._released = 0
        self._signed = time.monotonic()
        self._sign_every_s = config.run.stall_timeout_s / 4

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> Iterator[dict]:
        self._container = av.open(self.task.path)
        stream = self._container.streams[self.facts.video_index]
        stream.thread_count = self._threads
        stream.thread_type = "AUTO" if self._threads > 1 else "SLICE"
        timeline = DecodedTimeline(self._container, stream, self.facts.fps or self.fps, 1.0 / self.fps)
        latest_t = 0.0                    # the furthest the timeline has got
        while True:
            with self.clock("decode"):
                try:
                    frame, last_t = next(timeline)
                except StopIteration:
                    break
                except (av.error.FFmpegError, ValueError) as exc:
                    raise probe_stage.decode_error(exc, timeline.last) from None
            self.source_frames += 1
            if timeline.count == 1:
                self._start(frame, timeline.t0)
            # before the frame is spread over output frames: timestamps that a hostile or broken file
            # invents must not turn into hours of repeated pictures, nor a flood of tiny frames into hours
            # of decoding
            probe_stage.check_timeline(last_t, latest_t, self.facts)
            latest_t = max(latest_t, last_t)
            probe_stage.check_packet_rate("video", self.source_frames, latest_t)
            self.decoded_s = last_t + timeline.duration
            with self.clock("resample"):
                slots = self.frc.push(frame, last_t)
            self._take_slots(slots)
            yield from self._drain_ready()
            if time.monotonic() - self._signed > self._sign_every_s:
                # a sign of life through stretches without clips (rapid cuts, no faces): the driver takes a
                # source silent for run.stall_timeout_s for a hung one
                self._signed = time.monotonic()
                yield {"event": "alive", "source_id": self.task.source_id, "decoded_s": self.decoded_s}
        if timeline.t0 is None:
            raise Rejected(probe_stage.STAGE, "no_frames", "the video stream decodes to no frames")
        probe_stage.check_timeline(self.decoded_s, timeline.last, self.facts)  # the last frame's own duration
        probe_stage.check_truncation(self.decoded_s, self.facts, self.config.stages.probe.truncation_tolerance_s)
        with self.clock("resample"):
            slots = self.frc.flush(self.decoded_s)
        self._take_slots(slots)
        self._finish()
        yield from self._drain_ready()

    def _start(self, frame: av.VideoFrame, t0: float) -> None:
        self._rotation = frame.rotation or 0
        width, height = frame.width, frame.height
        upright = (height, width) if self._rotation % 180 else (width, height)
        out_w, out_h = scaled_size(*upright, self.config.stages.write.short_side)
        self._size = (out_h, out_w) if self._rotation % 180 else (out_w, out_h)
        analysis_w = min(self.analysis_width, upright[0])
        analysis_h = max(2, round(upright[1] * analysis_w / upright[0] / 2) * 2)
        self._analysis_size = (analysis_h, analysis_w) if self._rotation % 180 else (analysis_w, analysis_h)
        self.audio = AudioTrack(self.task.path, self.facts.audio_index, self.sample_rate, t0)
        if self.face_on:
            params = self.config.stages.face
            self.faces = FaceStage(params, get_backend(params.backend), self._rotation, upright[0], self.detector.lag,
                                   self.fps)

    def _take_slots(self, slots: list[tuple[int, av.VideoFrame]]) -> None:
        previous, picture, analysis = None, None, None
        for index, source_frame in slots:
            if source_frame is not previous:  # a repeated frame is scaled once
                with self.clock("scale"):
                    picture, analysis = self._pictures(source_frame)
                previous = source_frame
            self.frames_out = index + 1
            with self.clock("shots"):
                cuts = self.detector.push(index, analysis)
            if self.faces is not None:
                with self.clock("face"):
                    view = FrameView(source_frame, self._rotation)
                    self.faces.push(index, source_frame, view)
                    for other in self.others:
                        other.stage.push(index, source_frame, view)
                    self._follow_more_faces()
                    for cut in cuts:
                        self._face_cut(cut)
                    known = index - self.detector.lag + 1
                    self.frames.extend(p for _, p in self.faces.ready(known))
                    for other in self.others:
                        other.frames.extend(p for _, p in other.stage.ready(known))
            else:
                self.frames.append(picture)
            for cut in cuts:
                self._handle(self.splitter.cut(cut))
            settled = min(index - self.detector.lag + 1, self.base + len(self.frames))
            self._handle(self.splitter.settle(settled))

    def _pictures(self, frame: av.VideoFrame) -> tuple[av.VideoFrame | None, np.ndarray | None]:
        """The stored picture (without the face stage) and the shot detector's small BGR picture."""
        replaying = isinstance(self.detector, KnownShots)
        if self.faces is None:
            picture = self.writer.prepare(frame, self._size, self._rotation)
            if replaying:
                return picture, None
            bgr = cv2.cvtColor(picture.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
            height, width = bgr.shape[:2]
            if width > self.analysis_width:
                size = (self.analysis_width, max(2, round(height * self.analysis_width / width)))
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            return picture, bgr
        if replaying:
            return None, None
        width, height = self._analysis_size
        bgr = reformat(frame, width=width, height=height, format="bgr24", interpolation="AREA").to_ndarray()
        return None, (np.ascontiguousarray(np.rot90(bgr, self._rotation // 90)) if self._rotation % 360 else bgr)

    def _finish(self) -> None:
        with self.clock("shots"):
            cuts = [cut for cut in self.detector.finish() if cut < self.frames_out]
        if self.faces is not None:
            with self.clock("face"):
                for cut in cuts:
                    self._face_cut(cut)
                self.frames.extend(p for _, p in self.faces.finish())
                for other in self.others:
                    other.frames.extend(p for _, p in other.stage.finish())
        self._need_audio(self.frames_out * self.spf)
        # the timeline ends with the shorter of the two streams
        end = min(self.frames_out, self.audio.available // self.spf)
        for cut in cuts:
            if cut < end:
                self._handle(self.splitter.cut(cut))
        self._handle(self.splitter.finish(end))

    def _face_cut(self, cut: int) -> None:
        self.frames.extend(p for _, p in self.faces.cut(cut))
        for other in self.others:
            other.frames.extend(p for _, p in other.stage.cut(cut))
        self._follow_more_faces()   # the new shot's first detection may find more faces

    def _follow_more_faces(self) -> None:
        """Under several_faces: speaker, start following one more face when a detection of the largest face's
        stage found more prominent faces than are followed (up to max_faces); from that frame on."""
        params = self.config.stages.face
        if params.several_faces != "speaker" or len(self.others) + 1 >= params.max_faces:
            return
        rank = len(self.others) + 1
        start = self.faces.crowded_since(rank + 1)
        if start is None:
            return
        stage = FaceStage(params, self.faces.backend, self._rotation, self.faces.tracker.frame_width,
                          self.detector.lag, self.fps, rank=rank, first=start)
        for index in range(start, self.faces.pushed):
            view = self.faces.view(index)
            stage.push(index, view.frame, view)
        self.others.append(_OtherFace(stage, start))

    def _need_audio(self, upto: int) -> None:
        with self.clock("resample"):
            try:
                self.audio.ensure(upto)
            except (av.error.FFmpegError, ValueError) as exc:
                raise probe_stage.decode_error(exc, self.audio.available / self.sample_rate) from None

    # -- spans to clips -----------------------------------------------------------------------------
    def _handle(self, spans: list[Span]) -> None:
        for span in spans:
            self.ready.extend(self._clip(span))
        keep_from = self.splitter.held_from
        while self.base < keep_from and self.frames:
            self.frames.popleft()
            self.base += 1
        for other in self.others:
            while other.base < keep_from and other.frames:
                other.frames.popleft()
                other.base += 1
        if self.audio is not None and keep_from > self._released:
            self.audio.release((keep_from - CONTEXT_FRAMES) * self.spf)  # the next clip's audio context
            self._released = keep_from
            if self.faces is not None:
                self.faces.release(keep_from)
                for other in self.others:
                    other.stage.release(keep_from)

    def _clip(self, span: Span) -> list[dict]:
        """The rows of a clip span: one for the span (its largest face), and one for each other face followed
        through it that passed the face checks (several_faces: speaker). Kept ones are written."""
        clip_id = f"{self.task.out_key}/{span.start:07d}-{span.end:07d}"
        row = {
            "clip_id": clip_id,
            "source_id": self.task.source_id,
            "source_sha256": self.sha256,
            "clip_index": self.clip_index,
            "shot_index": span.shot_index,
            "start_frame": span.start,
            "end_frame": span.end,
            "n_frames": span.frames,
            "start_s": round(span.start / self.fps, 6),
            "end_s": round(span.end / self.fps, 6),
            "duration_s": round(span.frames / self.fps, 6),
            "fps": self.fps,
            "sample_rate": self.sample_rate,
            "clips_status": "rejected" if span.rejected else "done",
            "face_status": None if self.face_on else "skipped",
            "speech_status": None if self.speech is not None else "skipped",
            "write_status": None,
            **_NOT_WRITTEN,
        }
        self.clip_index += 1
        rejected = span.rejected
        if rejected is None:
            self._need_audio(span.end * self.spf)
            if self.audio.available < span.end * self.spf:
                rejected = Rejected(
                    "resample", "audio_missing",
                    f"the audio stream ends at {self.audio.available / self.sample_rate:.2f} s, "
                    f"before the clip's end at {span.end / self.fps:.2f} s",
                )
        faces: list[tuple[_OtherFace | None, ClipFaces]] = []    # (None for the largest face, its verdict)
        if rejected is None and self.faces is not None:
            with self.clock("face"):
                faces = [(None, self.faces.judge(span.start, span.end))]
                faces += [(other, other.stage.judge(span.start, span.end)) for other in self.others
                          if other.stage.covers(span.start, span.end)]
                faces = _distinct_faces(faces)
            row.update(faces[0][1].columns, face_status="rejected" if faces[0][1].rejected else "done",
                       face_track=0, face_tracks=len(faces))
            if all(verdict.rejected for _, verdict in faces):
                rejected = faces[0][1].rejected
        speech = None
        if rejected is None and self.speech is not None:   # after the face, before the writer: no encode for silence
            with self.clock("speech"):
                speech = self.speech.judge(self.audio.take(span.start * self.spf, span.end * self.spf), span.frames)
            row.update(speech.columns, speech_status="rejected" if speech.rejected else "done")
            rejected = speech.rejected
        if rejected is not None:
            return [_rejected(row, rejected)]
        audio = self.audio.take(span.start * self.spf, span.end * self.spf)
        if not faces:
            return [self._write(row, span, self.frames, self.base, audio, None, speech)]
        rows = [] if faces[0][1].rejected is None else [_rejected(row, faces[0][1].rejected)]
        passing = [(other, verdict) for other, verdict in faces if verdict.rejected is None]
        if len(faces) == 1:
            return rows + [self._write(row, span, self.frames, self.base, audio, faces[0][1], speech)]
        with self.clock("face"):
            envelope = speech_envelope(audio, span.frames, self.spf, self.sample_rate)
            cues = {id(verdict): speaking_cue(verdict.openings, envelope, self.config.stages.sync.max_offset,
                                              self.config.stages.face.speaker_window_frames)
                    for _, verdict in faces if verdict.openings}
        if len(passing) == 1:
            # one face passes the checks: kept only if no face that failed them follows the speech better
            other, verdict = passing[0]
            face_row = self._face_row(row, other, verdict, speaker_cue=round(cues[id(verdict)].score, 4),
                                      speaker_lag=cues[id(verdict)].lag)
            rivals = [(o, v) for o, v in faces if v.rejected is not None and id(v) in cues]
            better = [(o, v) for o, v in rivals if cues[id(v)].score > cues[id(verdict)].score]
            if better:
                o, v = max(better, key=lambda m: cues[id(m[1])].score)
                rank = 0 if o is None else o.stage.rank
                return [r for r in rows if r["clip_id"] != face_row["clip_id"]] + [_rejected(face_row, Rejected(
                    "face", "not_the_speaker", f"face {face_row['face_track']}'s mouth follows the speech less (cue "
                    f"{cues[id(verdict)].score:.2f}) than face {rank}'s ({cues[id(v)].score:.2f}), which fails the "
                    f"face checks ({v.rejected.reason})"))]
            return rows + [self._write({**face_row, "speaker_choice": "cue"}, span, *self._pictures_of(other), audio,
                                       verdict, speech)]
        return rows + self._choose_speaker(row, span, passing, [cues[id(v)] for _, v in passing], audio, speech)

    def _choose_speaker(self, row: dict, span: Span, passing: list, cues: list, audio: np.ndarray,
                        speech) -> list[dict]:
        """Several faces pass the checks, each with its speaking cue (how its mouth follows the speech). Two
        that each lead in a good share of the windows take turns: the span is dropped. Else, when the sync stage
        runs, every face is written and SyncNet chooses (the cue breaks ties); without it the cue chooses."""
        params = self.config.stages.face
        rows = [self._face_row(row, other, verdict, speaker_group=row["clip_id"], speaker_cue=round(cue.score, 4),
                               speaker_lag=cue.lag) for (other, verdict), cue in zip(passing, cues)]
        turns = _turn_shares(cues, params.turn_margin)
        if sorted(turns)[-2] >= params.max_turn_share:
            leads = ", ".join(f"face {r['face_track']} {share:.0%}" for r, share in zip(rows, turns))
            return [_rejected(rows[0], Rejected(
                "face", "speakers_take_turns", f"{len(rows)} faces each lead the speaking cue in a share of the "
                f"{cues[0].windows.size} windows ({leads}; at least {params.max_turn_share:.0%} is a turn)"))]
        if not self.config.skipped("sync"):
            return [self._write(r, span, *self._pictures_of(other), audio, verdict, speech)
                    for r, (other, verdict) in zip(rows, passing)]
        best = max(range(len(rows)), key=lambda k: cues[k].score)
        out = []
        for k, (r, (other, verdict)) in enumerate(zip(rows, passing)):
            if k == best:
                out.append(self._write({**r, "speaker_choice": "cue"}, span, *self._pictures_of(other), audio,
                                       verdict, speech))
            else:
                out.append(_rejected(r, Rejected(
                    "face", "not_the_speaker", f"face {r['face_track']}'s mouth follows the speech less (cue "
                    f"{cues[k].score:.2f}) than face {rows[best]['face_track']}'s, kept as {rows[best]['clip_id']} "
                    f"({cues[best].score:.2f})")))
        return out

    def _face_row(self, row: dict, other: _OtherFace | None, verdict: ClipFaces, **extra) -> dict:
        """The row of one face's clip: the largest face's is the span's own, another's gets `-f<rank>`."""
        if other is None:
            return {**row, **extra}
        rank = other.stage.rank
        return {**row, **verdict.columns, "clip_id": f"{row['clip_id']}-f{rank}", "face_status": "done",
                "face_track": rank, **extra}

    def _pictures_of(self, other: _OtherFace | None) -> tuple[deque, int]:
        return (self.frames, self.base) if other is None else (other.frames, other.base)

    def _write(self, row: dict, span: Span, frames: deque, base: int, audio: np.ndarray, faces: ClipFaces | None,
               speech) -> dict:
        relative = Path(CLIPS_DIR) / (row["clip_id"] + ".mp4")
        pictures = [frames[i - base] for i in range(span.start, span.end)]
        with self.clock("write"):
            written = self.writer.write(Path(self.task.output_dir) / relative, pictures, audio)
            row.update(clip_fingerprint(pictures, audio, self.sample_rate))   # for the duplicates stage
            if faces is not None:
                landmarks = relative.with_suffix(".npz")
                speech_arrays = {"speech_prob": speech.per_frame} if speech is not None else {}
                write_arrays(Path(self.task.output_dir) / landmarks,
                             {**faces.arrays, **speech_arrays, **self._audio_context(span)})
                row["landmarks_path"] = landmarks.as_posix()
        return {**row, "status": "kept", "reject_stage": None, "reject_reason": None, "reject_detail": None,
                "write_status": "done", "path": relative.as_posix(), "width": written["width"],
                "height": written["height"], "bytes": written["bytes"], "audio_samples": int(audio.size)}

    def _audio_context(self, span: Span) -> dict:
        """The clip's audio with CONTEXT_FRAMES more on each side (zeros past the stream), kept beside the clip
        so the sync stage can shift it without inventing silence."""
        margin = CONTEXT_FRAMES * self.spf
        self._need_audio(span.end * self.spf + margin)
        context = self.audio.take_padded(span.start * self.spf - margin, span.end * self.spf + margin)
        return {"audio_context": context, "audio_margin": np.int64(margin), "sample_rate": np.int64(self.sample_rate)}

    def _drain_ready(self) -> Iterator[dict]:
        ready, self.ready = self.ready, []
        for clip in ready:
            yield {"event": "clip", "source_id": self.task.source_id, "row": clip}

    # -- bookkeeping --------------------------------------------------------------------------------
    def summary(self) -> dict:
        cuts = list(self.detector.cuts)
        return {
            "decoded_s": round(self.decoded_s, 6),
            "source_frames": self.source_frames,
            "frames_out": self.frames_out,
            "dropped_frames": self.frc.dropped,
            "audio_gap_samples": self.audio.gaps_filled if self.audio else 0,
            "rotation": self._rotation,
            "shot_cuts": [c for c in cuts if c < self.frames_out] if self.frames_out else cuts,
            "shots_reused": self.task.known_cuts is not None,
            "face_detections": self.faces.tracker.detections if self.faces is not None else None,
            "n_clips": self.clip_index,
            "annotated_frames_clipped":
                frames_past(self.task.intervals, self.frames_out) if self.task.intervals else None,
        }

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        if self.audio is not None:
            self.audio.close()

"""The duplicates stage as the driver runs it: the last clip stage, after sync and quality, judging each clip
against every clip kept before it, in this run and in the earlier ones (stages.duplicates holds the fingerprint
and the index).

It has the interface of an actor pool (curate.pools.ClipStagePool: add, dispatch, busy, queued, collect) but
works in the driver at once (`run`), since it compares a clip with the fingerprints of every kept clip, which
only the driver holds. A clip is judged when the stages before it have kept it; the first copy judged is kept,
and a later one is rejected naming it (`duplicates_of`). The index starts with the clips the current view keeps
under this fingerprint, of the sources this run does not process again, so a copy added in a later run is
found against the earlier run's clips, and a clip once kept is not rejected for a copy that comes after it.
Within one run, the copy that finishes its stages first is kept (a batch of clips judged together: by clip_id).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import Config
from curate.run_types import Plan
from manifests import dataset
from stages.duplicates import FRAMES, STAGE, DuplicateIndex

COLUMNS = ["clip_id", "source_id", "status", "video_phash", "audio_hash", "duplicates_status",
           "duplicates_fingerprint"]


class DuplicateStage:
    """The duplicates stage's queue and index; `clip_row(work)` gives the clip row a ClipWork stands for."""

    local = True      # run by the driver, not in actors

    def __init__(self, config: Config, output_dir: Path, plan: Plan, clip_row: Callable):
        self.stage = STAGE
        self.index = DuplicateIndex(config.stages.duplicates)
        self.clip_row = clip_row
        self.queue: list = []
        self._done: dict = {}
        self._loaded_ids = pa.array([], pa.string())
        self._new_ids: list[str] = []
        self._load(output_dir, plan, config.stage_fingerprints()[STAGE])

    def _load(self, output_dir: Path, plan: Plan, fingerprint: str) -> None:
        """The kept clips of the current view that stand: judged under this fingerprint, of a source found by the
        scan and not processed again."""
        found = plan.scan.sources.source_ids.combine_chunks()
        again = plan.todo["source_id"].combine_chunks()
        ids = []
        for table in dataset.iter_current(output_dir, "clips", COLUMNS):
            keep = pc.and_(pc.equal(table["status"], "kept"), pc.equal(table["duplicates_status"], "done"))
            keep = pc.and_(keep, pc.equal(table["duplicates_fingerprint"], fingerprint))
            keep = pc.and_(keep, pc.and_(pc.is_valid(table["audio_hash"]), pc.is_valid(table["video_phash"])))
            keep = pc.and_(keep, pc.is_in(table["source_id"], value_set=found))
            if len(again):
                keep = pc.and_(keep, pc.invert(pc.is_in(table["source_id"], value_set=again)))
            table = table.filter(pc.fill_null(keep, False))
            if not len(table):
                continue
            video = pc.list_flatten(table["video_phash"]).to_numpy(zero_copy_only=False).astype(np.uint64)
            self.index.add(video.reshape(-1, FRAMES), table["audio_hash"].to_numpy(zero_copy_only=False))
            ids.append(table["clip_id"].combine_chunks())
        if ids:
            self._loaded_ids = pa.concat_arrays(ids)

    def _clip_id(self, position: int) -> str:
        loaded = len(self._loaded_ids)
        return self._loaded_ids[position].as_py() if position < loaded else self._new_ids[position - loaded]

    # -- the pool's interface ---------------------------------------------------------------------------
    def add(self, work: list) -> None:
        self.queue.extend(work)

    def dispatch(self, upstream_running: bool) -> None:
        """Nothing to hand out: the driver judges the queue itself (`run`)."""

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def busy(self) -> bool:
        return bool(self.queue)

    def refs(self) -> list:
        return []

    def run(self) -> int:
        """Judge every clip queued, in clip_id order; a key for `collect`."""
        batch, self.queue = sorted(self.queue, key=lambda work: work.clip_id), []
        cpu, wall = time.process_time(), time.perf_counter()
        rows = [self._judge(self.clip_row(work)) for work in batch]
        key = len(self._done)
        self._done[key] = (batch, (rows, time.process_time() - cpu, time.perf_counter() - wall))
        return key

    def collect(self, key: int):
        return self._done.pop(key)

    def close(self) -> None:
        self.queue.clear()

    def _judge(self, clip: dict) -> dict:
        video, audio = clip.get("video_phash"), clip.get("audio_hash")
        kept = {"duplicates_status": "done", "duplicates_of": None, "duplicates_video_distance": None,
                "duplicates_audio_distance": None}
        if not video or audio is None:      # digital silence, or a clip written before fingerprints were made
            return kept
        video = np.array(video, np.uint64)
        match = self.index.find(video, audio)
        if match is None:
            self.index.add(video[None, :], np.array([audio], np.uint64))
            self._new_ids.append(clip["clip_id"])
            return kept
        original = self._clip_id(match.position)
        return {"duplicates_status": "rejected", "status": "rejected", "reject_stage": STAGE,
                "reject_reason": "duplicate_clip",
                "reject_detail": f"a copy of {original} (picture hashes {match.video_distance} of 256 bits apart, "
                                 f"audio hash {match.audio_distance} of 64)",
                "duplicates_of": original, "duplicates_video_distance": match.video_distance,
                "duplicates_audio_distance": match.audio_distance}

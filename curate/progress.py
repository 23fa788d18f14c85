"""Progress bars per stage with counts, on stderr, while a run streams."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, enabled: bool | None = None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        common = dict(disable=not enabled, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        self._bars = {
            "probe": tqdm(total=total, desc="probe  ", unit="src", position=0, **common),
            "shots": tqdm(desc="shots  ", unit="shot", position=1, **common),
            "clips": tqdm(desc="clips  ", unit="clip", position=2, **common),
            "face": tqdm(desc="face   ", unit="clip", position=3, **common),
            "write": tqdm(desc="write  ", unit="clip", position=4, **common),
            "sync": tqdm(desc="sync   ", unit="clip", position=5, **common),
            "quality": tqdm(desc="quality", unit="clip", position=6, **common),
            "done": tqdm(total=total, desc="sources", unit="src", position=7, **common),
        }
        self._rejected = {"probe": 0, "clips": 0, "face": 0, "sync": 0, "quality": 0, "done": 0}

    def reused(self, count: int) -> None:
        for name in ("probe", "done"):
            self._bars[name].update(count)
            self._bars[name].set_postfix_str(f"{count} unchanged", refresh=False)

    def probed(self, ok: bool) -> None:
        self._bars["probe"].update(1)
        if not ok:
            self._reject("probe")

    def clip(self, row: dict) -> None:
        self._bars["clips"].update(1)
        if row.get("clips_status") == "rejected":
            self._reject("clips")
        if row.get("face_status") in ("done", "rejected"):
            self._bars["face"].update(1)
            if row["face_status"] == "rejected":
                self._reject("face")
        if row["status"] == "kept":
            self._bars["write"].update(1)

    def staged(self, stage: str, row: dict) -> None:
        """A clip stage (sync, quality) finished a clip."""
        self._bars[stage].update(1)
        if row.get("status") == "rejected":
            self._reject(stage)

    def source(self, row: dict) -> None:
        cuts = row.get("shot_cuts")
        if cuts is not None and row.get("frames_out"):
            self._bars["shots"].update(len(cuts) + 1)
        if row["status"] == "rejected":
            self._reject("done")

    def done(self) -> None:
        self._bars["done"].update(1)

    def _reject(self, name: str) -> None:
        self._rejected[name] += 1
        self._bars[name].set_postfix_str(f"{self._rejected[name]} rejected", refresh=False)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

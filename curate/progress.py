"""Progress bars per stage with counts, on stderr, while a run streams."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, enabled: bool | None = None, clip_stages: list[str] = ()):
        """`clip_stages`: the clip stages this run does (sync, quality), each with a bar of its own."""
        if enabled is None:
            enabled = sys.stderr.isatty()
        common = dict(disable=not enabled, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        bars = [("probe", "src", total), ("shots", "shot", None), ("clips", "clip", None), ("face", "clip", None),
                ("write", "clip", None), *[(stage, "clip", None) for stage in clip_stages]]
        self._bars = {name: tqdm(total=count, desc=f"{name:<7}", unit=unit, position=position, **common)
                      for position, (name, unit, count) in enumerate(bars)}
        self._bars["done"] = tqdm(total=total, desc="sources", unit="src", position=len(bars), **common)
        self._rejected = dict.fromkeys(self._bars, 0)

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

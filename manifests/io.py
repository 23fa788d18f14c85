"""Writing a Parquet file atomically, and the journal that holds what finished since the last manifest part.

Parquet files are written to a temporary name and renamed into place, so a reader (or a crashed run) only
ever sees a complete file. The journal is the run's durable memory between manifest parts
(manifests.dataset): one JSON line per finished source or clip-stage result, appended and fsync'd as soon as
its clips are on disk, and cut back to the unsettled sources when a part is written. A line cut short by a
crash does not parse and is ignored, so the source it was about is simply done again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import schema

MANIFESTS_DIR = "manifests"
STATE_DIR = ".curate"


def manifest_path(output_dir: Path, name: str) -> Path:
    return output_dir / MANIFESTS_DIR / f"{name}.parquet"


def write_table(path: Path, rows: list[dict], table_schema: pa.Schema) -> bool:
    """Write `rows` as a Parquet file with exactly `table_schema`'s columns, atomically. A file that already
    holds exactly these bytes is left alone (a rerun that changes nothing changes no file). True if written."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in table_schema}
    table = pa.table(columns, schema=table_schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        pq.write_table(table, partial, compression="zstd")
        if path.exists() and _same_bytes(partial, path):
            return False
        _fsync(partial)
        os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return pq.read_table(path).to_pylist()


def source_rows_for_parquet(rows: Iterable[dict]) -> list[dict]:
    """Flatten the worker's per-stage CPU dict into the cpu_<stage>_s columns (a row read back from a manifest
    has them flat already)."""
    out = []
    for row in rows:
        if "cpu_s" not in row:
            out.append(row)
            continue
        flat = {k: v for k, v in row.items() if k != "cpu_s"}
        for stage in schema.TIMED_STAGES:
            flat[f"cpu_{stage}_s"] = (row.get("cpu_s") or {}).get(stage)
        out.append(flat)
    return out


class Journal:
    """Append-only record of finished sources: ``<output>/.curate/journal.jsonl``."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / STATE_DIR / "journal.jsonl"
        self._handle = None

    def records(self) -> Iterator[dict]:
        """Every complete record, oldest first; a torn last line is skipped."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # cut short by a crash: that source was not finished
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def append(self, record: dict) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            self._handle = open(self.path, "ab")
        self._handle.write(json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the journal by `records` (the current ones), atomically: keeps it from growing forever."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "wb") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _repair_tail(self) -> None:
        """Cut a torn last line left by a crash, so the next record starts on a line of its own."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as one, open(b, "rb") as other:
        while True:
            block = one.read(chunk)
            if block != other.read(chunk):
                return False
            if not block:
                return True


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())

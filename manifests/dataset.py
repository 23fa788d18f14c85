"""The sources and clips manifests as Parquet datasets that grow by appending parts, and their current view.

``<output>/manifests/sources/part-<tag>.parquet`` and ``clips/part-<tag>.parquet`` are written in pairs as
sources finish (every few hundred sources or seconds), the clips part first: the sources part is the commit,
so a clips part without its sources part (a crash between the two) is never read. A source is written again
whenever something about it changes: processed anew, its clips rescored by a clip stage, or gone from the
input folder (a row with status 'removed'). The current view holds, per source, its rows in the newest part
that names it. What finished after the last part is in the journal (manifests.io.Journal); `fold_journal`
turns its records into the same rows, so a reader sees every finished source.

Reading a view holds only the columns asked for; streamed part by part (`iter_current`), what grows with the
sources is the index of which rows are current (`live_rows`: 17 bytes a row of every part).
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests import schema
from manifests.io import MANIFESTS_DIR, source_rows_for_parquet, write_table

SCHEMAS = {"sources": schema.SOURCES, "clips": schema.CLIPS}
REMOVED = "removed"


def dataset_dir(output_dir: Path, name: str) -> Path:
    return output_dir / MANIFESTS_DIR / name


def parts(output_dir: Path, name: str = "sources") -> list[Path]:
    """The committed parts of a dataset, oldest first (their names sort in the order they were written)."""
    folder = dataset_dir(output_dir, name)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet"))


def has_manifests(output_dir: Path) -> bool:
    return bool(parts(output_dir))


def write_part(output_dir: Path, tag: str, source_rows: list[dict], clip_rows: list[dict]) -> None:
    """Write one pair of parts atomically: the clips (none when there are none), then the sources (the commit)."""
    name = f"part-{tag}.parquet"
    if clip_rows:
        write_table(dataset_dir(output_dir, "clips") / name, clip_rows, schema.CLIPS)
    write_table(dataset_dir(output_dir, "sources") / name, source_rows_for_parquet(source_rows), schema.SOURCES)


def new_tag() -> str:
    """A part name's stem that sorts after every earlier one: the UTC time to the microsecond, then a nonce."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]


class PartWriter:
    """Collects the rows of finished sources and writes them as a part every `every_sources` sources or
    `every_s` seconds, whichever comes first."""

    def __init__(self, output_dir: Path, every_sources: int, every_s: float):
        self.output_dir = output_dir
        self.every_sources = every_sources
        self.every_s = every_s
        self.tag = new_tag()
        self.written = 0
        self.source_rows: list[dict] = []
        self.clip_rows: list[dict] = []
        self.since = time.monotonic()

    def add(self, source_row: dict, clip_rows: list[dict]) -> None:
        self.source_rows.append(source_row)
        self.clip_rows.extend(clip_rows)

    def due(self) -> bool:
        return bool(self.source_rows) and (len(self.source_rows) >= self.every_sources
                                           or time.monotonic() - self.since >= self.every_s)

    def flush(self) -> bool:
        """Write what was collected as the next part; True if a part was written."""
        self.since = time.monotonic()
        if not self.source_rows:
            return False
        write_part(self.output_dir, f"{self.tag}-{self.written:06d}", self.source_rows, self.clip_rows)
        self.written += 1
        self.source_rows, self.clip_rows = [], []
        return True


# -- the journal's records as rows ----------------------------------------------------------------

def rows_of(record: dict, stage_records: dict, stages: Sequence[str]) -> tuple[dict, list[dict]]:
    """A source record of the journal (what the source pass made) and the clip stages' records for its clips
    ((clip_id, stage) -> record), as one source row and its clip rows. `stages` is the chain's order."""
    generation = record.get("generation")
    source = {**record["source"], "generation": generation, "fingerprints": record.get("fingerprints")}
    clips = []
    for clip in record["clips"]:
        row = {**clip, "generation": generation}
        for stage in stages if row["status"] == "kept" else ():
            result = stage_records.get((row["clip_id"], stage))
            if result is None or result["generation"] != generation:
                continue
            row.update(result["row"])
            row[f"{stage}_fingerprint"] = result["fingerprint"]
            if row["status"] == "rejected":
                break
        clips.append(row)
    source["n_clips"] = len(clips)
    source["n_clips_kept"] = sum(1 for row in clips if row["status"] == "kept")
    return source, clips


def fold_journal(records: Iterable[dict], stages: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """The journal's records as rows: the newest record per source, with its clip stages' newest results."""
    sources: dict[str, dict] = {}
    stage_records: dict[tuple[str, str], dict] = {}
    for record in records:
        if record.get("kind") == "stage":
            stage_records[(record["clip_id"], record["stage"])] = record
        else:
            sources[record["source_id"]] = record
    source_rows, clip_rows = [], []
    for record in sources.values():
        source, clips = rows_of(record, stage_records, stages)
        source_rows.append(source)
        clip_rows.extend(clips)
    return source_rows, clip_rows


# -- the current view -----------------------------------------------------------------------------

def _read(path: Path, name: str, columns: Sequence[str] | None) -> pa.Table:
    """A part's columns; a column the part predates reads as nulls."""
    table_schema = SCHEMAS[name]
    wanted = list(columns) if columns is not None else table_schema.names
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in wanted if c in present])
    for column in wanted:
        if column not in present:
            field = table_schema.field(column)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(wanted)


def _table(rows: list[dict], name: str, columns: Sequence[str] | None) -> pa.Table:
    table_schema = SCHEMAS[name]
    if name == "sources":
        rows = source_rows_for_parquet(rows)
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in table_schema} for row in rows], schema=table_schema)
    return table.select(list(columns) if columns is not None else table_schema.names)


def empty_table(name: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A table of `name`'s columns (or those given) with no rows."""
    return _table([], name, columns)


def _keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 16-byte digest of each source id: the view's index holds these, not the ids (two ids digesting alike:
    a chance of about 1e-27 at 10^6 sources)."""
    return np.frombuffer(b"".join(hashlib.blake2b(i.encode(), digest_size=16).digest() for i in ids.to_pylist()),
                         "V16")


def live_rows(output_dir: Path, journal_sources: list[dict] | None = None) -> tuple[list[Path], list[np.ndarray]]:
    """The sources parts, oldest first, and for each of them and then for the journal's rows (when given) the
    positions of its current rows: each source's row in the newest part naming it, unless that row says it was
    removed. The index over every part holds 17 bytes a row, never the ids."""
    paths = parts(output_dir)
    tables = (_read(path, "sources", ["source_id", "status"]) for path in paths)
    if journal_sources:
        tables = itertools.chain(tables, [_table(journal_sources, "sources", ["source_id", "status"])])
    keys, removed, sizes = [], [], [0]
    for table in tables:
        keys.append(_keys(table["source_id"]))
        removed.append(pc.fill_null(pc.equal(table["status"], REMOVED), False).to_numpy(zero_copy_only=False))
        sizes.append(len(table))
    if not journal_sources:
        sizes.append(0)
    every = np.concatenate(keys) if keys else np.zeros(0, "V16")
    del keys
    # the rows are in the order they were written, so a source's last row is its newest
    _, first_from_the_end = np.unique(every[::-1], return_index=True)
    del every
    last = np.sort(sum(sizes) - 1 - first_from_the_end)
    if len(last):
        last = last[~np.concatenate(removed)[last]]
    bounds = np.cumsum(sizes)
    cuts = np.searchsorted(last, bounds)
    return paths, [last[cuts[i]:cuts[i + 1]] - bounds[i] for i in range(len(paths) + 1)]


def iter_current(output_dir: Path, name: str, columns: Sequence[str] | None = None,
                 journal: tuple[list[dict], list[dict]] | None = None) -> Iterator[pa.Table]:
    """The current rows of `name` ('sources' or 'clips'), one table per part, oldest first; then the rows of
    the journal (`journal`: (source rows, clip rows) from fold_journal) that are current."""
    journal_sources, journal_clips = journal if journal is not None else ([], [])
    paths, live = live_rows(output_dir, journal_sources)
    columns = list(columns) if columns is not None else SCHEMAS[name].names
    wanted = columns if "source_id" in columns else [*columns, "source_id"]
    for index, positions in enumerate(live):
        if not len(positions):
            continue
        journal_part = index == len(paths)
        if name == "sources":
            table = _table(journal_sources, name, wanted) if journal_part else _read(paths[index], name, wanted)
            yield table.take(pa.array(positions)).select(columns)
            continue
        sources = _table(journal_sources, "sources", ["source_id"]) if journal_part else \
            _read(paths[index], "sources", ["source_id"])
        ids = sources["source_id"].take(pa.array(positions))
        if journal_part:
            table = _table(journal_clips, name, wanted)
        else:
            path = dataset_dir(output_dir, name) / paths[index].name
            if not path.exists():
                continue
            table = _read(path, name, wanted)
        yield table.filter(pc.is_in(table["source_id"], value_set=ids)).select(columns)


def current_table(output_dir: Path, name: str, columns: Sequence[str] | None = None,
                  journal: tuple[list[dict], list[dict]] | None = None) -> pa.Table:
    """The whole current view of `name`, sorted (sources by source_id, clips by source_id and start_frame)."""
    columns = list(columns) if columns is not None else SCHEMAS[name].names
    order = ["source_id"] if name == "sources" else ["source_id", "start_frame"]
    wanted = columns + [c for c in order if c not in columns]
    tables = list(iter_current(output_dir, name, wanted, journal))
    table = pa.concat_tables(tables) if tables else empty_table(name, wanted)
    return table.sort_by([(c, "ascending") for c in order]).select(columns)

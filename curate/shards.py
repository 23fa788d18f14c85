"""`curate shards`: the kept clips as WebDataset tar shards, on a local folder or any fsspec URL.

One sample per clip, under a key made from its clip id (WebDataset splits a member's name at the first dot
after the last slash, so the key has no dots):

- `KEY.mp4`: the clip as curated, byte for byte;
- `KEY.mel.npy`: the mel spectrogram the trainers prepare (`training.clips.prepare_clip` computes the same);
- `KEY.whisper.npy` (see below);
- `KEY.npz`: its side file (landmarks, affine matrices; `docs/output.md`);
- `KEY.json`: the clip's row of the split table (`curate filelist`'s split.parquet: its manifest columns,
  `speaker` and `split`, without the machine's absolute path).

Shards are `SPLIT-NNNNNN.tar`, filled to about `shard_bytes` (a sample is never split; one larger than the
size is a shard alone), and written as `.partial` then renamed, so a reader never sees half a shard.
`index.parquet` lists every sample: its shard, split, key, clip id, speaker, bytes and seconds, its frames with
audio under them (what the trainers window), and where its members lie in the shard (`offset` and `length` of
the sample's bytes, headers included, and each member's start and size within them), so a trainer reads a
sample with one ranged read (training.clips.read_clip). A later call with more clips appends: clips already in
the index are left where they are, new shards continue the numbering, old shards are never rewritten; only the
index is replaced (whole, by rename).

- `KEY.whisper.npy`, when a Whisper encoder is given (`curate shards` uses the installed `latentsync`
  model's): LatentSync's audio features of the clip, float16, as `curate train latentsync` computes them; the
  index's `whisper_sha256` names the encoder file they come from.

A clip the trainers would skip (its audio and frames disagree in length, training.clips.prepare_clip's check,
or it is not a 25 fps square clip) is not written; it is returned with its reason.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

INDEX = "index.parquet"
MEMBER = pa.struct([("suffix", pa.string()), ("start", pa.int64()), ("size", pa.int64())])
INDEX_SCHEMA = pa.schema([("shard", pa.string()), ("split", pa.string()), ("key", pa.string()),
                          ("clip_id", pa.string()), ("speaker", pa.string()), ("bytes", pa.int64()),
                          ("duration_s", pa.float64()), ("frames", pa.int64()), ("offset", pa.int64()),
                          ("length", pa.int64()), ("members", pa.list_(MEMBER)),
                          ("whisper_sha256", pa.string())])


def sample_key(clip_id: str) -> str:
    """A clip id as a WebDataset key: percent-escaped, dots included (a dot would end the key)."""
    return quote(clip_id, safe="/-_").replace(".", "%2E")


class ShardError(ValueError):
    """A clip that cannot be put in a shard, or an output that cannot be written; the message says which."""


@dataclass
class ShardsWritten:
    root: str
    new_shards: list[str] = field(default_factory=list)
    new_samples: int = 0
    kept_samples: int = 0          # already in the index, left as they were
    samples_by_split: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (clip id, why) of clips not written


class SkippedClip(Exception):
    """A clip the trainers would not use; the message says why."""


@dataclass(frozen=True)
class Encoder:
    """A Whisper encoder for the samples' features, and the sha256 of its file."""
    model: object
    sha256: str


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0     # no times: the same clips give the same bytes
    return info, io.BytesIO(data)


def sample_members(row: dict, key: str, encoder: Encoder | None = None) -> tuple[list[tuple[str, bytes]], int]:
    """The files of one clip's sample, in the order a trainer wants them (the side file and manifest row last),
    and its frames
    with audio under them. Raises SkippedClip for a clip the trainers would skip, ShardError for one that is
    not there."""
    from manifests.rejected import Rejected
    from media.frames import FFmpegError
    from media.mel import melspectrogram
    from training.clips import audio_mismatch, clip_audio, usable_frames

    clip = Path(row["abs_path"])
    side = clip.with_suffix(".npz")
    try:
        video, side_file = clip.read_bytes(), side.read_bytes() if side.is_file() else b""
        frames, samples = clip_audio(str(clip))
    except Rejected as exc:
        raise SkippedClip(f"{exc.reason}: {exc.detail}") from None
    except (OSError, FFmpegError, ValueError) as exc:
        raise ShardError(f"clip {clip} cannot be read ({type(exc).__name__}: {exc}); the run's folder must be "
                         "as `curate run` left it") from None
    if (problem := audio_mismatch(frames, samples)) is not None:
        raise SkippedClip(problem)
    # what the trainers read first, so that their ranged read stops before the side file and the manifest
    members = [(f"{key}.mp4", video), (f"{key}.mel.npy", _npy(melspectrogram(samples)))]
    if encoder is not None and len(samples):
        from networks.whisper import whisper_features

        features = whisper_features(encoder.model, samples).numpy().astype(np.float16)
        members.append((f"{key}.whisper.npy", _npy(features)))
    manifest = {k: v for k, v in row.items() if k != "abs_path"}
    members += [(f"{key}.npz", side_file), (f"{key}.json", json.dumps(manifest, default=str, sort_keys=True).encode())]
    return members, usable_frames(frames, samples)


def installed_encoder() -> tuple[Encoder | None, str]:
    """The installed `latentsync` model's Whisper encoder (the one `curate train latentsync` uses), or None and
    why not."""
    from curate.config import load_config
    from curate.models import MODELS, WHISPER_FILE, ModelError, require, sha256_of
    from networks.whisper import load_whisper_encoder

    others = tuple(file.name for file in MODELS["latentsync"][1] if file.name != WHISPER_FILE)
    try:
        path = require("latentsync", load_config(None).models, skip=others)[0]
    except ModelError as exc:
        return None, str(exc)
    return Encoder(load_whisper_encoder(path), sha256_of(path)), ""


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _read_index(fs, root: str) -> pa.Table:
    path = f"{root}/{INDEX}"
    if not fs.exists(path):
        return INDEX_SCHEMA.empty_table()
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    missing = set(INDEX_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ShardError(f"{root}/{INDEX} was written by an older `curate shards` (it lacks {', '.join(sorted(missing))}); "
                         "write the shards to a new folder")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def _next_number(index: pa.Table, split: str) -> int:
    names = [name for name in index["shard"].to_pylist() if name.startswith(f"{split}-")]
    return max((int(name[len(split) + 1:-4]) for name in names), default=-1) + 1


def _write_index(fs, root: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe_file(f"{root}/{INDEX}.partial", buffer.getvalue())
    fs.mv(f"{root}/{INDEX}.partial", f"{root}/{INDEX}")


def write_shards(split_table: pa.Table, out: str, shard_bytes: int = 10 ** 9, encoder: Encoder | None = None
                 ) -> ShardsWritten:
    """Write the clips of `split_table` (split.parquet's columns) not yet in OUT's index as shards, with Whisper
    features by `encoder` when given."""
    import fsspec

    if shard_bytes <= 0:
        raise ValueError(f"the shard size must be above 0, not {shard_bytes}")
    try:
        fs, root = fsspec.core.url_to_fs(str(out))
        root = root.rstrip("/")
        fs.makedirs(root, exist_ok=True)
    except (ImportError, ValueError, OSError) as exc:   # an unknown protocol, its package missing, no access
        raise ShardError(f"--out {out}: {exc}") from None
    index = _read_index(fs, root)
    written = ShardsWritten(str(out), kept_samples=len(index))
    known = pa.array(index["clip_id"].to_pylist(), pa.string())
    new = split_table.filter(pc.invert(pc.is_in(split_table["clip_id"], value_set=known)))
    new = new.take(pc.sort_indices(new, [("split", "ascending"), ("clip_id", "ascending")]))
    added, numbers = [], {}
    shard = None

    def close() -> None:
        nonlocal shard
        if shard is not None:
            tar, handle, name = shard
            tar.close()
            handle.close()
            fs.mv(f"{root}/{name}.partial", f"{root}/{name}")
            written.new_shards.append(name)
            shard = None

    whole_samples = True      # the open shard holds only whole samples
    try:
        size, split = 0, None
        for row in (r for batch in new.to_batches(4096) for r in batch.to_pylist()):
            key = sample_key(row["clip_id"])
            try:
                members, frames = sample_members(row, key, encoder)
            except SkippedClip as exc:
                written.skipped.append((row["clip_id"], str(exc)))
                continue
            sample = sum(512 + -(-len(data) // 512) * 512 for _, data in members)   # tar headers and padding
            if shard is not None and (row["split"] != split or size + sample > shard_bytes):
                close()
            if shard is None:
                split, size = row["split"], 0
                number = numbers.get(split, _next_number(index, split))
                numbers[split] = number + 1
                name = f"{split}-{number:06d}.tar"
                handle = fs.open(f"{root}/{name}.partial", "wb")
                shard = (tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT), handle, name)
            whole_samples = False
            offset, placed = shard[0].offset, []
            for member, data in members:
                info, stream = _member(member, data)
                shard[0].addfile(info, stream)
                # the data ends where the tar now is, less its padding to a 512-byte block
                start = shard[0].offset - -(-len(data) // 512) * 512
                placed.append({"suffix": member[len(key) + 1:], "start": start - offset, "size": len(data)})
            whole_samples = True
            size += sample
            added.append({"shard": shard[2], "split": split, "key": key, "clip_id": row["clip_id"],
                          "speaker": row["speaker"], "bytes": sample, "duration_s": row.get("duration_s"),
                          "frames": frames, "offset": offset, "length": shard[0].offset - offset,
                          "members": placed,
                          "whisper_sha256": encoder.sha256 if encoder is not None and
                          any(p["suffix"] == "whisper.npy" for p in placed) else None})
        close()
    except BaseException:
        if shard is not None and whole_samples:      # the failure came before its next sample: it is whole
            close()
        elif shard is not None:
            shard[0].close()
            shard[1].close()
            fs.rm(f"{root}/{shard[2]}.partial")
        # the shards finished before the failure go in the index, so a rerun goes on after them
        done = [r for r in added if r["shard"] in written.new_shards]
        if done:
            _write_index(fs, root, pa.concat_tables([index, pa.Table.from_pylist(done, INDEX_SCHEMA)]))
        raise
    whole = pa.concat_tables([index, pa.Table.from_pylist(added, INDEX_SCHEMA)]) if added else index
    if added or not fs.exists(f"{root}/{INDEX}"):
        _write_index(fs, root, whole)
    written.new_samples = len(added)
    written.samples_by_split = {s: int(n) for s, n in zip(*np.unique(whole["split"].to_numpy(zero_copy_only=False),
                                                                     return_counts=True))} if len(whole) else {}
    return written

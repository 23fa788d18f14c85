"""The training and validation clips of a trainer (or of `curate eval-syncnet`), their features prepared
once and cached: the mel features (`prepare_clips`, as Ray tasks by `ray_map`) and LatentSync's Whisper
features (`attach_whisper`); clips that cannot be used are skipped with the reason. Clips read from shards
carry their features: nothing is prepared or cached for them, only checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from curate.errors import RunError


def prepare_clips(lists, settings, framing, run=None, keep=None) -> tuple[list, list]:
    """Usable training and validation clips, features prepared; what is skipped is printed with the reason.
    `keep(clips, what)` splits the prepared clips into (long enough, [(path, why not)]) (default: the experts'
    windows of `framing` and their negatives). Raises RunError when no training clip is usable."""
    from training.clips import FeatureCache, cache_dir, describe_skipped, usable

    keep = keep or (lambda clips, what: usable(clips, framing, settings.min_negative_shift, what))
    cache = FeatureCache(cache_dir(settings)) if lists.shards is None else None
    out = []
    for number, (what, paths) in enumerate((("training", lists.train), ("validation", lists.val))):
        if not paths:
            out.append([])
            continue
        if cache is None:       # from shards: the features are in the samples
            clips, skipped = lists.shards[number], []
        else:
            clips, skipped = cache.prepare(paths, run)
        clips, short = keep(clips, what)
        if skipped or short:
            print(f"curate: warning: {describe_skipped(skipped + short, what)}", file=sys.stderr)
        out.append(clips)
    if lists.train and not out[0]:
        raise RunError(f"no usable training clips in {lists.source}: all {len(lists.train)} listed were skipped")
    if lists.train and lists.val and not out[1]:
        print("curate: warning: no usable validation clips: no validation numbers and no best checkpoint",
              file=sys.stderr)
    return out[0], out[1]


def ray_map(paths: list, folder: str, chunk: int = 16, work=None, desc: str = "features") -> list:
    """`work(items, folder)` (default prepare_clips_in: the mel features) over `paths` as Ray tasks of `chunk`
    items each, in order, with a progress bar."""
    import ray
    from tqdm import tqdm

    from training.clips import prepare_clips_in

    task = ray.remote(num_cpus=1, max_retries=2)(work or prepare_clips_in)
    refs = [task.remote(paths[i:i + chunk], folder) for i in range(0, len(paths), chunk)]
    results: dict = {}
    with tqdm(total=len(paths), desc=desc, unit="clip", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[done[0]] = ray.get(done[0])
            bar.update(len(results[done[0]]))
    return [entry for ref in refs for entry in results[ref]]


def attach_whisper(train: list, val: list, settings, whisper: str, run=None) -> tuple[list, list]:
    """The clips with their Whisper features, computed once per clip (by `run`, a Ray map, when given); clips
    whose audio fails are skipped with the reason. Clips from shards must carry features of this very encoder
    file: else a RunError says how many do not and how to write them."""
    from curate.models import sha256_of
    from training.clips import FeatureCache, cache_dir, describe_skipped
    from training.latent_windows import AudioFeatureCache, LatentClip, whisper_features_in

    encoder_sha256 = sha256_of(Path(whisper))
    if any(clip.sample is not None for clip in train + val):
        other = [c for c in train + val if c.sample.whisper_sha256 != encoder_sha256]
        if other:
            raise RunError(f"{len(other)} of the {len(train) + len(val)} clips in the shards (the first: "
                           f"{other[0].path}) have no Whisper features of {whisper} (sha256 {encoder_sha256[:12]}...): "
                           "write the shards again, to a new folder, with that encoder installed (`curate shards` "
                           "uses the `latentsync` model's whisper/tiny.pt)")
        return ([LatentClip(c.path, c.frames, c.mel, c.sample) for c in train],
                [LatentClip(c.path, c.frames, c.mel, c.sample) for c in val])
    folder = cache_dir(settings)
    entries = FeatureCache(folder).entries
    cache = AudioFeatureCache(folder, whisper, encoder_sha256)
    mapped = None
    if run is not None:
        mapped = lambda items, encoder: run(items, encoder, work=whisper_features_in, desc="whisper")  # noqa: E731
    out = []
    for what, clips in (("training", train), ("validation", val)):
        kept, skipped = cache.attach(clips, {c.path: entries[c.path]["sha256"] for c in clips}, mapped)
        if skipped:
            print(f"curate: warning: {describe_skipped(skipped, what)}", file=sys.stderr)
        out.append(kept)
    if train and not out[0]:
        raise RunError("no usable training clips: the Whisper features of all of them failed")
    return out[0], out[1]


def sample_clip_files(clips: list, count: int, folder: Path) -> tuple[str, ...]:
    """The files of the first `count` clips, for the validation sample videos: a clip's own file, or for a clip
    in a shard its mp4 copied out of the shard into `folder` (once)."""
    from training.clips import read_sample

    out = []
    for clip in clips[:count]:
        if clip.sample is None:
            out.append(clip.path)
            continue
        target = Path(folder) / f"{clip.path.rpartition('#')[2]}.mp4"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(read_sample(clip.sample)["mp4"])
            partial.replace(target)
        out.append(str(target))
    return tuple(out)

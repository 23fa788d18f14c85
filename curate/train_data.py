"""The training and validation clips of a trainer (or of `curate eval-syncnet`), their features prepared
once and cached: the mel features (`prepare_clips`, as Ray tasks by `ray_map`) and LatentSync's Whisper
features (`attach_whisper`); clips that cannot be used are skipped with the reason.
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
    cache = FeatureCache(cache_dir(settings))
    out = []
    for what, paths in (("training", lists.train), ("validation", lists.val)):
        if not paths:
            out.append([])
            continue
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
    whose audio fails are skipped with the reason."""
    from curate.models import sha256_of
    from training.clips import FeatureCache, cache_dir, describe_skipped
    from training.latent_windows import AudioFeatureCache, whisper_features_in

    folder = cache_dir(settings)
    entries = FeatureCache(folder).entries
    cache = AudioFeatureCache(folder, whisper, sha256_of(Path(whisper)))
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

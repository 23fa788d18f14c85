"""`curate lipsync`: one video and audio, or a CSV of pairs, through `lipsync.pipeline` with one loaded model.

Everything that can be checked before decoding is checked first (the model's file, the inputs exist, the
output's folder), so a missing weight file or a typo costs nothing. In the batch form a pair that fails is
reported on its own line and the others go on; the exit status says whether any failed.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from curate.config import load_config
from curate.errors import RunError

MODEL_FILES = {"wav2lip": "wav2lip.pth", "latentsync": "latentsync_unet.pt"}   # a run's checkpoint's model file


def resolve_checkpoint(model: str, checkpoint: Path | None, config, official: str | None = None) -> Path:
    """The model's weights: `--checkpoint`, a run folder's best checkpoint, or the verified official file (of
    `official`, a `curate models` name, default `model`)."""
    from curate.models import ModelError, require

    if checkpoint is not None:
        from curate.train_weights import expert_file

        # a run folder or one of its checkpoint folders: the model's file in its best (else last) checkpoint
        found = expert_file(checkpoint)
        preferred = found.parent / (MODEL_FILES.get(model) or found.name)
        return preferred if preferred.is_file() else found
    try:
        return require(official or model, config.models)[0]
    except ModelError as exc:
        raise RunError(f"{exc} (or give --checkpoint)") from None


def load_model(args, config):
    from lipsync.media import LipsyncError
    from lipsync.models import MODELS, pick_device

    if args.model == "latentsync":
        return _load_latentsync(args, config)
    for flag, value in (("--resolution", args.resolution), ("--steps", args.steps), ("--guidance", args.guidance)):
        if value is not None:
            raise RunError(f"{flag} is LatentSync's (--model latentsync)")
    path = resolve_checkpoint(args.model, args.checkpoint, config)
    try:
        device = pick_device(args.device)
        batch = args.batch_size or (128 if device.type == "cuda" else 16)
        return MODELS[args.model].from_file(path, device, batch, framing=args.framing)
    except LipsyncError as exc:
        raise RunError(str(exc)) from None


def _load_latentsync(args, config):
    """The U-Net (--checkpoint, else the official one of --resolution's version), and the Whisper encoder and VAE
    from the models folder, all checked before any video is read."""
    from curate.models import LATENTSYNC_UNET_FILE, ModelError, require
    from lipsync.media import LipsyncError
    from lipsync.models import LatentSyncModel, pick_device

    if args.framing not in (None, "template"):
        raise RunError("--framing: LatentSync sees the curation's template crop only")
    if args.steps is not None and args.steps < 1:
        raise RunError("--steps must be at least 1")
    official = "latentsync-512" if args.resolution == 512 else "latentsync"
    unet = resolve_checkpoint("latentsync", args.checkpoint, config, official)
    try:
        whisper, _, vae = require(official, config.models, skip=(LATENTSYNC_UNET_FILE,))
    except ModelError as exc:
        raise RunError(str(exc)) from None
    sampling = {key: value for key, value in (("steps", args.steps), ("guidance", args.guidance),
                                              ("seed", args.seed)) if value is not None}
    try:
        return LatentSyncModel.from_files(unet, whisper, vae, pick_device(args.device), args.batch_size or 16,
                                          args.resolution, **sampling)
    except LipsyncError as exc:
        raise RunError(str(exc)) from None


def pairs_from(path: Path, out_dir: Path) -> list[tuple[Path, Path, Path]]:
    """Rows of `video,audio[,output]`; a first row naming the columns is skipped. Relative paths are the CSV's
    folder's; outputs default to OUT_DIR/<video>__<audio>.mp4."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RunError(f"--pairs {path}: {exc.strerror or exc}") from None
    rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["video", "audio"]:
        rows = rows[1:]
    if not rows:
        raise RunError(f"--pairs {path} lists no pairs")
    base = path.parent
    pairs = []
    for number, row in enumerate(rows, 1):
        cells = [cell.strip() for cell in row]
        if len(cells) < 2 or not cells[0] or not cells[1] or len(cells) > 3:
            raise RunError(f"--pairs {path}, row {number}: expected video,audio[,output], got {row}")
        video, audio = base / cells[0], base / cells[1]
        output = Path(cells[2]) if len(cells) == 3 and cells[2] else Path(f"{video.stem}__{audio.stem}.mp4")
        pairs.append((video, audio, output if output.is_absolute() else out_dir / output))
    outputs = [str(out) for _, _, out in pairs]
    twice = sorted({out for out in outputs if outputs.count(out) > 1})
    if twice:
        raise RunError(f"--pairs {path}: the same output for several rows: {', '.join(twice)}")
    return pairs


def run_lipsync(args) -> int:
    from lipsync.media import LipsyncError
    from lipsync.pipeline import Options, lipsync

    if args.pairs is None:
        if args.video is None or args.audio is None or args.output is None:
            raise RunError("give VIDEO AUDIO -o OUT.mp4, or --pairs FILE.csv --out DIR")
        jobs = [(args.video, args.audio, args.output)]
    else:
        if args.video is not None or args.output is not None:
            raise RunError("--pairs replaces VIDEO AUDIO -o: give one or the other")
        if args.out is None:
            raise RunError("--pairs needs --out DIR for the videos")
        if args.out.exists() and not args.out.is_dir():
            raise RunError(f"--out {args.out} is a file, not a folder")
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = pairs_from(args.pairs, args.out)
    for video, audio, out in jobs:
        for what, path in (("video", video), ("audio", audio)):
            if not path.is_file():
                raise RunError(f"{what} {path} " + ("is a folder" if path.is_dir() else "does not exist"))
        if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
            raise RunError(f"output {out}: the output is an MP4 file (.mp4)")
        if out.resolve() in (video.resolve(), audio.resolve()):
            raise RunError(f"output {out} is one of the inputs; inputs are never overwritten")
    if args.bounce_memory_mb < 0:
        raise RunError(f"--bounce-memory-mb must be 0 or more, not {args.bounce_memory_mb:g}")
    config = load_config(args.config)
    face_params = config.stages.face
    if args.backend:
        face_params = face_params.model_copy(update={"backend": args.backend})
    from faces.landmarks import BackendUnavailable, check_backend

    try:
        check_backend(face_params.backend)
    except BackendUnavailable as exc:
        raise RunError(str(exc)) from None
    model = load_model(args, config)
    options = Options(face=args.face, crf=args.crf, preset=args.preset, audio=args.audio_mode,
                      face_params=face_params, bounce_memory_mb=args.bounce_memory_mb, preview=args.preview,
                      preview_max_lag=config.stages.sync.max_offset)
    failed = 0
    for video, audio, out in jobs:
        bar = _bar(args.progress, out.name)
        try:
            summary = lipsync(video, audio, out, model, options, progress=bar.progress)
        except LipsyncError as exc:
            bar.close()
            if len(jobs) == 1:
                raise RunError(str(exc)) from None
            print(f"curate: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        bar.close()
        print("\n".join(summary.lines()))
    if len(jobs) > 1:
        print(f"{len(jobs) - failed} of {len(jobs)} videos written" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


class _bar:
    def __init__(self, enabled: bool | None, name: str):
        from tqdm import tqdm

        self._tqdm = tqdm(desc=name, unit="frame", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                          disable=not (sys.stderr.isatty() if enabled is None else enabled))

    def progress(self, done: int, total: int) -> None:
        if self._tqdm.total != total:
            self._tqdm.total = total
        self._tqdm.update(done - self._tqdm.n)

    def close(self) -> None:
        self._tqdm.close()

"""The `curate` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curate.cli_parser import build_parser
from curate.config import ConfigError, load_config, with_skipped
from curate.errors import RunError


def main(argv: list[str] | None = None) -> int:
    parser = parser_of_commands()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, RunError) as exc:
        print(f"curate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # a file or folder the command cannot use: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"curate: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("curate: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from curate.run_types import RunOptions
    from curate.runner import command_line, run
    from curate.summary import format_dry_run, format_summary

    if args.num_cpus is not None and args.num_cpus < 1:
        raise RunError("--num-cpus must be at least 1")
    config = load_config(args.config)
    skip = [stage.strip() for arg in args.skip for stage in arg.split(",") if stage.strip()]
    if skip:
        config = with_skipped(config, skip)
    options = RunOptions(
        input_dir=args.input, output_dir=args.output, config=config,
        address=args.address, num_cpus=args.num_cpus, dry_run=args.dry_run, progress=args.progress,
        command=command_line(),
    )
    summary = run(options)
    if not summary.sources_found:
        print(f"curate: warning: no videos in {args.input} (looked for {' '.join(config.inputs.extensions)}, in "
              "every subfolder)", file=sys.stderr)
    print(format_dry_run(summary) if args.dry_run else format_summary(summary, options.output_dir))
    return 0


def _missing_weights(model: str, config) -> str | None:
    """Why `model`'s default weights cannot be used when a file is missing (the error naming it), else None."""
    from curate.models import ModelError, require, state

    if not any(status == "missing" for _, _, status in state(model, config.models)):
        return None
    try:
        require(model, config.models)
    except ModelError as exc:
        return str(exc)
    return None


def _scorer(args: argparse.Namespace, config, model: str, label: str, build):
    """An eval command's scorer: every VIDEO must be a file, and the weights (--weights, else the verified file
    of `model`) must load; otherwise a one-line error before any work."""
    import torch

    from curate.models import ModelError, require

    for video in args.videos:
        if not Path(video).is_file():
            raise RunError(f"{video} is not a file")
    weights = args.weights
    try:
        weights = weights or require(model, config.models)[0]
        return build(weights, "cuda" if torch.cuda.is_available() else "cpu")
    except ModelError as exc:
        raise RunError(str(exc)) from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise RunError(f"cannot load {label} weights from {weights}: {exc}") from None


def _eval_sync(args: argparse.Namespace) -> int:
    import json

    from manifests.rejected import Rejected
    from networks.syncnet.syncnet_v2 import load_syncnet
    from stages.sync_eval import evaluate
    from stages.sync_score import SyncScorer

    config = load_config(args.config)
    missing = None if args.weights or args.weight_free else _missing_weights("syncnet", config)
    if missing:   # the weight-free cue needs none: it is reported alone, and the line says how to get SyncNet's
        print(f"curate: {missing}; reporting the weight-free speaking cue alone", file=sys.stderr)
    if args.weight_free or missing:
        scorer = None
    else:
        scorer = _scorer(args, config, "syncnet", "SyncNet",
                         lambda weights, device: SyncScorer(load_syncnet(weights, device), device,
                                                            config.resources.sync.batch_windows))
    face = config.stages.face.model_copy(update={"min_face_px": 40})  # samples often have small faces
    results, failed = [], []
    for video in args.videos:
        try:
            results.extend(evaluate([video], scorer, args.precropped, face, config.stages.sync.max_offset))
        except (Rejected, ValueError, av_errors()) as exc:
            failed.append((video, str(exc)))
    if args.json:
        print(json.dumps([r.as_dict() for r in results] + [{"video": v, "error": e} for v, e in failed], indent=1))
    else:
        print(f"{'LSE-D':>8} {'LSE-C':>7} {'offset':>6} {'cue':>6} {'lag':>4} {'frames':>6}  video")
        for r in results:
            d = r.as_dict()
            lse = (f"{d['lse_d']:8.3f} {d['lse_c']:7.3f} {d['av_offset']:6d}" if "lse_d" in d
                   else f"{'-':>8} {'-':>7} {'-':>6}")
            cue = f"{d['speaking_cue']:6.3f} {d['speaking_lag']:4d}" if "speaking_cue" in d else f"{'-':>6} {'-':>4}"
            print(f"{lse} {cue} {d['frames']:6d}  {d['video']}")
        for video, error in failed:
            print(f"{'-':>8} {'-':>7} {'-':>6} {'-':>6} {'-':>4} {'-':>6}  {video}: {error}")
    return 1 if failed else 0


def _eval_quality(args: argparse.Namespace) -> int:
    import json

    from networks.hyperiqa import load_hyperiqa
    from stages.quality_score import QualityScorer

    scorer = _scorer(args, load_config(args.config), "hyperiqa", "HyperIQA",
                     lambda weights, device: QualityScorer(load_hyperiqa(weights, device), device))
    results, failed = [], []
    for video in args.videos:
        try:
            result = scorer.score_video(video)
        except (ValueError, av_errors()) as exc:
            failed.append({"video": video, "error": str(exc)})
            continue
        results.append({"video": video, "score": round(result.score, 4),
                        "frame_scores": [round(float(s), 4) for s in result.frame_scores]})
    if args.json:
        print(json.dumps(results + failed, indent=1))
    else:
        print(f"{'score':>8}  {'first':>7} {'middle':>7} {'last':>7}  video")
        for r in results:
            print(f"{r['score']:8.2f}  " + " ".join(f"{s:7.2f}" for s in r["frame_scores"]) + f"  {r['video']}")
        for f in failed:
            print(f"{'-':>8}  {'-':>7} {'-':>7} {'-':>7}  {f['video']}: {f['error']}")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from curate.report import build_report

    if args.samples < 0:
        raise RunError("--samples must be 0 or more")
    target = args.out or args.output / "report.html"
    print(build_report(args.output, target, samples=args.samples, seed=args.seed))
    return 0


def _rejects(args: argparse.Namespace) -> int:
    from curate.results import open_view, rejects

    table = rejects(open_view(args.output), args.stage, args.reason)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=1))
    elif table.empty:
        print("no rejects" + (" matching" if args.stage or args.reason else ""))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_colwidth", 60, "display.width", 200):
            print(table.drop(columns=["path"]).to_string(index=False))
    return 0


def _filelist(args: argparse.Namespace) -> int:
    from curate.layouts import read_speaker_list
    from curate.results import open_view, write_file_lists
    from curate.words import counted

    if not 0 <= args.val_fraction < 1:
        raise RunError("--val-fraction must be at least 0 and below 1")
    if args.speaker_pattern:
        import re

        try:
            re.compile(args.speaker_pattern)
        except re.error as exc:
            raise RunError(f"--speaker-pattern is not a valid regular expression: {exc}") from None
    hold_out = read_speaker_list(args.hold_out_speakers) if args.hold_out_speakers else None
    lists = write_file_lists(open_view(args.output), args.out, args.val_fraction, args.seed, args.min_confidence,
                             args.min_quality, args.speaker_pattern, hold_out, args.split)
    if not lists.clips:   # empty lists are written (a trainer reading them must not see stale ones), with the why
        why = (f"the run kept no clips (`curate rejects {args.output}` says why)" if not lists.kept else
               f"none of the {lists.kept} kept clips passes --min-confidence / --min-quality")
        print(f"curate: warning: the file lists are empty: {why}", file=sys.stderr)
    for split, count in lists.splits.items():
        print(f"{split}: {counted(count.clips, 'clip')}, {counted(len(count.speakers), 'speaker')}, "
              f"{count.seconds / 3600:.3f} h -> {lists.written[split]}")
    if hold_out is not None and not lists.splits["test"].clips:
        print(f"curate: warning: none of the {counted(len(hold_out), 'speaker')} in {args.hold_out_speakers} has a "
              "kept clip, so test.txt is empty", file=sys.stderr)
    print(f"split:  {lists.written['split']}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    import tempfile

    import pyarrow.parquet as pq

    from curate.results import open_view, write_file_lists
    from curate.shards import ShardError, write_shards, installed_encoder
    from curate.words import counted

    if not 0 <= args.val_fraction < 1:
        raise RunError("--val-fraction must be at least 0 and below 1")
    if args.shard_size <= 0:
        raise RunError(f"--shard-size must be above 0, not {args.shard_size:g}")
    with tempfile.TemporaryDirectory(prefix="curate-shards-") as folder:
        lists = write_file_lists(open_view(args.output), Path(folder), args.val_fraction, args.seed,
                                 args.min_confidence, args.min_quality, args.speaker_pattern, None, args.split)
        table = pq.read_table(lists.written["split"])
    encoder, why_not = installed_encoder()
    try:
        written = write_shards(table, args.out, int(args.shard_size * 1e6), encoder)
    except ShardError as exc:
        raise RunError(str(exc)) from None
    print(f"shards: {counted(len(written.new_shards), 'new shard')}, {counted(written.new_samples, 'new clip')}"
          f" ({written.kept_samples} already there) -> {args.out}")
    if written.skipped:
        shown = "".join(f"\n  {clip}: {why}" for clip, why in written.skipped[:20])
        more = f"\n  ... and {len(written.skipped) - 20} more" if len(written.skipped) > 20 else ""
        print(f"curate: warning: {counted(len(written.skipped), 'clip')} not written, the trainers would skip "
              f"them:{shown}{more}", file=sys.stderr)
    if encoder is None and written.new_samples:
        print(f"curate: note: no Whisper features in the new samples ({why_not}); `curate train latentsync` "
              "needs them", file=sys.stderr)
    for split, count in sorted(written.samples_by_split.items()):
        print(f"{split}: {counted(count, 'clip')}")
    return 0


def _train_syncnet(args: argparse.Namespace) -> int:
    from curate.train import train_syncnet

    _check_train_flags(args)
    return train_syncnet(args)


def _train_wav2lip(args: argparse.Namespace) -> int:
    from curate.train import train_wav2lip

    _check_train_flags(args)
    return train_wav2lip(args)


def _train_latentsync(args: argparse.Namespace) -> int:
    from curate.train import train_latentsync

    _check_train_flags(args)
    return train_latentsync(args)


def _check_train_flags(args: argparse.Namespace) -> None:
    for flag, value, least in (("--max-steps", args.max_steps, 1), ("--workers", args.workers, 1)):
        if value is not None and value < least:
            raise RunError(f"{flag} must be at least {least}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise RunError("--gpus-per-worker cannot be negative")


def _eval_syncnet(args: argparse.Namespace) -> int:
    from curate.eval_syncnet import eval_syncnet

    if args.max_clips is not None and args.max_clips < 1:
        raise RunError("--max-clips must be at least 1")
    return eval_syncnet(args)


def _lipsync(args: argparse.Namespace) -> int:
    from curate.inference import run_lipsync

    for flag, value in (("--face", args.face), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise RunError(f"{flag} must be at least 1")
    if not 0 <= args.crf <= 51:
        raise RunError("--crf must be between 0 and 51")
    return run_lipsync(args)


def av_errors():
    """FFmpeg's decoding error, imported only by the commands that decode."""
    from media.frames import FFmpegError

    return FFmpegError


def _models_list(args: argparse.Namespace) -> int:
    from curate.models import describe

    rows = describe(load_config(args.config).models)
    width = max(len(model) for model, *_ in rows)
    for model, name, path, status in rows:
        print(f"{model:{width}} {status:10} {path if path is not None else name}")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from curate.models import ModelError, download_model

    settings = load_config(args.config).models
    try:
        for name in args.names or ["syncnet", "hyperiqa"]:
            download_model(name, settings)
    except ModelError as exc:
        raise RunError(str(exc)) from None
    return 0


def parser_of_commands():
    """The parser, each command wired to its handler here."""
    return build_parser({
        "run": _run,
        "eval_sync": _eval_sync,
        "eval_quality": _eval_quality,
        "report": _report,
        "rejects": _rejects,
        "filelist": _filelist,
        "shards": _shards,
        "train_syncnet": _train_syncnet,
        "train_wav2lip": _train_wav2lip,
        "train_latentsync": _train_latentsync,
        "eval_syncnet": _eval_syncnet,
        "lipsync": _lipsync,
        "models_list": _models_list,
        "models_download": _models_download,
    })


if __name__ == "__main__":
    sys.exit(main())


"""The `curate` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curate.config import ConfigError, load_config, with_skipped
from curate.errors import RunError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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


def _run_flags(trainer: argparse.ArgumentParser) -> None:
    """What every `curate train MODEL` takes besides its own flags: how long, where, which validation clips,
    and what to do with the run folder."""
    trainer.add_argument("--max-steps", type=int, metavar="N", help="train until step N (train.max_steps)")
    trainer.add_argument("--workers", type=int, metavar="N", help="training workers, DDP ranks (default 1)")
    trainer.add_argument("--gpus-per-worker", type=float, metavar="G", help="GPUs per worker (default 0: the CPU)")
    trainer.add_argument("--address", metavar="RAY_ADDRESS",
                         help="train on this Ray cluster (also RAY_ADDRESS); default: an embedded Ray")
    trainer.add_argument("--val-list", type=Path, metavar="FILE", help="validation clips, one path a line (instead "
                         "of the val split of LISTS)")
    trainer.add_argument("--prepare", action="store_true", help="only compute and cache the clips' features")
    trainer.add_argument("--reconfigure", action="store_true",
                         help="continue a run folder with settings other than the ones it was started with")
    _progress_flags(trainer, "the progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="Curate raw talking-head video into lip-sync training clips.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="curate a folder of videos into clips and manifests",
        description="Scan RAW_DIR for videos and turn them into clips of 5-10 s inside shots, the face "
                    "aligned to 256x256, at 25 fps with 16 kHz mono audio, with Parquet manifests of every "
                    "source, clip and decision under OUT_DIR. Rerunning the same command skips finished work.",
    )
    run.add_argument("--input", required=True, type=Path, metavar="RAW_DIR", help="folder of source videos (read only)")
    run.add_argument("--output", required=True, type=Path, metavar="OUT_DIR", help="folder for clips and manifests")
    run.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (default: the built-in pipeline.yaml)")
    run.add_argument("--address", metavar="RAY_ADDRESS",
                     help="attach to an existing Ray cluster (also RAY_ADDRESS); default: start an embedded one")
    run.add_argument("--num-cpus", type=int, metavar="N", help="CPUs for the embedded Ray (default: all)")
    run.add_argument("--skip", action="append", default=[], metavar="STAGE",
                     help="leave stages out (repeatable, or comma-separated): shots (a source is one shot), face (clips unaligned, "
                          "no sync), sync, quality")
    run.add_argument("--dry-run", action="store_true", help="show what would be done, do nothing")
    _progress_flags(run, "progress bars")
    run.set_defaults(handler=_run)

    evaluate = commands.add_parser(
        "eval-sync", help="SyncNet offset, LSE-D and LSE-C of videos (e.g. generated lip-sync samples)",
        description="Measure audio-visual sync of each VIDEO with SyncNet as lip-sync papers report it: the offset "
                    "in frames (> 0: the sound comes first), LSE-D (min distance, lower is better) and LSE-C "
                    "(confidence, higher is better). Videos are read at 25 fps with 16 kHz audio.",
    )
    evaluate.add_argument("videos", nargs="+", metavar="VIDEO")
    evaluate.add_argument("--weights", type=Path, metavar="FILE", help="syncnet_v2.model (default: the verified one in "
                          "the models folder)")
    evaluate.add_argument("--precropped", action="store_true", help="the videos are already face crops (224x224)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (models folder, face backend)")
    evaluate.set_defaults(handler=_eval_sync)

    quality = commands.add_parser(
        "eval-quality", help="HyperIQA visual-quality score of videos",
        description="Score each VIDEO with HyperIQA (koniq_pretrained.pkl) as LatentSync's quality filter does: the "
                    "first, middle and last frame, centre crop 224, mean of the three (0..100, higher is better; "
                    "the pipeline keeps clips scoring at least stages.quality.min_score, 40 by default).",
    )
    quality.add_argument("videos", nargs="+", metavar="VIDEO")
    quality.add_argument("--weights", type=Path, metavar="FILE", help="koniq_pretrained.pkl (default: the verified one "
                         "in the models folder)")
    quality.add_argument("--json", action="store_true", help="print JSON instead of a table")
    quality.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (models folder)")
    quality.set_defaults(handler=_eval_quality)

    report = commands.add_parser(
        "report", help="one self-contained HTML page about a run: funnel, rejects, distributions, samples",
        description="Write an HTML report of OUT_DIR's run (images embedded, opens in any browser without a "
                    "server): the funnel, rejects by stage and reason, score distributions with the thresholds, "
                    "sample frames of clips per reject reason and of kept clips, the config and versions.")
    report.add_argument("output", type=Path, metavar="OUT_DIR")
    report.add_argument("-o", "--out", type=Path, metavar="HTML", help="where to write it (default: OUT_DIR/report.html)")
    report.add_argument("--samples", type=int, default=6, metavar="N", help="sample clips per reject reason (default 6)")
    report.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    report.set_defaults(handler=_report)

    rejected = commands.add_parser(
        "rejects", help="the rejected sources and clips as a table (or CSV / JSON)",
        description="List what OUT_DIR's run rejected: sources (kind 'source') and clip spans (kind 'clip'), with "
                    "stage, reason, detail and scores.")
    rejected.add_argument("output", type=Path, metavar="OUT_DIR")
    rejected.add_argument("--stage", help="only this stage's rejects: scan, worker, probe, face, sync, quality, ... "
                          "(default: all)")
    rejected.add_argument("--reason", help="only this reason, e.g. no_face (default: all)")
    rejected.add_argument("--format", choices=["table", "csv", "json"], default="table",
                          help="a table to read (default), or CSV / JSON with every column, the clip path included")
    rejected.set_defaults(handler=_rejects)

    lists = commands.add_parser(
        "filelist", help="train / validation file lists of the kept clips, split by speaker",
        description="Write DIR/train.txt and DIR/val.txt (one absolute clip path a line, as LatentSync's trainers "
                    "read them) and DIR/split.parquet (the clips' manifest columns with speaker and split). The "
                    "split is by speaker (VoxCeleb2's idNNNNN folder, otherwise the source file), so no speaker is "
                    "on both sides; the same seed gives the same split.")
    lists.add_argument("output", type=Path, metavar="OUT_DIR")
    lists.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for train.txt, val.txt and "
                       "split.parquet (made if missing; the files are replaced)")
    lists.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                       help="share of speakers for validation (default 0.05; at least one speaker when there are two)")
    lists.add_argument("--seed", type=int, default=0, help="seed of the speaker split (default 0)")
    lists.add_argument("--min-confidence", type=float, metavar="X", help="keep only clips with SyncNet confidence >= X "
                       "(default: every kept clip; the run's own threshold already applied)")
    lists.add_argument("--min-quality", type=float, metavar="Y", help="keep only clips with HyperIQA score >= Y "
                       "(default: every kept clip; the run's own threshold already applied)")
    lists.add_argument("--speaker-pattern", metavar="REGEX",
                       help="the speaker is this regex's first group, searched in the source path relative to the "
                            "input (HDTF: '([^/]+)_[0-9]+[.][^.]+$' groups WDA_BarackObama_000 and _001)")
    lists.set_defaults(handler=_filelist)

    train = commands.add_parser("train", help="train a model on curated clips (the lip-sync experts, Wav2Lip, LatentSync)")
    trainers = train.add_subparsers(dest="trainer", required=True, metavar="MODEL")
    expert = trainers.add_parser(
        "syncnet", help="a lip-sync expert: LatentSync's StableSyncNet or Wav2Lip's SyncNet",
        description="Train a lip-sync expert on the clips LISTS names: a `curate filelist` folder (train.txt, "
                    "val.txt, split.parquet) or a file of clip paths, one a line. Everything goes to RUN: "
                    "checkpoints (the model in its official layout, and what a continued run needs), "
                    "metrics.jsonl and metrics.png. Rerunning the same command continues from the last "
                    "checkpoint. The clips' mel spectrograms are computed once and cached (data.cache_dir).")
    expert.add_argument("lists", type=Path, metavar="LISTS", help="a `curate filelist` folder, or a list of clip paths")
    expert.add_argument("--out", required=True, type=Path, metavar="RUN", help="the run folder")
    expert.add_argument("--arch", choices=["stable", "wav2lip"], default="stable",
                        help="stable: StableSyncNet, 16 frames (LatentSync 1.5/1.6); wav2lip: Wav2Lip's 5-frame "
                             "expert (default: stable)")
    expert.add_argument("--config", type=Path, metavar="YAML",
                        help="settings over the arch's defaults (configs/syncnet-ARCH.yaml documents them)")
    expert.add_argument("--init", type=Path, metavar="CKPT",
                        help="start from these weights (stable_syncnet.pt, lipsync_expert.pth, or one of ours)")
    _run_flags(expert)
    expert.set_defaults(handler=_train_syncnet)

    generator = trainers.add_parser(
        "wav2lip", help="Wav2Lip's generator, against a lip-sync expert (and a discriminator with --gan)",
        description="Train Wav2Lip's generator on the clips LISTS names (as for `train syncnet`): it remakes the "
                    "lower half of 5 frames from their upper half, 5 other frames of the clip and the audio, "
                    "learning from the L1 to the truth and, once the validation's sync loss is under 0.75, from "
                    "the frozen lip-sync expert EXPERT (hq_wav2lip_train.py's recipe with --gan, "
                    "wav2lip_train.py's without). Everything goes to RUN: checkpoints (wav2lip.pth, and "
                    "wav2lip_disc.pth with --gan, in the official layout; what a continued run needs), "
                    "metrics.jsonl and metrics.png. Rerunning the same command continues from the last checkpoint.")
    generator.add_argument("lists", type=Path, metavar="LISTS", help="a `curate filelist` folder, or a list of clip paths")
    generator.add_argument("--out", required=True, type=Path, metavar="RUN", help="the run folder")
    generator.add_argument("--syncnet", type=Path, metavar="EXPERT",
                           help="Wav2Lip's lip-sync expert: lipsync_expert.pth, or a run folder of `curate train "
                                "syncnet --arch wav2lip` (its best checkpoint) or one of its checkpoints (required, "
                                "but for --prepare)")
    generator.add_argument("--gan", action="store_true", help="train the visual-quality discriminator with it")
    generator.add_argument("--config", type=Path, metavar="YAML",
                           help="settings over the defaults (configs/wav2lip.yaml documents them; "
                                "configs/wav2lip-hd.yaml: the 256 x 256 variant)")
    generator.add_argument("--init", type=Path, metavar="CKPT",
                           help="start from these generator weights (wav2lip.pth, wav2lip_gan.pth, or one of ours)")
    _run_flags(generator)
    generator.set_defaults(handler=_train_wav2lip)

    unet = trainers.add_parser(
        "latentsync", help="LatentSync's U-Net: stage 1, stage 2, or the one-GPU stage-2 fine-tune",
        description="Train LatentSync's U-Net on the clips LISTS names (as for `train syncnet`): 16-frame windows "
                    "whose mouth it remakes from the masked frames, 16 other frames of the clip and the Whisper "
                    "features of the audio, by predicting the noise added to their VAE latents. --stage 1: the "
                    "whole U-Net without motion modules, the noise loss only; 2: motion modules and attentions, "
                    "with the one-step estimate decoded and judged by LPIPS, the frozen StableSyncNet and TREPA; "
                    "2-efficient: decoder motion modules and audio cross-attention, without TREPA (one 24 GB "
                    "GPU). Everything goes to RUN: checkpoints (latentsync_unet.pt in LatentSync's layout, which "
                    "its code and `curate lipsync --checkpoint RUN` load; what a continued run needs), "
                    "metrics.jsonl, metrics.png, samples/. The VAE and Whisper come from the models folder "
                    "(`curate models download latentsync`), and LPIPS and TREPA for the stages that use them "
                    "(`... lpips`, `... trepa`). Rerunning the same command continues from the last checkpoint.")
    unet.add_argument("lists", type=Path, metavar="LISTS", help="a `curate filelist` folder, or a list of clip paths")
    unet.add_argument("--out", required=True, type=Path, metavar="RUN", help="the run folder")
    unet.add_argument("--stage", required=True, choices=["1", "2", "2-efficient"],
                      help="LatentSync's stage1.yaml, stage2.yaml or stage2_efficient.yaml recipe")
    unet.add_argument("--init", type=Path, metavar="CKPT",
                      help="start from this U-Net: latentsync_unet.pt, or a checkpoint or run folder of ours (the "
                           "motion modules a stage does not build are dropped; those it builds and the file lacks "
                           "start afresh)")
    unet.add_argument("--syncnet", type=Path, metavar="EXPERT",
                      help="the frozen StableSyncNet of the sync loss: stable_syncnet.pt, or a run folder of `curate "
                           "train syncnet` (default: stable_syncnet.pt in the models folder)")
    unet.add_argument("--config", type=Path, metavar="YAML",
                      help="settings over the stage's defaults (configs/latentsync-stage*.yaml document them; "
                           "configs/latentsync-small.yaml: a small U-Net to try on the CPU)")
    _run_flags(unet)
    unet.set_defaults(handler=_train_latentsync)

    judge = commands.add_parser(
        "eval-syncnet", help="loss, accuracy and offset accuracy of a lip-sync expert on curated clips",
        description="Evaluate an expert (an official stable_syncnet.pt or lipsync_expert.pth, a checkpoint of "
                    "ours, or a run folder: its best checkpoint) on fixed, seeded windows of LISTS's clips: BCE "
                    "loss and accuracy over in-sync and shifted pairs, offset accuracy (the best of the shifts "
                    "-15..+15 frames within one frame of 0) and the median best shift.")
    judge.add_argument("checkpoint", type=Path, metavar="CKPT")
    judge.add_argument("lists", type=Path, metavar="LISTS")
    judge.add_argument("--split", choices=["val", "train", "all"], default="val", help="which clips (default val)")
    judge.add_argument("--max-clips", type=int, metavar="N", help="at most N clips (default: data.val_clips, 256)")
    judge.add_argument("--config", type=Path, metavar="YAML", help="a training config (its data: section)")
    judge.add_argument("--json", action="store_true", help="print JSON instead of a table")
    judge.set_defaults(handler=_eval_syncnet)

    sync = commands.add_parser(
        "lipsync", help="make a lip-synced video: VIDEO's face speaking AUDIO",
        description="Write OUT: VIDEO with the mouth of its face following AUDIO (any file with an audio stream), "
                    "at 25 fps, as many frames as the audio lasts (a shorter video is played back and forth, a "
                    "longer one cut), H.264 with AUDIO's sound at its own quality. Only the lower face changes; "
                    "frames where the face is not found are written unchanged. The batch form renders every "
                    "row of a CSV (video,audio[,output]) with one loaded model.")
    sync.add_argument("video", type=Path, nargs="?", metavar="VIDEO")
    sync.add_argument("audio", type=Path, nargs="?", metavar="AUDIO")
    sync.add_argument("-o", "--output", type=Path, metavar="OUT.mp4", help="the video to write")
    sync.add_argument("--pairs", type=Path, metavar="FILE.csv", help="batch: rows of video,audio[,output]")
    sync.add_argument("--out", type=Path, metavar="DIR", help="batch: the folder for the videos")
    sync.add_argument("--model", choices=["wav2lip", "latentsync"], default="wav2lip",
                      help="the model (default wav2lip)")
    sync.add_argument("--checkpoint", type=Path, metavar="CKPT",
                      help="its weights: wav2lip.pth / wav2lip_gan.pth or latentsync_unet.pt, a checkpoint of ours, "
                           "or a run folder (its best checkpoint); default: the official file in the models folder")
    sync.add_argument("--resolution", type=int, choices=[256, 512],
                      help="LatentSync: the face size the U-Net was trained at (1.5: 256, 1.6: 512; default: what "
                           "the file or its models folder says, and the official 1.5 without --checkpoint)")
    sync.add_argument("--steps", type=int, metavar="N", help="LatentSync: DDIM steps (default 20)")
    sync.add_argument("--guidance", type=float, metavar="W", help="LatentSync: classifier-free guidance against "
                      "silence (default 1.5; 1 turns it off)")
    sync.add_argument("--seed", type=int, metavar="S", help="LatentSync: the seed of its noise (default 1247)")
    sync.add_argument("--face", type=int, metavar="N",
                      help="with several faces, the N-th from the left (from 1); default: the largest")
    sync.add_argument("--framing", choices=["box", "template"],
                      help="override the crop the model expects (default: what its file says; official: box)")
    sync.add_argument("--crf", type=int, default=18, metavar="Q", help="H.264 quality, lower is better (default 18)")
    sync.add_argument("--preset", default="medium", choices=["ultrafast", "superfast", "veryfast", "faster", "fast",
                                                             "medium", "slow", "slower", "veryslow"],
                      help="x264 preset: faster to encode, or smaller at the same quality (default medium)")
    sync.add_argument("--audio", dest="audio_mode", choices=["auto", "copy", "aac"], default="auto",
                      help="the sound: copy it untouched, encode it as AAC at its own rate and channels, or auto "
                           "(copy AAC, encode anything else; default)")
    sync.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N, mps (default: a GPU when there is one)")
    sync.add_argument("--batch-size", type=int, metavar="N", help="faces per model call (Wav2Lip: default 128 on a "
                      "GPU, 16 on the CPU; LatentSync: its window, 16)")
    sync.add_argument("--backend", choices=["dlib", "fan"], help="face landmarks (default: stages.face.backend)")
    sync.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (face stage, models folder)")
    _progress_flags(sync, "the progress bar")
    sync.set_defaults(handler=_lipsync)

    models = commands.add_parser("models", help="model weights: list what is here, download what is not")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="every model file, where it belongs, and whether it is there "
                                                     "and verified")
    listing.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (for models.dir and models.sha256)")
    listing.set_defaults(handler=_models_list)
    fetch = model_commands.add_parser("download", help="fetch model files from their public locations and verify them")
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help="syncnet, hyperiqa, fan, stable-syncnet, wav2lip-expert, wav2lip, wav2lip-gan, latentsync, "
                            "latentsync-512, lpips, trepa (default: "
                            "syncnet and hyperiqa, what the default pipeline needs)")
    fetch.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (for models.dir and models.sha256)")
    fetch.set_defaults(handler=_models_download)
    return parser


def _progress_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--progress / --no-progress (default: shown when stderr is a terminal)."""
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None, help=f"always show {what}")
    bars.add_argument("--no-progress", dest="progress", action="store_false", help=f"never show {what}")


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
    from stages.sync_eval import evaluate
    from networks.syncnet.syncnet_v2 import load_syncnet
    from stages.sync_score import SyncScorer

    config = load_config(args.config)
    scorer = _scorer(args, config, "syncnet", "SyncNet",
                     lambda weights, device: SyncScorer(load_syncnet(weights, device), device,
                                                        config.resources.sync.batch_windows))
    face = config.stages.face.model_copy(update={"min_face_px": 40})  # samples often have small faces
    results, failed = [], []
    for video in args.videos:
        try:
            results.extend(evaluate([video], scorer, args.precropped, face))
        except (Rejected, ValueError, av_errors()) as exc:
            failed.append((video, str(exc)))
    if args.json:
        print(json.dumps([r.as_dict() for r in results] + [{"video": v, "error": e} for v, e in failed], indent=1))
    else:
        print(f"{'LSE-D':>8} {'LSE-C':>7} {'offset':>6} {'frames':>6}  video")
        for r in results:
            d = r.as_dict()
            print(f"{d['lse_d']:8.3f} {d['lse_c']:7.3f} {d['av_offset']:6d} {d['frames']:6d}  {d['video']}")
        for video, error in failed:
            print(f"{'-':>8} {'-':>7} {'-':>6} {'-':>6}  {video}: {error}")
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
    from curate.results import load_results, rejects

    table = rejects(load_results(args.output), args.stage, args.reason)
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
    from curate.results import file_lists, load_results, write_file_lists
    from curate.words import counted

    if not 0 <= args.val_fraction < 1:
        raise RunError("--val-fraction must be at least 0 and below 1")
    if args.speaker_pattern:
        import re

        try:
            re.compile(args.speaker_pattern)
        except re.error as exc:
            raise RunError(f"--speaker-pattern is not a valid regular expression: {exc}") from None
    results = load_results(args.output)
    table = file_lists(results, args.val_fraction, args.seed, args.min_confidence, args.min_quality,
                       args.speaker_pattern)
    written = write_file_lists(table, args.out)
    if table.empty:   # empty lists are written (a trainer reading them must not see stale ones), with the why
        kept = int((results.clips.status == "kept").sum())
        why = (f"the run kept no clips (`curate rejects {args.output}` says why)" if not kept else
               f"none of the {kept} kept clips passes --min-confidence / --min-quality")
        print(f"curate: warning: the file lists are empty: {why}", file=sys.stderr)
    for split in ("train", "val"):
        mine = table[table.split == split]
        print(f"{split}: {counted(len(mine), 'clip')}, {counted(mine.speaker.nunique(), 'speaker')}, "
              f"{mine.duration_s.sum() / 3600:.3f} h -> {written[split]}")
    print(f"split:  {written['split']}")
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
    import av

    return av.error.FFmpegError


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


if __name__ == "__main__":
    sys.exit(main())

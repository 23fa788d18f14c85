"""The `curate` command's parser: every command, its flags and their help (the handlers are in curate.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def run_flags(trainer: argparse.ArgumentParser) -> None:
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
    progress_flags(trainer, "the progress bar")


def split_flags(parser) -> None:
    """How `curate filelist` and `curate shards` choose and split the kept clips."""
    parser.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                       help="share of speakers for validation (default 0.05; at least one speaker when there are two)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker split (default 0)")
    parser.add_argument("--split", choices=["speaker", "time"], default="speaker",
                       help="speaker: whole speakers in val (default); time: each speaker's last --val-fraction of "
                            "footage in val, disjoint in time from train (one speaker's personal model)")
    parser.add_argument("--min-confidence", type=float, metavar="X", help="keep only clips with SyncNet confidence >= X "
                       "(default: every kept clip; the run's own threshold already applied)")
    parser.add_argument("--min-quality", type=float, metavar="Y", help="keep only clips with HyperIQA score >= Y "
                       "(default: every kept clip; the run's own threshold already applied)")
    parser.add_argument("--speaker-pattern", metavar="REGEX",
                       help="the speaker is this regex's first group, searched in the source path relative to the "
                            "input (HDTF: '([^/]+)_[0-9]+[.][^.]+$' groups WDA_BarackObama_000 and _001)")


LISTS_HELP = ("a `curate filelist` folder, a list of clip paths, or `curate shards`' shards (their folder or URL, "
              "holding index.parquet)")


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """Every command with its flags; `handlers` maps each command's name (run, eval_sync, ...) to its function."""
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
                     help="leave stages out (repeatable, or comma-separated): shots (a source is one shot), speech, face (clips "
                          "unaligned, no sync), sync, quality, duplicates")
    run.add_argument("--dry-run", action="store_true", help="show what would be done, do nothing")
    progress_flags(run, "progress bars")
    run.set_defaults(handler=handlers["run"])

    evaluate = commands.add_parser(
        "eval-sync", help="SyncNet offset, LSE-D and LSE-C of videos (e.g. generated lip-sync samples)",
        description="Measure audio-visual sync of each VIDEO with SyncNet as lip-sync papers report it: the offset "
                    "in frames (> 0: the sound comes first), LSE-D (min distance, lower is better) and LSE-C "
                    "(confidence, higher is better); and, needing no weights, the speaking cue: the correlation of "
                    "the tracked mouth's opening with the speech's loudness at the best lag (higher is better; "
                    "not for --precropped). Videos are read at 25 fps with 16 kHz audio.",
    )
    evaluate.add_argument("videos", nargs="+", metavar="VIDEO")
    evaluate.add_argument("--weights", type=Path, metavar="FILE", help="syncnet_v2.model (default: the verified one in "
                          "the models folder)")
    evaluate.add_argument("--precropped", action="store_true", help="the videos are already face crops (224x224)")
    evaluate.add_argument("--weight-free", action="store_true", help="only the weight-free speaking cue (how the "
                          "mouth's opening follows the speech's loudness; also what is reported, with a note, when "
                          "syncnet_v2.model is not in the models folder)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (models folder, face backend)")
    evaluate.set_defaults(handler=handlers["eval_sync"])

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
    quality.set_defaults(handler=handlers["eval_quality"])

    report = commands.add_parser(
        "report", help="one self-contained HTML page about a run: funnel, rejects, distributions, samples",
        description="Write an HTML report of OUT_DIR's run (images embedded, opens in any browser without a "
                    "server): the funnel, rejects by stage and reason, score distributions with the thresholds, "
                    "sample frames of clips per reject reason and of kept clips, the config and versions.")
    report.add_argument("output", type=Path, metavar="OUT_DIR")
    report.add_argument("-o", "--out", type=Path, metavar="HTML", help="where to write it (default: OUT_DIR/report.html)")
    report.add_argument("--samples", type=int, default=6, metavar="N", help="sample clips per reject reason (default 6)")
    report.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    report.set_defaults(handler=handlers["report"])

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
    rejected.set_defaults(handler=handlers["rejects"])

    lists = commands.add_parser(
        "filelist", help="train / validation file lists of the kept clips, split by speaker",
        description="Write DIR/train.txt and DIR/val.txt (one absolute clip path a line, as LatentSync's trainers "
                    "read them) and DIR/split.parquet (the clips' manifest columns with speaker and split). The "
                    "split is by speaker (VoxCeleb2's idNNNNN folder; with the run's inputs.layout hdtf, the name "
                    "without its clip number; otherwise the source file), so no speaker is on both sides; the same "
                    "seed gives the same split.")
    lists.add_argument("output", type=Path, metavar="OUT_DIR")
    lists.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for train.txt, val.txt and "
                       "split.parquet (made if missing; the files are replaced)")
    split_flags(lists)
    lists.add_argument("--hold-out-speakers", type=Path, metavar="FILE",
                       help="speakers whose clips go to DIR/test.txt, never to train or val: one a line, a "
                            "speaker id (id00017, WDA_BarackObama) or a path or address holding VoxCeleb2's "
                            "idNNNNN (without it, an earlier test.txt in DIR is removed)")
    lists.set_defaults(handler=handlers["filelist"])

    shards = commands.add_parser(
        "shards", help="the kept clips as WebDataset tar shards (a local folder or any fsspec URL), split by speaker",
        description="Write the kept clips, split as `curate filelist` splits them, into SPLIT-NNNNNN.tar shards of "
                    "about --shard-size each under OUT (a folder, or an fsspec URL: s3://, gs://, memory://), one "
                    "sample per clip (KEY.mp4, KEY.mel.npy, KEY.whisper.npy when the latentsync model is installed, "
                    "KEY.npz, KEY.json), and OUT/index.parquet listing every sample's shard, split, clip, "
                    "speaker, size and byte range. Run again after more curation, it adds the new clips in new "
                    "shards and leaves the old ones as they are. The trainers take OUT where they take lists.")
    shards.add_argument("output", type=Path, metavar="OUT_DIR", help="the curation run")
    shards.add_argument("--out", required=True, metavar="DIR_OR_URL", help="where the shards go")
    shards.add_argument("--shard-size", type=float, default=1000.0, metavar="MB",
                        help="shard size in MB (default 1000; a clip larger than it is a shard alone)")
    split_flags(shards)
    shards.set_defaults(handler=handlers["shards"])

    train = commands.add_parser("train", help="train a model on curated clips (the lip-sync experts, Wav2Lip, LatentSync)")
    trainers = train.add_subparsers(dest="trainer", required=True, metavar="MODEL")
    expert = trainers.add_parser(
        "syncnet", help="a lip-sync expert: LatentSync's StableSyncNet or Wav2Lip's SyncNet",
        description="Train a lip-sync expert on the clips LISTS names: a `curate filelist` folder (train.txt, "
                    "val.txt, split.parquet) or a file of clip paths, one a line. Everything goes to RUN: "
                    "checkpoints (the model in its official layout, and what a continued run needs), "
                    "metrics.jsonl and metrics.png. Rerunning the same command continues from the last "
                    "checkpoint. The clips' mel spectrograms are computed once and cached (data.cache_dir).")
    expert.add_argument("lists", metavar="LISTS", help=LISTS_HELP)
    expert.add_argument("--out", required=True, type=Path, metavar="RUN", help="the run folder")
    expert.add_argument("--arch", choices=["stable", "wav2lip"], default="stable",
                        help="stable: StableSyncNet, 16 frames (LatentSync 1.5/1.6); wav2lip: Wav2Lip's 5-frame "
                             "expert (default: stable)")
    expert.add_argument("--config", type=Path, metavar="YAML",
                        help="settings over the arch's defaults (configs/syncnet-ARCH.yaml documents them)")
    expert.add_argument("--init", type=Path, metavar="CKPT",
                        help="start from these weights (stable_syncnet.pt, lipsync_expert.pth, or one of ours)")
    run_flags(expert)
    expert.set_defaults(handler=handlers["train_syncnet"])

    generator = trainers.add_parser(
        "wav2lip", help="Wav2Lip's generator, against a lip-sync expert (and a discriminator with --gan)",
        description="Train Wav2Lip's generator on the clips LISTS names (as for `train syncnet`): it remakes the "
                    "lower half of 5 frames from their upper half, 5 other frames of the clip and the audio, "
                    "learning from the L1 to the truth and, once the validation's sync loss is under 0.75, from "
                    "the frozen lip-sync expert EXPERT (hq_wav2lip_train.py's recipe with --gan, "
                    "wav2lip_train.py's without). Everything goes to RUN: checkpoints (wav2lip.pth, and "
                    "wav2lip_disc.pth with --gan, in the official layout; what a continued run needs), "
                    "metrics.jsonl and metrics.png. Rerunning the same command continues from the last checkpoint.")
    generator.add_argument("lists", metavar="LISTS", help=LISTS_HELP)
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
    run_flags(generator)
    generator.set_defaults(handler=handlers["train_wav2lip"])

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
    unet.add_argument("lists", metavar="LISTS", help=LISTS_HELP)
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
    run_flags(unet)
    unet.set_defaults(handler=handlers["train_latentsync"])

    judge = commands.add_parser(
        "eval-syncnet", help="loss, accuracy and offset accuracy of a lip-sync expert on curated clips",
        description="Evaluate an expert (an official stable_syncnet.pt or lipsync_expert.pth, a checkpoint of "
                    "ours, or a run folder: its best checkpoint) on fixed, seeded windows of LISTS's clips: BCE "
                    "loss and accuracy over in-sync and shifted pairs, offset accuracy (the best of the shifts "
                    "-15..+15 frames within one frame of 0) and the median best shift.")
    judge.add_argument("checkpoint", type=Path, metavar="CKPT")
    judge.add_argument("lists", metavar="LISTS", help=LISTS_HELP)
    judge.add_argument("--split", choices=["val", "train", "all"], default="val", help="which clips (default val)")
    judge.add_argument("--max-clips", type=int, metavar="N", help="at most N clips (default: data.val_clips, 256)")
    judge.add_argument("--config", type=Path, metavar="YAML", help="a training config (its data: section)")
    judge.add_argument("--json", action="store_true", help="print JSON instead of a table")
    judge.set_defaults(handler=handlers["eval_syncnet"])

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
    sync.add_argument("--bounce-memory-mb", type=float, default=512.0, metavar="MB",
                      help="a video shorter than the audio is played back and forth from its frames held in memory "
                           "up to this many MB, from a lossless spool on disk beyond it (default 512: 13 s at "
                           "540x960, 3.3 s at 1080x1920)")
    sync.add_argument("--preview", action="store_true",
                      help="also write OUT.preview.png: 8 frames' faces as given and as generated, and the mouth's "
                           "opening of each against the speech with their weight-free sync cues (runs the "
                           "landmark model twice per frame)")
    sync.add_argument("--backend", choices=["dlib", "fan"], help="face landmarks (default: stages.face.backend)")
    sync.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (face stage, models folder)")
    progress_flags(sync, "the progress bar")
    sync.set_defaults(handler=handlers["lipsync"])

    models = commands.add_parser("models", help="model weights: list what is here, download what is not")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="every model file, where it belongs, and whether it is there "
                                                     "and verified")
    listing.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (for models.dir and models.sha256)")
    listing.set_defaults(handler=handlers["models_list"])
    fetch = model_commands.add_parser("download", help="fetch model files from their public locations and verify them")
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help="syncnet, hyperiqa, fan, stable-syncnet, wav2lip-expert, wav2lip, wav2lip-gan, latentsync, "
                            "latentsync-512, lpips, trepa (default: "
                            "syncnet and hyperiqa, what the default pipeline needs)")
    fetch.add_argument("--config", type=Path, metavar="YAML", help="pipeline config (for models.dir and models.sha256)")
    fetch.set_defaults(handler=handlers["models_download"])
    return parser


def progress_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--progress / --no-progress (default: shown when stderr is a terminal)."""
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None, help=f"always show {what}")
    bars.add_argument("--no-progress", dest="progress", action="store_false", help=f"never show {what}")

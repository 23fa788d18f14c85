"""`curate eval-syncnet`: a lip-sync expert checkpoint (a file, checkpoint folder or run folder) measured on
the clips of a list's split: loss, accuracy, offset accuracy and best shift, as a table or JSON.
"""

from __future__ import annotations

import dataclasses
import json

from curate.errors import RunError
from curate.train_data import prepare_clips
from curate.train_weights import expert_file


def eval_syncnet(args) -> int:
    import torch

    from curate.training_config import load_training_config
    from networks.syncnet.experts import CLASSES, framing_of, load_expert, read_checkpoint
    from training.clips import DataError, Lists, read_lists
    from training.expert import evaluate_expert
    from training.windows import ValWindows

    path = expert_file(args.checkpoint)
    try:
        expert = read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not an expert
        raise RunError(f"cannot read {path}: {exc}") from None
    settings = load_training_config(expert.arch, args.config).data
    if args.max_clips is not None:
        settings = dataclasses.replace(settings, val_clips=args.max_clips)
    try:
        lists = read_lists(args.lists)
    except DataError as exc:
        raise RunError(str(exc)) from None
    paths = {"val": lists.val, "train": lists.train, "all": lists.train + lists.val}[args.split]
    if not paths:
        raise RunError(f"{lists.source} has no {args.split} clips")
    framing = framing_of(expert.arch, expert.config, settings.resolution or expert.resolution)
    chosen = None
    if lists.shards is not None:
        train, val = lists.shards
        chosen = ([], {"val": val, "train": train, "all": train + val}[args.split])
    _, clips = prepare_clips(Lists([], paths, lists.source, chosen), settings, framing)
    windows = ValWindows(clips, framing, settings, seed=0)
    if not len(windows):
        raise RunError(f"none of the {len(paths)} {args.split} clips is long enough to evaluate (it takes "
                       f"{framing.num_frames + 30} frames with audio)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        _, model = load_expert(path, device)
        numbers = evaluate_expert(model, CLASSES[expert.arch].frames_input, windows.batches(), torch.device(device))
    except (RuntimeError, ValueError) as exc:
        raise RunError(f"cannot evaluate {path} on {framing.height}x{framing.width} frames: "
                       f"{str(exc).splitlines()[0]}") from None
    arch, step = expert.arch, expert.global_step
    row = {"checkpoint": str(path), "arch": arch, "global_step": step, "split": args.split,
           "clips": len(windows.clips), **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in numbers.items()}}
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        print(f"{'loss':>7} {'accuracy':>8} {'offset acc':>10} {'best shift':>10} {'windows':>7} {'clips':>5}  checkpoint")
        print(f"{row['loss']:7.4f} {row['accuracy']:8.4f} {row['offset_accuracy']:10.4f} {row['best_shift']:10.1f} "
              f"{row['windows']:7d} {row['clips']:5d}  {path} ({arch}, step {step})")
    return 0

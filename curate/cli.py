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
    except KeyboardInterrupt:
        print("curate: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


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
                     help="leave a stage out (repeatable): shots (a source is one shot), face (clips unaligned)")
    run.add_argument("--dry-run", action="store_true", help="show what would be done, do nothing")
    bars = run.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress bars")
    bars.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    run.set_defaults(handler=_run)

    models = commands.add_parser("models", help="model weights: list what is here, download what is not")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="every model file, where it belongs, and whether it is there")
    listing.set_defaults(handler=_models_list)
    fetch = model_commands.add_parser("download", help="fetch a model's files from their public locations")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="model name, e.g. fan")
    fetch.set_defaults(handler=_models_download)
    return parser


def _run(args: argparse.Namespace) -> int:
    from curate.runner import RunOptions, command_line, run
    from curate.summary import format_dry_run, format_summary

    if args.num_cpus is not None and args.num_cpus < 1:
        raise RunError("--num-cpus must be at least 1")
    config = load_config(args.config)
    if args.skip:
        config = with_skipped(config, args.skip)
    options = RunOptions(
        input_dir=args.input, output_dir=args.output, config=config,
        address=args.address, num_cpus=args.num_cpus, dry_run=args.dry_run, progress=args.progress,
        command=command_line(),
    )
    summary = run(options)
    print(format_dry_run(summary) if args.dry_run else format_summary(summary, options.output_dir))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from curate.models import describe

    for model, name, path, present in describe():
        print(f"{model:6} {'ok' if present else 'missing':8} {path if path is not None else name}")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from curate.models import DownloadError, download_model

    try:
        for name in args.names:
            download_model(name)
    except DownloadError as exc:
        raise RunError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What `curate run` checks before any work starts, each failing early with a RunError that says what to do:
the input and output folders, every enabled stage's code and weights (fetched on first use), and whether the
clip-stage pools can be placed on the cluster and leave room for a source task (checked once Ray is up, by
curate.run_execute)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from curate.config import Config
from curate.errors import RunError


def check_input(input_dir: Path, output_dir: Path) -> None:
    """Fail early, with the reason, on an input folder that cannot be read."""
    if not input_dir.exists():
        raise RunError(f"input folder {input_dir} does not exist")
    if not input_dir.is_dir():
        raise RunError(f"input {input_dir} is not a folder")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise RunError(f"input folder {input_dir} cannot be read")
    if input_dir.resolve() == output_dir.resolve():
        raise RunError("the output folder must not be the input folder")


def check_output(output_dir: Path, create: bool = True) -> None:
    """Fail early on an output folder that cannot be written; make it when `create`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunError(f"output {output_dir} is a file, not a folder")
    if not create:
        existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunError(f"cannot write to output folder {output_dir}")
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".curate-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to output folder {output_dir}: {exc.strerror or exc}") from None


def check_models(config: Config, fetch: bool = True) -> dict[str, list[str]]:
    """Every enabled stage's code and weights must be here, verified, before any work starts. Files with a
    public location are fetched on first use (unless `fetch` is off, as in a dry run); what is still missing
    then stops the run with one message naming every file, the folder it belongs in, the command that gets
    it, and the one --skip that does without all of them. Returns the weight paths the workers load, per
    model."""
    from curate.models import MODELS, ModelError, download_model, require
    from faces.landmarks import BackendUnavailable, check_backend

    problems: list[tuple[str, str]] = []   # (stage, what is wrong)
    needed = []
    if not config.skipped("face"):
        try:
            check_backend(config.stages.face.backend)  # the code; the weights are checked next
            needed.append((config.stages.face.backend, "face"))
        except BackendUnavailable as exc:
            if config.stages.face.backend != "fan":
                problems.append(("face", str(exc)))
            else:   # FAN's files are models too: require() names what is missing of them
                needed.append((config.stages.face.backend, "face"))
    if not config.skipped("sync"):
        needed.append(("syncnet", "sync"))
    if not config.skipped("quality"):
        needed.append(("hyperiqa", "quality"))
    paths = {}
    for model, stage in needed:
        try:
            paths[model] = [str(p) for p in require(model, config.models)]
            continue
        except ModelError as exc:
            problem = exc
        if fetch and any(file.url for file in MODELS[model][1]):
            try:
                download_model(model, config.models, progress=lambda line: print(line, file=sys.stderr), timeout=20)
                paths[model] = [str(p) for p in require(model, config.models)]
                continue
            except ModelError as exc:
                print(f"curate: {exc}", file=sys.stderr)
        problems.append((stage, str(problem)))
    if problems:
        stages = [stage for stage, _ in problems]
        # without the face stage there are no clip stages either, so --skip face alone gets past everything
        skip = "face" if "face" in stages else ",".join(stages)
        label = "stage" if "," not in skip else "stages"
        raise RunError("; ".join(text for _, text in problems) + f"; or run without the {skip.replace(',', ' and ')} "
                       f"{label}: --skip {skip}")
    return paths


def check_pools_placeable(config: Config) -> None:
    """An actor that asks for more CPUs or GPUs than any one node has would never start, and the run would wait
    for it forever: say so instead."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for stage in config.pool_stages():
        wants = getattr(config.resources, stage)
        for kind, amount in (("CPU", wants.num_cpus), ("GPU", wants.num_gpus)):
            most = max((node.get(kind, 0) for node in nodes), default=0)
            if amount > most:
                raise RunError(f"resources.{stage}.num_{kind.lower()}s is {amount:g} but no node of the cluster has "
                               f"more than {most:g} {kind}s: lower it, or add such a node")


def pools_fit(config: Config, cluster_cpus: float) -> bool:
    """Whether the clip-stage actors can hold their CPUs and leave room for a source task. They live for the
    whole run, so on a small machine (2 cores: sync 1 + quality 1) they would hold every CPU while they wait
    for clips that no source task can run to make: a deadlock. Then they hold none and share the cores."""
    wanted = sum(getattr(config.resources, stage).num_cpus * getattr(config.resources, stage).workers
                 for stage in config.pool_stages())
    return wanted + config.resources.source_pass.num_cpus <= cluster_cpus

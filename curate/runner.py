"""The driver of `curate run`: check, plan against the manifests, execute on Ray, finish.

A finished source is in the journal at once and in the manifests' next part (a Parquet file of sources, one of
clips) once its clips are scored; a run killed midway loses no finished source (manifests.dataset). One Ray
task per source runs the fused source pass (curate.source_pass) and streams its events back: a clip
moves on the moment it is written, and there is no barrier between stages or sources. The driver is the only
writer of the journal and the manifests; workers write only clip files, each atomically.

This module only orders the steps; each lives in its own: curate.run_checks (before any work), curate.run_plan
(against the manifests; the dry run), curate.run_execute (Ray), curate.run_finish (manifests and the summary).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from curate.errors import RunError
from curate.lock import OutputLock
from curate.run_checks import check_input, check_models, check_output
from curate.run_execute import execute
from curate.run_finish import finish
from curate.run_plan import dry_summary, make_plan, recover
from curate.run_types import RunOptions, RunSummary


def run(options: RunOptions) -> RunSummary:
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    check_input(options.input_dir, options.output_dir)
    if options.dry_run:
        check_output(options.output_dir, create=False)
        plan = make_plan(options)
        summary = dry_summary(plan)
        try:
            check_models(options.config, fetch=False)
        except RunError as exc:
            summary.warnings.append(str(exc))
        return summary
    check_output(options.output_dir, create=False)
    models = check_models(options.config)
    check_output(options.output_dir)
    with OutputLock(options.output_dir):
        recover(options.output_dir)
        plan = make_plan(options)
        state = execute(options, plan, models)
        summary = finish(options, plan, state, started_at, time.perf_counter() - t0)
    return summary


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])

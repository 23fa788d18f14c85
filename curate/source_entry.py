"""The Ray task's entry point, in a module of its own: the driver imports it without the pass's libraries
(PyAV, OpenCV, PySceneDetect, the face stage); the worker imports the pass on its first source."""

from __future__ import annotations

from typing import Iterator

from curate.source_task import SourceTask


def source_pass(task: SourceTask, config) -> Iterator[dict]:
    """The body of the Ray task (curate.run_execute makes it remote; Ray titles its workers `ray::source_pass`): the
    source pass, imported here, in the worker."""
    from curate import source_pass as the_pass

    yield from the_pass.source_pass(task, config)

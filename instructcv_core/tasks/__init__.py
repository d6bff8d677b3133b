"""The four InstructCV tasks, one module each behind one protocol (:class:`~instructcv_core.tasks.base.Task`).

``TASKS`` maps a task name to its task object; code outside this package asks it (``task(name)``)
instead of branching on a name. A fifth task is one module here and one entry below.

* :mod:`~instructcv_core.tasks.segmentation`: white-on-black masks;
* :mod:`~instructcv_core.tasks.detection`: box outlines drawn on the input
  (:mod:`~instructcv_core.tasks.box_detectors`: finding them in generated images);
* :mod:`~instructcv_core.tasks.depth`: 8-bit gray depth maps;
* :mod:`~instructcv_core.tasks.classification`: colour blocks answering a yes/no question.

Shared conventions: :mod:`~instructcv_core.tasks.arrays` (array shapes, resizing),
:mod:`~instructcv_core.tasks.colours` (the official palette); helpers the task modules share with
evaluation (seeds, the categories an image holds) are in :mod:`~instructcv_core.tasks.base`.

This package sits below `instructcv_core.evaluation`, which asks the registry: importing it imports
nothing of ``instructcv_core.evaluation``. A scorer imports the metric maths it reduces with
(`evaluation.protocols`, `evaluation.streaming`, `evaluation.intervals`) when it runs.
"""

from __future__ import annotations

from instructcv_core.tasks import classification, depth, detection, segmentation
from instructcv_core.tasks.base import Evaluation, MetricSpec, Prediction, Question, Target, Task

#: Every task by name, in the paper's order.
TASKS: dict[str, Task] = {t.name: t for t in (segmentation.TASK, detection.TASK, depth.TASK, classification.TASK)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def task(name: str) -> Task:
    """The registered task ``name``; a ``KeyError`` naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def evaluation(task_name: str, kind: str) -> Evaluation:
    """The evaluation of metric kind ``kind`` of a task (a benchmark's ``task`` and ``kind``)."""
    found = task(task_name).evaluations
    if kind not in found:
        raise KeyError(f"task {task_name!r} has no evaluation of kind {kind!r}; it has {', '.join(found)}")
    return found[kind]


__all__ = ["TASKS", "TASK_NAMES", "Evaluation", "MetricSpec", "Prediction", "Question", "Target", "Task", "evaluation",
           "task"]

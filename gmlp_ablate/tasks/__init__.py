"""Tasks: one file each; ``build_task(task_cfg, seed)`` is the entry point.

Contract (see ``base.Task``): a task declares its ``TaskShape`` (vocab/classes, seq_len,
causal), a deterministic ``train_batch(step, batch_size)``, a fixed ``val_set()`` and its
metrics. ``validate_task`` checks a task config without loading data.
"""

from __future__ import annotations

from gmlp_ablate.tasks.base import IGNORE_INDEX, Task, TaskShape

__all__ = ["IGNORE_INDEX", "Task", "TaskShape", "build_task", "validate_task", "task_shape"]


def validate_task(task_cfg, model_cfg=None, prefix: str = "task.") -> None:
    """Raise ``ConfigError`` naming the key if the task config cannot work (no data loaded)."""
    raise NotImplementedError


def task_shape(task_cfg) -> TaskShape:
    """The task's shape without loading its data."""
    raise NotImplementedError


def build_task(task_cfg, seed: int) -> Task:
    """Build (load / generate / cache) the task named by ``task_cfg.name``."""
    raise NotImplementedError

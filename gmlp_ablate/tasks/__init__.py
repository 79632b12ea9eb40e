"""Tasks: one file each; ``build_task(task_cfg, seed)`` is the entry point.

Contract (see ``base.Task``): a task declares its ``TaskShape`` (vocab/classes, seq_len,
causal), a deterministic ``train_batch(step, batch_size)``, a fixed ``val_set()`` and its
metrics. ``validate_task`` checks a task config without loading data.

========  ===========================================  =====================  ==========
task      data                                         shape                  metrics
========  ===========================================  =====================  ==========
charlm    byte corpus (stdlib .py sources by default)  tokens, 256, causal    val/bpb
mlm       same corpus, BERT masking                    tokens, 257, bidir.    val/ppl
mqar      generated (Zoology multi-query AR)           tokens, vocab, causal  val/acc
digits    sklearn 8x8 digits                           image 8x8, 10 classes  val/acc
========  ===========================================  =====================  ==========
"""

from __future__ import annotations

from types import ModuleType
from gmlp_ablate.config import ARCHS, TASKS, ConfigError
from gmlp_ablate.tasks import charlm, digits, mlm, mqar
from gmlp_ablate.tasks.base import IGNORE_INDEX, Task, TaskShape
from gmlp_ablate.tasks.charlm import unigram_entropy_bits, unigram_val_bits

__all__ = [
    "IGNORE_INDEX",
    "Task",
    "TaskShape",
    "build_task",
    "validate_task",
    "task_shape",
    "unigram_entropy_bits",
    "unigram_val_bits",
]

_MODULES = {"charlm": charlm, "mlm": mlm, "mqar": mqar, "digits": digits}


def _module(task_cfg, prefix: str = "task.") -> ModuleType:
    name = task_cfg.name
    if name not in _MODULES:
        raise ConfigError(f"{prefix}name", f"{name!r} is not one of {', '.join(TASKS)}")
    return _MODULES[name]


def validate_task(task_cfg, model_cfg=None, prefix: str = "task.") -> None:
    """Raise ``ConfigError`` naming the key if the task config cannot work (no data loaded).

    ``model_cfg`` (optional) is checked for compatibility with the task; ``prefix`` is the
    dotted path of the task group (``task.`` or, in a sweep, ``grid[arm].task.``).
    """
    mod = _module(task_cfg, prefix)
    if model_cfg is not None:
        model_prefix = prefix[: -len("task.")] + "model." if prefix.endswith("task.") else "model."
        if model_cfg.arch not in ARCHS:
            raise ConfigError(f"{model_prefix}arch", f"{model_cfg.arch!r} is not one of {', '.join(ARCHS)}")
    mod.validate(task_cfg, prefix)


def task_shape(task_cfg) -> TaskShape:
    """The task's shape without loading its data."""
    return _module(task_cfg).shape(task_cfg)


def build_task(task_cfg, seed: int) -> Task:
    """Build (load / generate / cache) the task named by ``task_cfg.name``; validates first."""
    validate_task(task_cfg)
    return _module(task_cfg).build(task_cfg, seed)

"""Tasks: one file each; ``build_task(task_cfg, seed)`` is the entry point.

Contract (see ``base.Task``): a task declares its ``TaskShape`` (vocab/classes, seq_len,
causal), a deterministic ``train_batch(step, batch_size)``, a fixed ``val_set()`` (scored at
every evaluation), a fixed ``test_set()`` (scored once, at the end) and its metrics.
``validate_task`` and ``task_shape`` work from the config alone: this package imports
neither torch nor numpy until a task is built.

========  ===========================================  =====================  ==========
task      data                                         shape                  metrics
========  ===========================================  =====================  ==========
charlm    byte corpus (stdlib .py sources by default)  tokens, 256, causal    bpb
mlm       same corpus, BERT masking                    tokens, 257, bidir.    ppl
mqar      generated (Zoology multi-query AR)           tokens, vocab, causal  acc
digits    sklearn 8x8 digits                           image 8x8, 10 classes  acc
========  ===========================================  =====================  ==========

Each metric is reported as ``val/<name>`` and ``test/<name>``, beside ``val/loss`` and
``test/loss``.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections import OrderedDict
from typing import Any, Hashable, Tuple

from gmlp_ablate.names import SPLIT_TEST, SPLIT_VAL
from gmlp_ablate.schema import check, semantic_dict
from gmlp_ablate.tasks import rules
from gmlp_ablate.tasks.rules import IGNORE_INDEX
from gmlp_ablate.tasks.sources import list_source

__all__ = [
    "IGNORE_INDEX",
    "Task",
    "TaskShape",
    "build_task",
    "validate_task",
    "task_shape",
    "task_metrics",
    "clear_task_cache",
    "unigram_entropy_bits",
    "unigram_val_bits",
]

_LAZY = {
    "Task": "gmlp_ablate.tasks.base",
    "TaskShape": "gmlp_ablate.models.config",
    "unigram_entropy_bits": "gmlp_ablate.tasks.charlm",
    "unigram_val_bits": "gmlp_ablate.tasks.charlm",
}


def __getattr__(name: str) -> Any:  # names that need torch are imported on first use
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_task(task_cfg, prefix: str = "task.") -> None:
    """Raise ``ConfigError`` naming the key if the task config cannot work: the declared
    bounds of its fields, then the task's own rules (corpus listed and stat'ed, never read).

    ``prefix`` is the dotted path of the task group (``task.`` or, in a sweep,
    ``grid[arm].task.``).
    """
    check(task_cfg, prefix)
    rules.validate(task_cfg, prefix)


def task_shape(task_cfg):
    """The task's :class:`~gmlp_ablate.models.config.TaskShape`, without loading its data."""
    return rules.shape(task_cfg)


def task_metrics(task_cfg) -> Tuple[str, ...]:
    """The held-out metrics the task reports: ``val/*`` (at every evaluation) then ``test/*``
    (once, at the end), primary first in each."""
    return rules.metrics(task_cfg.name, SPLIT_VAL) + rules.metrics(task_cfg.name, SPLIT_TEST)


# --------------------------------------------------------------------------------------
# Building, with the seed-independent data kept for reuse in this process
# --------------------------------------------------------------------------------------

MAX_CACHED = 4
"""Prepared data sets kept per process (least recently used dropped first)."""
_CACHE: "OrderedDict[Hashable, Any]" = OrderedDict()
_LOCK = threading.Lock()


def _data_key(task_cfg) -> Tuple[Hashable, ...]:
    """What a task's seed-independent data depends on: its semantic config and, for the text
    tasks, the corpus listing (paths, sizes, mtimes), so an edited corpus is built again."""
    key: Tuple[Hashable, ...] = (json.dumps(semantic_dict(task_cfg), sort_keys=True),)
    if task_cfg.name in ("charlm", "mlm"):
        source = list_source(task_cfg.corpus)
        key += (source.root, source.files)
    return key


def build_task(task_cfg, seed: int):
    """Build the task named by ``task_cfg.name`` for ``seed``; validates first.

    The seed-independent part (the corpus and its held-out windows, the digits split) is
    prepared once per process and config and shared by the tasks built from it, so trials of
    the same task in one worker process do not load or tokenise it again.
    """
    validate_task(task_cfg)
    module = importlib.import_module(f"gmlp_ablate.tasks.{task_cfg.name}")
    key = _data_key(task_cfg)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            data = _CACHE[key]
        else:
            data = module.prepare(task_cfg)
            _CACHE[key] = data
            while len(_CACHE) > MAX_CACHED:
                _CACHE.popitem(last=False)
    return module.build(task_cfg, seed, data)


def clear_task_cache() -> None:
    """Forget the prepared data of this process (the on-disk corpus cache stays)."""
    with _LOCK:
        _CACHE.clear()

"""The tasks' config group (``task.*``): which task, and its data settings.

A plain dataclass with a docstring per field; bounds are declared on the fields and checked
by :func:`gmlp_ablate.schema.check`. Each task module's ``validate`` adds its own rules
(a corpus path that exists, a ``seq_len`` the task can fill) without loading data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from gmlp_ablate.schema import knob

TaskName = Literal["charlm", "mlm", "mqar", "digits"]


@dataclass
class TaskConfig:
    """What the model learns. See ``gmlp_ablate/tasks/``."""

    name: TaskName = "charlm"
    """Task: ``charlm`` (causal byte LM), ``mlm`` (masked byte LM, bidirectional), ``mqar``
    (multi-query associative recall), ``digits`` (8x8 digit images, vision gMLP)."""
    seq_len: Optional[int] = knob(None, ge=1, max_value=1 << 20)
    """Tokens per example. null = the task's default (charlm/mlm 128, mqar 64, digits: the
    number of patches, fixed by ``patch_size``)."""
    corpus: Optional[str] = None
    """charlm/mlm: a text file, or a folder of .txt/.md/.py files. null = a deterministic
    sample of the installed Python standard library's .py sources."""
    corpus_bytes: int = knob(4_000_000, ge=1)
    """charlm/mlm: byte budget of the corpus (folders: files in sorted order up to it; the
    stdlib default: files in an order fixed by a hash of their path, so the budget samples
    the whole library rather than its first packages)."""
    val_fraction: float = knob(0.1, gt=0, lt=1)
    """charlm/mlm/digits: share held out for validation (charlm/mlm split by file)."""
    val_tokens: int = knob(131_072, ge=1)
    """charlm/mlm: validation tokens scored at each evaluation (a fixed set of windows)."""
    mask_prob: float = knob(0.15, gt=0, lt=1)
    """mlm: share of positions predicted; of those 80% [MASK], 10% random, 10% kept."""
    num_kv_pairs: int = knob(8, ge=1)
    """mqar: key-value pairs per example (each key is queried once)."""
    vocab_size: int = knob(256, ge=4, max_value=1 << 20)
    """mqar: vocabulary size (keys from the lower half, values from the upper half)."""
    num_val: int = knob(1000, ge=1)
    """mqar: validation examples (a fixed set per seed)."""
    patch_size: int = knob(2, ge=1)
    """digits: side of a square patch in pixels (8 must be divisible by it)."""
    cache_dir: Optional[str] = knob(None, semantic=False)
    """Where tokenised corpora are cached. null = ``$GMLP_ABLATE_CACHE`` or
    ``~/.cache/gmlp_ablate``."""

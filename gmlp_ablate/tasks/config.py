"""The tasks' config group (``task.*``): which task, and its data settings.

A plain dataclass with a docstring per field; bounds are declared on the fields and checked
by :func:`gmlp_ablate.schema.check`; :meth:`TaskConfig.check` holds the rule across fields.
Each task's own rules (a corpus that exists and can be read, a ``seq_len`` the task can
fill) are in :mod:`gmlp_ablate.tasks.rules` and load no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from gmlp_ablate.schema import ConfigError, knob

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
    """charlm/mlm/digits: share held out for validation, scored at every evaluation (charlm/mlm
    split by file, digits stratified)."""
    test_fraction: float = knob(0.1, gt=0, lt=1)
    """charlm/mlm/digits: share held out for the test split, scored once at the end of
    training (disjoint from train and val; what reports compare)."""
    val_tokens: int = knob(131_072, ge=1)
    """charlm/mlm: tokens scored on each held-out split (a fixed set of windows): the val
    windows at every evaluation, as many test windows at the end."""
    mask_prob: float = knob(0.15, gt=0, lt=1)
    """mlm: share of positions predicted; of those 80% [MASK], 10% random, 10% kept."""
    num_kv_pairs: int = knob(8, ge=1)
    """mqar: key-value pairs per example (each key is queried once)."""
    vocab_size: int = knob(256, ge=4, max_value=1 << 20)
    """mqar: vocabulary size (keys from the lower half, values from the upper half)."""
    num_val: int = knob(1000, ge=1)
    """mqar: validation examples, and as many test examples (each a fixed set per seed, drawn
    from streams of their own)."""
    patch_size: int = knob(2, ge=1)
    """digits: side of a square patch in pixels (8 must be divisible by it)."""
    cache_dir: Optional[str] = knob(None, semantic=False)
    """Where tokenised corpora are cached. null = ``$GMLP_ABLATE_CACHE`` or
    ``~/.cache/gmlp_ablate``."""

    def check(self) -> None:
        """Cross-field rules (keys relative to the task group)."""
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                "test_fraction",
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves nothing "
                "to train on (must be < 1)",
            )

"""What every task provides: its shape (for ``build_model``), batches, and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch

from gmlp_ablate.models.config import TaskShape
from gmlp_ablate.names import SPLIT_TEST, SPLIT_VAL, default_cache_dir, split_metric
from gmlp_ablate.tasks.rules import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "Task", "TaskShape", "generator", "default_cache_dir"]


@dataclass
class Task:
    """A task instance: shapes, a deterministic train stream, fixed val and test sets.

    ``train_batch(step, batch_size)`` is a pure function of (seed, step): the data position of
    a checkpoint is just the step. Targets use ``IGNORE_INDEX`` for unscored positions, so
    every task's loss is mean cross-entropy over scored targets. The val set is scored at
    every evaluation (model selection); the test set, disjoint from both, once at the end.
    """

    name: str
    shape: TaskShape
    metrics: Tuple[str, ...]
    """Validation metrics this task reports, primary first (``val/loss`` is always there);
    the test split reports the same names under ``test/``."""
    info: Dict[str, str] = field(default_factory=dict)
    """Provenance to log with the run (e.g. corpus path, size and content hash)."""

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The whole fixed validation set (inputs, targets), on CPU."""
        raise NotImplementedError

    def test_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The whole fixed test set (inputs, targets), on CPU."""
        raise NotImplementedError

    def held_out(self, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``val_set()`` or ``test_set()`` by split name."""
        if split == SPLIT_VAL:
            return self.val_set()
        if split == SPLIT_TEST:
            return self.test_set()
        raise ValueError(f"no held-out split {split!r}")

    def derived_metrics(self, mean_loss: float, accuracy: float, split: str = SPLIT_VAL) -> Dict[str, float]:
        """Task metrics of one held-out split from its mean cross-entropy (nats) and accuracy
        on scored targets, named ``<split>/loss``, ``<split>/bpb`` | ``ppl`` | ``acc``."""
        kinds = {m.split("/", 1)[1] for m in self.metrics}
        out: Dict[str, float] = {split_metric(split, "loss"): mean_loss}
        if "bpb" in kinds:
            out[split_metric(split, "bpb")] = mean_loss / math.log(2)
        if "ppl" in kinds:
            out[split_metric(split, "ppl")] = math.exp(min(mean_loss, 50.0))
        if "acc" in kinds:
            out[split_metric(split, "acc")] = accuracy
        return out


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, *stream): independent, reproducible streams."""
    h = seed
    for s in stream:
        h = (h * 1_000_003 + s + 0x9E3779B9) % (2**63 - 1)
    g = torch.Generator()
    g.manual_seed(h)
    return g


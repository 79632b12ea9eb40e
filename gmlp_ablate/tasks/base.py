"""What every task provides: its shape (for ``build_model``), batches, and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

IGNORE_INDEX = -100
"""Target value of positions that are not scored (cross-entropy ``ignore_index``)."""


@dataclass(frozen=True)
class TaskShape:
    """What a model needs to know about its task's inputs and outputs."""

    kind: str
    """``tokens`` (x: (B, N) int64 -> logits (B, N, vocab)) or ``image`` (x: (B, C, H, W)
    float -> logits (B, num_classes))."""
    seq_len: int
    """Tokens per example (for images: the number of patches)."""
    causal: bool = False
    """Token tasks: position t may only see positions <= t."""
    vocab_size: int = 0
    """Token tasks: input and output vocabulary."""
    num_classes: int = 0
    """Image tasks: classes."""
    image_size: int = 0
    """Image tasks: side in pixels (square images)."""
    patch_size: int = 0
    """Image tasks: side of a square patch in pixels."""
    channels: int = 1
    """Image tasks: input channels."""


@dataclass
class Task:
    """A task instance: shapes, a deterministic train stream, a fixed validation set.

    ``train_batch(step, batch_size)`` is a pure function of (seed, step): the data position of
    a checkpoint is just the step. Targets use ``IGNORE_INDEX`` for unscored positions, so
    every task's loss is mean cross-entropy over scored targets.
    """

    name: str
    shape: TaskShape
    metrics: Tuple[str, ...]
    """Validation metrics this task reports, primary first (``val/loss`` is always there)."""
    info: Dict[str, str] = field(default_factory=dict)
    """Provenance to log with the run (e.g. corpus path, size and content hash)."""

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The whole fixed held-out set (inputs, targets), on CPU."""
        raise NotImplementedError

    def derived_metrics(self, mean_loss: float, accuracy: float) -> Dict[str, float]:
        """Task metrics from mean validation cross-entropy (nats) and accuracy on scored targets."""
        out: Dict[str, float] = {"val/loss": mean_loss}
        if "val/bpb" in self.metrics:
            out["val/bpb"] = mean_loss / math.log(2)
        if "val/ppl" in self.metrics:
            out["val/ppl"] = math.exp(min(mean_loss, 50.0))
        if "val/acc" in self.metrics:
            out["val/acc"] = accuracy
        return out


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, *stream): independent, reproducible streams."""
    h = seed
    for s in stream:
        h = (h * 1_000_003 + s + 0x9E3779B9) % (2**63 - 1)
    g = torch.Generator()
    g.manual_seed(h)
    return g


def default_cache_dir(cache_dir: Optional[str]) -> str:
    import os

    return cache_dir or os.environ.get("GMLP_ABLATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gmlp_ablate"
    )

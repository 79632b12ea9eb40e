"""charlm: causal byte-level language modelling (vocab 256, tokens = raw bytes).

Train batches are random windows of ``seq_len + 1`` bytes of the train stream (``x = w[:-1]``,
``y = w[1:]``), drawn from ``generator(seed, TRAIN_STREAM, step)``. The val and test sets are
fixed windows of their parts (:mod:`gmlp_ablate.tasks.text`). Primary metric: bits per byte.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from gmlp_ablate.names import SPLIT_VAL
from gmlp_ablate.tasks.base import IGNORE_INDEX, generator
from gmlp_ablate.tasks.corpus import random_windows
from gmlp_ablate.tasks.rules import metrics, shape
from gmlp_ablate.tasks.text import TextData, TextTask, prepare_text

TRAIN_STREAM = 11


def _shifted(w: torch.Tensor, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def prepare(cfg) -> TextData:
    """The seed-independent data: the corpus and its held-out windows."""
    return prepare_text(cfg, _shifted)


class CharLMTask(TextTask):
    """Causal byte LM over a :class:`~gmlp_ablate.tasks.corpus.Corpus`."""

    def __init__(self, cfg, seed: int, data: TextData):
        super().__init__("charlm", shape(cfg), metrics("charlm", SPLIT_VAL), data, seed)

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        L = self.shape.seq_len
        w = random_windows(self.corpus.train, L + 1, batch_size, generator(self.seed, TRAIN_STREAM, step))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def build(cfg, seed: int, data: TextData) -> CharLMTask:
    return CharLMTask(cfg, seed, data)


# --------------------------------------------------------------------------------------
# Baselines a trained model must beat
# --------------------------------------------------------------------------------------


def byte_counts(task) -> np.ndarray:
    """Counts of each byte value (256) in the train stream of a text task (charlm or mlm)."""
    return np.bincount(np.asarray(task.corpus.train), minlength=256).astype(np.float64)


def unigram_entropy_bits(task) -> float:
    """Entropy (bits per byte) of the train split's byte distribution."""
    counts = byte_counts(task)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_val_bits(task) -> float:
    """Bits per scored validation target under the train split's unigram (add-one smoothed):
    the val/bpb (or, times ln 2, the val/loss) of a model that ignores its context."""
    counts = byte_counts(task) + 1.0
    logp = np.log2(counts / counts.sum())
    _, y = task.val_set()
    t = y[y != IGNORE_INDEX].numpy()
    return float(-logp[t].mean())

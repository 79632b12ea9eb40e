"""mlm: BERT-style masked byte LM, bidirectional (vocab 256 bytes + ``[MASK]`` = 257).

Each window of ``seq_len`` bytes has ``k = max(1, round(mask_prob * seq_len))`` positions
predicted, chosen uniformly without replacement; of those 80% become ``[MASK]``, 10% a
uniformly random byte and 10% stay as they are (BERT). Targets are the original bytes at the
predicted positions and ``IGNORE_INDEX`` elsewhere. Train windows and masks are random per
(seed, step); the val and test windows (:mod:`gmlp_ablate.tasks.text`) and their masks are
fixed and the same for every seed.
"""

from __future__ import annotations

from typing import Tuple

import torch

from gmlp_ablate.names import SPLIT_VAL
from gmlp_ablate.tasks.base import IGNORE_INDEX, generator
from gmlp_ablate.tasks.corpus import random_windows
from gmlp_ablate.tasks.rules import MASK_ID, metrics, shape
from gmlp_ablate.tasks.text import TextData, TextTask, prepare_text

TRAIN_STREAM = 21
HELD_OUT_SEED = 0
"""The held-out masks use a fixed seed: every trial seed is scored on the same sets."""
HELD_OUT_STREAM = {"val": 22, "test": 23}


def mask_tokens(tokens: torch.Tensor, mask_prob: float, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a (B, L) int64 byte batch -> (inputs, targets)."""
    B, L = tokens.shape
    k = min(L, max(1, int(round(mask_prob * L))))
    picked = torch.rand(B, L, generator=gen).topk(k, dim=1).indices
    sel = torch.zeros(B, L, dtype=torch.bool).scatter_(1, picked, True)
    u = torch.rand(B, L, generator=gen)
    rnd = torch.randint(0, 256, (B, L), generator=gen)
    x = torch.where(sel & (u < 0.8), torch.full_like(tokens, MASK_ID), tokens)
    x = torch.where(sel & (u >= 0.8) & (u < 0.9), rnd, x)
    y = torch.where(sel, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return x, y


def prepare(cfg) -> TextData:
    """The seed-independent data: the corpus and its masked held-out windows."""

    def masked(w: torch.Tensor, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(w, cfg.mask_prob, generator(HELD_OUT_SEED, HELD_OUT_STREAM[split]))

    data = prepare_text(cfg, masked)
    data.info["mask_prob"] = str(cfg.mask_prob)
    return data


class MLMTask(TextTask):
    """Masked byte LM over a :class:`~gmlp_ablate.tasks.corpus.Corpus`."""

    def __init__(self, cfg, seed: int, data: TextData):
        super().__init__("mlm", shape(cfg), metrics("mlm", SPLIT_VAL), data, seed)
        self.mask_prob = cfg.mask_prob

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        g = generator(self.seed, TRAIN_STREAM, step)
        w = random_windows(self.corpus.train, self.shape.seq_len, batch_size, g)
        return mask_tokens(w, self.mask_prob, g)


def build(cfg, seed: int, data: TextData) -> MLMTask:
    return MLMTask(cfg, seed, data)

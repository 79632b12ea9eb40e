"""mlm: BERT-style masked byte LM, bidirectional (vocab 256 bytes + ``[MASK]`` = 257).

Each window of ``seq_len`` bytes has ``k = max(1, round(mask_prob * seq_len))`` positions
predicted, chosen uniformly without replacement; of those 80% become ``[MASK]``, 10% a
uniformly random byte and 10% stay as they are (BERT). Targets are the original bytes at the
predicted positions and ``IGNORE_INDEX`` elsewhere. Train windows and masks are random per
(seed, step); the validation windows (spread evenly over the val stream, non-overlapping,
covering up to ``val_tokens`` tokens) and their masks are fixed and the same for every seed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from gmlp_ablate.config import ConfigError
from gmlp_ablate.tasks.base import IGNORE_INDEX, Task, TaskShape, generator
from gmlp_ablate.tasks.charlm import corpus_for
from gmlp_ablate.tasks.corpus import (
    Corpus,
    check_lm_config,
    check_stream_fits,
    gather_windows,
    max_spaced_windows,
    random_windows,
    spaced_starts,
)

DEFAULT_SEQ_LEN = 128
MASK_ID = 256
VOCAB_SIZE = 257
TRAIN_STREAM = 21
VAL_SEED, VAL_STREAM = 0, 22
"""The validation masks use a fixed seed: every trial seed is scored on the same set."""


def validate(cfg, prefix: str = "task.") -> None:
    check_lm_config(cfg, prefix, DEFAULT_SEQ_LEN)
    if not 0.0 < cfg.mask_prob < 1.0:
        raise ConfigError(f"{prefix}mask_prob", f"must be in (0, 1), got {cfg.mask_prob}")


def shape(cfg) -> TaskShape:
    seq_len = DEFAULT_SEQ_LEN if cfg.seq_len is None else cfg.seq_len
    return TaskShape(kind="tokens", seq_len=seq_len, causal=False, vocab_size=VOCAB_SIZE)


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


class MLMTask(Task):
    """Masked byte LM over a :class:`~gmlp_ablate.tasks.corpus.Corpus`."""

    def __init__(self, cfg, seed: int, corpus: Optional[Corpus] = None):
        corpus = corpus if corpus is not None else corpus_for(cfg)
        sh = shape(cfg)
        L = sh.seq_len
        check_stream_fits(corpus, L, L)
        n_windows = min(max(1, cfg.val_tokens // L), max_spaced_windows(len(corpus.val), L, L))
        info = corpus.info()
        info.update({"val_windows": str(n_windows), "mask_prob": str(cfg.mask_prob)})
        super().__init__(name="mlm", shape=sh, metrics=("val/ppl", "val/loss"), info=info)
        self.seed = seed
        self.mask_prob = cfg.mask_prob
        self.corpus = corpus
        self._val_starts = spaced_starts(len(corpus.val), L, L, n_windows)
        self._val: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def train_files(self):
        return self.corpus.train_files

    @property
    def val_files(self):
        return self.corpus.val_files

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        g = generator(self.seed, TRAIN_STREAM, step)
        w = random_windows(self.corpus.train, self.shape.seq_len, batch_size, g)
        return mask_tokens(w, self.mask_prob, g)

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            w = gather_windows(self.corpus.val, self._val_starts, self.shape.seq_len)
            self._val = mask_tokens(w, self.mask_prob, generator(VAL_SEED, VAL_STREAM))
        return self._val


def build(cfg, seed: int) -> MLMTask:
    return MLMTask(cfg, seed)

"""charlm: causal byte-level language modelling (vocab 256, tokens = raw bytes).

Train batches are random windows of ``seq_len + 1`` bytes of the train stream (``x = w[:-1]``,
``y = w[1:]``), drawn from ``generator(seed, TRAIN_STREAM, step)``. The validation set is a
fixed set of windows spread evenly over the val stream, at least ``seq_len`` apart so that no
byte is scored twice, covering up to ``val_tokens`` targets. Primary metric: bits per byte.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch

from gmlp_ablate.tasks.base import IGNORE_INDEX, Task, TaskShape, generator
from gmlp_ablate.tasks.corpus import (
    Corpus,
    check_lm_config,
    check_stream_fits,
    gather_windows,
    load_corpus,
    max_spaced_windows,
    random_windows,
    spaced_starts,
)

DEFAULT_SEQ_LEN = 128
VOCAB_SIZE = 256
TRAIN_STREAM = 11


def validate(cfg, prefix: str = "task.") -> None:
    """Config checks without reading the corpus (a given path must exist and hold text)."""
    check_lm_config(cfg, prefix, DEFAULT_SEQ_LEN)


def shape(cfg) -> TaskShape:
    seq_len = DEFAULT_SEQ_LEN if cfg.seq_len is None else cfg.seq_len
    return TaskShape(kind="tokens", seq_len=seq_len, causal=True, vocab_size=VOCAB_SIZE)


def corpus_for(cfg) -> Corpus:
    """The (cached) corpus a text task config names."""
    return load_corpus(cfg.corpus, cfg.corpus_bytes, cfg.val_fraction, cfg.cache_dir)


class CharLMTask(Task):
    """Causal byte LM over a :class:`~gmlp_ablate.tasks.corpus.Corpus`."""

    def __init__(self, cfg, seed: int, corpus: Optional[Corpus] = None):
        corpus = corpus if corpus is not None else corpus_for(cfg)
        sh = shape(cfg)
        L = sh.seq_len
        check_stream_fits(corpus, L + 1, L)
        n_windows = min(max(1, cfg.val_tokens // L), max_spaced_windows(len(corpus.val), L + 1, L))
        info = corpus.info()
        info.update({"val_windows": str(n_windows), "val_scored_tokens": str(n_windows * L)})
        super().__init__(name="charlm", shape=sh, metrics=("val/bpb", "val/loss"), info=info)
        self.seed = seed
        self.corpus = corpus
        self._val_starts = spaced_starts(len(corpus.val), L + 1, L, n_windows)
        self._val: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def train_files(self) -> List[str]:
        return self.corpus.train_files

    @property
    def val_files(self) -> List[str]:
        return self.corpus.val_files

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        L = self.shape.seq_len
        w = random_windows(self.corpus.train, L + 1, batch_size, generator(self.seed, TRAIN_STREAM, step))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            L = self.shape.seq_len
            w = gather_windows(self.corpus.val, self._val_starts, L + 1)
            self._val = (w[:, :-1].contiguous(), w[:, 1:].contiguous())
        return self._val


def build(cfg, seed: int) -> CharLMTask:
    return CharLMTask(cfg, seed)


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


def unigram_val_loss(task) -> float:
    """:func:`unigram_val_bits` in nats (comparable to ``val/loss``)."""
    return unigram_val_bits(task) * math.log(2)

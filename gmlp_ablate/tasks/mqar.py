"""mqar: multi-query associative recall (Zoology, Arora et al. 2023, ``multiquery_ar``).

An example of ``seq_len`` tokens with K = ``num_kv_pairs``::

    k1 v1 k2 v2 ... kK vK  0 0 k2 v2 0 0 0 0 k1 v1 0 ...
                                ^ scored: y = v2 (next-token prediction at the query key)

Keys are distinct draws from ``1 .. vocab_size//2 - 1``, values distinct draws from the upper
half ``vocab_size//2 .. vocab_size - 1``; token 0 pads. Every key is queried once, at an even
offset ``2g`` after the context (so a query and its answer never collide), with the gaps
``g`` drawn without replacement from Zoology's power law ``p(g) ~ (g+1)^(a-1)``, ``a = 0.01``
(most queries come soon after the context, a long tail far away). A full sequence of
``seq_len + 1`` tokens puts each value right after its query key; ``x = seq[:-1]`` and
``y = seq[1:]`` with every target but the answers set to ``IGNORE_INDEX``. Unlike Zoology's
default (``random_non_queries=True``) the padding is left as 0, not random tokens.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from gmlp_ablate.names import SPLIT_VAL
from gmlp_ablate.tasks.base import IGNORE_INDEX, Task, generator
from gmlp_ablate.tasks.rules import metrics, shape

POWER_A = 0.01
"""Zoology's ``power_a``: 1.0 would place the queries uniformly."""
TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 31, 32, 33
"""Generator streams of the train batches, the val set and the test set (per seed)."""


def _distinct(gen: torch.Generator, batch: int, low: int, high: int, k: int) -> torch.Tensor:
    """(batch, k) distinct integers from [low, high) per row, uniformly at random."""
    return torch.rand(batch, high - low, generator=gen).topk(k, dim=1).indices + low


def multiquery_ar(
    gen: torch.Generator, batch: int, seq_len: int, vocab_size: int, num_kv_pairs: int, power_a: float = POWER_A
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch of MQAR examples: (x, y), both int64 (batch, seq_len)."""
    K, half = num_kv_pairs, vocab_size // 2
    keys = _distinct(gen, batch, 1, half, K)
    values = _distinct(gen, batch, half, vocab_size, K)
    ctx = 2 * K
    space = (seq_len - ctx) // 2
    # K gaps without replacement, P(g) ~ (g + 1)^(power_a - 1): Gumbel top-k
    logp = (power_a - 1.0) * torch.log(torch.arange(1, space + 1, dtype=torch.float32))
    u = torch.rand(batch, space, generator=gen).clamp_(1e-12, 1.0 - 1e-7)
    gaps = (logp - torch.log(-torch.log(u))).topk(K, dim=1).indices
    qpos = ctx + 2 * gaps
    # Which key goes to which query slot is a fresh permutation: top-k returns the gaps
    # ordered by score (small gaps first), so without it the i-th query would mostly ask for
    # the i-th key and a fixed positional lookup would answer it without any recall.
    perm = torch.rand(batch, K, generator=gen).argsort(dim=1)
    qkeys, qvalues = keys.gather(1, perm), values.gather(1, perm)
    seq = torch.zeros(batch, seq_len + 1, dtype=torch.int64)
    seq[:, 0:ctx:2] = keys
    seq[:, 1:ctx:2] = values
    seq.scatter_(1, qpos, qkeys)
    seq.scatter_(1, qpos + 1, qvalues)
    labels = torch.full((batch, seq_len + 1), IGNORE_INDEX, dtype=torch.int64)
    labels.scatter_(1, qpos + 1, qvalues)
    return seq[:, :-1].contiguous(), labels[:, 1:].contiguous()


class MQARTask(Task):
    """Multi-query associative recall: train batches generated per (seed, step); val and test
    sets of ``num_val`` examples each, fixed per seed, from streams of their own."""

    def __init__(self, cfg, seed: int):
        sh = shape(cfg)
        info = {
            "generator": f"multiquery_ar(power_a={POWER_A}, padding=0)",
            "num_kv_pairs": str(cfg.num_kv_pairs),
            "vocab_size": str(cfg.vocab_size),
            "num_val": str(cfg.num_val),
            "num_test": str(cfg.num_val),
        }
        super().__init__(name="mqar", shape=sh, metrics=metrics("mqar", SPLIT_VAL), info=info)
        self.seed = seed
        self.num_kv_pairs = cfg.num_kv_pairs
        self.num_val = cfg.num_val
        self._val: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._test: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def _make(self, gen: torch.Generator, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return multiquery_ar(gen, batch, self.shape.seq_len, self.shape.vocab_size, self.num_kv_pairs)

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._make(generator(self.seed, TRAIN_STREAM, step), batch_size)

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            self._val = self._make(generator(self.seed, VAL_STREAM), self.num_val)
        return self._val

    def test_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            self._test = self._make(generator(self.seed, TEST_STREAM), self.num_val)
        return self._test


def prepare(cfg) -> None:
    """Nothing to share between seeds: every set is generated from the seed."""
    return None


def build(cfg, seed: int, data: None = None) -> MQARTask:
    return MQARTask(cfg, seed)

"""What the byte-LM tasks (``charlm``, ``mlm``) share: a corpus and its fixed held-out windows.

The val and test windows are spread evenly over their part of the corpus, at least
``seq_len`` apart so that no target is scored twice, covering up to ``val_tokens`` targets
each. They depend on the config alone (not on the trial seed), so :class:`TextData` is built
once and shared by every seed's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from gmlp_ablate.models.config import TaskShape
from gmlp_ablate.names import SPLIT_TEST, SPLIT_VAL
from gmlp_ablate.tasks.base import IGNORE_INDEX, Task
from gmlp_ablate.tasks.corpus import Corpus, check_streams_fit, gather_windows, held_out_starts, load_corpus
from gmlp_ablate.tasks.rules import seq_len_of, window_width

Pair = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class TextData:
    """The seed-independent part of a text task: its corpus and its held-out sets."""

    corpus: Corpus
    starts: Dict[str, np.ndarray]
    """Start of each held-out window in its part's stream, by split (``val``, ``test``)."""
    sets: Dict[str, Pair]
    """(inputs, targets) of each held-out split."""
    info: Dict[str, str]


def prepare_text(cfg, make_set: Callable[[torch.Tensor, str], Pair]) -> TextData:
    """Load the corpus a config names and cut its held-out sets; ``make_set(windows, split)``
    turns a split's windows into (inputs, targets)."""
    corpus = load_corpus(cfg.corpus, cfg.corpus_bytes, cfg.val_fraction, cfg.test_fraction, cfg.cache_dir)
    L, width = seq_len_of(cfg), window_width(cfg)
    check_streams_fit(corpus, width, L)
    info = corpus.info()
    starts: Dict[str, np.ndarray] = {}
    sets: Dict[str, Pair] = {}
    for split in (SPLIT_VAL, SPLIT_TEST):
        stream = getattr(corpus, split)
        starts[split] = held_out_starts(stream, width, L, cfg.val_tokens)
        sets[split] = make_set(gather_windows(stream, starts[split], width), split)
        info[f"{split}_windows"] = str(len(starts[split]))
        info[f"{split}_scored_tokens"] = str(int((sets[split][1] != IGNORE_INDEX).sum()))
    return TextData(corpus, starts, sets, info)


class TextTask(Task):
    """A task over a :class:`TextData` with a per-seed train stream."""

    def __init__(self, name: str, shape: TaskShape, metrics: Tuple[str, ...], data: TextData, seed: int):
        super().__init__(name=name, shape=shape, metrics=metrics, info=dict(data.info))
        self.data = data
        self.seed = seed

    @property
    def corpus(self) -> Corpus:
        return self.data.corpus

    @property
    def train_files(self) -> List[str]:
        return self.corpus.train_files

    @property
    def val_files(self) -> List[str]:
        return self.corpus.val_files

    @property
    def test_files(self) -> List[str]:
        return self.corpus.test_files

    def val_set(self) -> Pair:
        return self.data.sets[SPLIT_VAL]

    def test_set(self) -> Pair:
        return self.data.sets[SPLIT_TEST]

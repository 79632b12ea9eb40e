"""digits: the 8x8 handwritten digits scikit-learn ships (1797 images, 10 classes, offline).

Pixels are scaled to [0, 1] (divided by 16) and then standardised with the train split's
mean and std (one scalar each). The split is stratified three ways with a fixed
``random_state``, the same for every trial seed: first val (``val_fraction``) from all
images, then test (``ceil(test_fraction * 1797)`` images) from the rest. Train batches walk
through per-epoch permutations of the train split: example ``i`` of the run is
``perm_{i // n}[i % n]`` with the permutation of epoch ``e`` drawn from
``generator(seed, TRAIN_STREAM, e)``, so batch ``step`` holds examples
``step * batch_size ...`` and is a pure function of (seed, step, batch_size).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from gmlp_ablate.names import SPLIT_VAL
from gmlp_ablate.tasks.base import Task, generator
from gmlp_ablate.tasks.rules import digits_split_sizes, metrics, shape

SPLIT_RANDOM_STATE = 0
TRAIN_STREAM = 41

Pair = Tuple[torch.Tensor, torch.Tensor]


def load_split(val_fraction: float, test_fraction: float) -> Dict[str, np.ndarray]:
    """Images scaled to [0, 1] as (N, 1, 8, 8) float32, labels, and each part's indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]
    labels = d.target.astype(np.int64)
    rest, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=SPLIT_RANDOM_STATE
    )
    n_test = digits_split_sizes(val_fraction, test_fraction)["test"]
    train_idx, test_idx = train_test_split(
        rest, test_size=n_test, stratify=labels[rest], random_state=SPLIT_RANDOM_STATE
    )
    return {"images": images, "labels": labels, "train_idx": np.sort(train_idx), "val_idx": np.sort(val_idx),
            "test_idx": np.sort(test_idx)}


@dataclass
class DigitsData:
    """The seed-independent part: the split and the normalised images of each part."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    train: Pair
    val: Pair
    test: Pair
    info: Dict[str, str]


def prepare(cfg) -> DigitsData:
    import sklearn

    data = load_split(cfg.val_fraction, cfg.test_fraction)
    images, labels = data["images"], data["labels"]
    train_idx = data["train_idx"]
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    normed = (images - mean) / std

    def part(idx: np.ndarray) -> Pair:
        return torch.from_numpy(normed[idx]), torch.from_numpy(labels[idx])

    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    info = {
        "dataset": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        "dataset_sha256": digest,
        "train_images": str(len(train_idx)),
        "val_images": str(len(data["val_idx"])),
        "test_images": str(len(data["test_idx"])),
        "split": f"stratified, random_state={SPLIT_RANDOM_STATE}",
        "normalisation": f"x/16, then (x - {mean:.6f}) / {std:.6f}",
    }
    return DigitsData(train_idx, data["val_idx"], data["test_idx"], part(train_idx), part(data["val_idx"]),
                      part(data["test_idx"]), info)


class DigitsTask(Task):
    """8x8 digit classification for the vision heads (gMLP or Transformer over patches)."""

    def __init__(self, cfg, seed: int, data: DigitsData):
        super().__init__(name="digits", shape=shape(cfg), metrics=metrics("digits", SPLIT_VAL), info=dict(data.info))
        self.data = data
        self.train_idx, self.val_idx, self.test_idx = data.train_idx, data.val_idx, data.test_idx
        self._train_x, self._train_y = data.train
        self.seed = seed
        self._perms: Dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            n = len(self._train_y)
            self._perms[epoch] = torch.randperm(n, generator=generator(self.seed, TRAIN_STREAM, epoch))
        return self._perms[epoch]

    def train_indices(self, step: int, batch_size: int) -> torch.Tensor:
        """Rows of the train split in batch ``step`` (positions into ``train_idx``)."""
        n = len(self._train_y)
        pos = step * batch_size + torch.arange(batch_size)
        epochs, within = pos // n, pos % n
        out = torch.empty(batch_size, dtype=torch.int64)
        for e in torch.unique(epochs).tolist():
            m = epochs == e
            out[m] = self._perm(int(e))[within[m]]
        return out

    def train_batch(self, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.train_indices(step, batch_size)
        return self._train_x[rows], self._train_y[rows]

    def val_set(self) -> Pair:
        return self.data.val

    def test_set(self) -> Pair:
        return self.data.test


def build(cfg, seed: int, data: DigitsData) -> DigitsTask:
    return DigitsTask(cfg, seed, data)


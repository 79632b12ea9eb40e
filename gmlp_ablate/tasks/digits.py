"""digits: the 8x8 handwritten digits scikit-learn ships (1797 images, 10 classes, offline).

Pixels are scaled to [0, 1] (divided by 16) and then standardised with the train split's
mean and std (one scalar each). The split is stratified with a fixed ``random_state``, the
same for every trial seed. Train batches walk through per-epoch permutations of the train
split: example ``i`` of the run is ``perm_{i // n}[i % n]`` with the permutation of epoch
``e`` drawn from ``generator(seed, TRAIN_STREAM, e)``, so batch ``step`` holds examples
``step * batch_size ...`` and is a pure function of (seed, step, batch_size).
"""

from __future__ import annotations

import hashlib
from typing import Dict, Tuple

import numpy as np
import torch

from gmlp_ablate.config import ConfigError
from gmlp_ablate.tasks.base import Task, TaskShape, generator

IMAGE_SIZE = 8
NUM_CLASSES = 10
NUM_IMAGES = 1797
SPLIT_RANDOM_STATE = 0
TRAIN_STREAM = 41


def num_patches(patch_size: int) -> int:
    return (IMAGE_SIZE // patch_size) ** 2


def validate(cfg, prefix: str = "task.") -> None:
    p = cfg.patch_size
    if p <= 0 or IMAGE_SIZE % p:
        raise ConfigError(f"{prefix}patch_size", f"the image side {IMAGE_SIZE} must be divisible by patch_size, got {p}")
    n = num_patches(p)
    if cfg.seq_len is not None and cfg.seq_len != n:
        raise ConfigError(
            f"{prefix}seq_len",
            f"digits has (8/patch_size)^2 = {n} patches with patch_size={p}, got seq_len={cfg.seq_len} (use null)",
        )
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"{prefix}val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")
    n_val = int(np.ceil(cfg.val_fraction * NUM_IMAGES))
    if n_val < NUM_CLASSES or NUM_IMAGES - n_val < NUM_CLASSES:
        raise ConfigError(
            f"{prefix}val_fraction",
            f"{cfg.val_fraction} leaves {n_val} validation and {NUM_IMAGES - n_val} training images; "
            f"a stratified split needs at least {NUM_CLASSES} in each",
        )


def shape(cfg) -> TaskShape:
    return TaskShape(
        kind="image",
        seq_len=num_patches(cfg.patch_size),
        causal=False,
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        patch_size=cfg.patch_size,
        channels=1,
    )


def load_split(val_fraction: float) -> Dict[str, np.ndarray]:
    """Images scaled to [0, 1] as (N, 1, 8, 8) float32, labels, and the split's indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]
    labels = d.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=SPLIT_RANDOM_STATE
    )
    return {"images": images, "labels": labels, "train_idx": np.sort(train_idx), "val_idx": np.sort(val_idx)}


class DigitsTask(Task):
    """8x8 digit classification for the vision heads (gMLP or Transformer over patches)."""

    def __init__(self, cfg, seed: int):
        import sklearn

        data = load_split(cfg.val_fraction)
        images, labels = data["images"], data["labels"]
        self.train_idx, self.val_idx = data["train_idx"], data["val_idx"]
        mean = float(images[self.train_idx].mean())
        std = float(images[self.train_idx].std())
        normed = (images - mean) / std
        self._train_x = torch.from_numpy(normed[self.train_idx])
        self._train_y = torch.from_numpy(labels[self.train_idx])
        self._val = (torch.from_numpy(normed[self.val_idx]), torch.from_numpy(labels[self.val_idx]))
        digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
        info = {
            "dataset": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
            "dataset_sha256": digest,
            "train_images": str(len(self.train_idx)),
            "val_images": str(len(self.val_idx)),
            "split": f"stratified, random_state={SPLIT_RANDOM_STATE}",
            "normalisation": f"x/16, then (x - {mean:.6f}) / {std:.6f}",
        }
        super().__init__(name="digits", shape=shape(cfg), metrics=("val/acc", "val/loss"), info=info)
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

    def val_set(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._val


def build(cfg, seed: int) -> DigitsTask:
    return DigitsTask(cfg, seed)


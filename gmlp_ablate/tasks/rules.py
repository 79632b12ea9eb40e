"""Each task's own config rules and its shape, without loading data or importing torch.

The bounds of single fields (``seq_len >= 1``, fractions in (0, 1), ...) are declared on
:class:`~gmlp_ablate.tasks.config.TaskConfig` and checked by :func:`gmlp_ablate.schema.check`;
what is here depends on the task: a ``seq_len`` the task can fill, a corpus that exists,
can be read and is large enough for three parts, a patch size that divides the image, room
for the MQAR keys. Corpus checks list and ``stat`` files; they never read them.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Tuple

from gmlp_ablate.names import split_metric
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.tasks.sources import PARTS, Source, list_source, planned_files, planned_sizes

IGNORE_INDEX = -100
"""Target value of positions that are not scored (cross-entropy ``ignore_index``)."""

DEFAULT_SEQ_LEN = {"charlm": 128, "mlm": 128, "mqar": 64}
BYTE_VOCAB = 256
MASK_ID = 256
"""mlm: the ``[MASK]`` token, after the 256 byte values."""
MLM_VOCAB = 257

METRIC_KINDS = {"charlm": ("bpb", "loss"), "mlm": ("ppl", "loss"), "mqar": ("acc", "loss"), "digits": ("acc", "loss")}
"""Each task's held-out metrics, primary first; reported as ``val/<kind>`` and ``test/<kind>``."""

IMAGE_SIZE = 8
NUM_CLASSES = 10
NUM_IMAGES = 1797
"""scikit-learn's 8x8 digits."""


def seq_len_of(cfg) -> int:
    """The resolved ``seq_len`` (the task's default when null; digits: the patch count)."""
    if cfg.name == "digits":
        return num_patches(cfg.patch_size)
    return DEFAULT_SEQ_LEN[cfg.name] if cfg.seq_len is None else cfg.seq_len


def metrics(name: str, split: str) -> Tuple[str, ...]:
    """The held-out metric keys task ``name`` reports for ``split``, primary first."""
    return tuple(split_metric(split, kind) for kind in METRIC_KINDS[name])


def window_width(cfg) -> int:
    """Bytes of one text window: charlm reads ``seq_len + 1`` (inputs and shifted targets)."""
    L = seq_len_of(cfg)
    return L + 1 if cfg.name == "charlm" else L


def num_patches(patch_size: int) -> int:
    return (IMAGE_SIZE // patch_size) ** 2


def digits_split_sizes(val_fraction: float, test_fraction: float) -> Dict[str, int]:
    """Images in each part of the stratified digits split (val and test: ``ceil(fraction * N)``)."""
    n_val = math.ceil(val_fraction * NUM_IMAGES)
    n_test = math.ceil(test_fraction * NUM_IMAGES)
    return {"train": NUM_IMAGES - n_val - n_test, "val": n_val, "test": n_test}


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _sizes(source: Source, corpus_bytes: int, val_fraction: float, test_fraction: float) -> Optional[Dict[str, int]]:
    return planned_sizes(source, corpus_bytes, val_fraction, test_fraction)


def _text(cfg, prefix: str) -> None:
    L = seq_len_of(cfg)
    if L < 2:
        raise ConfigError(f"{prefix}seq_len", f"must be >= 2 for {cfg.name}, got {L}")
    if cfg.val_tokens < L:
        raise ConfigError(f"{prefix}val_tokens", f"must be >= seq_len ({L}), got {cfg.val_tokens}")
    source = list_source(cfg.corpus, f"{prefix}corpus")
    where = source.describe()
    sizes = _sizes(source, cfg.corpus_bytes, cfg.val_fraction, cfg.test_fraction)
    if sizes is None:
        if source.kind == "file":
            n = min(source.files[0][1], cfg.corpus_bytes)
            raise ConfigError(f"{prefix}corpus", f"{where}: {n} byte(s) cannot be cut into train, val and test parts")
        n = len(planned_files(source, cfg.corpus_bytes))
        raise ConfigError(
            f"{prefix}corpus_bytes" if source.kind == "stdlib" else f"{prefix}corpus",
            f"{where}: only {n} non-empty file(s) within corpus_bytes={cfg.corpus_bytes}; a split by file "
            "needs at least 3 (train, val, test): raise corpus_bytes, add files, or give a single file "
            "to cut by bytes",
        )
    width = window_width(cfg)
    for part in PARTS:
        if sizes[part] < width:
            raise ConfigError(
                f"{prefix}seq_len",
                f"seq_len={L} needs windows of {width} bytes but the {part} part of {where} has "
                f"{sizes[part]} (of {sum(sizes.values())}): lower seq_len, or give a larger corpus "
                "(corpus_bytes, val_fraction, test_fraction)",
            )


def _mqar(cfg, prefix: str) -> None:
    K = cfg.num_kv_pairs
    if cfg.vocab_size // 2 - 1 < K:
        raise ConfigError(
            f"{prefix}vocab_size",
            f"vocab_size={cfg.vocab_size} leaves {max(0, cfg.vocab_size // 2 - 1)} key tokens "
            f"(1 .. vocab_size//2 - 1) for {K} distinct keys: need vocab_size >= {2 * K + 2}",
        )
    L = seq_len_of(cfg)
    if L < 4 * K:
        key = f"{prefix}seq_len" if cfg.seq_len is not None else f"{prefix}num_kv_pairs"
        raise ConfigError(
            key,
            f"seq_len={L} is too short for num_kv_pairs={K}: the context takes 2*K "
            f"tokens and the K queries with their answers another 2*K (need seq_len >= {4 * K})",
        )


def _digits(cfg, prefix: str) -> None:
    p = cfg.patch_size
    if IMAGE_SIZE % p:
        raise ConfigError(f"{prefix}patch_size", f"the image side {IMAGE_SIZE} must be divisible by patch_size, got {p}")
    n = num_patches(p)
    if cfg.seq_len is not None and cfg.seq_len != n:
        raise ConfigError(
            f"{prefix}seq_len",
            f"digits has (8/patch_size)^2 = {n} patches with patch_size={p}, got seq_len={cfg.seq_len} (use null)",
        )
    sizes = digits_split_sizes(cfg.val_fraction, cfg.test_fraction)
    small = [part for part in PARTS if sizes[part] < NUM_CLASSES]
    if small:
        key = "val_fraction" if small[0] == "val" else "test_fraction"
        raise ConfigError(
            f"{prefix}{key}",
            f"val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction} leave "
            f"{sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test images; a stratified "
            f"split needs at least {NUM_CLASSES} in each",
        )


RULES: Dict[str, Callable[..., None]] = {"charlm": _text, "mlm": _text, "mqar": _mqar, "digits": _digits}


def validate(cfg, prefix: str = "task.") -> None:
    """The task's own rules (``cfg.name`` and the declared bounds already checked)."""
    RULES[cfg.name](cfg, prefix)


def shape(cfg):
    """The task's :class:`~gmlp_ablate.models.config.TaskShape`, from its config alone."""
    from gmlp_ablate.models.config import TaskShape

    L = seq_len_of(cfg)
    if cfg.name == "charlm":
        return TaskShape(kind="tokens", seq_len=L, causal=True, vocab_size=BYTE_VOCAB)
    if cfg.name == "mlm":
        return TaskShape(kind="tokens", seq_len=L, causal=False, vocab_size=MLM_VOCAB)
    if cfg.name == "mqar":
        return TaskShape(kind="tokens", seq_len=L, causal=True, vocab_size=cfg.vocab_size)
    return TaskShape(kind="image", seq_len=L, causal=False, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE,
                     patch_size=cfg.patch_size, channels=1)

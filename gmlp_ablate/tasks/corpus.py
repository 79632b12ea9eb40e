"""Byte corpora for the text tasks (``charlm``, ``mlm``): building, caching, windows.

A corpus is three uint8 byte streams, ``train``, ``val`` and ``test``, made of whole files
(or, for a single text file, byte cuts). Sources (listed by :mod:`gmlp_ablate.tasks.sources`):

* ``task.corpus = null``: the installed Python standard library's ``.py`` sources, without
  ``site-packages`` and test directories, files that are not valid UTF-8 skipped. Files are
  taken in a fixed pseudo-random order (sha256 of the relative path) up to
  ``corpus_bytes``, so a small budget still samples the whole library rather than its
  alphabetical head.
* a folder: its ``.txt``/``.md``/``.py`` files (recursive), taken in sorted order of their
  relative paths up to ``corpus_bytes``; non-UTF-8 files skipped.
* a file: its first ``corpus_bytes`` bytes, cut into train, test, val in that order (val:
  the last ``val_fraction`` of them).

Folders and the stdlib are split by file (:func:`gmlp_ablate.tasks.sources.assign_parts`): a
file's relative path alone decides its part, so no file is in two parts. The last file taken
is cut to fit the budget. Built corpora are cached on disk (``.npy`` + ``.json``, written
atomically) under a key made of the file list with sizes and mtimes, ``corpus_bytes`` and
both fractions; the JSON records the sha256 of the bytes used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gmlp_ablate.schema import ConfigError
from gmlp_ablate.tasks.base import default_cache_dir
from gmlp_ablate.tasks.sources import CACHE_FORMAT, PARTS, Source, assign_parts, byte_cut, cache_key, list_source


@dataclass
class Corpus:
    """A built corpus: train/val/test byte streams (read-only, memory-mapped) and provenance."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_files: List[str]
    val_files: List[str]
    test_files: List[str]
    sha256: str
    """sha256 of (train and val lengths as 8 bytes little-endian each, train, val, test bytes)."""
    source: str
    cache_path: str
    from_cache: bool = False
    skipped: int = 0
    """Candidate files skipped as empty, unreadable or not valid UTF-8."""
    extra: Dict[str, str] = field(default_factory=dict)

    def info(self) -> Dict[str, str]:
        """Provenance strings to log with a run."""
        out = {
            "corpus": self.source,
            "corpus_sha256": self.sha256,
            "corpus_bytes": str(len(self.train) + len(self.val) + len(self.test)),
            "corpus_cache": self.cache_path,
        }
        for part in PARTS:
            out[f"{part}_bytes"] = str(len(getattr(self, part)))
            out[f"{part}_files"] = str(len(getattr(self, f"{part}_files")))
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def _split_files(source: Source, corpus_bytes: int, val_fraction: float, test_fraction: float, key: str):
    """Read files in order up to the budget; split them by path hash."""
    root = Path(source.root)
    taken: List[Tuple[str, bytes]] = []
    total, skipped = 0, 0
    for rel, _, _ in source.files:
        if total >= corpus_bytes:
            break
        try:
            data = (root / rel).read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        if not data:
            skipped += 1
            continue
        data = data[: corpus_bytes - total]
        taken.append((rel, data))
        total += len(data)
    if len(taken) < 3:
        raise ConfigError(
            "task.corpus_bytes" if source.kind == "stdlib" else key,
            f"{source.describe()}: only {len(taken)} usable file(s) within corpus_bytes={corpus_bytes} "
            f"({skipped} skipped as empty or not UTF-8); a split by file needs at least 3 (train, val, test)",
        )
    parts = assign_parts([rel for rel, _ in taken], val_fraction, test_fraction)
    by_part = {p: [(r, d) for (r, d), q in zip(taken, parts) if q == p] for p in PARTS}
    return by_part, skipped


def _build(source: Source, corpus_bytes: int, val_fraction: float, test_fraction: float, key: str):
    """({part: bytes}, {part: file names}, skipped)."""
    if source.kind == "file":
        with open(source.root, "rb") as f:
            data = f.read(corpus_bytes)
        n_train, n_test, _ = byte_cut(len(data), val_fraction, test_fraction)
        if n_train < 1:
            raise ConfigError(key, f"{source.root}: {len(data)} byte(s) cannot be cut into train, val and test parts")
        cuts = {"train": (0, n_train), "test": (n_train, n_train + n_test), "val": (n_train + n_test, len(data))}
        name = source.files[0][0]
        streams = {p: data[a:b] for p, (a, b) in cuts.items()}
        names = {p: [f"{name}[{a}:{b}]"] for p, (a, b) in cuts.items()}
        return streams, names, 0
    by_part, skipped = _split_files(source, corpus_bytes, val_fraction, test_fraction, key)
    streams = {p: b"".join(d for _, d in by_part[p]) for p in PARTS}
    names = {p: [r for r, _ in by_part[p]] for p in PARTS}
    return streams, names, skipped


def _content_hash(streams: Dict[str, bytes]) -> str:
    h = hashlib.sha256(len(streams["train"]).to_bytes(8, "little") + len(streams["val"]).to_bytes(8, "little"))
    for part in PARTS:
        h.update(streams[part])
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_cached(npy: Path, meta_path: Path) -> Optional[Tuple[np.ndarray, dict]]:
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    n = sum(meta.get(f"n_{p}", -(1 << 40)) for p in PARTS)
    if arr.dtype != np.uint8 or arr.ndim != 1 or len(arr) != n:
        return None
    return arr, meta


def load_corpus(
    corpus: Optional[str],
    corpus_bytes: int,
    val_fraction: float,
    test_fraction: float,
    cache_dir: Optional[str] = None,
    key: str = "task.corpus",
) -> Corpus:
    """Build (or load from the disk cache) the corpus named by ``corpus`` (None = the stdlib)."""
    source = list_source(corpus, key)
    folder = Path(default_cache_dir(cache_dir)) / "corpora"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"corpus-{cache_key(source, corpus_bytes, val_fraction, test_fraction)}"
    npy, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"
    cached = _load_cached(npy, meta_path) if meta_path.exists() else None
    from_cache = cached is not None
    if cached is None:
        streams, names, skipped = _build(source, corpus_bytes, val_fraction, test_fraction, key)
        meta = {
            "format": CACHE_FORMAT,
            "source": source.describe(),
            "sha256": _content_hash(streams),
            "skipped": skipped + source.unreadable,
            **{f"n_{p}": len(streams[p]) for p in PARTS},
            **{f"{p}_files": names[p] for p in PARTS},
        }
        whole = np.frombuffer(b"".join(streams[p] for p in PARTS), dtype=np.uint8)
        # the array first, the metadata last: a reader that finds the .json finds a full .npy
        _atomic_write(npy, lambda f: np.save(f, whole, allow_pickle=False))
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        cached = _load_cached(npy, meta_path)
        assert cached is not None, f"corpus cache {npy} unreadable right after writing it"
    arr, meta = cached
    a = meta["n_train"]
    b = a + meta["n_val"]
    extra = {"corpus_files_skipped": str(meta["skipped"])}
    if source.kind == "stdlib":
        extra["python_version"] = sys.version.split()[0]
    return Corpus(
        train=arr[:a],
        val=arr[a:b],
        test=arr[b:],
        train_files=list(meta["train_files"]),
        val_files=list(meta["val_files"]),
        test_files=list(meta["test_files"]),
        sha256=meta["sha256"],
        source=meta["source"],
        cache_path=str(npy),
        from_cache=from_cache,
        skipped=meta["skipped"],
        extra=extra,
    )


def check_streams_fit(corpus: Corpus, width: int, seq_len: int) -> None:
    """Build-time check that every part holds at least one window (the validation checked
    the sizes planned from the listing; files found not to be UTF-8 can shrink a part)."""
    for part in ("val", "test", "train"):
        n = len(getattr(corpus, part))
        if n < width:
            raise ConfigError(
                "task.seq_len",
                f"seq_len={seq_len} needs windows of {width} bytes but the {part} part of "
                f"{corpus.source} has {n}: lower seq_len, or give a larger corpus "
                "(corpus_bytes, val_fraction, test_fraction)",
            )


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


def gather_windows(data: np.ndarray, starts: np.ndarray, width: int) -> torch.Tensor:
    """``data[s : s + width]`` for each start, as an int64 tensor (len(starts), width)."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(width, dtype=np.int64)
    return torch.from_numpy(np.asarray(data[idx], dtype=np.int64))


def random_windows(data: np.ndarray, width: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` windows of ``width`` bytes at uniformly random starts (drawn from ``gen``)."""
    starts = torch.randint(0, len(data) - width + 1, (count,), generator=gen)
    return gather_windows(data, starts.numpy(), width)


def max_spaced_windows(n: int, width: int, stride: int) -> int:
    """How many windows of ``width`` with starts at least ``stride`` apart fit in ``n`` bytes."""
    return 0 if n < width else (n - width) // stride + 1


def spaced_starts(n: int, width: int, stride: int, count: int) -> np.ndarray:
    """``count`` starts spread evenly over ``n`` bytes, at least ``stride`` apart."""
    assert 1 <= count <= max_spaced_windows(n, width, stride)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return (np.arange(count, dtype=np.int64) * (n - width)) // (count - 1)


def held_out_starts(stream: np.ndarray, width: int, seq_len: int, max_tokens: int) -> np.ndarray:
    """Starts of the fixed held-out windows of a stream: spread evenly, at least ``seq_len``
    apart (no target scored twice), at most ``max_tokens // seq_len`` of them (at least one)."""
    n_windows = min(max(1, max_tokens // seq_len), max_spaced_windows(len(stream), width, seq_len))
    return spaced_starts(len(stream), width, seq_len, n_windows)

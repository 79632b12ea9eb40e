"""Byte corpora for the text tasks (``charlm``, ``mlm``): listing, splitting, caching, windows.

A corpus is two uint8 byte streams, ``train`` and ``val``, made of whole files (or, for a
single text file, a byte cut at the end). Sources:

* ``task.corpus = null``: the installed Python standard library's ``.py`` sources, without
  ``site-packages`` and test directories, files that are not valid UTF-8 skipped. Files are
  taken in a fixed pseudo-random order (sha256 of the relative path) up to
  ``corpus_bytes``, so a small budget still samples the whole library rather than its
  alphabetical head.
* a folder: its ``.txt``/``.md``/``.py`` files (recursive), taken in sorted order of their
  relative paths up to ``corpus_bytes``; non-UTF-8 files skipped.
* a file: its first ``corpus_bytes`` bytes; the last ``val_fraction`` of them is validation.

Folders and the stdlib are split by file: a file's relative path alone decides whether it is
held out (share ``val_fraction``), so no file is in both streams. The last file taken is cut
to fit the budget. Built corpora are cached on disk (``.npy`` + ``.json``, written
atomically) under a key made of the file list with sizes and mtimes, ``corpus_bytes`` and
``val_fraction``; the JSON records the sha256 of the bytes used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gmlp_ablate.config import ConfigError
from gmlp_ablate.tasks.base import default_cache_dir

CACHE_FORMAT = 1
"""Bump when the way corpora are built changes: old cache entries are then ignored."""
TEXT_SUFFIXES = (".txt", ".md", ".py")
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
"""Directory names skipped anywhere under the stdlib (``test/``, ``lib2to3/tests``,
``idlelib/idle_test``, ...)."""

FileEntry = Tuple[str, int, int]
"""(relative path, size in bytes, mtime in ns)."""


@dataclass(frozen=True)
class Source:
    """What a corpus is made from, found by listing and ``stat`` only (nothing read)."""

    kind: str
    """``stdlib``, ``folder`` or ``file``."""
    root: str
    """Absolute path of the folder (the stdlib's, for ``stdlib``) or of the file."""
    files: Tuple[FileEntry, ...]
    """Candidate files in the order they are taken."""

    def describe(self) -> str:
        return f"python-stdlib {sys.version.split()[0]} ({self.root})" if self.kind == "stdlib" else self.root


@dataclass
class Corpus:
    """A built corpus: train/val byte streams (read-only, memory-mapped) and provenance."""

    train: np.ndarray
    val: np.ndarray
    train_files: List[str]
    val_files: List[str]
    sha256: str
    """sha256 of (train length as 8 bytes little-endian, train bytes, val bytes)."""
    source: str
    cache_path: str
    from_cache: bool = False
    skipped: int = 0
    """Candidate files skipped as empty or not valid UTF-8."""
    extra: Dict[str, str] = field(default_factory=dict)

    def info(self) -> Dict[str, str]:
        """Provenance strings to log with a run."""
        out = {
            "corpus": self.source,
            "corpus_sha256": self.sha256,
            "corpus_bytes": str(len(self.train) + len(self.val)),
            "train_bytes": str(len(self.train)),
            "val_bytes": str(len(self.val)),
            "train_files": str(len(self.train_files)),
            "val_files": str(len(self.val_files)),
            "corpus_cache": self.cache_path,
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------------------
# Listing (validation and cache lookup: stat only)
# --------------------------------------------------------------------------------------


def _path_hash(tag: str, rel: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{tag}:{rel}".encode()).digest()[:8], "big")


def is_val_file(rel: str, val_fraction: float) -> bool:
    """Whether the file at relative path ``rel`` is held out: a fixed hash of the path."""
    return _path_hash("val", rel) / 2.0**64 < val_fraction


def _walk(root: Path, suffixes: Tuple[str, ...], excluded: frozenset = frozenset()) -> List[FileEntry]:
    out: List[FileEntry] = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in excluded]
        for n in names:
            if n.endswith(suffixes):
                p = Path(d) / n
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def list_source(corpus: Optional[str], key: str = "task.corpus") -> Source:
    """List a corpus source without reading it; ConfigError naming ``key`` and the path if
    it is missing, empty or holds no text files."""
    if corpus is None:
        root = stdlib_root()
        files = _walk(root, (".py",), STDLIB_EXCLUDED_DIRS)
        files.sort(key=lambda f: (_path_hash("order", f[0]), f[0]))
        if not any(f[1] for f in files):
            raise ConfigError(key, f"no Python sources found in the standard library at {root}")
        return Source("stdlib", str(root), tuple(files))
    path = Path(os.path.expanduser(corpus)).resolve()
    if not path.exists():
        raise ConfigError(key, f"{corpus}: no such file or directory")
    if path.is_dir():
        files = _walk(path, TEXT_SUFFIXES)
        if not files:
            raise ConfigError(key, f"{corpus}: folder holds no {'/'.join(TEXT_SUFFIXES)} files")
        if not any(f[1] for f in files):
            raise ConfigError(key, f"{corpus}: all {len(files)} text files in the folder are empty")
        return Source("folder", str(path), tuple(files))
    st = path.stat()
    if st.st_size == 0:
        raise ConfigError(key, f"{corpus}: file is empty")
    return Source("file", str(path), ((path.name, st.st_size, st.st_mtime_ns),))


def cache_key(source: Source, corpus_bytes: int, val_fraction: float) -> str:
    """Lookup key of a built corpus: the listing with sizes/mtimes and the split parameters."""
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "kind": source.kind,
            "root": source.root,
            "files": source.files,
            "corpus_bytes": corpus_bytes,
            "val_fraction": val_fraction,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def _split_files(source: Source, corpus_bytes: int, val_fraction: float, key: str):
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
    if len(taken) < 2:
        raise ConfigError(
            "task.corpus_bytes" if source.kind == "stdlib" else key,
            f"{source.describe()}: only {len(taken)} usable file(s) within corpus_bytes={corpus_bytes}; "
            "a split by file needs at least 2 (raise corpus_bytes, or give a single file to split by a byte cut)",
        )
    is_val = [is_val_file(rel, val_fraction) for rel, _ in taken]
    if all(is_val) or not any(is_val):  # tiny corpora: force one file to the other side
        scores = [_path_hash("val", rel) for rel, _ in taken]
        pick = scores.index(min(scores)) if not any(is_val) else scores.index(max(scores))
        is_val[pick] = not is_val[pick]
    train = [(r, d) for (r, d), v in zip(taken, is_val) if not v]
    val = [(r, d) for (r, d), v in zip(taken, is_val) if v]
    return train, val, skipped


def _build(source: Source, corpus_bytes: int, val_fraction: float, key: str):
    if source.kind == "file":
        with open(source.root, "rb") as f:
            data = f.read(corpus_bytes)
        n_val = max(1, int(round(len(data) * val_fraction)))
        if len(data) - n_val < 1:
            raise ConfigError(key, f"{source.root}: {len(data)} byte(s) cannot be split into train and val")
        cut = len(data) - n_val
        name = source.files[0][0]
        return data[:cut], data[cut:], [f"{name}[0:{cut}]"], [f"{name}[{cut}:{len(data)}]"], 0
    train, val, skipped = _split_files(source, corpus_bytes, val_fraction, key)
    return (
        b"".join(d for _, d in train),
        b"".join(d for _, d in val),
        [r for r, _ in train],
        [r for r, _ in val],
        skipped,
    )


def _content_hash(train: bytes, val: bytes) -> str:
    h = hashlib.sha256(len(train).to_bytes(8, "little"))
    h.update(train)
    h.update(val)
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
    if arr.dtype != np.uint8 or arr.ndim != 1 or len(arr) != meta.get("n_train", -1) + meta.get("n_val", -1):
        return None
    return arr, meta


def load_corpus(
    corpus: Optional[str],
    corpus_bytes: int,
    val_fraction: float,
    cache_dir: Optional[str] = None,
    key: str = "task.corpus",
) -> Corpus:
    """Build (or load from the cache) the corpus named by ``corpus`` (None = the stdlib)."""
    source = list_source(corpus, key)
    folder = Path(default_cache_dir(cache_dir)) / "corpora"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"corpus-{cache_key(source, corpus_bytes, val_fraction)}"
    npy, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"
    cached = _load_cached(npy, meta_path) if meta_path.exists() else None
    from_cache = cached is not None
    if cached is None:
        train, val, train_files, val_files, skipped = _build(source, corpus_bytes, val_fraction, key)
        meta = {
            "format": CACHE_FORMAT,
            "source": source.describe(),
            "sha256": _content_hash(train, val),
            "n_train": len(train),
            "n_val": len(val),
            "train_files": train_files,
            "val_files": val_files,
            "skipped": skipped,
        }
        whole = np.frombuffer(train + val, dtype=np.uint8)
        # the array first, the metadata last: a reader that finds the .json finds a full .npy
        _atomic_write(npy, lambda f: np.save(f, whole, allow_pickle=False))
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        cached = _load_cached(npy, meta_path)
        assert cached is not None, f"corpus cache {npy} unreadable right after writing it"
    arr, meta = cached
    n_train = meta["n_train"]
    extra = {"corpus_files_skipped": str(meta["skipped"])}
    if source.kind == "stdlib":
        extra["python_version"] = sys.version.split()[0]
    return Corpus(
        train=arr[:n_train],
        val=arr[n_train:],
        train_files=list(meta["train_files"]),
        val_files=list(meta["val_files"]),
        sha256=meta["sha256"],
        source=meta["source"],
        cache_path=str(npy),
        from_cache=from_cache,
        skipped=meta["skipped"],
        extra=extra,
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


def check_lm_config(cfg, prefix: str, default_seq_len: int) -> int:
    """Checks shared by the byte-LM tasks (no data read); returns the resolved seq_len."""
    seq_len = default_seq_len if cfg.seq_len is None else cfg.seq_len
    if seq_len < 2:
        raise ConfigError(f"{prefix}seq_len", f"must be >= 2, got {seq_len}")
    if cfg.corpus_bytes <= 0:
        raise ConfigError(f"{prefix}corpus_bytes", f"must be > 0, got {cfg.corpus_bytes}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"{prefix}val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")
    if cfg.val_tokens < seq_len:
        raise ConfigError(f"{prefix}val_tokens", f"must be >= seq_len ({seq_len}), got {cfg.val_tokens}")
    if cfg.corpus is not None:  # the stdlib is always there; a given path is checked
        list_source(cfg.corpus, f"{prefix}corpus")
    return seq_len


def check_stream_fits(corpus: Corpus, width: int, seq_len: int) -> None:
    """Build-time check that both streams hold at least one window."""
    for name, stream in (("val", corpus.val), ("train", corpus.train)):
        if len(stream) < width:
            raise ConfigError(
                "task.seq_len",
                f"seq_len={seq_len} needs windows of {width} bytes but the {name} split of "
                f"{corpus.source} has {len(stream)} (raise task.corpus_bytes or task.val_fraction, or lower seq_len)",
            )

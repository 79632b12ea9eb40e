"""Where the text tasks' bytes come from, found by listing and ``stat`` only (nothing read).

Standard library only, so that validating a config never imports numpy or torch. The build
(:mod:`gmlp_ablate.tasks.corpus`) and the validation (:mod:`gmlp_ablate.tasks.rules`) share
what is decided here: which files a corpus takes, and which part (train, val or test) each
file goes to, so the validation's size checks see the same split the build makes.

Split by file: a file's relative path alone decides its part. ``u = sha256("val:" + path)``
read as a fraction of 2**64; ``u < val_fraction`` is val, ``u < val_fraction +
test_fraction`` is test, the rest is train (so val holds the same files whatever the test
share). A part left empty by a small corpus gets the file whose ``u`` is nearest to its
interval, taken from a part with more than one file. A single text file is cut by bytes
instead: train, then test, then val (the last ``val_fraction`` of the bytes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from gmlp_ablate.schema import ConfigError

CACHE_FORMAT = 2
"""Bump when the way corpora are built changes: old cache entries are then ignored."""
TEXT_SUFFIXES = (".txt", ".md", ".py")
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
"""Directory names skipped anywhere under the stdlib (``test/``, ``lib2to3/tests``,
``idlelib/idle_test``, ...)."""
PARTS = ("train", "val", "test")

FileEntry = Tuple[str, int, int]
"""(relative path, size in bytes, mtime in ns)."""


@dataclass(frozen=True)
class Source:
    """What a corpus is made from."""

    kind: str
    """``stdlib``, ``folder`` or ``file``."""
    root: str
    """Absolute path of the folder (the stdlib's, for ``stdlib``) or of the file."""
    files: Tuple[FileEntry, ...]
    """Readable candidate files in the order they are taken."""
    unreadable: int = 0
    """Text files (or folders) found but not readable; left out of ``files``."""

    def describe(self) -> str:
        return f"python-stdlib {sys.version.split()[0]} ({self.root})" if self.kind == "stdlib" else self.root


def _path_hash(tag: str, rel: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{tag}:{rel}".encode()).digest()[:8], "big")


def _split_u(rel: str) -> float:
    return _path_hash("val", rel) / 2.0**64


def part_of(rel: str, val_fraction: float, test_fraction: float) -> str:
    """The part (``train``, ``val`` or ``test``) the file at relative path ``rel`` goes to."""
    u = _split_u(rel)
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def assign_parts(rels: Sequence[str], val_fraction: float, test_fraction: float) -> List[str]:
    """The part of each file of a corpus (at least 3 files): :func:`part_of`, then every empty
    part given the nearest file of a part that can spare one."""
    assert len(rels) >= 3, "a split by file needs at least 3 files"
    parts = [part_of(r, val_fraction, test_fraction) for r in rels]
    us = [_split_u(r) for r in rels]
    bounds = {"val": (0.0, val_fraction), "test": (val_fraction, val_fraction + test_fraction),
              "train": (val_fraction + test_fraction, 1.0)}
    for target in ("val", "test", "train"):
        if target in parts:
            continue
        lo, hi = bounds[target]
        counts = {p: parts.count(p) for p in PARTS}
        candidates = [i for i, p in enumerate(parts) if counts[p] > 1]
        pick = min(candidates, key=lambda i: (max(lo - us[i], us[i] - hi, 0.0), rels[i]))
        parts[pick] = target
    return parts


def byte_cut(n: int, val_fraction: float, test_fraction: float) -> Tuple[int, int, int]:
    """(train, test, val) byte counts of a single-file corpus of ``n`` bytes, in that order."""
    n_val = max(1, int(round(n * val_fraction)))
    n_test = max(1, int(round(n * test_fraction)))
    return n - n_val - n_test, n_test, n_val


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


def _walk(root: Path, suffixes: Tuple[str, ...], excluded: frozenset = frozenset()):
    """(readable text files sorted by relative path, the errors met: one per folder or text
    file that cannot be read)."""
    out: List[FileEntry] = []
    errors: List[OSError] = []
    for d, dirs, names in os.walk(root, onerror=errors.append):
        dirs[:] = [x for x in dirs if x not in excluded]
        for n in names:
            if n.endswith(suffixes):
                p = Path(d) / n
                try:
                    st = p.stat()
                except OSError as e:
                    errors.append(e)
                    continue
                if not os.access(p, os.R_OK):
                    errors.append(PermissionError(13, "Permission denied", str(p)))
                    continue
                out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    out.sort()
    return out, errors


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


@functools.lru_cache(maxsize=1)
def _stdlib_source() -> Source:
    root = stdlib_root()
    files, errors = _walk(root, (".py",), STDLIB_EXCLUDED_DIRS)
    files.sort(key=lambda f: (_path_hash("order", f[0]), f[0]))
    return Source("stdlib", str(root), tuple(files), len(errors))


def _cause(e: OSError) -> str:
    return e.strerror or type(e).__name__


def list_source(corpus: Optional[str], key: str = "task.corpus") -> Source:
    """List a corpus source; ConfigError naming ``key``, the path and the cause if it is
    missing, unreadable, empty or holds no text files.

    The standard library (``corpus=None``) is listed once per process (an installation
    does not change under a running process)."""
    if corpus is None:
        source = _stdlib_source()
        if not any(f[1] for f in source.files):
            raise ConfigError(key, f"no Python sources found in the standard library at {source.root}")
        return source
    path = Path(os.path.expanduser(corpus)).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(key, f"{corpus}: no such file or directory") from None
    except OSError as e:
        raise ConfigError(key, f"{corpus}: cannot be read ({_cause(e)})") from None
    if path.is_dir():
        try:
            with os.scandir(path):
                pass
        except OSError as e:
            raise ConfigError(key, f"{corpus}: folder cannot be read ({_cause(e)})") from None
        files, errors = _walk(path, TEXT_SUFFIXES)
        if not files:
            if errors:
                where = getattr(errors[0], "filename", None) or corpus
                raise ConfigError(key, f"{corpus}: no readable {'/'.join(TEXT_SUFFIXES)} file "
                                       f"({_cause(errors[0])}: {where})")
            raise ConfigError(key, f"{corpus}: folder holds no {'/'.join(TEXT_SUFFIXES)} files")
        if not any(f[1] for f in files):
            raise ConfigError(key, f"{corpus}: all {len(files)} readable text files in the folder are empty")
        return Source("folder", str(path), tuple(files), len(errors))
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(key, f"{corpus}: file cannot be read ({_cause(e)})") from None
    if st.st_size == 0:
        raise ConfigError(key, f"{corpus}: file is empty")
    return Source("file", str(path), ((path.name, st.st_size, st.st_mtime_ns),))


def cache_key(source: Source, corpus_bytes: int, val_fraction: float, test_fraction: float) -> str:
    """Lookup key of a built corpus: the listing with sizes/mtimes and the split parameters."""
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "kind": source.kind,
            "root": source.root,
            "files": source.files,
            "corpus_bytes": corpus_bytes,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------
# Planning (what a build would take, from the listing alone)
# --------------------------------------------------------------------------------------


def planned_files(source: Source, corpus_bytes: int) -> List[Tuple[str, int]]:
    """(relative path, bytes taken) of the files a build takes, assuming every non-empty
    listed file is valid UTF-8 (the build skips those that are not)."""
    taken: List[Tuple[str, int]] = []
    total = 0
    for rel, size, _ in source.files:
        if total >= corpus_bytes:
            break
        if size == 0:
            continue
        n = min(size, corpus_bytes - total)
        taken.append((rel, n))
        total += n
    return taken


def planned_sizes(source: Source, corpus_bytes: int, val_fraction: float,
                  test_fraction: float) -> Optional[Dict[str, int]]:
    """Bytes of each part a build would make, or None when there are too few files (or bytes)
    to make three parts."""
    if source.kind == "file":
        n = min(source.files[0][1], corpus_bytes)
        n_train, n_test, n_val = byte_cut(n, val_fraction, test_fraction)
        return None if n_train < 1 else {"train": n_train, "val": n_val, "test": n_test}
    taken = planned_files(source, corpus_bytes)
    if len(taken) < 3:
        return None
    parts = assign_parts([r for r, _ in taken], val_fraction, test_fraction)
    sizes = dict.fromkeys(PARTS, 0)
    for (_, n), p in zip(taken, parts):
        sizes[p] += n
    return sizes

"""The report's output folder: named safely, never overwriting a file the report did not write.

The default folder is ``reports/<name>`` with the sweep name passed through
:func:`gmlp_ablate.names.path_component` (so ``..`` or ``a/b`` never leave ``reports/``).
Every file the report writes is listed in a manifest (:data:`MANIFEST`) in the folder. A
later report replaces exactly the files its manifest lists; a folder that is not empty and
has no manifest is refused, as is a path that is a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional

from analysis.store import AnalysisError
from gmlp_ablate.names import path_component

MANIFEST = ".analysis-report.json"
REPORTS = Path("reports")


class OutputError(AnalysisError):
    """The output folder cannot be used (exit 2)."""


def default_folder(name: str) -> Path:
    """``reports/<path_component(name)>``."""
    try:
        return REPORTS / path_component(name)
    except ValueError as e:
        raise OutputError(f"sweep name {name!r} cannot name the report folder ({e}); pass --out FOLDER") from None


def previous_files(folder: Path) -> List[str]:
    """The files a previous report listed in ``folder``'s manifest ([] if none)."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
        files = data["files"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, OSError):
        raise OutputError(f"{path} is not a manifest written by analysis.report; choose another folder with --out") from None
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..")]


def check_folder(folder: Path, flag: str = "--out") -> Path:
    """Make sure the report may write into ``folder``: a new or empty folder, or one holding a
    previous report (its manifest). OutputError otherwise."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder")
    if folder.is_dir() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
        raise OutputError(f"{flag} {folder} is not empty and holds no report written by analysis.report "
                          f"(no {MANIFEST}); refusing to overwrite its files: choose a new or empty folder")
    if folder.is_dir():
        previous_files(folder)  # a damaged manifest is refused before any work
    return folder


def prepare(folder: Path) -> None:
    """Create ``folder`` and remove the files the previous report in it wrote (only those)."""
    check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in previous_files(folder):
        p = folder / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)


def record(folder: Path, files: Iterable[Path], sweep: str) -> List[str]:
    """Write the manifest of the files this report wrote; returns their names."""
    names = sorted({Path(f).name for f in files})
    (folder / MANIFEST).write_text(json.dumps({"written_by": "analysis.report", "sweep": sweep, "files": names},
                                              indent=1) + "\n")
    return names


def shown_path(path: Optional[str]) -> Optional[str]:
    """A path as a reproduce line may show it: relative to the working directory when it is
    inside it, None (leave the flag out) for an absolute path elsewhere."""
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return None

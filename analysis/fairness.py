"""Warnings for comparisons that may not compare like with like.

Two arms of one comparison should differ only in what the sweep varies: their grid factors
and, for a baseline arm, the settings its declared override changes. This module lists what
else differs: another setting (a training budget, a learning rate), the task's data (the
``task.*`` tags a trial logs, compared seed by seed) or the code version (``git_commit``).
Pure: pandas only.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pandas as pd

from analysis.frames import NONSEMANTIC_KEYS, TRIAL_KEYS
from analysis.tables import fmt_value


def flat_keys(override: Any, prefix: str = "") -> Set[str]:
    """Dotted keys of a nested override (``{"model": {"arch": ...}}`` -> ``{"model.arch"}``)."""
    if not isinstance(override, dict):
        return {prefix.rstrip(".")} if prefix else set()
    out: Set[str] = set()
    for k, v in override.items():
        out |= flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def _values(runs: pd.DataFrame, arm: str, key: str) -> List[str]:
    return sorted({fmt_value(v) for v in runs.loc[runs["arm"] == arm, key]})


def _short(vals: Sequence[str], n: int = 3) -> str:
    return ", ".join(vals[:n]) + (" ..." if len(vals) > n else "")


def pair_warnings(runs: pd.DataFrame, a: str, b: str, factors: Sequence[str],
                  baseline_overrides: Dict[str, Any], matches: Optional[Dict[str, Dict[str, Any]]] = None,
                  tuned: Iterable[str] = ()) -> List[str]:
    """What differs between arms ``a`` and ``b`` besides the sweep's factors, the baseline
    overrides, the size knob a matched baseline varied and the settings each arm tuned for
    itself (``tuned``: the declared search space's keys): settings, task data (per common
    seed), code version."""
    if not ((runs["arm"] == a).any() and (runs["arm"] == b).any()):
        return []
    matches = matches or {}
    allowed = set(factors) | flat_keys(baseline_overrides.get(a, {})) | flat_keys(baseline_overrides.get(b, {}))
    allowed |= {str(matches[x]["vary"]) for x in (a, b) if "vary" in matches.get(x, {})}
    allowed |= set(tuned)
    out: List[str] = []
    keys = [k for k in TRIAL_KEYS if k in runs.columns and k != "seed" and k not in NONSEMANTIC_KEYS and k not in allowed]
    diff = []
    for k in keys:
        va, vb = _values(runs, a, k), _values(runs, b, k)
        if va != vb:
            diff.append(f"`{k}` ({_short(va)} vs {_short(vb)})")
    if diff:
        out.append(f"{a} vs {b}: settings outside the sweep's factors differ: {'; '.join(diff)}")
    if "data" in runs.columns:
        da = {s: json.dumps(d, sort_keys=True) for s, d in runs.loc[runs["arm"] == a, ["seed", "data"]].itertuples(index=False)}
        db = {s: json.dumps(d, sort_keys=True) for s, d in runs.loc[runs["arm"] == b, ["seed", "data"]].itertuples(index=False)}
        common = set(da) & set(db)
        differ = sorted(int(s) for s in common if da[s] != db[s]) if common else (
            [] if set(da.values()) == set(db.values()) else ["(no common seed)"])
        if differ:
            out.append(f"{a} vs {b}: the task's data differs (task.* tags) for seed(s) {', '.join(map(str, differ))}")
    if "git_commit" in runs.columns:
        ca, cb = _values(runs, a, "git_commit"), _values(runs, b, "git_commit")
        if ca != cb:
            out.append(f"{a} vs {b}: code versions differ (git_commit {_short(ca)} vs {_short(cb)})")
    return out


def added_seeds(declared: Sequence[str], used: Iterable[int]) -> List[str]:
    """A warning when a fixed design's seeds grew after the first invocation: ``declared``
    are the invocations' ``sweep.seeds`` params (JSON, oldest first), ``used`` the seeds of
    the runs reported. Adding seeds after looking at the results (optional stopping) raises
    the false-positive rate; a sequential design (``seeds: {initial, max}``) does not."""
    lists = []
    for text in declared:
        try:
            value = json.loads(text) if text else None
        except ValueError:
            value = None
        if isinstance(value, list):
            lists.append(value)
    if not lists:
        return []
    extra = sorted(set(int(s) for s in used) - set(lists[0]))
    if not extra:
        return []
    return [f"seeds {', '.join(map(str, extra))} were added after the first invocation declared seeds "
            f"{', '.join(map(str, lists[0]))}: if that was decided after seeing results, the p-values overstate "
            "the evidence (declare a sequential design, seeds: {initial, max}, instead)"]


def arm_warnings(runs: pd.DataFrame) -> List[str]:
    """Arms whose pooled runs come from more than one code version."""
    if "git_commit" not in runs.columns:
        return []
    out = []
    for arm, g in runs.groupby("arm", sort=False):
        commits = sorted({str(c) for c in g["git_commit"].dropna()})
        if len(commits) > 1:
            out.append(f"{arm}: its seeds pool runs of {len(commits)} code versions (git_commit {_short(commits)})")
    return out


def family_warnings(runs: pd.DataFrame, pairs: Iterable[Tuple[str, str]], factors: Sequence[str],
                    baseline_overrides: Dict[str, Any], matches: Optional[Dict[str, Dict[str, Any]]] = None,
                    tuned: Iterable[str] = ()) -> List[str]:
    """:func:`arm_warnings`, then :func:`pair_warnings` of every pair (each unordered pair once)."""
    out: List[str] = arm_warnings(runs)
    seen: Set[frozenset] = set()
    for a, b in pairs:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.extend(pair_warnings(runs, a, b, factors, baseline_overrides, matches, tuned))
    return out

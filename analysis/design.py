"""The comparisons a sweep declared before it ran, read from its parent run's params.

The sweep loader writes them on the parent run (:data:`PARAMS` lists the names); the report
tests exactly that family and never changes it from the command line. Sweeps logged before
the design was declared get an *inferred* family, labelled as such: every grid arm against
the first grid arm, every baseline against the first grid arm.

Pure: parses strings, raises :class:`AnalysisError` naming the param for a bad value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from analysis.store import AnalysisError

from gmlp_ablate.names import (  # noqa: E402  (the parent-run params the sweep loader writes)
    P_TUNE,
    P_ALPHA,
    P_DIVERGED,
    P_FAMILY,
    P_METRIC,
    P_METRIC_MODE,
    P_REFERENCE,
    P_REFERENCE_ARM,
    P_SEEDS,
    P_SOLVED,
)

PARAMS = (P_FAMILY, P_ALPHA, P_REFERENCE, P_REFERENCE_ARM, P_SEEDS, P_SOLVED, P_DIVERGED, P_METRIC, P_METRIC_MODE)
"""Every parent-run param the analysis reads for the design."""

DIVERGED_CHOICES = ("drop", "worst")
BOUNDARY_CHOICES = ("obrien-fleming", "pocock")


@dataclass(frozen=True)
class Solved:
    """A seed *solves* the task when ``metric`` reaches ``threshold`` (>= for max, <= for min)."""

    metric: str
    threshold: float


@dataclass(frozen=True)
class Sequential:
    initial: int
    maximum: int
    boundary: str
    step: int = 1


@dataclass
class Design:
    """What the sweep declared (or, for older sweeps, what was inferred)."""

    family: List[Tuple[str, str]]
    inferred: bool
    alpha: float = 0.05
    reference: Dict[str, Any] = field(default_factory=dict)
    reference_arm: Optional[str] = None
    seeds: List[int] = field(default_factory=list)
    sequential: Optional[Sequential] = None
    solved: Optional[Solved] = None
    diverged: str = "drop"

    @property
    def label(self) -> str:
        return "inferred (the sweep declared no family)" if self.inferred else "declared before the sweep ran"


def _bad(param: str, value: str, why: str) -> AnalysisError:
    return AnalysisError(f"parent run param {param} = {value!r}: {why}")


def _json(params: Dict[str, str], key: str) -> Any:
    text = params[key]
    try:
        return json.loads(text)
    except ValueError:
        raise _bad(key, text, "not valid JSON") from None


def infer_family(grid_arms: Sequence[str], baseline_arms: Sequence[str]) -> List[Tuple[str, str]]:
    """Every grid arm and every baseline against the first grid arm (the first baseline when
    there is no grid arm)."""
    arms = list(grid_arms) + list(baseline_arms)
    if not arms:
        return []
    ref = arms[0]
    return [(a, ref) for a in arms[1:]]


def read_design(params: Dict[str, str], grid_arms: Sequence[str], baseline_arms: Sequence[str]) -> Design:
    """The design from the parent run's params; the inferred family where none was declared."""
    arms = list(grid_arms) + list(baseline_arms)
    if P_FAMILY in params:
        raw = _json(params, P_FAMILY)
        if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                                and p[0] != p[1] for p in raw):
            raise _bad(P_FAMILY, params[P_FAMILY], "expected a list of [arm, vs_arm] pairs of two different arm names")
        family = [(a, b) for a, b in raw]
        if len(set(family)) != len(family):
            raise _bad(P_FAMILY, params[P_FAMILY], "a pair is listed twice")
        design = Design(family=family, inferred=False)
    else:
        design = Design(family=infer_family(grid_arms, baseline_arms), inferred=True)
    if P_ALPHA in params:
        try:
            alpha = float(params[P_ALPHA])
        except ValueError:
            raise _bad(P_ALPHA, params[P_ALPHA], "not a number") from None
        if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
            raise _bad(P_ALPHA, params[P_ALPHA], "must be in (0, 1)")
        design.alpha = alpha
    if P_REFERENCE in params:
        ref = _json(params, P_REFERENCE)
        if not isinstance(ref, dict):
            raise _bad(P_REFERENCE, params[P_REFERENCE], "expected a JSON object of settings")
        design.reference = ref
    design.reference_arm = params.get(P_REFERENCE_ARM) or (arms[0] if design.inferred and arms else None)
    if P_SEEDS in params:
        seeds = _json(params, P_SEEDS)
        if isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            design.seeds = list(seeds)
        elif isinstance(seeds, dict):
            try:
                seq = Sequential(int(seeds["initial"]), int(seeds["max"]), str(seeds.get("boundary", "obrien-fleming")),
                                 int(seeds.get("step", 1)))
            except (KeyError, TypeError, ValueError):
                raise _bad(P_SEEDS, params[P_SEEDS], "a sequential design needs integer 'initial' and 'max'") from None
            if not 2 <= seq.initial <= seq.maximum or seq.step < 1 or seq.boundary not in BOUNDARY_CHOICES:
                raise _bad(P_SEEDS, params[P_SEEDS],
                           f"need 2 <= initial <= max, step >= 1 and boundary in {', '.join(BOUNDARY_CHOICES)}")
            design.sequential = seq
        else:
            raise _bad(P_SEEDS, params[P_SEEDS], "expected a list of integer seeds or {initial, max, boundary}")
    if P_SOLVED in params:
        solved = _json(params, P_SOLVED)
        if solved is not None:
            if not isinstance(solved, dict) or not isinstance(solved.get("metric"), str) \
                    or not isinstance(solved.get("threshold"), (int, float)) or isinstance(solved.get("threshold"), bool):
                raise _bad(P_SOLVED, params[P_SOLVED], 'expected null or {"metric": KEY, "threshold": NUMBER}')
            design.solved = Solved(solved["metric"], float(solved["threshold"]))
    if P_DIVERGED in params:
        if params[P_DIVERGED] not in DIVERGED_CHOICES:
            raise _bad(P_DIVERGED, params[P_DIVERGED], f"must be one of {', '.join(DIVERGED_CHOICES)}")
        design.diverged = params[P_DIVERGED]
    return design


def _declared_tune(params: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The parent run's declared tuning stage (``sweep.tune``) as a dict, or None (none
    declared, or not readable)."""
    try:
        tune = json.loads(params.get(P_TUNE, "null"))
    except (TypeError, ValueError):
        return None
    return tune if isinstance(tune, dict) else None


def tune_select(params: Dict[str, str]) -> Optional[Tuple[str, str]]:
    """(metric, mode) a declared tuning stage selected on (``sweep.tune``), or None."""
    tune = _declared_tune(params)
    if tune is None or not tune.get("select"):
        return None
    return str(tune["select"]), str(tune.get("mode", "min"))


def tuned_keys(params: Dict[str, str]) -> List[str]:
    """The keys a declared tuning stage searched (its space and every per-arm space): each arm
    sets them for itself, by design."""
    tune = _declared_tune(params)
    if tune is None:
        return []
    spaces = [tune.get("space") or {}] + list((tune.get("arms") or {}).values())
    return sorted({k for space in spaces if isinstance(space, dict) for k in space})

"""Everything a report says, computed from a loaded sweep (pure: pandas and scipy).

:func:`analyse` reads the declared design (:mod:`analysis.design`), gathers each arm's values
(:func:`analysis.stats.arm_values`), summarises the arms, tests the declared family
(:mod:`analysis.compare`), decides which arm may be called best, maps arms to the paper, and
lists what may make a comparison unfair (:mod:`analysis.fairness`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pandas as pd

from analysis import compare, design as design_mod, fairness, scaling as scaling_mod
from analysis import paper as paper_mod
from analysis import stats, tables
from analysis.labels import metric_mode, metric_range
from analysis.load import SweepData
from gmlp_ablate import sequential
from gmlp_ablate.names import curve_metric
from gmlp_ablate.tuning import edge_side

TUNED_PREFIX = "train."


@dataclass
class Analysis:
    """The pure results a report is written from."""

    metric: str
    mode: str
    design: design_mod.Design
    order: List[str]
    arm_info: pd.DataFrame
    values: pd.DataFrame
    summary: pd.DataFrame
    family: pd.DataFrame
    best_note: str
    paper: pd.DataFrame
    orderings: pd.DataFrame
    csv: pd.DataFrame
    task: str
    bounds: Tuple[Optional[float], Optional[float]] = (None, None)
    baseline: Optional[str] = None
    """The arm of the exploratory ``--baseline`` view (None: no such view)."""
    exploratory: Optional[pd.DataFrame] = None
    warnings: List[str] = field(default_factory=list)
    plan: Optional[sequential.Plan] = None
    tuning: Optional[pd.DataFrame] = None
    tuning_edges: List[str] = field(default_factory=list)
    """One line per arm and tuned setting whose chosen value is the edge of the values tried."""
    tune_select: Optional[Tuple[str, str]] = None
    """(metric, mode) the tuning stage selected on (from the parent run's declared ``tune``)."""
    solved_steps: Optional[pd.DataFrame] = None
    """With a declared ``solved`` outcome and loaded curves: per seed, the first step its
    curve metric (``val/*`` for a ``test/*`` metric) reached the threshold."""
    scaling: Optional[scaling_mod.Scaling] = None
    """Power-law fits when the grid varies a size axis (:mod:`analysis.scaling`)."""


def mode_for(metric: str, sweep_metric: str, sweep_mode: str) -> str:
    """Direction of ``metric``: the sweep's for its own metric, else what the name says
    (accuracy and throughput up; losses, perplexity, bits per byte and times down)."""
    if metric == sweep_metric:
        return sweep_mode
    return metric_mode(metric) or sweep_mode


def arms_frame(data: SweepData) -> pd.DataFrame:
    """arm, baseline, factors of every arm with a finished or a current failed run."""
    cols = ["arm", "baseline", "factors"]
    parts = [f[cols] for f in (data.runs, data.failures) if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def tuning_summary(tune: Optional[pd.DataFrame], runs: pd.DataFrame) -> Optional[pd.DataFrame]:
    """Per arm with tune-stage runs: how many, and for each ``train.*`` setting that the tune
    runs varied (or that differs from the final runs) the values tried -> the final runs' value."""
    if tune is None or tune.empty:
        return None

    def values(frame: pd.DataFrame, key: str) -> List[str]:
        return sorted({tables.fmt_value(v) for v in frame[key]}) if key in frame.columns else []

    rows = []
    for arm, g in tune.groupby("arm", sort=False):
        row = {"arm": arm, "tune runs": len(g)}
        final = runs[runs["arm"] == arm]
        for k in (k for k in tune.columns if k.startswith(TUNED_PREFIX)):
            if len(set(values(g, k)) | set(values(final, k))) > 1:
                row[k] = f"{', '.join(values(g, k))} → {', '.join(values(final, k)) or '—'}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("—")


def tuned_keys(tune: pd.DataFrame) -> List[str]:
    """The ``train.*`` settings a tuning stage searched (more than one value tried in some arm),
    numeric ones only; ``train.steps`` is the tuning budget, not a searched setting."""
    keys = []
    for k in (k for k in tune.columns if k.startswith(TUNED_PREFIX) and k != "train.steps"):
        vals = pd.to_numeric(tune[k], errors="coerce")
        if vals.notna().all() and tune.assign(_v=vals).groupby("arm")["_v"].nunique().max() > 1:
            keys.append(k)
    return keys


def tuning_edges(tune: Optional[pd.DataFrame], runs: pd.DataFrame) -> List[str]:
    """Arms whose chosen setting (the final runs' value) is the smallest or largest value its
    search tried: the classic sign of a search range that did not contain the optimum."""
    if tune is None or tune.empty:
        return []
    out = []
    for k in tuned_keys(tune):
        for arm, g in tune.groupby("arm", sort=False):
            tried = sorted(set(pd.to_numeric(g[k]).tolist()))
            chosen = set(pd.to_numeric(runs.loc[runs["arm"] == arm, k], errors="coerce").dropna().tolist())
            if len(chosen) != 1:
                continue
            (v,) = chosen
            side = edge_side(tried, v)
            if side is not None:
                out.append(f"{arm}: `{k}` = {tables.fmt_value(v)} is the {side} value searched "
                           f"({', '.join(tables.fmt_value(x) for x in tried)}): the best setting may lie outside the range")
    return out


def analyse(data: SweepData, metric: str, baseline: Optional[str] = None) -> Analysis:
    """Summary per arm, the declared family's tests, best arm, paper columns and orderings."""
    meta, runs = data.meta, data.runs
    mode = mode_for(metric, meta.metric, meta.metric_mode)
    bounds = metric_range(metric)
    factors = [f for f in meta.factors if f in runs.columns]
    arms = arms_frame(data)
    order = stats.arm_order(arms, factors, meta.grid, meta.baselines)
    info = stats.arm_factors(arms, factors, order)
    grid_arms = [a for a in order if not info.loc[a, "baseline"]]
    design = design_mod.read_design(meta.params, grid_arms, [a for a in order if info.loc[a, "baseline"]])
    solved = design.solved if design.solved is not None and design.solved.metric == metric else None
    values = stats.arm_values(runs, data.failures, metric, mode, design.diverged, bounds)
    summary = stats.arm_summary(values, runs, data.failures, mode, order, bounds, solved)
    plan = None
    if design.sequential is not None and design.family:
        s = design.sequential
        plan = sequential.plan(s.initial, s.maximum, design.alpha, s.boundary, family_size=len(design.family), step=s.step)
    family = compare.family_table(values, design.family, design.alpha, bounds, plan=plan, solved=solved, mode=mode)
    _, best_note = compare.mark_best(summary, values, mode, design.alpha, bounds)
    exploratory = None
    if baseline is not None:
        pairs = [(a, baseline) for a in order if a != baseline]
        exploratory = compare.family_table(values, pairs, design.alpha, bounds, solved=solved, mode=mode)
    task = ", ".join(sorted({str(t) for t in runs.get("task.name", pd.Series(dtype=object)).dropna()})) or "?"
    ref = paper_mod.load_reference()
    rows = paper_mod.arm_rows(runs, order, factors, task)
    pcols = paper_mod.paper_columns(ref, rows, order)
    orderings = paper_mod.orderings(runs, values, summary, pcols, mode, factors, design.alpha, bounds)
    warn = [] if design.sequential is not None else fairness.added_seeds(
        [p.get("seeds", "") for p in meta.parents], values["seed"].dropna())
    warn += fairness.family_warnings(runs, list(design.family) + ([] if exploratory is None else
                                                                  list(zip(exploratory["a"], exploratory["b"]))),
                                    meta.factors, meta.baseline_overrides, meta.matches,
                                    tuned=design_mod.tuned_keys(meta.params))
    csv = tables.summary_frame(summary, info, pcols, factors, metric, mode)
    solved_steps = None
    if solved is not None and data.curves is not None and len(data.curves):
        solved_steps = stats.threshold_steps(data.curves, curve_metric(metric), solved.threshold, mode)
    axis = scaling_mod.size_axis(meta.grid)
    fits = scaling_mod.analyse_scaling(values, summary, runs, order, axis, mode, bounds) if axis else None
    return Analysis(metric=metric, mode=mode, design=design, order=order, arm_info=info, values=values,
                    summary=summary, family=family, best_note=best_note, paper=pcols, orderings=orderings, csv=csv,
                    task=task, bounds=bounds, baseline=baseline, exploratory=exploratory, warnings=warn, plan=plan,
                    tuning=tuning_summary(data.tune, runs), tuning_edges=tuning_edges(data.tune, runs),
                    tune_select=design_mod.tune_select(meta.params), scaling=fits,
                    solved_steps=solved_steps)


def comparisons_frame(an: Analysis) -> pd.DataFrame:
    """Every comparison the report shows, for ``comparisons.csv``: the family (``view`` =
    declared | inferred) and the exploratory view, if any."""
    parts = [an.family.assign(view="inferred" if an.design.inferred else "declared")]
    if an.exploratory is not None:
        parts.append(an.exploratory.assign(view=f"exploratory vs {an.baseline}"))
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    return out[["view"] + [c for c in out.columns if c != "view"]]

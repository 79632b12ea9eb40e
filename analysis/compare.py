"""Comparisons of two arms, the declared family with Holm's correction, which arm is "best",
and how many seeds an unresolved comparison would need.

Pure functions over the long values frame of :func:`analysis.stats.arm_values` (arm, seed,
value, diverged). Rules:

- **Paired by seed** where the design pairs: both arms have values for exactly the same
  seeds (same seed = same batches, held-out set and init), so the test is the paired t-test
  on the per-seed differences (``scipy.stats.ttest_rel``). Otherwise (a seed failed in one
  arm, different seed lists) Welch's t-test (``ttest_ind(equal_var=False)``). The test used
  is recorded per comparison.
- **No spread**: identical values on both sides give p = 1; a constant non-zero difference
  is resolved (p = 0), and the note says so. Fewer than two seeds on a side: p = 1
  (untestable, noted). A comparison is never dropped from the family.
- **Interval of the difference**: the test's t-interval when it lies inside the range a
  difference of the metric can take, else a percentile bootstrap (paired: of the per-seed
  differences; Welch: of the two samples).
- **Holm** over exactly the given family (:func:`family_table`); *resolved* = Holm-adjusted
  p < alpha (or, for a sequential design, the group-sequential decision).
- **Best**: the arm with the best mean, only when it has n >= 2 and its difference to the
  runner-up is resolved by the same test at level alpha (:func:`mark_best`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import LEVEL, better, bootstrap_interval, holm, is_solved, welch
from gmlp_ablate import sequential

Bounds = Tuple[Optional[float], Optional[float]]
POWER = 0.8


def delta_bounds(bounds: Bounds) -> Bounds:
    """Range of a difference of two values in ``bounds`` (unbounded unless both ends are known)."""
    lo, hi = bounds
    if lo is None or hi is None:
        return (None, None)
    return (lo - hi, hi - lo)


def _series(values: pd.DataFrame, arm: str) -> pd.Series:
    v = values[values["arm"] == arm]
    s = pd.Series(v["value"].to_numpy(dtype=float), index=v["seed"].to_numpy())
    return s[np.isfinite(s.to_numpy())]


def compare(values: pd.DataFrame, a: str, b: str, bounds: Bounds = (None, None), level: float = LEVEL) -> Dict[str, Any]:
    """Arm ``a`` against arm ``b``: delta = mean(a) - mean(b), its interval, the test and its p.

    Keys: a, b, test (``paired t`` | ``Welch t``), n_a, n_b, delta, delta_lo, delta_hi,
    interval (``t`` | ``bootstrap`` | ``none``), df, t, p, effect (standardised: mean
    difference / sd of the differences, or / pooled sd), note."""
    x, y = _series(values, a), _series(values, b)
    nan = float("nan")
    out: Dict[str, Any] = {"a": a, "b": b, "test": "", "n_a": len(x), "n_b": len(y), "delta": nan, "delta_lo": nan,
                           "delta_hi": nan, "interval": "none", "df": nan, "t": nan, "p": 1.0, "effect": nan, "note": ""}
    if len(x) == 0 or len(y) == 0:
        out["note"] = f"no values for {a if len(x) == 0 else b}: untestable (p = 1 in the family)"
        return out
    out["delta"] = float(x.mean() - y.mean())
    paired = len(x) >= 2 and set(x.index) == set(y.index)
    if paired:
        y = y.reindex(x.index)
        d = (x - y).to_numpy()
        out.update(test="paired t", df=float(len(d) - 1))
        if np.ptp(d) == 0:
            same = d[0] == 0
            out.update(p=1.0 if same else 0.0, delta_lo=float(d[0]), delta_hi=float(d[0]), interval="exact",
                       note="identical in every seed" if same else
                       "every seed differs by the same amount (no spread): resolved")
            return out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_rel(x.to_numpy(), y.to_numpy())
        ci = res.confidence_interval(level)
        out.update(t=float(res.statistic), p=float(res.pvalue), delta_lo=float(ci.low), delta_hi=float(ci.high),
                   interval="t", effect=float(d.mean() / d.std(ddof=1)))
        samples: Tuple[np.ndarray, ...] = (d,)
    else:
        out["test"] = "Welch t"
        if len(x) < 2 or len(y) < 2:
            out["note"] = "fewer than 2 seeds on a side: untestable (p = 1 in the family)"
            return out
        if np.ptp(x.to_numpy()) == 0 and np.ptp(y.to_numpy()) == 0:
            same = x.iloc[0] == y.iloc[0]
            out.update(p=1.0 if same else 0.0, delta_lo=out["delta"], delta_hi=out["delta"], interval="exact",
                       note="both arms constant and equal" if same else
                       "both arms constant, with different values (no spread): resolved")
            return out
        w = welch(x.to_numpy(), y.to_numpy(), level)
        pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        out.update(df=w["df"], t=w["t"], p=w["p"], delta_lo=w["delta_lo"], delta_hi=w["delta_hi"], interval="t",
                   effect=out["delta"] / pooled if pooled > 0 else nan)
        samples = (x.to_numpy(), y.to_numpy())
    lo, hi = delta_bounds(bounds)
    if (lo is not None and out["delta_lo"] < lo) or (hi is not None and out["delta_hi"] > hi):
        out["delta_lo"], out["delta_hi"] = bootstrap_interval(*samples, level=level)
        out["interval"] = "bootstrap"
    return out


def seeds_for_power(row: Dict[str, Any], alpha: float, power: float = POWER) -> Optional[int]:
    """Seeds (per arm) a fixed design would need for ``power`` at level ``alpha`` for an effect
    equal to the observed standardised difference; None when not estimable or > 1000."""
    return sequential.seeds_needed(row["effect"], alpha, power, paired=row["test"] == "paired t")


def compare_solved(values: pd.DataFrame, a: str, b: str, threshold: float, mode: str) -> Dict[str, Any]:
    """Solved counts of two arms (a seed solves when its value reaches ``threshold``: >= for
    ``max``, <= for ``min``) and an exact test of their difference: on the same seeds the
    exact McNemar test (``binomtest`` on the discordant seeds), else Fisher's exact test.
    Keys: solved_a, solved_b (``k/n``), solved_test, p_solved."""
    x, y = _series(values, a), _series(values, b)
    sa, sb = is_solved(x.to_numpy(), threshold, mode), is_solved(y.to_numpy(), threshold, mode)
    out: Dict[str, Any] = {"solved_a": f"{int(sa.sum())}/{len(sa)}", "solved_b": f"{int(sb.sum())}/{len(sb)}",
                           "solved_test": "", "p_solved": float("nan")}
    if len(x) == 0 or len(y) == 0:
        return out
    if set(x.index) == set(y.index):
        sb = is_solved(y.reindex(x.index).to_numpy(), threshold, mode)
        only_a, only_b = int((sa & ~sb).sum()), int((~sa & sb).sum())
        p = 1.0 if only_a + only_b == 0 else sps.binomtest(only_a, only_a + only_b, 0.5).pvalue
        out.update(solved_test="exact McNemar", p_solved=float(p))
    else:
        table = [[int(sa.sum()), int((~sa).sum())], [int(sb.sum()), int((~sb).sum())]]
        out.update(solved_test="Fisher exact", p_solved=float(sps.fisher_exact(table).pvalue))
    return out


def family_table(values: pd.DataFrame, pairs: Sequence[Tuple[str, str]], alpha: float, bounds: Bounds = (None, None),
                 level: float = LEVEL, plan: Optional[sequential.Plan] = None, solved: Optional[Any] = None,
                 mode: str = "max") -> pd.DataFrame:
    """One row per pair of the family, in the given order: :func:`compare`'s keys plus p_holm
    (Holm over exactly these pairs), resolved, decision (how it was resolved) and
    seeds_needed (unresolved ones: seeds per arm for 80% power at alpha / m, the Bonferroni
    level, which is conservative for Holm).

    With a sequential ``plan`` the decision is :func:`gmlp_ablate.sequential.decide` at the
    last look reached (by the comparison with the most paired seeds: the runner stops adding
    seeds to a comparison once it is decided), on each comparison's paired differences. With a declared ``solved`` outcome (an object with ``threshold``) each row
    also compares the solved counts (:func:`compare_solved`; a secondary, unadjusted test)."""
    cols = ["a", "b", "test", "n_a", "n_b", "delta", "delta_lo", "delta_hi", "interval", "df", "t", "p", "effect",
            "note", "p_holm", "resolved", "decision", "seeds_needed"]
    solved_cols = ["solved_a", "solved_b", "solved_test", "p_solved"]
    if not pairs:
        return pd.DataFrame(columns=cols + (solved_cols if solved is not None else []))
    rows = [compare(values, a, b, bounds, level) for a, b in pairs]
    if solved is not None:
        for row, (a, b) in zip(rows, pairs):
            row.update(compare_solved(values, a, b, solved.threshold, mode))
        cols = cols + solved_cols
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df["p"].to_numpy(dtype=float))
    m = len(df)
    if plan is None:
        df["resolved"] = df["p_holm"] < alpha
        df["decision"] = np.where(df["resolved"], f"Holm p < {alpha:g}", f"Holm p >= {alpha:g}")
    else:
        df["resolved"], df["decision"] = _sequential(values, pairs, plan)
    df["seeds_needed"] = [None if r else seeds_for_power(row, alpha / m)
                          for r, row in zip(df["resolved"], rows)]
    return df[cols]


def _sequential(values: pd.DataFrame, pairs: Sequence[Tuple[str, str]], plan: sequential.Plan) -> Tuple[List[bool], List[str]]:
    diffs: Dict[str, np.ndarray] = {}
    for a, b in pairs:
        x, y = _series(values, a), _series(values, b)
        common = sorted(set(x.index) & set(y.index))
        diffs[f"{a}\x1f{b}"] = (x.reindex(common) - y.reindex(common)).to_numpy()
    # The runner adds seeds only to comparisons still open, so the last look reached is the
    # one the most-seeded comparison reached; a comparison decided earlier keeps its shorter
    # data, exactly as the runner's decisions saw it.
    n = max((len(d) for d in diffs.values()), default=0)
    reached = [k for k, size in enumerate(plan.looks) if size <= n]
    if not reached:
        return [False] * len(pairs), [f"sequential: first look needs {plan.looks[0]} paired seeds"] * len(pairs)
    look = reached[-1]
    dec = sequential.decide(plan, diffs, look)
    out_r, out_d = [], []
    for a, b in pairs:
        d = dec[f"{a}\x1f{b}"]
        out_r.append(d.status == sequential.RESOLVED)
        where = f" at look {d.resolved_at + 1} ({plan.looks[d.resolved_at]} seeds)" if d.resolved_at is not None else ""
        out_d.append(f"sequential ({plan.boundary}, look {look + 1} of {len(plan.looks)}): {d.status}{where}")
    return out_r, out_d


def mark_best(summary: pd.DataFrame, values: pd.DataFrame, mode: str, alpha: float, bounds: Bounds = (None, None),
              level: float = LEVEL) -> Tuple[Optional[str], str]:
    """Set ``summary["best"]`` on the arm with the best mean when it has n >= 2 and its
    difference to the runner-up is resolved (p < alpha, the same paired/Welch test, not
    adjusted); returns (best arm or None, a sentence saying why)."""
    ranked = summary[summary["n"] > 0].sort_values("mean", ascending=(mode == "min"), kind="stable")
    if len(ranked) < 2:
        return None, "no arm is marked best (fewer than two arms with values)"
    top, second = ranked.index[0], ranked.index[1]
    if not better(ranked.loc[top, "mean"], ranked.loc[second, "mean"], mode):
        return None, f"no arm is marked best: {top} and {second} have the same mean"
    if int(ranked.loc[top, "n"]) < 2:
        return None, f"no arm is marked best: the arm with the best mean ({top}) has a single seed"
    c = compare(values, top, second, bounds, level)
    if not c["p"] < alpha:
        return None, (f"no arm is marked best: {top} (best mean) vs the runner-up {second} is not resolved "
                      f"({c['test']}, p = {c['p']:.3g})")
    summary.loc[top, "best"] = True
    return top, f"bold: {top}, resolved against the runner-up {second} ({c['test']}, p = {c['p']:.3g}, unadjusted)"

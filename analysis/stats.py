"""Statistics over seeds: per-arm means with t-intervals, Welch deltas to a baseline, Holm.

Pure functions over pandas objects. Conventions:

- CI: two-sided 95% Student-t interval of the mean, ``t_{0.975, n-1} * s / sqrt(n)`` with the
  sample standard deviation ``s`` (ddof=1). One seed gives no interval (NaN).
- Delta of an arm to the baseline: ``mean(arm) - mean(baseline)``; its CI uses the Welch
  standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)`` and the Welch-Satterthwaite degrees of
  freedom; the p-value is Welch's two-sided t-test (``scipy.stats.ttest_ind(equal_var=False)``).
- Holm's step-down correction across the arms compared with the baseline (the family is
  the arms with a defined p-value).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95


def t_halfwidth(std: float, n: int, level: float = LEVEL) -> float:
    """Half-width of the two-sided t-interval of a mean; NaN for n < 2."""
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(sps.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def describe(values: Iterable[float], level: float = LEVEL) -> Dict[str, float]:
    """n, mean, std (ddof=1), CI half-width, CI bounds of finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    hw = t_halfwidth(std, n, level)
    return {"n": n, "mean": mean, "std": std, "ci": hw, "ci_lo": mean - hw, "ci_hi": mean + hw}


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Dict[str, float]:
    """Welch comparison of two samples: delta = mean(a) - mean(b), its CI, df, t and p, all
    from ``scipy.stats.ttest_ind(equal_var=False)`` (its ``df`` and ``confidence_interval``).

    NaN where either sample has fewer than two values. Two constant samples give a zero-width
    CI and NaN t/p (no variance to test against).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    nan = float("nan")
    out = {"delta": nan, "se": nan, "df": nan, "delta_lo": nan, "delta_hi": nan, "t": nan, "p": nan}
    if len(x) == 0 or len(y) == 0:
        return out
    out["delta"] = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return out
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    out["se"] = se
    if se == 0:
        out["delta_lo"] = out["delta_hi"] = out["delta"]
        return out
    res = sps.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(level)
    out.update(df=float(res.df), delta_lo=float(ci.low), delta_hi=float(ci.high), t=float(res.statistic),
               p=float(res.pvalue))
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in input order; NaN stays NaN (not in the family).

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def better(a: float, b: float, mode: str) -> bool:
    """Whether value ``a`` is strictly better than ``b`` under ``mode`` (min | max)."""
    return a < b if mode == "min" else a > b


def rank(means: pd.Series, mode: str) -> pd.Series:
    """1 = best; ties share the lower rank; NaN means rank last (NaN)."""
    return means.rank(ascending=(mode == "min"), method="min")


def pareto_front(cost: Sequence[float], quality: Sequence[float], mode: str) -> np.ndarray:
    """Mask of points not dominated: no other point has cost <= and quality at least as good,
    with one of the two strictly better. NaN points are never on the front."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float)
    q = q if mode == "min" else -q
    ok = np.isfinite(c) & np.isfinite(q)
    front = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (q <= q[i]) & ((c < c[i]) | (q < q[i]))
        front[i] = not dominated.any()
    return front


# --------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------


def _value_key(v: Any, order: List[Any]) -> tuple:
    for i, o in enumerate(order):
        if type(v) is type(o) and v == o:
            return (0, i, "")
    try:
        return (1, float(v), "")
    except (TypeError, ValueError):
        return (2, 0.0, str(v))


def arm_order(runs: pd.DataFrame, factors: Sequence[str] = (), grid: Optional[Dict[str, List[Any]]] = None,
              baselines: Sequence[str] = ()) -> List[str]:
    """Arms in a stable reading order: grid arms by factor values (sweep-file value order,
    first factor slowest, as the grid expands), then baseline arms in sweep-file order."""
    grid = grid or {}
    arms = runs.drop_duplicates("arm").set_index("arm")
    grid_arms = [a for a in arms.index if not bool(arms.loc[a, "baseline"])]
    base_arms = [a for a in arms.index if bool(arms.loc[a, "baseline"])]

    def key(arm: str) -> tuple:
        cell = arms.loc[arm, "factors"] if "factors" in arms.columns else {}
        cell = cell if isinstance(cell, dict) else {}
        return tuple(_value_key(cell.get(f), list(grid.get(f, []))) for f in factors) + ((0, 0.0, arm),)

    grid_arms.sort(key=key)
    listed = [b for b in baselines if b in base_arms]
    return grid_arms + listed + sorted(b for b in base_arms if b not in listed)


def median_by_arm(runs: pd.DataFrame, column: str) -> pd.Series:
    """Median of a column per arm (NaN where the column is missing)."""
    if column not in runs.columns:
        return pd.Series(np.nan, index=pd.Index(runs["arm"].unique(), name="arm"))
    return runs.groupby("arm")[column].median()


def arm_summary(runs: pd.DataFrame, metric: str, baseline: Optional[str], mode: str,
                order: Optional[Sequence[str]] = None, level: float = LEVEL) -> pd.DataFrame:
    """Per-arm table (index: arm, in ``order``): n, mean, std, ci, ci_lo, ci_hi, rank, best,
    delta vs ``baseline`` with Welch CI / df / t / p, Holm-adjusted p (``p_holm``),
    ``delta_pct`` (delta as % of the baseline mean), and medians of params, FLOPs/token and
    tokens/s. The baseline's own delta columns are NaN.
    """
    order = list(order) if order is not None else list(dict.fromkeys(runs["arm"]))
    groups = {a: g[metric].to_numpy(dtype=float) for a, g in runs.groupby("arm")}
    rows = []
    for arm in order:
        vals = groups.get(arm, np.array([]))
        row: Dict[str, Any] = {"arm": arm, **describe(vals, level)}
        if baseline is not None and arm != baseline:
            w = welch(vals, groups.get(baseline, np.array([])), level)
            row.update(delta=w["delta"], delta_lo=w["delta_lo"], delta_hi=w["delta_hi"],
                       welch_df=w["df"], t=w["t"], p=w["p"])
        rows.append(row)
    df = pd.DataFrame(rows).set_index("arm")
    for col in ("delta", "delta_lo", "delta_hi", "welch_df", "t", "p"):
        if col not in df.columns:
            df[col] = np.nan
    df["p_holm"] = holm(df["p"].to_numpy())
    if baseline is not None and baseline in df.index:
        df["delta_pct"] = 100.0 * df["delta"] / abs(df.loc[baseline, "mean"])
    else:
        df["delta_pct"] = np.nan
    df["rank"] = rank(df["mean"], mode)
    df["best"] = df["rank"] == 1
    for col, name in (("model/params", "params"), ("model/flops_per_token", "flops_per_token"),
                      ("perf/tokens_per_s", "tokens_per_s")):
        df[name] = median_by_arm(runs, col).reindex(df.index)
    return df


def arm_factors(runs: pd.DataFrame, factors: Sequence[str], arms: Sequence[str]) -> pd.DataFrame:
    """Per arm: its grid value of each factor (None for baseline arms) and ``baseline``."""
    first = runs.drop_duplicates("arm").set_index("arm").reindex(list(arms))
    out = pd.DataFrame(index=first.index)
    out["baseline"] = first["baseline"].astype(bool)
    for f in factors:
        out[f] = pd.Series([cell.get(f) if isinstance(cell, dict) else None for cell in first["factors"]],
                           index=out.index, dtype=object)
    return out


def curve_bands(curves: pd.DataFrame, metric: str, level: float = LEVEL) -> pd.DataFrame:
    """Per arm and step: n, mean, std and t-interval half-width over seeds of ``metric``."""
    c = curves[curves["metric"] == metric]
    g = c.groupby(["arm", "step"])["value"]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    tcrit = sps.t.ppf(0.5 + level / 2, np.maximum(out["n"] - 1, 1))
    out["ci"] = np.where(out["n"] > 1, tcrit * out["std"] / np.sqrt(out["n"]), np.nan)
    return out


def pairwise(runs: pd.DataFrame, metric: str, a: str, b: str, level: float = LEVEL) -> Dict[str, float]:
    """Welch comparison of arm ``a`` against arm ``b`` on ``metric`` (unadjusted)."""
    va = runs.loc[runs["arm"] == a, metric].to_numpy(dtype=float)
    vb = runs.loc[runs["arm"] == b, metric].to_numpy(dtype=float)
    return welch(va, vb, level)

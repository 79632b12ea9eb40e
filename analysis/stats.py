"""Statistics over seeds: per-arm means with intervals that respect the metric, Welch's test, Holm.

Pure functions over pandas objects. Conventions:

- The values of an arm are its seeds' final values of the metric (:func:`arm_values`); a seed
  whose loss went non-finite is *diverged*: left out (and counted) or, with the declared
  ``diverged: worst``, counted as the worst value (:func:`worst_value`).
- Interval of an arm's mean (:func:`mean_interval`): the two-sided Student-t interval
  ``t_{0.975, n-1} * s / sqrt(n)`` (ddof=1) when it lies inside the metric's range; otherwise
  (an accuracy near 1, seeds that split into solved and unsolved) a percentile bootstrap
  (``scipy.stats.bootstrap``), which never leaves the range of the data. The method is
  recorded per arm. One seed gives no interval.
- A declared *solved* outcome (metric past a threshold) gets the exact binomial interval of
  the solved fraction (``scipy.stats.binomtest(...).proportion_ci(method="exact")``).
- Holm's step-down correction over a family of p-values.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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


def worst_value(values: pd.Series, mode: str, bounds: Tuple[Optional[float], Optional[float]]) -> float:
    """The value a diverged seed counts as under ``diverged: worst``: the metric's bound on
    the bad side where it has one (accuracy 0), else the worst finite value observed."""
    lo, hi = bounds
    bound = hi if mode == "min" else lo
    if bound is not None:
        return float(bound)
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        return float("nan")
    return float(finite.max() if mode == "min" else finite.min())


def arm_values(runs: pd.DataFrame, failures: pd.DataFrame, metric: str, mode: str, diverged: str = "drop",
               bounds: Tuple[Optional[float], Optional[float]] = (None, None)) -> pd.DataFrame:
    """Long frame arm, seed, value, diverged: one row per finished seed, plus one per diverged
    seed (a FAILED run whose loss went non-finite, with no finished rerun of its key).

    A finished run whose metric is non-finite is diverged too. With ``diverged="drop"`` a
    diverged seed's value is NaN (left out of every statistic, counted); with ``"worst"`` it
    is :func:`worst_value`."""
    rows = pd.DataFrame({"arm": runs["arm"].to_numpy(), "seed": pd.to_numeric(runs["seed"]).to_numpy(),
                         "value": pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)
                         if metric in runs.columns else np.full(len(runs), np.nan)})
    rows["diverged"] = ~np.isfinite(rows["value"].to_numpy(dtype=float)) & (
        runs[metric].notna().to_numpy() if metric in runs.columns else False)
    div = failures[failures["diverged"].astype(bool) & ~failures["resolved"].astype(bool)] if len(failures) else failures
    if len(div):
        extra = pd.DataFrame({"arm": div["arm"].to_numpy(), "seed": pd.to_numeric(div["seed"]).to_numpy(),
                              "value": np.nan, "diverged": True})
        extra = extra.drop_duplicates(["arm", "seed"])
        rows = pd.concat([rows, extra], ignore_index=True)
    worst = worst_value(rows["value"], mode, bounds)
    rows["value"] = np.where(rows["diverged"], worst if diverged == "worst" else np.nan, rows["value"])
    rows = rows.drop_duplicates(["arm", "seed"], keep="first")
    return rows.sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)


def mean_interval(x: Sequence[float], bounds: Tuple[Optional[float], Optional[float]] = (None, None),
                  level: float = LEVEL) -> Tuple[float, float, str]:
    """(low, high, method) of the mean of ``x``: ``t`` when the t-interval lies inside
    ``bounds``, else ``bootstrap`` (percentile, 9,999 resamples, fixed seed); ``none`` for n < 2."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan"), float("nan"), "none"
    hw = t_halfwidth(float(x.std(ddof=1)), len(x), level)
    lo, hi = float(x.mean() - hw), float(x.mean() + hw)
    inside = (bounds[0] is None or lo >= bounds[0]) and (bounds[1] is None or hi <= bounds[1])
    if inside:
        return lo, hi, "t"
    return (*bootstrap_interval(x, level=level), "bootstrap")


def bootstrap_interval(*samples: np.ndarray, level: float = LEVEL) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean (one sample) or of the difference of means
    (two independent samples): it stays inside the range the data can produce."""
    if len(samples) == 1:
        x = samples[0]
        if np.ptp(x) == 0:
            return float(x[0]), float(x[0])
        stat = lambda a, axis: np.mean(a, axis=axis)  # noqa: E731
    else:
        if np.ptp(samples[0]) == 0 and np.ptp(samples[1]) == 0:
            d = float(samples[0][0] - samples[1][0])
            return d, d
        stat = lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(samples, stat, confidence_level=level, method="percentile", n_resamples=9999,
                            rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def solved_interval(k: int, n: int, level: float = LEVEL) -> Tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a solved fraction k / n."""
    if n == 0:
        return float("nan"), float("nan")
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def is_solved(values: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    return values >= threshold if mode == "max" else values <= threshold


def threshold_steps(curves: pd.DataFrame, metric: str, threshold: float, mode: str) -> pd.DataFrame:
    """Per run (arm, seed): the first logged step at which ``metric`` reaches ``threshold``
    (``step`` NaN when it never does), from the tidy histories of :mod:`analysis.frames`."""
    c = curves[curves["metric"] == metric].sort_values("step")
    rows = []
    for (arm, seed), g in c.groupby(["arm", "seed"], sort=False):
        hit = g.loc[is_solved(g["value"].to_numpy(dtype=float), threshold, mode), "step"]
        rows.append({"arm": arm, "seed": seed, "step": float(hit.iloc[0]) if len(hit) else float("nan")})
    return pd.DataFrame(rows, columns=["arm", "seed", "step"])


def arm_summary(values: pd.DataFrame, runs: pd.DataFrame, failures: pd.DataFrame, mode: str, order: Sequence[str],
                bounds: Tuple[Optional[float], Optional[float]] = (None, None), solved: Optional[Any] = None,
                level: float = LEVEL) -> pd.DataFrame:
    """Per-arm table (index: arm, in ``order``): n (seeds in the statistics), n_diverged,
    n_failed (FAILED runs of the current config without a finished rerun, not diverged),
    mean, std, ci (t half-width, NaN for other methods), ci_lo, ci_hi, interval (method),
    solved_k / solved_n / solved_lo / solved_hi (``solved``: a :class:`analysis.design.Solved`
    for this metric), rank, best (False: set by :func:`analysis.compare.mark_best`) and medians
    of params, FLOPs/token and tokens/s."""
    rows = []
    fails = failures[~failures["resolved"].astype(bool) & ~failures["diverged"].astype(bool)] if len(failures) else failures
    for arm in order:
        v = values[values["arm"] == arm]
        x = v["value"].to_numpy(dtype=float)
        x = x[np.isfinite(x)]
        d = describe(x, level)
        lo, hi, method = mean_interval(x, bounds, level)
        row: Dict[str, Any] = {"arm": arm, "n": d["n"], "n_diverged": int(v["diverged"].sum()),
                               "n_failed": int((fails["arm"] == arm).sum()) if len(fails) else 0,
                               "mean": d["mean"], "std": d["std"], "ci": d["ci"] if method == "t" else float("nan"),
                               "ci_lo": lo, "ci_hi": hi, "interval": method}
        if solved is not None:
            k = int(is_solved(x, solved.threshold, mode).sum())
            row.update(solved_k=k, solved_n=len(x))
            row["solved_lo"], row["solved_hi"] = solved_interval(k, len(x), level)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("arm")
    df["rank"] = rank(df["mean"], mode)
    df["best"] = False
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



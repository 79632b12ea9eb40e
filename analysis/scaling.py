"""Scaling fits: how an arm family's metric falls with its size (pure: numpy, pandas, scipy).

A sweep is a scaling study when its grid varies a size axis (``model.dim`` or
``model.depth``) over at least three values: the report then fits, per *series* (the arms
that differ only in size), a power law ``metric = a * x ** b`` against parameters and
against FLOPs per token, and says where two series' fitted curves cross.

- **Series.** Arms whose model settings are equal once the size keys (:data:`SIZE_KEYS`)
  are left out: the grid's ``dim=96,attn_dim=null`` and ``dim=192,attn_dim=null`` are one
  series, and so are baselines that differ only in the width a ``match`` gave them.
- **Fit.** Least squares of ``log(metric)`` on ``log(x)`` over the sizes' seed means (each
  size one point, so sizes with more seeds do not weigh more). A metric that improves
  upwards and lives in [0, 1] (accuracy) is fitted as its error, ``1 - metric``.
- **Intervals.** Bootstrap over seeds within each size (each resample redraws every size's
  seeds with replacement and refits), percentile 95% intervals of the exponent ``b`` and of
  the crossing point; a fixed generator seed makes the report reproducible. The bootstrap
  sees seed noise only; a second interval, from the fit's residuals (t with sizes - 2
  degrees of freedom), sees how far the sizes stray from a power law. Two exponents are
  called different only when both intervals of their difference exclude zero.
- **Crossing.** Two fitted lines in log-log space cross at one ``x`` unless their exponents
  are equal. The report says whether that point lies inside the measured range (both
  series' sizes overlap there), beyond it (larger models than measured: an extrapolation),
  below it, and in what share of the bootstrap resamples each holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import LEVEL

SIZE_AXES = ("model.dim", "model.depth")
"""Grid axes that make a sweep a scaling study (with at least :data:`MIN_SIZES` values)."""
SIZE_KEYS = ("model.dim", "model.depth", "model.heads", "model.ff_mult")
"""Model keys left out when arms are grouped into series (a matched baseline's width, or
heads scaled with it, does not start a new series)."""
MIN_SIZES = 3
XS = {"params": "params", "flops_per_token": "FLOPs/token"}
"""The x axes fitted: arm summary column -> label."""
RESAMPLES = 2000


@dataclass
class Scaling:
    """Fits of one scaling sweep."""

    size_axis: str
    transform: str
    """``metric`` or ``1 - metric`` (what was fitted in log space)."""
    series: pd.DataFrame
    """Per arm: series label, size (params, flops_per_token), mean and n."""
    fits: pd.DataFrame
    """Per series and x: n_sizes, x_min, x_max, exponent, lo, hi (bootstrap), se_fit, fit_lo,
    fit_hi (from the residuals), coefficient, r2."""
    crossings: pd.DataFrame
    """Per pair of series and x: crossing (x value or NaN), lo, hi, where, the bootstrap
    shares in / above / below the measured range, and the exponent difference db (a - b)
    with its bootstrap interval db_lo, db_hi and its residual interval db_fit_lo, db_fit_hi."""

    def fitted(self, values: np.ndarray) -> np.ndarray:
        """What the fits are of: the metric itself, or its error ``1 - metric``."""
        return fitted_values(values, self.transform)

    def label(self, metric: str) -> str:
        """The fitted quantity's name: ``test/bpb`` or ``1 - test/acc``."""
        return f"1 - {metric}" if self.transform != "metric" else metric


def size_axis(grid: Dict[str, List]) -> Optional[str]:
    """The grid axis that makes this sweep a scaling study, or None."""
    for key in SIZE_AXES:
        if len(grid.get(key, []) or []) >= MIN_SIZES:
            return key
    return None


def _label(key: Tuple, names: Sequence[str], differing: Sequence[int]) -> str:
    """``gmlp, attn_dim=16``: the architecture, then each differing setting that is not at
    its default (a gMLP's unused ``pos=learned`` or ``attn_dim=null`` says nothing)."""
    from gmlp_ablate.models.config import ModelConfig

    defaults = ModelConfig()
    parts = []
    for i in differing:
        v, short = key[i], names[i].split(".", 1)[-1]
        if short == "arch":
            parts.append(str(v))
        elif str(v) != str("null" if getattr(defaults, short, object()) is None else getattr(defaults, short, object())):
            parts.append(f"{short}={v}")
    return ", ".join(parts) or "all"


def series_of(runs: pd.DataFrame, order: Sequence[str]) -> pd.Series:
    """Series label per arm (index: arm): the model settings other than size that tell the
    series apart, e.g. ``gmlp, attn_dim=16`` or ``transformer, pos=rotary``."""
    first = runs.drop_duplicates("arm").set_index("arm").reindex(list(order))
    names = sorted(c for c in first.columns if c.startswith("model.") and c not in SIZE_KEYS)
    keys = [tuple("null" if pd.isna(v) else v for v in row) for row in first[names].itertuples(index=False)]
    distinct = sorted(set(keys), key=str)
    differing = [i for i in range(len(names)) if len({k[i] for k in distinct}) > 1]
    if names and "model.arch" in names:  # name the architecture first, always
        arch = names.index("model.arch")
        differing = [arch] + [i for i in differing if i != arch]
    return pd.Series([_label(k, names, differing) for k in keys], index=first.index, name="series")


def _transform(mode: str, bounds: Tuple[Optional[float], Optional[float]]) -> str:
    return "1 - metric" if mode == "max" and bounds == (0.0, 1.0) else "metric"


def fitted_values(values: np.ndarray, transform: str) -> np.ndarray:
    """``values`` as the fits see them under ``transform`` (see :meth:`Scaling.fitted`)."""
    return 1.0 - values if transform != "metric" else values


def _fit(logx: np.ndarray, logy: np.ndarray) -> Tuple[float, float]:
    """Slope and intercept of the least-squares line (NaN with fewer than 2 distinct x)."""
    if len(np.unique(logx)) < 2:
        return float("nan"), float("nan")
    b, c = np.polyfit(logx, logy, 1)
    return float(b), float(c)


def _slope_se(logx: np.ndarray, resid: np.ndarray) -> float:
    """Standard error of a least-squares slope from its residuals (n - 2 degrees of freedom):
    how far the sizes' means stray from a straight line in log-log space, which seed noise
    alone (the bootstrap) does not show."""
    n = len(logx)
    sxx = float(np.sum((logx - logx.mean()) ** 2))
    return float(np.sqrt(np.sum(resid ** 2) / (n - 2) / sxx)) if n > 2 and sxx > 0 else float("nan")


def _where(logx: float, lo: float, hi: float) -> str:
    if not np.isfinite(logx):
        return "none"
    return "within" if lo <= logx <= hi else ("beyond" if logx > hi else "below")


def analyse_scaling(values: pd.DataFrame, summary: pd.DataFrame, runs: pd.DataFrame, order: Sequence[str],
                    axis: str, mode: str, bounds: Tuple[Optional[float], Optional[float]] = (None, None),
                    level: float = LEVEL, resamples: int = RESAMPLES) -> Optional[Scaling]:
    """Power-law fits per series; None when no series has :data:`MIN_SIZES` sizes."""
    transform = _transform(mode, bounds)
    label = series_of(runs, order)
    vals = values[np.isfinite(values["value"].astype(float))]
    per_arm: Dict[str, np.ndarray] = {}
    for arm in order:
        y = vals.loc[vals["arm"] == arm, "value"].to_numpy(dtype=float)
        y = fitted_values(y, transform)
        if len(y) and np.all(y > 0):
            per_arm[arm] = y
    table = pd.DataFrame({"series": label, "params": summary["params"].reindex(label.index),
                          "flops_per_token": summary["flops_per_token"].reindex(label.index),
                          "mean": [float(np.mean(per_arm[a])) if a in per_arm else np.nan for a in label.index],
                          "n": [len(per_arm.get(a, [])) for a in label.index]})
    table = table[table["n"] > 0]
    groups = {s: g for s, g in table.groupby("series", sort=False) if g["params"].nunique() >= MIN_SIZES}
    if not groups:
        return None
    rng = np.random.default_rng(0)
    alpha = 1.0 - level
    boot: Dict[Tuple[str, str], np.ndarray] = {}
    fit_rows = []
    for s, g in groups.items():
        arms = list(g.index)
        draws = np.stack([np.log([rng.choice(per_arm[a], size=len(per_arm[a])).mean() for a in arms])
                          for _ in range(resamples)])  # (resamples, sizes)
        logy = np.log(g["mean"].to_numpy(dtype=float))
        for xcol in XS:
            logx = np.log(g[xcol].to_numpy(dtype=float))
            b, c = _fit(logx, logy)
            pred = c + b * logx
            ss = float(np.sum((logy - logy.mean()) ** 2))
            r2 = 1.0 - float(np.sum((logy - pred) ** 2)) / ss if ss > 0 else float("nan")
            A = np.vstack([logx, np.ones_like(logx)]).T
            coefs = np.linalg.lstsq(A, draws.T, rcond=None)[0]  # (2, resamples)
            boot[(s, xcol)] = coefs
            lo, hi = np.quantile(coefs[0], [alpha / 2, 1 - alpha / 2])
            se = _slope_se(logx, logy - pred)
            tq = sps.t.ppf(1 - alpha / 2, len(arms) - 2) if len(arms) > 2 else np.nan
            fit_rows.append({"series": s, "x": xcol, "n_sizes": len(arms), "x_min": float(np.exp(logx.min())),
                             "x_max": float(np.exp(logx.max())), "exponent": b, "lo": float(lo), "hi": float(hi),
                             "se_fit": se, "fit_lo": b - tq * se, "fit_hi": b + tq * se,
                             "coefficient": float(np.exp(c)), "r2": r2})
    fits = pd.DataFrame(fit_rows)
    cross_rows = []
    names = list(groups)
    for i, s1 in enumerate(names):
        for s2 in names[i + 1:]:
            for xcol in XS:
                f1 = fits[(fits["series"] == s1) & (fits["x"] == xcol)].iloc[0]
                f2 = fits[(fits["series"] == s2) & (fits["x"] == xcol)].iloc[0]
                lo_x = np.log(max(f1["x_min"], f2["x_min"]))
                hi_x = np.log(min(f1["x_max"], f2["x_max"]))
                if lo_x > hi_x:  # ranges do not overlap: "within" means within either
                    lo_x, hi_x = np.log(min(f1["x_min"], f2["x_min"])), np.log(max(f1["x_max"], f2["x_max"]))
                db = f1["exponent"] - f2["exponent"]
                logx_star = (np.log(f2["coefficient"]) - np.log(f1["coefficient"])) / db if db != 0 else np.nan
                c1, c2 = boot[(s1, xcol)], boot[(s2, xcol)]
                with np.errstate(divide="ignore", invalid="ignore"):
                    stars = (c2[1] - c1[1]) / (c1[0] - c2[0])
                where = np.array([_where(v, lo_x, hi_x) for v in stars])
                dlo, dhi = np.quantile(c1[0] - c2[0], [alpha / 2, 1 - alpha / 2])
                se_d = float(np.hypot(f1["se_fit"], f2["se_fit"]))
                df_d = f1["n_sizes"] + f2["n_sizes"] - 4
                tq = sps.t.ppf(1 - alpha / 2, df_d) if df_d > 0 else np.nan
                finite = stars[np.isfinite(stars)]
                qlo, qhi = (np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if len(finite) else (np.nan, np.nan))
                with np.errstate(over="ignore"):  # a far extrapolation may overflow: inf, still "beyond"
                    x_star, x_lo, x_hi = np.exp([logx_star, qlo, qhi])
                cross_rows.append({
                    "series_a": s1, "series_b": s2, "x": xcol,
                    "crossing": float(x_star) if np.isfinite(logx_star) else float("nan"),
                    "lo": float(x_lo), "hi": float(x_hi),
                    "where": _where(logx_star, lo_x, hi_x),
                    "share_within": float(np.mean(where == "within")), "share_beyond": float(np.mean(where == "beyond")),
                    "share_below": float(np.mean(where == "below")),
                    "range_lo": float(np.exp(lo_x)), "range_hi": float(np.exp(hi_x)),
                    "db": float(db), "db_lo": float(dlo), "db_hi": float(dhi),
                    "db_fit_lo": float(db - tq * se_d), "db_fit_hi": float(db + tq * se_d),
                })
    return Scaling(size_axis=axis, transform=transform, series=table, fits=fits, crossings=pd.DataFrame(cross_rows))


def better_at(fits: pd.DataFrame, s1: str, s2: str, xcol: str, x: float, mode: str, transform: str) -> str:
    """Which series the fitted curves put ahead at ``x`` (in the metric's own direction)."""
    f1 = fits[(fits["series"] == s1) & (fits["x"] == xcol)].iloc[0]
    f2 = fits[(fits["series"] == s2) & (fits["x"] == xcol)].iloc[0]
    y1, y2 = f1["coefficient"] * x ** f1["exponent"], f2["coefficient"] * x ** f2["exponent"]
    lower_is_better = transform != "metric" or mode == "min"
    return s1 if (y1 < y2) == lower_is_better else s2


def describe_crossings(sc: Scaling, mode: str) -> List[str]:
    """One sentence per pair of series and x axis: who leads where, and where the curves cross."""
    lines = []
    for r in sc.crossings.itertuples(index=False):
        xl = XS[r.x]
        lead_lo = better_at(sc.fits, r.series_a, r.series_b, r.x, r.range_lo, mode, sc.transform)
        lead_hi = better_at(sc.fits, r.series_a, r.series_b, r.x, r.range_hi, mode, sc.transform)
        head = f"{r.series_a} vs {r.series_b} (against {xl}): the fits put "
        head += (f"{lead_lo} ahead over the whole range ({r.range_lo:,.0f} to {r.range_hi:,.0f})" if lead_lo == lead_hi
                 else f"{lead_lo} ahead at {r.range_lo:,.0f} and {lead_hi} at {r.range_hi:,.0f}")
        head += f"; exponent difference {r.db:+.3f} [{r.db_lo:+.3f}, {r.db_hi:+.3f}]"
        head += f" over seeds, [{r.db_fit_lo:+.3f}, {r.db_fit_hi:+.3f}] from the fits' residuals"
        if r.where == "none" or r.db_lo <= 0 <= r.db_hi or not (r.db_fit_lo > 0 or r.db_fit_hi < 0):
            lines.append(head + ": the exponents are not resolved apart, so the data do not say whether or where "
                                "the curves cross (parallel within the intervals).")
            continue
        where = {"within": "inside the measured range", "beyond": "beyond the largest size measured (an extrapolation)",
                 "below": "below the smallest size measured"}[r.where]
        lines.append(f"{head}; the fitted curves cross at {r.crossing:,.3g} {xl}, {where} "
                     f"(95% bootstrap interval {r.lo:,.3g} to {r.hi:,.3g}; in {r.share_within:.0%} of resamples the "
                     f"crossing lies inside the range, {r.share_beyond:.0%} beyond it, {r.share_below:.0%} below it).")
    return lines

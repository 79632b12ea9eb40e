"""Figures of a sweep (PNG, Agg canvas, no pyplot state).

One palette and arm order for every figure: :func:`arm_palette` (grid arms in seaborn's
colour-blind palette, baseline arms in black / greys, dashed). Each function takes the
frames of :mod:`analysis.stats` and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FormatStrFormatter

from analysis.labels import direction, metric_label, metric_range
from analysis.stats import pareto_front
from analysis.tables import factor_header, fmt_value

DPI = 150
BASELINE_GREYS = ("#000000", "#555555", "#888888", "#aaaaaa")


def arm_palette(order: Sequence[str], baseline_arms: Sequence[str]) -> Dict[str, str]:
    """Arm -> colour: grid arms from the colour-blind palette (husl beyond 10 arms), baselines
    black and greys (drawn dashed / as squares)."""
    grid = [a for a in order if a not in set(baseline_arms)]
    # husl is circular: take n of n + 2 hues so the first and last arm differ
    colours = (sns.color_palette("colorblind", len(grid)) if len(grid) <= 10
               else sns.color_palette("husl", len(grid) + 2)[:len(grid)])
    pal = {a: _hex(c) for a, c in zip(grid, colours)}
    for i, a in enumerate(a for a in order if a in set(baseline_arms)):
        pal[a] = BASELINE_GREYS[i % len(BASELINE_GREYS)]
    return pal


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _yerr(s: pd.Series) -> np.ndarray:
    """Asymmetric error bar (below, above) of an arm's interval; zero without one."""
    lo, hi, mean = float(s["ci_lo"]), float(s["ci_hi"]), float(s["mean"])
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(mean)):
        return np.zeros((2, 1))
    return np.array([[mean - lo], [hi - mean]])


def _legend_rows(n: int) -> Tuple[int, int]:
    """(columns, rows) of a legend placed below the axes for ``n`` entries."""
    ncol = 1 if n <= 4 else 2 if n <= 10 else 3 if n <= 24 else 4
    return ncol, -(-n // ncol)


def _legend_below(fig: Figure, ax, n: int) -> None:
    """All of ``ax``'s legend entries in columns below the figure's axes (never cut off)."""
    handles, labels = ax.get_legend_handles_labels()
    ncol, _ = _legend_rows(n)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small", frameon=False)


def plot_curves(bands: Dict[str, pd.DataFrame], order: Sequence[str], palette: Dict[str, str],
                baseline_arms: Sequence[str], path: Path, title: str,
                curves: Optional[pd.DataFrame] = None) -> Path:
    """Learning curves, one column per metric: the whole run (top) and the second half of
    training (bottom, zoomed so that the arms' final differences show). Lines: mean over
    seeds per arm; bands: 95% t-interval over seeds (none where one seed reached the step),
    clipped to the metric's range; thin lines: each seed (from ``curves``, the long
    histories), so that seeds which split into groups (some learn, some do not) show as such."""
    metrics = list(bands)
    _, legend_rows = _legend_rows(len(order) + 0)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = _figure(6.0 * len(metrics), 7.0 + 0.22 * legend_rows)
        axes = fig.subplots(2, len(metrics), squeeze=False)
        for col, metric in enumerate(metrics):
            b = bands[metric]
            lo, hi = metric_range(metric)
            seeds = None if curves is None else curves[curves["metric"] == metric]
            half = float(b["step"].min() + (b["step"].max() - b["step"].min()) / 2)
            for row, zoom in enumerate((False, True)):
                ax = axes[row, col]
                for arm in order:
                    g = b[b["arm"] == arm].sort_values("step")
                    if zoom:
                        g = g[g["step"] >= half]
                    if g.empty:
                        continue
                    base = arm in baseline_arms
                    if seeds is not None:
                        for _, one in seeds[(seeds["arm"] == arm) & (seeds["step"] >= (half if zoom else -np.inf))
                                            ].sort_values("step").groupby("run_id"):
                            ax.plot(one["step"], one["value"], color=palette[arm], lw=0.6, alpha=0.45,
                                    ls="--" if base else "-")
                    ax.plot(g["step"], g["mean"], color=palette[arm], lw=1.8, ls="--" if base else "-",
                            label=f"{arm} (baseline)" if base else arm)
                    ok = np.isfinite(g["ci"].to_numpy(dtype=float))
                    if ok.any():
                        low, high = (g["mean"] - g["ci"])[ok], (g["mean"] + g["ci"])[ok]
                        low, high = low.clip(lower=lo, upper=hi), high.clip(lower=lo, upper=hi)
                        ax.fill_between(g["step"][ok], low, high, color=palette[arm], alpha=0.15, lw=0)
                ax.set_xlabel("step")
                ax.set_ylabel(metric_label(metric))
                ax.set_title(f"{metric}: second half of training (zoom)" if zoom else
                             f"{metric}: mean over seeds (thick), 95% CI band, seeds (thin)", fontsize="medium")
        _legend_below(fig, axes[0, 0], len(order))
        fig.suptitle(f"{title}: learning curves")
        return _save(fig, path)


def plot_final(runs: pd.DataFrame, summary: pd.DataFrame, metric: str, mode: str, palette: Dict[str, str],
               baseline: Optional[str], path: Path, title: str) -> Path:
    """Final metric per arm: mean with its 95% interval (``ci_lo``..``ci_hi``) as error bars,
    each seed as a dot, and the reference arm's mean as a horizontal dashed line."""
    order = list(summary.index)
    longest = max(len(a) for a in order)
    rotate = longest > 8 or len(order) > 6
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = _figure(max(7.5, 0.55 * len(order) + 2.5), 5.0 + (min(3.0, 0.07 * longest) if rotate else 0.0))
        ax = fig.subplots()
        rng = np.random.default_rng(0)
        for i, arm in enumerate(order):
            vals = runs.loc[runs["arm"] == arm, metric].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.2, 0.2, len(vals)), vals, s=16, color=palette[arm], alpha=0.5, lw=0,
                       zorder=2)
            s = summary.loc[arm]
            ax.errorbar(i, s["mean"], yerr=_yerr(s), fmt="s" if arm == baseline else "o", color=palette[arm], ms=8,
                        capsize=6, lw=2, zorder=3, mec="white")
        if baseline is not None and baseline in summary.index:
            ax.axhline(summary.loc[baseline, "mean"], color="#333333", ls="--", lw=1.2,
                       label=f"{baseline} (reference) mean", zorder=1)
            fig.legend(loc="outside lower center", fontsize="small", frameon=False)
        ax.set_xticks(np.arange(len(order)))
        ax.set_xticklabels(order, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(order) - 0.4)
        for lbl, arm in zip(ax.get_xticklabels(), order):
            if summary.loc[arm, "best"]:
                lbl.set_fontweight("bold")
        ax.set_xlabel("arm (bold: best, resolved against the runner-up)")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"final {metric} per arm ({direction(mode)})\nmean and 95% interval over seeds; dots: single seeds",
                     fontsize="medium")
        fig.suptitle(title)
        return _save(fig, path)


def plot_heatmap(summary: pd.DataFrame, arm_info: pd.DataFrame, factors: Sequence[str], metric: str, mode: str,
                 decimals: int, path: Path, title: str) -> Path:
    """Two-factor grid: mean metric per cell (rows: first factor, columns: second)."""
    f1, f2 = factors[:2]
    grid = arm_info[~arm_info["baseline"]]
    rows = list(dict.fromkeys(grid[f1].map(fmt_value)))
    cols = list(dict.fromkeys(grid[f2].map(fmt_value)))
    mat = pd.DataFrame(np.nan, index=rows, columns=cols)
    for arm, info in grid.iterrows():
        mat.loc[fmt_value(info[f1]), fmt_value(info[f2])] = summary.loc[arm, "mean"]
    with sns.axes_style("white"), sns.plotting_context("notebook"):
        fig = _figure(max(5.0, 1.3 * len(cols) + 3.0), max(3.5, 0.8 * len(rows) + 2.2))
        ax = fig.subplots()
        sns.heatmap(mat, annot=True, fmt=f".{decimals}f", cmap="viridis_r" if mode == "min" else "viridis",
                    linewidths=0.5, ax=ax,
                    cbar_kws={"label": f"{metric_label(metric)}\n(mean over seeds; {direction(mode)})"})
        ax.set_ylabel(factor_header(f1, factors))
        ax.set_xlabel(factor_header(f2, factors))
        ax.tick_params(axis="y", rotation=0)
        ax.set_title(f"{title}: mean {metric} per grid cell", fontsize="medium")
        return _save(fig, path)


def plot_pareto(summary: pd.DataFrame, metric: str, mode: str, palette: Dict[str, str],
                baseline_arms: Sequence[str], path: Path, title: str) -> Optional[Path]:
    """Quality vs cost (params, FLOPs/token): arms with 95% CI bars and the Pareto front
    (arms no other arm beats on both cost and quality; red rings and staircase)."""
    costs = [(c, lbl) for c, lbl in (("params", "parameters"), ("flops_per_token", "FLOPs per token"))
             if summary[c].notna().any()]
    if not costs:
        return None
    order = list(summary.index)
    _, legend_rows = _legend_rows(len(order) + 1)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = _figure(6.0 * len(costs), 4.6 + 0.22 * legend_rows)
        axes = fig.subplots(1, len(costs), squeeze=False)[0]
        for ax, (col, label) in zip(axes, costs):
            front = pareto_front(summary[col], summary["mean"], mode)
            for arm, s in summary.iterrows():
                base = arm in baseline_arms
                ax.errorbar(s[col], s["mean"], yerr=_yerr(s), fmt="s" if base else "o", color=palette[arm], ms=7,
                            capsize=3, label=f"{arm} (baseline)" if base else arm, zorder=3)
                if len(order) <= 12:
                    ax.annotate(arm, (s[col], s["mean"]), xytext=(5, 4), textcoords="offset points", fontsize=7,
                                color="#333333")
            pts = summary[front].sort_values(col)
            ax.scatter(pts[col], pts["mean"], s=170, facecolors="none", edgecolors="#d62728", lw=1.6, zorder=4,
                       label="Pareto front")
            if len(pts) > 1:
                ax.step(pts[col], pts["mean"], where="post", color="#d62728", lw=1.2, alpha=0.8, zorder=2)
            vals = summary[col].dropna()
            if len(vals) and vals.min() > 0 and vals.max() / vals.min() > 20:
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.margins(x=0.15 if len(order) <= 12 else 0.05)
            ax.set_xlabel(label)
            ax.set_ylabel(metric_label(metric))
            ax.set_title(f"{metric} vs {label} ({direction(mode)})", fontsize="medium")
        _legend_below(fig, axes[0], len(order) + 1)
        fig.suptitle(f"{title}: quality vs cost")
        return _save(fig, path)


def plot_sensitivity(tune: pd.DataFrame, keys: Sequence[str], select: str, mode: str, palette: Dict[str, str],
                     path: Path, title: str) -> Optional[Path]:
    """The tuning stage's selection metric against each searched setting, one line per arm:
    at each value of a setting, the best run over the other settings (the profile that
    selection sees), so a curve still falling at the edge shows an unfinished search."""
    if select not in tune.columns or not keys:
        return None
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = _figure(5.0 * len(keys), 4.4)
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            for arm, g in tune.groupby("arm", sort=False):
                x = pd.to_numeric(g[key])
                y = pd.to_numeric(g[select], errors="coerce")
                by = pd.DataFrame({"x": x, "y": y}).groupby("x")["y"]
                best = (by.min() if mode == "min" else by.max()).sort_index()
                ax.plot(best.index, best.values, "o-", color=palette.get(arm, "#333333"), label=arm)
            vals = pd.to_numeric(tune[key])
            if vals.min() > 0 and vals.max() / vals.min() >= 4:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(f"{select} (tuning runs)")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title}: sensitivity to the tuned settings", fontsize=10)
        return _save(fig, path)


def plot_scaling(sc, values: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    """Log-log metric vs parameters and vs FLOPs/token, one colour per series (the arms that
    differ only in size): seeds as dots, size means as markers, the fitted power law as a
    line over the measured range (dotted beyond it, up to where a fitted crossing lies)."""
    series = list(dict.fromkeys(sc.series["series"]))
    pal = dict(zip(series, (_hex(c) for c in sns.color_palette("colorblind", max(len(series), 3)))))
    seeds = values.assign(y=sc.fitted(values["value"].to_numpy(dtype=float)))
    ylabel = sc.label(metric)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = _figure(11.0, 4.8)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, (xcol, xlabel) in zip(axes, (("params", "parameters"), ("flops_per_token", "FLOPs per token"))):
            cross = sc.crossings[sc.crossings["x"] == xcol] if len(sc.crossings) else sc.crossings
            far = float(np.nanmax(cross["crossing"])) if len(cross) and cross["crossing"].notna().any() else 0.0
            for s in series:
                g = sc.series[sc.series["series"] == s]
                col = pal[s]
                for arm, row in g.iterrows():
                    ys = seeds.loc[seeds["arm"] == arm, "y"]
                    ax.scatter([row[xcol]] * len(ys), ys, s=12, color=col, alpha=0.45, zorder=2)
                ax.scatter(g[xcol], g["mean"], s=45, color=col, edgecolors="black", lw=0.6, zorder=3)
                f = sc.fits[(sc.fits["series"] == s) & (sc.fits["x"] == xcol)]
                if not len(f):
                    continue
                f = f.iloc[0]
                xs = np.geomspace(f["x_min"], f["x_max"], 50)
                ax.plot(xs, f["coefficient"] * xs ** f["exponent"], color=col, lw=1.6, zorder=2,
                        label=f"{s}: b = {f['exponent']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}]")
                if far > f["x_max"] and far < 1e3 * f["x_max"]:
                    xe = np.geomspace(f["x_max"], far * 1.2, 30)
                    ax.plot(xe, f["coefficient"] * xe ** f["exponent"], color=col, lw=1.0, ls=":", zorder=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ylabel} vs {xlabel}", fontsize="medium")
            ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"{title}: power-law fits (exponent b, 95% bootstrap interval over seeds)", fontsize=10)
        return _save(fig, path)

"""Seeds chosen before looking: a group-sequential design over rounds of seeds.

A sweep declares ``seeds: {initial: 3, max: 10, boundary: obrien-fleming}`` and a family of
comparisons. The runner trains the initial seeds, then calls :func:`decide` after each round
with the per-seed paired differences of every comparison; a comparison is *resolved* once
its paired t-test crosses the boundary of the current look, and the runner adds seeds only
while some comparison is still ``continue``. Looking after every round does not raise the
false-positive rate above the declared ``alpha``, for the whole family:

- **Alpha spending** (Lan & DeMets): the type I error a comparison may spend by information
  fraction ``t = n / max`` is ``alpha(t)``: O'Brien-Fleming-type ``2 - 2 Phi(z_{1-a/2} / sqrt t)``
  (almost nothing early) or Pocock-type ``a ln(1 + (e - 1) t)`` (evenly).
- **Boundaries.** With seeds as independent normal differences, the paired t-test's p-value
  at each look has a null distribution that does not depend on the unknown spread, so the
  nominal p-value threshold of each look is calibrated on simulated null paths of the exact
  t-statistics that :func:`decide` computes (:func:`t_nominal_alphas`, seeded: the same plan
  every call). :func:`z_boundaries` computes the known-variance boundaries by numerical
  integration; for many seeds per look the two agree (the tests check it, and check the z
  boundaries against a published table).
- **The family**: Holm's step-down over the group-sequential tests (Maurer & Bretz 2013):
  with ``r`` comparisons resolved, each remaining one is tested at level ``alpha / (m - r)``
  at this and every earlier look, until no more resolve.

Pure: numpy and scipy only. A fixed design is the special case ``initial == max`` (one look
at level ``alpha``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import optimize
from scipy import stats as sps

BOUNDARIES = ("obrien-fleming", "pocock")
RESOLVED, CONTINUE, EXHAUSTED = "resolved", "continue", "exhausted"
N_CALIBRATION = 200_000
"""Null paths simulated to calibrate the t-test thresholds (Monte Carlo error of the spent
alpha about ``sqrt(alpha / N)``, i.e. 5e-4 at alpha 0.05)."""
CALIBRATION_SEED = 20210517


# --------------------------------------------------------------------------------------
# Spending functions and boundaries
# --------------------------------------------------------------------------------------


def spent(t: float, alpha: float, boundary: str) -> float:
    """Cumulative type I error spent by information fraction ``t`` (0..1), two-sided."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}; got {boundary!r}")
    t = min(max(float(t), 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if boundary == "obrien-fleming":
        return float(2.0 - 2.0 * sps.norm.cdf(sps.norm.isf(alpha / 2.0) / math.sqrt(t)))
    return float(alpha * math.log(1.0 + (math.e - 1.0) * t))


def _increments(looks: Sequence[int], alpha: float, boundary: str) -> np.ndarray:
    cum = np.array([spent(n / looks[-1], alpha, boundary) for n in looks])
    return np.diff(np.concatenate([[0.0], cum]))


def z_boundaries(looks: Sequence[int], alpha: float, boundary: str, points: int = 1201) -> np.ndarray:
    """Two-sided critical |z| per look for a known-variance test, by numerical integration of
    the score process (Armitage, McPherson & Rowe recursion, trapezoid rule on ``points``
    grid points): at look k, P(no earlier crossing, |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1})."""
    info = np.asarray(looks, dtype=float)
    inc = _increments(looks, alpha, boundary)
    out = np.empty(len(info))
    out[0] = sps.norm.isf(inc[0] / 2.0)
    half = out[0] * math.sqrt(info[0])
    grid = np.linspace(-half, half, points)
    dens = sps.norm.pdf(grid, scale=math.sqrt(info[0]))
    for k in range(1, len(info)):
        sd = math.sqrt(info[k] - info[k - 1])
        w = np.full(points, grid[1] - grid[0])
        w[0] = w[-1] = w[0] / 2.0
        mass = w * dens

        def exit_prob(c: float) -> float:
            h = c * math.sqrt(info[k])
            return float(np.sum(mass * (sps.norm.sf((h - grid) / sd) + sps.norm.cdf((-h - grid) / sd))))

        out[k] = optimize.brentq(lambda c: exit_prob(c) - inc[k], 1e-9, 40.0) if inc[k] > 0 else np.inf
        half = min(out[k], 40.0) * math.sqrt(info[k])
        new = np.linspace(-half, half, points)
        dens = mass @ sps.norm.pdf((new[None, :] - grid[:, None]) / sd) / sd
        grid = new
    return out


def prefix_p(differences: Sequence[float], sizes: Sequence[int]) -> np.ndarray:
    """Two-sided p-values of the paired t-test (the one ``scipy.stats.ttest_1samp`` against 0
    computes) on the first ``n`` per-seed differences, for each ``n`` in ``sizes``.

    Fewer than two differences: 1 (nothing resolved). No spread: 1 if every difference is 0,
    else 0 (every seed differs by the same non-zero amount: resolved exactly)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    out = np.ones(len(sizes))
    t, df, idx = [], [], []
    for i, n in enumerate(sizes):
        x = d[:n]
        if len(x) < 2:
            continue
        if np.ptp(x) == 0.0:
            out[i] = 1.0 if x[0] == 0.0 else 0.0
            continue
        t.append(x.mean() / (x.std(ddof=1) / math.sqrt(len(x))))
        df.append(len(x) - 1)
        idx.append(i)
    if idx:
        out[idx] = 2.0 * sps.t.sf(np.abs(t), df)
    return out


def paired_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test on all the per-seed differences (see :func:`prefix_p`)."""
    return float(prefix_p(differences, [len(differences)])[0])


def _null_pvalues(looks: Sequence[int], n_paths: int, seed: int) -> np.ndarray:
    """Paired t-test p-values at each look on simulated null paths (paths x looks)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_paths, looks[-1]))
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    out = np.empty((n_paths, len(looks)))
    for k, n in enumerate(looks):
        mean = s1[:, n - 1] / n
        var = (s2[:, n - 1] - n * mean * mean) / (n - 1)
        t = mean / np.sqrt(var / n)
        out[:, k] = 2.0 * sps.t.sf(np.abs(t), n - 1)
    return out


def t_nominal_alphas(looks: Sequence[int], alphas: Sequence[float], boundary: str,
                     n_paths: int = N_CALIBRATION, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Nominal p-value thresholds (levels x looks) of the paired t-test such that, on
    simulated null paths, the first crossing at look k happens with probability
    ``alpha(t_k) - alpha(t_{k-1})`` for each level in ``alphas``."""
    if looks[0] < 2:
        raise ValueError("the first look needs at least 2 seeds per comparison")
    p = _null_pvalues(looks, n_paths, seed)
    out = np.zeros((len(alphas), len(looks)))
    for i, a in enumerate(alphas):
        alive = np.ones(n_paths, dtype=bool)
        for k, inc in enumerate(_increments(looks, a, boundary)):
            target = int(math.floor(inc * n_paths))
            pk = np.sort(p[alive, k])
            if target <= 0 or len(pk) == 0:
                continue
            # the largest threshold at which at most ``target`` live paths cross
            thr = pk[min(target, len(pk)) - 1]
            out[i, k] = thr
            alive &= ~(p[:, k] <= thr)
    return out


# --------------------------------------------------------------------------------------
# The plan and the decisions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """When to look and at which nominal p-value each comparison resolves."""

    looks: Tuple[int, ...]
    """Seeds per comparison at each look (cumulative; the last is ``max``)."""
    alpha: float
    boundary: str
    family_size: int
    nominal: Tuple[Tuple[float, ...], ...] = field(repr=False)
    """``nominal[j - 1][k]``: the threshold at look k for a comparison tested at level alpha / j."""

    def threshold(self, look: int, remaining: int) -> float:
        """Nominal p-value threshold at look index ``look`` with ``remaining`` comparisons unresolved."""
        return self.nominal[remaining - 1][look]


def looks_for(initial: int, maximum: int, step: int = 1) -> Tuple[int, ...]:
    """``initial``, then ``step`` more seeds per round, ending at ``maximum`` (the looks of the
    sweep file's ``seeds: {initial, max, step}``)."""
    if not (isinstance(step, int) and step >= 1):
        raise ValueError(f"step must be an integer >= 1; got {step!r}")
    looks = list(range(initial, maximum, step)) + [maximum]
    return tuple(dict.fromkeys(looks))


def plan(initial: int, maximum: int, alpha: float = 0.05, boundary: str = "obrien-fleming", family_size: int = 1,
         step: int = 1) -> Plan:
    """The design of a sweep: looks at ``initial``, ``initial + step``, ... ``maximum`` seeds,
    the family-wise ``alpha`` over ``family_size`` comparisons, Pocock or O'Brien-Fleming spending."""
    if not (isinstance(initial, int) and isinstance(maximum, int)) or not 2 <= initial <= maximum:
        raise ValueError(f"need 2 <= initial <= max seeds; got initial={initial!r}, max={maximum!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1; got {family_size!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}; got {boundary!r}")
    looks = looks_for(initial, maximum, step)
    levels = [alpha / j for j in range(1, family_size + 1)]
    if len(looks) == 1:
        nominal = np.asarray(levels)[:, None]
    else:
        nominal = t_nominal_alphas(looks, levels, boundary)
    return Plan(looks=looks, alpha=alpha, boundary=boundary, family_size=family_size,
                nominal=tuple(tuple(float(v) for v in row) for row in nominal))


@dataclass(frozen=True)
class Decision:
    status: str
    """``resolved`` | ``continue`` (add seeds) | ``exhausted`` (max seeds, not resolved)."""
    p: float
    """The paired t-test p-value at the current look."""
    resolved_at: Optional[int] = None
    """Look index at which it resolved."""


def decide(plan: Plan, differences: Mapping[str, Sequence[float]], look: int) -> Dict[str, Decision]:
    """Decisions at look index ``look`` (0-based) from each comparison's per-seed paired
    differences in seed order (the first ``plan.looks[k]`` of them are look k's data).

    ``differences`` must hold the whole declared family (``plan.family_size`` comparisons):
    a comparison left out would silently shrink the Holm family."""
    if len(differences) != plan.family_size:
        raise ValueError(f"the plan is for {plan.family_size} comparisons; got {len(differences)}")
    if not 0 <= look < len(plan.looks):
        raise ValueError(f"look must be in 0..{len(plan.looks) - 1}; got {look!r}")
    pv = {c: prefix_p(d, plan.looks[:look + 1]) for c, d in differences.items()}
    resolved: Dict[str, int] = {}
    while True:
        remaining = plan.family_size - len(resolved)
        new = {c: next(k for k in range(look + 1) if p[k] <= plan.threshold(k, remaining))
               for c, p in pv.items() if c not in resolved
               and any(p[k] <= plan.threshold(k, remaining) for k in range(look + 1))}
        if not new:
            break
        resolved.update(new)
    last = look == len(plan.looks) - 1
    return {c: Decision(RESOLVED if c in resolved else EXHAUSTED if last else CONTINUE, float(p[look]), resolved.get(c))
            for c, p in pv.items()}


# --------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------


def _t_power(nc: float, df: int, alpha: float) -> float:
    """P(|T| > t_{1-alpha/2, df}) for T noncentral t with noncentrality ``nc``; the normal
    approximation where scipy's noncentral t gives no finite value (very large ``nc``)."""
    crit = sps.t.isf(alpha / 2.0, df)
    p = float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))
    if not math.isfinite(p):
        p = float(sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc))
    return min(max(p, 0.0), 1.0)


def paired_power(effect_size: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test with ``n`` seeds for a standardised effect
    (mean difference / sd of the differences), from the noncentral t distribution."""
    if n < 2:
        return 0.0
    return _t_power(effect_size * math.sqrt(n), n - 1, alpha)


def welch_power(effect_size: float, n: int, alpha: float) -> float:
    """Power of the two-sided two-sample t-test with ``n`` seeds per arm (equal spread) for a
    standardised effect (mean difference / pooled sd)."""
    if n < 2:
        return 0.0
    return _t_power(effect_size * math.sqrt(n / 2.0), 2 * n - 2, alpha)


def seeds_needed(effect_size: float, alpha: float, power: float = 0.8, paired: bool = True,
                 limit: int = 1000) -> Optional[int]:
    """Smallest number of seeds (per arm) whose fixed-design t-test reaches ``power``; None
    beyond ``limit`` or for a zero effect."""
    if not math.isfinite(effect_size) or effect_size == 0.0:
        return None
    fn = paired_power if paired else welch_power
    if fn(abs(effect_size), limit, alpha) < power:
        return None
    lo, hi = 2, limit  # power grows with n: the first n that reaches it
    while lo < hi:
        mid = (lo + hi) // 2
        if fn(abs(effect_size), mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo

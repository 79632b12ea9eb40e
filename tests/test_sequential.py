"""gmlp_ablate.sequential: spending functions, boundaries against published values and
against each other, the paired test against scipy, and null simulations of whole sweeps
through the real decision code."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from gmlp_ablate import sequential as sq


def test_spending_functions_spend_alpha_by_the_end_and_nothing_at_the_start():
    for b in sq.BOUNDARIES:
        assert sq.spent(0.0, 0.05, b) == 0.0
        assert sq.spent(1.0, 0.05, b) == pytest.approx(0.05, rel=1e-12)
        ts = np.linspace(0.05, 1, 20)
        assert np.all(np.diff([sq.spent(t, 0.05, b) for t in ts]) > 0)
    # O'Brien-Fleming-type spends far less early than Pocock-type
    assert sq.spent(0.3, 0.05, "obrien-fleming") < sq.spent(0.3, 0.05, "pocock") / 10
    with pytest.raises(ValueError, match="boundary"):
        sq.spent(0.5, 0.05, "haybittle")


def test_z_boundaries_match_the_published_pocock_table_and_the_one_look_case():
    # Lan-DeMets Pocock-type spending, 5 equally spaced looks, two-sided alpha 0.05
    # (Jennison & Turnbull 2000, Table 7.6; gsDesign sfLDPocock): 2.438 2.427 2.410 2.397 2.386
    got = sq.z_boundaries([1, 2, 3, 4, 5], 0.05, "pocock")
    assert got == pytest.approx([2.438, 2.427, 2.410, 2.397, 2.386], abs=2e-3)
    assert sq.z_boundaries([7], 0.05, "obrien-fleming")[0] == pytest.approx(sps.norm.isf(0.025))


def test_z_boundaries_spend_exactly_alpha_by_simulation():
    looks = [3, 6, 9, 12]
    c = sq.z_boundaries(looks, 0.05, "obrien-fleming")
    x = np.random.default_rng(0).standard_normal((400_000, looks[-1]))
    s = np.cumsum(x, axis=1)
    z = np.stack([s[:, n - 1] / math.sqrt(n) for n in looks], axis=1)
    crossed = (np.abs(z) >= c).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=3 * math.sqrt(0.05 * 0.95 / 400_000))


def test_t_thresholds_approach_the_z_boundaries_with_many_seeds():
    looks = [40, 80, 120]
    nominal_t = sq.t_nominal_alphas(looks, [0.05], "pocock", n_paths=100_000)[0]
    nominal_z = 2 * sps.norm.sf(sq.z_boundaries(looks, 0.05, "pocock"))
    assert nominal_t == pytest.approx(nominal_z, rel=0.08)


def test_power_matches_simulation_and_seeds_needed_is_the_smallest_sufficient_n():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 10)) + 0.8
    simulated = (sps.ttest_1samp(x, 0, axis=1).pvalue < 0.05).mean()
    assert sq.paired_power(0.8, 10, 0.05) == pytest.approx(simulated, abs=0.015)
    y = rng.standard_normal((20_000, 8))
    simulated = (sps.ttest_ind(x[:, :8] - 0.8 + 1.2, y, axis=1).pvalue < 0.05).mean()
    assert sq.welch_power(1.2, 8, 0.05) == pytest.approx(simulated, abs=0.015)
    n = sq.seeds_needed(0.8, 0.05, 0.8)
    assert sq.paired_power(0.8, n, 0.05) >= 0.8 > sq.paired_power(0.8, n - 1, 0.05)
    assert sq.seeds_needed(2.68, 0.025, 0.8, paired=False) == 5  # large effects: no NaN from the noncentral t
    assert sq.seeds_needed(0.0, 0.05) is None and sq.seeds_needed(0.01, 0.05) is None  # > 1000 seeds


def test_paired_p_equals_scipy_ttest_rel_and_handles_no_spread():
    a = np.array([1.0, 1.3, 0.9, 1.25, 1.1])
    b = np.array([1.2, 1.35, 1.0, 1.5, 1.15])
    assert sq.paired_p(a - b) == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    got = sq.prefix_p(a - b, [2, 3, 5])
    assert got == pytest.approx([sps.ttest_rel(a[:n], b[:n]).pvalue for n in (2, 3, 5)], rel=1e-12)
    assert sq.paired_p([0.0, 0.0, 0.0]) == 1.0
    assert sq.paired_p([0.2, 0.2, 0.2]) == 0.0
    assert sq.paired_p([0.3]) == 1.0


def test_plan_validates_its_input_and_a_fixed_design_is_one_look_at_alpha():
    p = sq.plan(5, 5, 0.05, "pocock", family_size=2)
    assert p.looks == (5,) and p.threshold(0, 2) == 0.025 and p.threshold(0, 1) == 0.05
    assert sq.looks_for(3, 7) == (3, 4, 5, 6, 7) and sq.looks_for(3, 10, step=2) == (3, 5, 7, 9, 10)
    assert sq.looks_for(3, 10, step=3) == (3, 6, 9, 10) and sq.plan(3, 10, step=3).looks == (3, 6, 9, 10)
    for bad in [dict(initial=1, maximum=5), dict(initial=6, maximum=5), dict(initial=3, maximum=5, alpha=1.5),
                dict(initial=3, maximum=5, boundary="x"), dict(initial=3, maximum=5, family_size=0)]:
        with pytest.raises(ValueError):
            sq.plan(**bad)
    with pytest.raises(ValueError, match="2 comparisons"):
        sq.decide(p, {"a": [1, 2]}, 0)


def test_decide_resolves_a_clear_difference_and_continues_on_noise():
    p = sq.plan(3, 9, 0.05, "pocock", family_size=2, step=3)
    clear = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0]
    noise = [0.1, -0.2, 0.05, -0.1, 0.15, -0.05]
    d = sq.decide(p, {"clear": clear, "noise": noise}, 1)
    assert d["clear"].status == sq.RESOLVED and d["clear"].resolved_at == 0
    assert d["noise"].status == sq.CONTINUE
    assert d["noise"].p == pytest.approx(sps.ttest_1samp(noise, 0).pvalue)
    last = sq.decide(p, {"clear": clear + [1, 1, 1], "noise": noise + [0.1, -0.1, 0.0]}, 2)
    assert last["noise"].status == sq.EXHAUSTED


def _simulate(plan: sq.Plan, effect: float, sweeps: int, rng: np.random.Generator) -> tuple:
    """Whole sweeps: arms A, B and the reference R per seed (same seed = shared noise through R),
    comparisons A vs R (true difference ``effect`` sd) and B vs R (none), decided after each
    round; returns (fraction of sweeps with a false resolution, fraction resolving A vs R,
    mean seeds used)."""
    false_any, power, used = 0, 0, 0
    for _ in range(sweeps):
        n = plan.looks[-1]
        r, a, b = rng.standard_normal(n), rng.standard_normal(n) + effect, rng.standard_normal(n)
        diffs = {"A vs R": a - r, "B vs R": b - r}
        for k in range(len(plan.looks)):
            dec = sq.decide(plan, diffs, k)
            if all(d.status != sq.CONTINUE for d in dec.values()):
                break
        used += plan.looks[k]
        false_any += dec["B vs R"].status == sq.RESOLVED or (effect == 0 and dec["A vs R"].status == sq.RESOLVED)
        power += dec["A vs R"].status == sq.RESOLVED
    return false_any / sweeps, power / sweeps, used / sweeps


@pytest.mark.parametrize("boundary", sq.BOUNDARIES)
def test_null_sweeps_keep_the_family_wise_error_at_alpha(boundary):
    t0 = time.perf_counter()
    alpha, sweeps = 0.05, 2000
    plan = sq.plan(3, 10, alpha, boundary, family_size=2)  # a look after every added seed: 8 looks
    rng = np.random.default_rng(7)
    fwer, _, seeds = _simulate(plan, 0.0, sweeps, rng)
    mc = math.sqrt(alpha * (1 - alpha) / sweeps)
    _, power, seeds_power = _simulate(plan, 2.0, 300, rng)
    print(f"\n{boundary}: looks {plan.looks}; null: family-wise false resolutions {fwer:.4f} "
          f"(alpha {alpha}, MC sd {mc:.4f}), mean seeds {seeds:.1f}; effect 2 sd: power {power:.2f}, "
          f"mean seeds {seeds_power:.1f}; {time.perf_counter() - t0:.1f} s")
    assert fwer <= alpha + 2 * mc
    assert power > 0.5  # a real effect of one spread resolves most of the time

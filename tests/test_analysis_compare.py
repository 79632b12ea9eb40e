"""The comparison rules of a report, each checked against scipy or a direct computation:
paired by seed, Welch otherwise, no-spread cases, Holm over exactly the family, "best" only
when resolved, intervals that respect the metric's range, solved fractions, diverged seeds,
the declared design, and the comparability warnings."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import compare, design, fairness, stats
from analysis.analyse import mode_for
from analysis.labels import metric_label, metric_range
from analysis.store import AnalysisError
from gmlp_ablate import sequential


def _values(data: dict, seeds: dict = None) -> pd.DataFrame:
    rows = []
    for arm, vals in data.items():
        for i, v in enumerate(vals):
            rows.append({"arm": arm, "seed": (seeds or {}).get(arm, list(range(len(vals))))[i], "value": v,
                         "diverged": False})
    return pd.DataFrame(rows)


def _holm_direct(p):
    """Holm's step-down, written out: reject in order of p while p_(i) <= alpha / (m - i);
    adjusted p_(i) = max over j <= i of min(1, (m - j) p_(j)) (0-based)."""
    p = list(p)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------------- the tests


def test_same_seeds_are_paired_and_equal_scipy_ttest_rel():
    a, b = [1.0, 1.3, 0.9, 1.25, 1.1], [1.2, 1.35, 1.0, 1.5, 1.15]
    c = compare.compare(_values({"a": a, "b": b}), "a", "b")
    res = sps.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert c["test"] == "paired t" and c["df"] == 4
    assert c["p"] == pytest.approx(res.pvalue, rel=1e-12) and c["t"] == pytest.approx(res.statistic, rel=1e-12)
    assert (c["delta_lo"], c["delta_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    d = np.subtract(a, b)
    assert c["effect"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert c["p"] == pytest.approx(sequential.paired_p(d), rel=1e-12)  # the sequential decisions use the same test
    # pairing is by seed, not by position
    shuffled = _values({"a": a[::-1], "b": b}, seeds={"a": [4, 3, 2, 1, 0]})
    assert compare.compare(shuffled, "a", "b")["p"] == pytest.approx(res.pvalue, rel=1e-12)


def test_different_seeds_fall_back_to_welch():
    a, b = [1.0, 1.2, 1.1, 0.95], [1.4, 1.3, 1.6]
    c = compare.compare(_values({"a": a, "b": b}), "a", "b")
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert c["test"] == "Welch t" and c["df"] == pytest.approx(res.df, rel=1e-12)
    assert c["p"] == pytest.approx(res.pvalue, rel=1e-12)
    assert (c["delta_lo"], c["delta_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-12)


@pytest.mark.parametrize("seeds_b", [None, {"b": [5, 6, 7]}], ids=["paired", "welch"])
def test_no_spread_is_resolved_or_identical_never_dropped(seeds_b):
    same = compare.compare(_values({"a": [2.0] * 3, "b": [2.0] * 3}, seeds_b), "a", "b")
    assert same["p"] == 1.0 and same["delta"] == 0 and ("identical" in same["note"] or "equal" in same["note"])
    diff = compare.compare(_values({"a": [2.0] * 3, "b": [1.5] * 3}, seeds_b), "a", "b")
    assert diff["p"] == 0.0 and diff["delta"] == 0.5 and "resolved" in diff["note"]
    vals = _values({"a": [2.0] * 3, "b": [1.5] * 3, "c": [2.0] * 3, "d": [1.0, 1.2, 1.1]}, seeds_b)
    fam = compare.family_table(vals, [("a", "b"), ("a", "c"), ("d", "c")], 0.05)
    assert len(fam) == 3 and fam["p_holm"].notna().all()  # both no-spread pairs stay in the family
    assert fam["resolved"].tolist()[:2] == [True, False]


def test_a_single_seed_is_untestable_but_stays_in_the_family():
    vals = _values({"a": [1.0], "b": [1.2, 1.3, 1.25], "c": [1.0, 1.05, 0.98]})
    fam = compare.family_table(vals, [("a", "b"), ("c", "b")], 0.05)
    assert fam.loc[0, "p"] == 1.0 and "untestable" in fam.loc[0, "note"]
    p_c = sps.ttest_rel([1.0, 1.05, 0.98], [1.2, 1.3, 1.25]).pvalue
    assert fam["p_holm"].tolist() == pytest.approx(_holm_direct([1.0, p_c]))
    assert fam.loc[1, "p_holm"] == pytest.approx(min(1, 2 * p_c))  # m = 2, not 1


def test_family_holm_equals_a_direct_step_down_and_an_unknown_arm_counts():
    rng = np.random.default_rng(1)
    data = {f"x{i}": list(rng.normal(i * 0.15, 0.1, 4)) for i in range(5)}
    vals = _values(data)
    pairs = [(f"x{i}", "x0") for i in range(1, 5)] + [("missing", "x0")]
    fam = compare.family_table(vals, pairs, 0.05)
    raw = [sps.ttest_rel(data[a], data["x0"]).pvalue for a, _ in pairs[:4]] + [1.0]
    assert fam["p"].tolist() == pytest.approx(raw, rel=1e-12)
    assert fam["p_holm"].tolist() == pytest.approx(_holm_direct(raw), rel=1e-12)
    assert stats.holm(raw) == pytest.approx(_holm_direct(raw), rel=1e-12)
    assert fam["resolved"].tolist() == [p < 0.05 for p in _holm_direct(raw)]
    assert "no values for missing" in fam.loc[4, "note"]
    assert list(zip(fam["a"], fam["b"])) == pairs  # exactly the declared family, in its order


def test_seeds_needed_for_unresolved_comparisons():
    vals = _values({"a": [1.0, 1.1, 0.95], "b": [1.02, 1.15, 1.0]})
    fam = compare.family_table(vals, [("a", "b")], 0.05)
    assert not fam.loc[0, "resolved"]
    n = fam.loc[0, "seeds_needed"]
    e = fam.loc[0, "effect"]
    assert sequential.paired_power(abs(e), n, 0.05) >= 0.8 > sequential.paired_power(abs(e), n - 1, 0.05)


def test_best_only_when_resolved_against_the_runner_up_with_two_seeds():
    runs = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "m": [1.0, 1.3, 1.1, 1.01, 1.28, 1.12]})
    vals = stats.arm_values(runs, pd.DataFrame(columns=["arm", "seed", "diverged", "resolved"]), "m", "min")
    summary = stats.arm_summary(vals, runs, pd.DataFrame(columns=["arm", "diverged", "resolved"]), "min", ["a", "b"])
    best, note = compare.mark_best(summary, vals, "min", 0.05)
    p = sps.ttest_rel([1.0, 1.3, 1.1], [1.01, 1.28, 1.12]).pvalue
    assert p > 0.5 and best is None and not summary["best"].any() and f"p = {p:.3g}" in note
    # one seed, best mean: never "best"
    vals = _values({"solo": [0.5], "b": [1.0, 1.1, 1.05]})
    summary = stats.arm_summary(vals, vals.rename(columns={"value": "m"}), pd.DataFrame(columns=["arm", "diverged", "resolved"]),
                                "min", ["solo", "b"])
    assert compare.mark_best(summary, vals, "min", 0.05)[0] is None
    # resolved: bold
    vals = _values({"a": [1.0, 1.05, 1.02], "b": [1.5, 1.55, 1.6]})
    summary = stats.arm_summary(vals, vals.rename(columns={"value": "m"}), pd.DataFrame(columns=["arm", "diverged", "resolved"]),
                                "min", ["a", "b"])
    assert compare.mark_best(summary, vals, "min", 0.05)[0] == "a" and summary.loc["a", "best"]


def test_bimodal_accuracy_gets_a_bootstrap_interval_inside_the_range():
    acc = [1.0, 0.52, 0.517]  # one seed solves MQAR, two stay on the plateau: the t-interval is [-0.01, 1.37]
    mean, sd = np.mean(acc), np.std(acc, ddof=1)
    hw = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert mean - hw < 0 and mean + hw > 1
    lo, hi, method = stats.mean_interval(acc, metric_range("test/acc"))
    assert method == "bootstrap" and 0.517 <= lo <= hi <= 1.0
    res = sps.bootstrap((np.array(acc),), lambda a, axis: np.mean(a, axis=axis), confidence_level=0.95,
                        method="percentile", n_resamples=9999, rng=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high))
    # inside the range: the t-interval, unchanged
    assert stats.mean_interval([0.90, 0.91, 0.92], (0.0, 1.0))[2] == "t"
    # a difference of accuracies lives in [-1, 1]: a paired t-interval past it becomes a bootstrap one
    c = compare.compare(_values({"a": [1.0, 0.01, 0.0], "b": [0.0, 0.0, 0.0]}), "a", "b", (0.0, 1.0))
    assert c["interval"] == "bootstrap" and -1 <= c["delta_lo"] <= c["delta_hi"] <= 1


def test_solved_fraction_has_the_exact_binomial_interval():
    runs = pd.DataFrame({"arm": ["a"] * 5, "seed": range(5), "test/acc": [1.0, 0.99, 0.5, 0.95, 0.3]})
    nofail = pd.DataFrame(columns=["arm", "seed", "diverged", "resolved"])
    vals = stats.arm_values(runs, nofail, "test/acc", "max")
    s = stats.arm_summary(vals, runs, nofail, "max", ["a"], (0.0, 1.0), design.Solved("test/acc", 0.9))
    ci = sps.binomtest(3, 5).proportion_ci(confidence_level=0.95, method="exact")
    assert s.loc["a", "solved_k"] == 3 and s.loc["a", "solved_n"] == 5
    assert (s.loc["a", "solved_lo"], s.loc["a", "solved_hi"]) == pytest.approx((ci.low, ci.high))


def test_diverged_seeds_are_counted_and_optionally_worst():
    runs = pd.DataFrame({"arm": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "test/loss": [1.0, 1.2, 0.9, np.inf]})
    failures = pd.DataFrame({"arm": ["a", "b"], "seed": [2, 2], "diverged": [True, False], "resolved": [False, False]})
    drop = stats.arm_values(runs, failures, "test/loss", "min", "drop", metric_range("test/loss"))
    s = stats.arm_summary(drop, runs, failures, "min", ["a", "b"])
    assert s.loc["a", "n"] == 2 and s.loc["a", "n_diverged"] == 1  # failed with a non-finite loss
    assert s.loc["b", "n"] == 1 and s.loc["b", "n_diverged"] == 1 and s.loc["b", "n_failed"] == 1  # inf; other failure
    worst = stats.arm_values(runs, failures, "test/loss", "min", "worst", metric_range("test/loss"))
    s = stats.arm_summary(worst, runs, failures, "min", ["a", "b"])
    assert s.loc["a", "n"] == 3 and s.loc["a", "mean"] == pytest.approx((1.0 + 1.2 + 1.2) / 3)  # worst observed
    acc = stats.arm_values(runs.rename(columns={"test/loss": "test/acc"}), failures, "test/acc", "max", "worst",
                           metric_range("test/acc"))
    assert acc.loc[(acc["arm"] == "a") & (acc["seed"] == 2), "value"].item() == 0.0  # accuracy's bound


def test_declared_design_is_read_exactly_and_bad_values_name_the_param():
    params = {"sweep.family": json.dumps([["sgu_split=false", "sgu_split=true"], ["transformer", "sgu_split=true"]]),
              "sweep.alpha": "0.01", "sweep.reference": json.dumps({"model.sgu_split": True}),
              "sweep.reference_arm": "sgu_split=true",
              "sweep.seeds": json.dumps({"initial": 3, "max": 6, "step": 1, "first": 0, "boundary": "pocock"}),
              "sweep.solved": json.dumps({"metric": "test/acc", "threshold": 0.9}), "sweep.diverged": "worst"}
    d = design.read_design(params, ["sgu_split=true", "sgu_split=false"], ["transformer"])
    assert d.family == [("sgu_split=false", "sgu_split=true"), ("transformer", "sgu_split=true")] and not d.inferred
    assert d.alpha == 0.01 and d.reference == {"model.sgu_split": True} and d.reference_arm == "sgu_split=true"
    assert d.sequential == design.Sequential(3, 6, "pocock", 1) and d.solved == design.Solved("test/acc", 0.9)
    assert d.diverged == "worst"
    old = design.read_design({"sweep.seeds": "[0, 1, 2]"}, ["x=1", "x=2", "x=3"], ["tf"])
    assert old.inferred and old.family == [("x=2", "x=1"), ("x=3", "x=1"), ("tf", "x=1")] and old.seeds == [0, 1, 2]
    for key, bad in [("sweep.alpha", "1.5"), ("sweep.alpha", "abc"), ("sweep.family", "[[\"a\"]]"),
                     ("sweep.family", "not json"), ("sweep.diverged", "ignore"), ("sweep.solved", '{"metric": 1}'),
                     ("sweep.seeds", '{"initial": 1, "max": 3}'), ("sweep.reference", "[1]")]:
        with pytest.raises(AnalysisError, match=f"parent run param {key} = "):
            design.read_design({key: bad}, ["a", "b"], [])


def test_sequential_design_decides_through_the_group_sequential_boundaries():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 0.1, 6)
    vals = _values({"ref": list(ref), "big": list(ref + 1.0 + rng.normal(0, 0.05, 6)),
                    "none": list(ref + rng.normal(0, 0.1, 6))})
    plan = sequential.plan(3, 6, 0.05, "pocock", family_size=2)
    fam = compare.family_table(vals, [("big", "ref"), ("none", "ref")], 0.05, plan=plan)
    dec = sequential.decide(plan, {"big": (vals[vals.arm == "big"].value.to_numpy() - ref),
                                   "none": (vals[vals.arm == "none"].value.to_numpy() - ref)}, 3)
    assert fam["resolved"].tolist() == [dec["big"].status == "resolved", dec["none"].status == "resolved"]
    assert fam.loc[0, "resolved"] and "sequential (pocock, look 4 of 4)" in fam.loc[0, "decision"]


def test_comparability_warnings_for_settings_data_and_code():
    runs = pd.DataFrame({
        "arm": ["a", "a", "b", "b", "tf", "tf"], "seed": [0, 1] * 3,
        "model.sgu_split": [True, True, False, False, True, True], "model.arch": ["gmlp"] * 4 + ["transformer"] * 2,
        "train.steps": [100, 100, 200, 200, 100, 100], "train.lr": [1e-3] * 6,
        "data": [{"task.hash": "x0"}, {"task.hash": "x1"}, {"task.hash": "x0"}, {"task.hash": "x1"},
                 {"task.hash": "x0"}, {"task.hash": "zz"}],
        "git_commit": ["c1", "c1", "c1", "c1", "c1", "c2"]})
    w = fairness.pair_warnings(runs, "b", "a", ["model.sgu_split"], {})
    assert len(w) == 1 and "`train.steps` (200 vs 100)" in w[0]
    w = fairness.pair_warnings(runs, "tf", "a", ["model.sgu_split"], {"tf": {"model": {"arch": "transformer"}}})
    assert any("task's data differs" in x and "seed(s) 1" in x for x in w)
    assert any("code versions differ" in x and "c1, c2 vs c1" in x for x in w)
    assert not any("model.arch" in x for x in w)  # the baseline's declared override is the comparison
    runs_matched = runs.assign(**{"model.depth": [2, 2, 2, 2, 3, 3]})
    assert any("model.depth" in x for x in fairness.pair_warnings(runs_matched, "tf", "a", ["model.sgu_split"], {}))
    assert not any("model.depth" in x for x in fairness.pair_warnings(  # the size knob a matched baseline varied
        runs_matched, "tf", "a", ["model.sgu_split"], {}, {"tf": {"to": "a", "by": "params", "vary": "model.depth"}}))
    everything = fairness.family_warnings(runs, [("b", "a"), ("a", "b"), ("tf", "a")], ["model.sgu_split"],
                                          {"tf": {"model": {"arch": "transformer"}}})
    assert everything[0] == "tf: its seeds pool runs of 2 code versions (git_commit c1, c2)"
    assert sum("b vs a" in x or "a vs b" in x for x in everything) == 1  # each unordered pair once


def test_seeds_added_after_the_first_invocation_are_flagged():
    w = fairness.added_seeds(["[0, 1, 2]", "[0, 1, 2, 3, 4]"], [0, 1, 2, 3, 4])
    assert len(w) == 1 and w[0].startswith("seeds 3, 4 were added after the first invocation declared seeds 0, 1, 2")
    assert fairness.added_seeds(["[0, 1, 2]", "[0, 1, 2]"], [0, 1, 2]) == []
    assert fairness.added_seeds(['{"initial": 3, "max": 10}'], range(8)) == []  # sequential: planned


def test_metric_directions_and_units():
    assert mode_for("perf/train_time_s", "val/loss", "max") == "min"  # time: lower is better
    assert mode_for("perf/tokens_per_s", "val/loss", "min") == "max"
    assert mode_for("test/acc", "val/loss", "min") == "max" and mode_for("test/bpb", "val/acc", "max") == "min"
    assert mode_for("val/acc", "val/acc", "min") == "min"  # the sweep's own declared mode wins
    assert metric_label("test/bpb") == "test/bpb (bits per byte)" and metric_label("test/loss").endswith("nats)")
    assert metric_range("test/acc") == (0.0, 1.0)


def test_solved_counts_are_compared_by_exact_tests():
    th = design.Solved("test/acc", 0.9)
    paired = _values({"a": [1.0, 0.95, 0.5, 0.99, 0.97, 0.93], "b": [0.5, 0.4, 0.5, 0.92, 0.3, 0.2]})
    row = compare.family_table(paired, [("a", "b")], 0.05, (0.0, 1.0), solved=th, mode="max").iloc[0]
    # discordant seeds: a solved and b not at 0, 1, 4, 5; b solved and a not: none
    assert row["solved_a"] == "5/6" and row["solved_b"] == "1/6" and row["solved_test"] == "exact McNemar"
    assert row["p_solved"] == pytest.approx(sps.binomtest(4, 4, 0.5).pvalue)
    unpaired = _values({"a": [1.0, 0.95, 0.5], "b": [0.5, 0.4, 0.5, 0.3]}, {"b": [3, 4, 5, 6]})
    row = compare.family_table(unpaired, [("a", "b")], 0.05, (0.0, 1.0), solved=th, mode="max").iloc[0]
    assert row["solved_test"] == "Fisher exact"
    assert row["p_solved"] == pytest.approx(sps.fisher_exact([[2, 1], [0, 4]]).pvalue)


def test_sequential_report_reads_the_look_the_runner_reached():
    # As the runner leaves it: "big" was decided after 3 seeds and got no more; "small" got
    # seeds until look 3 (5 seeds). The report decides at look 3, as the runner did.
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 0.1, 5)
    small = ref[:5] + 0.3 + rng.normal(0, 0.05, 5)
    vals = _values({"ref": list(ref), "big": list(ref[:3] + 5.0), "small": list(small)})
    plan = sequential.plan(3, 6, 0.05, "obrien-fleming", family_size=2)
    fam = compare.family_table(vals, [("big", "ref"), ("small", "ref")], 0.05, plan=plan)
    runner = sequential.decide(plan, {"big": np.full(3, 5.0), "small": small - ref}, 2)
    assert fam["resolved"].tolist() == [runner["big"].status == "resolved", runner["small"].status == "resolved"]
    assert all("look 3 of 4" in d for d in fam["decision"])


def test_settings_each_arm_tuned_for_itself_are_not_comparability_warnings():
    runs = pd.DataFrame({"arm": ["a", "b"], "seed": [0, 0], "train.lr": [4e-3, 8e-3], "train.steps": [600, 900]})
    warned = fairness.pair_warnings(runs, "a", "b", [], {}, {}, tuned=["train.lr"])
    assert len(warned) == 1 and "train.steps" in warned[0] and "train.lr" not in warned[0]
    assert design.tuned_keys({"sweep.tune": '{"space": {"train.lr": [1]}, "arms": {"b": {"train.warmup_steps": [1]}}}'}) \
        == ["train.lr", "train.warmup_steps"]

"""Statistics, tables and the paper mapping of ``analysis``: pure functions, checked against
scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import compare, paper, stats, tables
from analysis.frames import cast_param, schema_types


def _runs(values: dict, baseline=("base",), factors=None) -> pd.DataFrame:
    """A minimal runs frame: arm, seed, baseline, factors, the metric ``m``."""
    rows = []
    for arm, vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"arm": arm, "seed": seed, "baseline": arm in baseline,
                         "factors": (factors or {}).get(arm, {}), "m": v})
    return pd.DataFrame(rows)


_NO_FAILURES = pd.DataFrame(columns=["arm", "seed", "diverged", "resolved"])


def _summary(runs: pd.DataFrame, order, mode="min", metric="m", bounds=(None, None), solved=None, failures=None,
             diverged="drop"):
    failures = _NO_FAILURES if failures is None else failures
    values = stats.arm_values(runs, failures, metric, mode, diverged, bounds)
    return values, stats.arm_summary(values, runs, failures, mode, order, bounds, solved)


# ------------------------------------------------------------------ per-arm summary


def test_describe_matches_scipy_t_interval():
    x = [1.0, 1.3, 0.9, 1.25, 1.1]
    d = stats.describe(x)
    assert d["n"] == 5
    assert d["mean"] == pytest.approx(np.mean(x))
    assert d["std"] == pytest.approx(np.std(x, ddof=1))
    hw = sps.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert d["ci"] == pytest.approx(hw)
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(x), scale=sps.sem(x))
    assert (d["ci_lo"], d["ci_hi"]) == pytest.approx((lo, hi))


def test_one_seed_has_no_interval():
    d = stats.describe([2.5])
    assert d["n"] == 1 and d["mean"] == 2.5
    assert math.isnan(d["std"]) and math.isnan(d["ci"])
    assert tables.mean_ci(d["mean"], d["ci"], 1, 3) == "2.500 (n=1, no CI)"
    assert stats.describe([])["n"] == 0


# -------------------------------------------------------------------------- Welch


def test_welch_matches_scipy_and_hand_df():
    a, b = np.array([1.0, 1.2, 1.1, 0.95]), np.array([1.4, 1.3, 1.6])
    w = stats.welch(a, b)
    res = sps.ttest_ind(a, b, equal_var=False)
    assert w["p"] == pytest.approx(res.pvalue, rel=1e-12)
    assert w["t"] == pytest.approx(res.statistic, rel=1e-12)
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert w["df"] == pytest.approx(df, rel=1e-12)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert w["delta"] == pytest.approx(a.mean() - b.mean())
    assert (w["delta_lo"], w["delta_hi"]) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half))
    if hasattr(res, "confidence_interval"):  # scipy's own Welch interval agrees
        ci = res.confidence_interval(0.95)
        assert (w["delta_lo"], w["delta_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_needs_two_values_per_side():
    w = stats.welch([1.0], [2.0, 2.2])
    assert w["delta"] == pytest.approx(-1.1)
    assert math.isnan(w["p"]) and math.isnan(w["delta_lo"]) and math.isnan(w["df"])


def test_welch_constant_samples():
    w = stats.welch([1.0, 1.0], [2.0, 2.0])
    assert w["delta"] == -1.0 and w["delta_lo"] == w["delta_hi"] == -1.0 and math.isnan(w["p"])


# --------------------------------------------------------------------------- Holm


def test_holm_hand_example_with_monotonicity():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan():
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.3, 0.5, 0.02]) == pytest.approx([0.6, 0.6, 0.06])
    got = stats.holm([0.01, float("nan"), 0.02])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)
    assert stats.holm([]).size == 0


def test_holm_single_p_unchanged():
    assert stats.holm([0.04]) == pytest.approx([0.04])


# -------------------------------------------------------------- ranking and fronts


def test_rank_by_mode():
    m = pd.Series({"a": 1.0, "b": 0.5, "c": 2.0})
    assert stats.rank(m, "min").to_dict() == {"a": 2, "b": 1, "c": 3}
    assert stats.rank(m, "max").to_dict() == {"a": 2, "b": 3, "c": 1}


def test_pareto_front():
    cost = [1, 2, 3, 3, 4]
    loss = [5.0, 4.0, 4.5, 3.0, 3.0]
    assert stats.pareto_front(cost, loss, "min").tolist() == [True, True, False, True, False]
    assert stats.pareto_front(cost, [-v for v in loss], "max").tolist() == [True, True, False, True, False]
    assert not stats.pareto_front([1, np.nan], [1.0, 0.5], "min")[1]


def test_arm_summary_against_scipy():
    values = {"a": [1.0, 1.1, 1.05], "b": [1.3, 1.2, 1.25, 1.28], "base": [1.4, 1.5, 1.45], "solo": [1.2]}
    runs = _runs(values)
    _, s = _summary(runs, ["a", "b", "solo", "base"])
    assert list(s.index) == ["a", "b", "solo", "base"]
    for arm, vals in values.items():
        assert s.loc[arm, "n"] == len(vals) and s.loc[arm, "mean"] == pytest.approx(np.mean(vals))
        if len(vals) > 1:
            lo, hi = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
            assert (s.loc[arm, "ci_lo"], s.loc[arm, "ci_hi"]) == pytest.approx((lo, hi)) and s.loc[arm, "interval"] == "t"
    assert math.isnan(s.loc["solo", "ci"]) and s.loc["solo", "interval"] == "none"
    assert s.loc["a", "rank"] == 1 and not s["best"].any()  # best is decided by compare.mark_best
    assert (s["n_failed"] == 0).all() and (s["n_diverged"] == 0).all()


def test_arm_order_follows_grid_then_baselines():
    runs = _runs({"x=4": [1], "x=2": [1], "tf2": [1], "tf": [1]}, baseline=("tf", "tf2"),
                 factors={"x=4": {"model.x": 4}, "x=2": {"model.x": 2}})
    assert stats.arm_order(runs, ["model.x"], {"model.x": [2, 4]}, ["tf", "tf2"]) == ["x=2", "x=4", "tf", "tf2"]
    assert stats.arm_order(runs, ["model.x"], {"model.x": [4, 2]}, ["tf2"]) == ["x=4", "x=2", "tf2", "tf"]


def test_curve_bands():
    c = pd.DataFrame({"arm": ["a"] * 4, "seed": [0, 1, 0, 1], "metric": ["m"] * 4, "step": [1, 1, 2, 2],
                      "value": [1.0, 2.0, 0.5, 0.7], "run_id": ["r0", "r1", "r0", "r1"]})
    b = stats.curve_bands(c, "m").set_index("step")
    assert b.loc[1, "mean"] == 1.5
    assert b.loc[1, "ci"] == pytest.approx(sps.t.ppf(0.975, 1) * np.std([1.0, 2.0], ddof=1) / math.sqrt(2))


# ---------------------------------------------------------------- loading helpers


def test_cast_param_types_from_schema():
    types = schema_types()
    assert types["model.sgu_split"] == (bool, False)
    assert types["model.attn_dim"] == (int, True)
    assert types["task.corpus"] == (str, True)
    assert types["train.lr"] == (float, False)
    assert cast_param(pd.Series(["true", "false"]), bool, False).tolist() == [True, False]
    got = cast_param(pd.Series(["null", "64"]), int, True)
    assert str(got.dtype) == "Int64" and got.isna().tolist() == [True, False] and got[1] == 64
    assert cast_param(pd.Series(["0.001", "1e-4"]), float, False).tolist() == [0.001, 1e-4]
    assert cast_param(pd.Series(["null", "a.txt"]), str, True).tolist() == [None, "a.txt"]


# ------------------------------------------------------------------------- tables


def test_latex_escape():
    assert tables.latex_escape("sgu_split=true & 5% ±") == r"sgu\_split=true \& 5\% $\pm$"


def test_comparison_table_bold_best_and_formats():
    runs = _runs({"a": [1.0, 1.1, 1.05], "base": [1.4, 1.5, 1.45]}, factors={"a": {"model.sgu_split": True}})
    values, s = _summary(runs, ["a", "base"])
    best, note = compare.mark_best(s, values, "min", 0.05)
    assert best == "a" and "resolved against the runner-up base" in note
    for col in ("params", "flops_per_token", "tokens_per_s"):
        s[col] = [1.5e6, 2e6]
    info = stats.arm_factors(runs, ["model.sgu_split"], ["a", "base"])
    t = tables.comparison_table(s, info, ["model.sgu_split"], "m", "min")
    md = t.to_markdown()
    assert "| **a** | true |" in md and "base (baseline) | — |" in md and "seeds lost" in md
    assert "| 1.5M |" in md and "| 2M |" in md and "(n=3)" in md
    tex = t.to_latex(label="tab:x")
    assert "\\toprule" in tex and "\\textbf{a}" in tex and "sgu\\_split" in tex
    assert "<strong>a</strong>" in t.to_html()


def test_mean_ci_and_delta_text():
    assert tables.mean_ci(1.23456, 0.0123, 3, 3) == "1.235 ± 0.012 (n=3)"
    assert tables.delta_ci(0.1, 0.05, 0.15, 2) == "+0.10 [0.05, 0.15]"
    assert tables.delta_ci(-0.1, float("nan"), float("nan"), 2) == "-0.10 (no CI)"


# -------------------------------------------------------------------------- paper


def test_reference_is_packaged_and_marks_approximate_rows():
    ref = paper.load_reference()
    split = ref[(ref["table"] == "T3") & ref["variant"].str.startswith("split")].iloc[0]
    assert split["value"] == 4.35 and not split["approx"]
    unsplit = ref[(ref["table"] == "T3") & ref["variant"].str.contains("unsplit")].iloc[0]
    assert unsplit["value"] == 4.53 and unsplit["approx"]
    assert ref[ref["verified"] == "partial"]["approx"].all()


def _mapped(values, factors, baseline_arch="transformer", extra=None):
    runs = _runs(values, baseline=("tf",), factors=factors)
    runs["model.arch"] = ["transformer" if a == "tf" else "gmlp" for a in runs["arm"]]
    for k, v in (extra or {}).items():
        runs[k] = v
    return runs


def test_sgu_split_sweep_maps_to_table_3():
    runs = _mapped({"s=true": [1.0, 1.1], "s=false": [1.3, 1.2], "tf": [1.5, 1.6]},
                   {"s=true": {"model.sgu_split": True}, "s=false": {"model.sgu_split": False}})
    arms = ["s=true", "s=false", "tf"]
    rows = paper.arm_rows(runs, arms, ["model.sgu_split"], "mlm")
    assert rows == {"s=true": paper.T3_SPLIT, "s=false": paper.T3_UNSPLIT, "tf": paper.T3_BERT}
    cols = paper.paper_columns(paper.load_reference(), rows, arms)
    assert cols["paper_value"].tolist() == [4.35, 4.53, 4.37]
    assert cols["paper_task"].tolist() == ["mlm"] * 3
    values, s = _summary(runs, arms)
    order = paper.orderings(runs, values, s, cols, "min", ["model.sgu_split"], 0.05).set_index(["a", "b"])
    row = order.loc[("s=true", "s=false")]
    assert row["paper_better"] == "s=true" and row["ours_better"] == "s=true"
    assert not row["paper_approx_a"] and row["paper_approx_b"]  # only the unsplit number is unverified
    # two seeds each, paired (same seeds): the paired test does not resolve it, so no agreement is claimed
    assert row["test"] == "paired t" and row["p"] == pytest.approx(sps.ttest_rel([1.0, 1.1], [1.3, 1.2]).pvalue)
    assert not row["resolved"] and row["agree"] is None
    # paper: BERT 4.37 < unsplit 4.53; ours: unsplit better, resolved -> disagreement
    tf = order.loc[("s=false", "tf")]
    assert tf["paper_better"] == "tf" and tf["resolved"] == (tf["p"] < 0.05)
    # split 4.35 vs BERT 4.37: a tie in the paper (0.5%), whatever our difference
    tie = order.loc[("s=true", "tf")]
    assert tie["paper_better"] is None and tie["agree"] is None and paper.paper_tie(4.35, 4.37)
    text = tables.ordering_table(order.reset_index(), "m", "min", 0.05).to_markdown()
    assert "T3: 4.35 < ≈4.53 perplexity" in text and "same ordering?" in text
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if " vs " in ln}
    assert "a tie in the paper" in lines["s=true vs tf"]
    assert "ours not resolved" in lines["s=true vs s=false"]


def test_agreement_with_the_paper_needs_a_resolved_difference():
    runs = _mapped({"s=true": [1.0, 1.1, 1.05], "s=false": [1.3, 1.42, 1.33], "tf": [1.5, 1.6, 1.55]},
                   {"s=true": {"model.sgu_split": True}, "s=false": {"model.sgu_split": False}})
    arms = ["s=true", "s=false", "tf"]
    cols = paper.paper_columns(paper.load_reference(), paper.arm_rows(runs, arms, ["model.sgu_split"], "mlm"), arms)
    values, s = _summary(runs, arms)
    order = paper.orderings(runs, values, s, cols, "min", ["model.sgu_split"], 0.05).set_index(["a", "b"])
    row = order.loc[("s=true", "s=false")]
    assert row["p"] == pytest.approx(sps.ttest_rel([1.0, 1.1, 1.05], [1.3, 1.42, 1.33]).pvalue) and row["p"] < 0.05
    assert row["resolved"] and row["agree"] is True
    text = tables.ordering_table(order.reset_index(), "m", "min", 0.05).to_markdown()
    line = next(ln for ln in text.splitlines() if ln.startswith("| s=true vs s=false"))
    assert line.rstrip(" |").endswith("yes")


def test_paper_rows_only_on_the_papers_task():
    runs = _mapped({"s=true": [1.0, 1.1], "tf": [1.5, 1.6]}, {"s=true": {"model.sgu_split": True}})
    for task in ("charlm", "mqar", "digits", None):  # causal LM, recall, vision: the paper's T3 is masked LM
        assert paper.arm_rows(runs, ["s=true", "tf"], ["model.sgu_split"], task) == {}
    ref = paper.load_reference()
    for row in (paper.T3_SPLIT, paper.T3_UNSPLIT, paper.T3_BERT, paper.T6_GMLP, paper.T6_AMLP, paper.T6_BERT):
        hit = ref[(ref["table"] == row.table) & (ref["model"] == row.model) & (ref["variant"] == row.variant)
                  & (ref["metric"] == row.metric)]
        assert len(hit) == 1 and hit["task"].item() == row.task  # the table says which task each row is from


def test_attn_dim_maps_to_table_6_and_survival_has_only_notes():
    runs = _mapped({"attn_dim=null": [1.0, 1.1], "attn_dim=64": [0.9, 0.95], "tf": [1.2, 1.3]},
                   {"attn_dim=null": {"model.attn_dim": None}, "attn_dim=64": {"model.attn_dim": 64}})
    rows = paper.arm_rows(runs, ["attn_dim=null", "attn_dim=64", "tf"], ["model.attn_dim"], "mlm")
    assert rows == {"attn_dim=null": paper.T6_GMLP, "attn_dim=64": paper.T6_AMLP, "tf": paper.T6_BERT}
    runs = _mapped({"p=1.0": [1.0, 1.1], "p=0.8": [0.9, 0.95]},
                   {"p=1.0": {"model.prob_survival": 1.0}, "p=0.8": {"model.prob_survival": 0.8}})
    assert paper.arm_rows(runs, ["p=1.0", "p=0.8"], ["model.prob_survival"], "digits") == {}
    note = paper.notes_for(["model.prob_survival"])[0]
    assert "Table 1" in note and "survival" in note  # the survival probabilities are in Table 1 (top-1: Table 2)


def test_paper_table_never_mixes_columns():
    runs = _mapped({"s=true": [1.0, 1.1], "tf": [1.5, 1.6]}, {"s=true": {"model.sgu_split": True}})
    arms = ["s=true", "tf"]
    cols = paper.paper_columns(paper.load_reference(), paper.arm_rows(runs, arms, ["model.sgu_split"], "mlm"), arms)
    _, s = _summary(runs, arms)
    t = tables.paper_table(s, cols, "m", "min", "mlm")
    assert t.header[2].startswith("paper value") and t.header[4].startswith("ours")
    assert t.rows[0][2] == "4.35 perplexity" and t.rows[1][2] == "≈4.37 perplexity"
    assert t.rows[0][4].startswith("1.05")


def test_curve_bands_are_clipped_to_the_metric_range_and_every_seed_is_drawn(tmp_path, monkeypatch):
    """Seeds that split (one solves the task, two do not) give a t-interval past accuracy 1
    and below 0; the plotted band stops at the metric's range, and each seed gets its line."""
    from matplotlib.axes import Axes

    from analysis import plots
    from analysis.labels import metric_range

    assert metric_range("val/acc") == (0.0, 1.0) and metric_range("val/loss") == (0.0, None)
    assert metric_range("val/ppl") == (1.0, None) and metric_range("perf/tokens_per_s") == (None, None)
    rows = []
    for seed, final in enumerate([1.0, 0.5, 0.5]):
        for step in (1, 2, 3, 4):
            rows.append({"run_id": f"r{seed}", "arm": "a", "seed": seed, "metric": "val/acc", "step": step,
                         "value": 0.5 + (final - 0.5) * step / 4})
    curves = pd.DataFrame(rows)
    bands = {"val/acc": stats.curve_bands(curves, "val/acc")}
    last = bands["val/acc"].iloc[-1]
    assert last["mean"] + last["ci"] > 1.0 and last["mean"] - last["ci"] < 0.0  # the raw interval overshoots
    filled, lines = [], []
    real_fill, real_plot = Axes.fill_between, Axes.plot

    def fill_spy(self, x, y1, y2=0, **kw):
        filled.append((np.asarray(y1, dtype=float), np.asarray(y2, dtype=float)))
        return real_fill(self, x, y1, y2, **kw)

    def plot_spy(self, *args, **kw):
        lines.append(kw.get("lw"))
        return real_plot(self, *args, **kw)

    monkeypatch.setattr(Axes, "fill_between", fill_spy)
    monkeypatch.setattr(Axes, "plot", plot_spy)
    out = plots.plot_curves(bands, ["a"], {"a": "#1f77b4"}, [], tmp_path / "c.png", "t", curves=curves)
    assert out.is_file() and filled
    for low, high in filled:
        assert low.min() >= 0.0 and high.max() <= 1.0
    assert lines.count(0.6) == 2 * 3  # three seed lines in each of the two panels


def test_recorded_commands_reproduce_from_a_fresh_clone():
    from analysis.report import REPO, portable_command

    cmd = (f"python -m gmlp_ablate.run {REPO}/sweeps/fair_baseline.yaml model.dim=64 --storage /srv/ray "
           "--tracking-uri=sqlite:////srv/mlflow.db --address 10.0.0.1:6379 --max-concurrent 2")
    assert portable_command(cmd) == "python -m gmlp_ablate.run sweeps/fair_baseline.yaml model.dim=64 --max-concurrent 2"
    # a sweep file of another checkout of the project, and a path that is not the project's
    assert portable_command("python -m gmlp_ablate.run /srv/other/checkout/sweeps/demo.yaml corpus=/data/x.txt") == \
        "python -m gmlp_ablate.run sweeps/demo.yaml corpus=/data/x.txt"


def test_a_chosen_setting_at_the_edge_of_its_search_is_flagged():
    from analysis.analyse import tuned_keys, tuning_edges

    tune = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "train.lr": [1e-3, 2e-3, 4e-3] * 2,
                         "train.steps": [300] * 6, "val/loss": [3.0, 2.5, 2.2, 3.0, 2.0, 2.4]})
    runs = pd.DataFrame({"arm": ["a", "a", "b", "b"], "train.lr": [4e-3, 4e-3, 2e-3, 2e-3], "train.steps": [600] * 4})
    assert tuned_keys(tune) == ["train.lr"]  # the tuning budget (steps) is not a searched setting
    edges = tuning_edges(tune, runs)
    assert len(edges) == 1 and edges[0].startswith("a: `train.lr` = 0.004 is the largest value searched")

"""Scaling fits (analysis/scaling.py) and the solved-seed steps: exponents recovered from
data drawn from known power laws, crossings placed and classified, series grouped across
matched baselines; and a report over a real sqlite MLflow store with a size grid and a
declared solved outcome."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from analysis import scaling, stats

A = {"gmlp": (12.0, -0.10), "transformer": (40.0, -0.20)}  # metric = a * params ** b
SIZES = {"gmlp": [20_000, 80_000, 320_000, 1_280_000], "transformer": [19_000, 81_000, 330_000, 1_250_000]}


def _frames(noise: float = 0.01, seeds: int = 4, law=A, sizes=SIZES):
    rng = np.random.default_rng(1)
    rows, runs, summ = [], [], []
    for series, (a, b) in law.items():
        for i, n in enumerate(sizes[series]):
            arm = f"dim={16 * 2 ** i}" if series == "gmlp" else f"transformer_{i}"
            for seed in range(seeds):
                rows.append({"arm": arm, "seed": seed, "value": a * n ** b * np.exp(noise * rng.standard_normal())})
            runs.append({"arm": arm, "model.arch": series, "model.dim": 16 * 2 ** i, "model.heads": 4 if series != "gmlp" else 1,
                         "model.pos": "rotary" if series != "gmlp" else "learned", "model.attn_dim": None})
            summ.append({"arm": arm, "params": float(n), "flops_per_token": 2.0 * n})
    values = pd.DataFrame(rows)
    return values, pd.DataFrame(summ).set_index("arm"), pd.DataFrame(runs), [r["arm"] for r in runs]


def test_size_axis_needs_three_sizes_of_dim_or_depth():
    assert scaling.size_axis({"model.dim": [24, 48, 96], "model.attn_dim": [None, 16]}) == "model.dim"
    assert scaling.size_axis({"model.depth": [2, 4, 8]}) == "model.depth"
    assert scaling.size_axis({"model.dim": [24, 48]}) is None
    assert scaling.size_axis({"model.ff_mult": [2, 4, 6]}) is None  # an ablation factor, not a scaling study


def test_series_group_matched_baselines_and_name_what_differs():
    _, _, runs, order = _frames()
    s = scaling.series_of(runs, order)
    assert s.nunique() == 2  # four widths (and heads) per architecture, one series each
    assert s["dim=16"] == "gmlp" and s["transformer_3"] == "transformer, pos=rotary"  # defaults left out


def test_exponents_recovered_within_their_bootstrap_intervals():
    values, summary, runs, order = _frames(noise=0.01)
    sc = scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=500)
    f = sc.fits.set_index(["series", "x"])
    for series, (_, b) in A.items():
        row = f.loc[(scaling.series_of(runs, order)[order[0 if series == "gmlp" else 4]], "params")]
        assert row["lo"] <= b <= row["hi"], (series, row.to_dict())
        assert abs(row["exponent"] - b) < 0.01 and row["r2"] > 0.99 and row["n_sizes"] == 4
        assert row["fit_lo"] <= b <= row["fit_hi"]
    # FLOPs = 2 x params: the same exponent, a coefficient scaled by 2 ** -b
    g = f.xs("flops_per_token", level="x")
    p = f.xs("params", level="x")
    assert np.allclose(g["exponent"], p["exponent"])
    assert np.allclose(g["coefficient"], p["coefficient"] * 2.0 ** -p["exponent"])


def test_crossing_is_placed_where_the_laws_meet_and_classified():
    values, summary, runs, order = _frames(noise=0.005)
    sc = scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=500)
    c = sc.crossings[sc.crossings["x"] == "params"].iloc[0]
    # 12 n^-0.1 = 40 n^-0.2  ->  n = (40 / 12) ** 10 = 169,350
    expect = (40.0 / 12.0) ** (1 / 0.1)
    assert abs(np.log(c["crossing"] / expect)) < 0.15
    assert c["where"] == "within" and c["lo"] <= expect <= c["hi"] and c["share_within"] > 0.9
    assert c["db_lo"] > 0  # exponents resolved apart: -0.1 - (-0.2)
    lines = scaling.describe_crossings(sc, "min")
    params_line = next(line for line in lines if "against params" in line)
    assert "inside the measured range" in params_line
    # below the crossing the shallower gMLP law is lower (better), above it the Transformer's
    assert "gmlp ahead at 20,000" in params_line and "transformer, pos=rotary at" in params_line


def test_a_curved_series_gets_a_wide_residual_interval_that_seed_noise_alone_would_hide():
    values, summary, runs, order = _frames(noise=0.002)
    bend = {"dim=16": 1.0, "dim=32": 1.08, "dim=64": 1.08, "dim=128": 1.0}  # not a power law
    values = values.assign(value=values["value"] * values["arm"].map(bend).fillna(1.0))
    sc = scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=300)
    f = sc.fits.set_index(["series", "x"]).loc[("gmlp", "params")]
    assert f["r2"] < 0.99 and (f["fit_hi"] - f["fit_lo"]) > 5 * (f["hi"] - f["lo"])


def test_crossing_beyond_the_range_is_an_extrapolation_and_parallel_laws_never_cross():
    beyond = {"gmlp": (12.0, -0.10), "transformer": (400.0, -0.30)}  # cross at (400/12)^(1/0.2) = 4.2e7
    values, summary, runs, order = _frames(noise=0.005, law=beyond)
    c = scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=300).crossings.iloc[0]
    assert c["where"] == "beyond" and c["crossing"] > 1_280_000
    parallel = {"gmlp": (12.0, -0.10), "transformer": (13.0, -0.10)}
    values, summary, runs, order = _frames(noise=0.01, law=parallel)
    c = scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=50).crossings.iloc[0]
    assert c["where"] in ("none", "beyond", "below")  # equal exponents up to rounding: no crossing in range
    assert c["where"] != "within" and c["db_lo"] <= 0 <= c["db_hi"]
    assert "not resolved apart" in scaling.describe_crossings(
        scaling.analyse_scaling(values, summary, runs, order, "model.dim", "min", resamples=50), "min")[0]


def test_accuracy_is_fitted_as_error_and_too_few_sizes_give_no_fit():
    values, summary, runs, order = _frames(noise=0.01)
    acc = values.assign(value=1.0 - values["value"] / 20.0)  # error = metric / 20, in (0, 1)
    sc = scaling.analyse_scaling(acc, summary, runs, order, "model.dim", "max", bounds=(0.0, 1.0), resamples=200)
    assert sc.transform == "1 - metric"
    assert abs(sc.fits.set_index(["series", "x"])["exponent"].xs("params", level="x").min() - (-0.20)) < 0.02
    two = values[values["arm"].isin(["dim=16", "dim=32", "transformer_0", "transformer_1"])]
    assert scaling.analyse_scaling(two, summary, runs, order, "model.dim", "min", resamples=10) is None


def test_threshold_steps_first_evaluation_at_or_past_the_threshold():
    curves = pd.DataFrame({
        "arm": ["a"] * 4 + ["a"] * 4 + ["b"] * 4, "seed": [0] * 4 + [1] * 4 + [0] * 4,
        "metric": ["val/acc"] * 12, "step": [250, 500, 750, 1000] * 3,
        "value": [0.5, 0.91, 0.85, 0.95, 0.5, 0.6, 0.7, 0.9, 0.4, 0.5, 0.5, 0.5],
    })
    out = stats.threshold_steps(curves, "val/acc", 0.9, "max").set_index(["arm", "seed"])["step"]
    assert out[("a", 0)] == 500 and out[("a", 1)] == 1000 and np.isnan(out[("b", 0)])
    low = stats.threshold_steps(curves.assign(metric="val/loss"), "val/loss", 0.5, "min").set_index(["arm", "seed"])
    assert low.loc[("a", 0), "step"] == 250 and low.loc[("b", 0), "step"] == 250


# ------------------------------------------------------------------ report on a real store


@pytest.mark.integration
def test_report_has_scaling_and_solved_sections(tmp_path):
    from analysis import report
    from gmlp_ablate.models.config import ModelConfig
    from gmlp_ablate.sweep import MetricConfig, SolvedConfig, Sweep, SweepConfig, Trial
    from gmlp_ablate.tasks.config import TaskConfig
    from gmlp_ablate.tracking import Tracker
    from gmlp_ablate.trial import TrainConfig, TrialConfig, trial_key

    dims = [16, 32, 64]
    trials = []
    for d in dims:
        for attn in (None, 8):
            arm = f"dim={d},attn_dim={'null' if attn is None else attn}"
            for seed in range(3):
                cfg = TrialConfig(task=TaskConfig(name="mqar", seq_len=32, num_kv_pairs=2, vocab_size=16),
                                  model=ModelConfig(dim=d, depth=2, attn_dim=attn), train=TrainConfig(steps=4, eval_every=1),
                                  seed=seed)
                trials.append(Trial(arm=arm, seed=seed, config=cfg, key=trial_key(cfg),
                                    factors={"model.dim": d, "model.attn_dim": attn}))
    grid = {"model.dim": dims, "model.attn_dim": [None, 8]}
    cfg = SweepConfig(name="scal", grid=grid, seeds=[0, 1, 2], metric=MetricConfig(name="test/acc", mode="max"),
                      solved=SolvedConfig(metric="test/acc", threshold=0.9))
    sweep = Sweep(config=cfg, trials=trials, arm_configs={}, family=[], reference_arm="")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        tr = Tracker(uri)
        eid = tr.experiment_id("scal")
        pid = tr.start_parent(eid, sweep, command="python -m gmlp_ablate.run sweeps/scal.yaml")
        for t in trials:
            d, attn = t.factors["model.dim"], t.factors["model.attn_dim"]
            err = (0.4 if attn is None else 0.12) * (d / 16) ** -0.5 * (1 + 0.02 * t.seed)
            rid = tr.start_trial(eid, pid, t, "scal", extra_tags={"git_commit": "abc", "device": "cpu"})
            params = d * d * 30 + (0 if attn is None else 500)
            tr.log_metrics(rid, {"model/params": params, "model/flops_per_token": 2 * params}, 0)
            for step in range(1, 5):  # val/acc climbs to its final value at step 4
                tr.log_metrics(rid, {"val/acc": 1 - err * (5 - step), "train/loss": 1.0}, step)
            tr.log_metrics(rid, {"test/acc": 1 - err}, 4)
            tr.end_trial(rid, "FINISHED")
        tr.end_run(pid)
        out = tmp_path / "out"
        assert report.main(["scal", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    finally:
        os.chdir(cwd)
    md = (out / "report.md").read_text()
    assert "## Scaling" in md and "## Solved seeds" in md and (out / "scaling.png").stat().st_size > 10_000
    fits = pd.read_csv(out / "scaling.csv")
    f = fits[(fits["kind"] == "fit") & (fits["x"] == "params")].set_index("series")
    # error = c * dim^-0.5 and params ~ dim^2 (plus 500 for the attention): exponent about -0.25
    assert set(f.index) == {"gmlp", "gmlp, attn_dim=8"}
    assert abs(f.loc["gmlp", "exponent"] + 0.25) < 0.01
    assert -0.27 < f.loc["gmlp, attn_dim=8", "exponent"] < -0.2
    # solved (test/acc >= 0.9): no gMLP (err >= 0.2); aMLP at dim 32 (err 0.085-0.088) and 64, not 16 (0.12)
    s = pd.read_csv(out / "summary.csv", index_col="arm")
    assert s.loc["dim=64,attn_dim=8", "solved_k"] == 3 and s.loc["dim=32,attn_dim=8", "solved_k"] == 3
    assert s.loc["dim=16,attn_dim=8", "solved_k"] == 0 and s.loc["dim=64,attn_dim=null", "solved_k"] == 0
    # the val/acc curve passes 0.9 only at its last step (4) for the smallest solved arm
    section = md.split("## Solved seeds", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| dim=32,attn_dim=8 "))
    assert "0: 4, 1: 4, 2: 4" in row and "3/3" in row and "[0.29, 1.00]" in row
    assert "| dim=64,attn_dim=null | 0/3 | [0.00, 0.71] | — | — |" in section

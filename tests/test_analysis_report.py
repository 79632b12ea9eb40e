"""The analysis path on a real sqlite MLflow store filled by the real tracking code.

Sweep ``sgu_test`` (masked byte LM, the paper's Table 3 task): grid ``model.sgu_split``
[true, false] x seeds [0, 1, 2] plus a ``transformer`` baseline. Invocation 1 finishes every
trial except (unsplit, seed 2), whose loss goes non-finite (FAILED, diverged); invocation 2 (a
second parent run) re-runs (split, seed 0) with a new value, which must replace the first. It
declares no family (an older sweep): the report infers one. Sweep ``grid2``: a 2 x 2 grid
with one seed (heatmap, n=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gmlp_ablate.models.config import ModelConfig
from gmlp_ablate.names import P_SEEDS
from gmlp_ablate.sweep import MetricConfig, Sweep, SweepConfig, Trial
from gmlp_ablate.tasks.config import TaskConfig
from gmlp_ablate.trial import TrainConfig, TrialConfig, trial_key
from gmlp_ablate.tracking import Tracker

pytestmark = pytest.mark.integration


class FirstRoundSweep(Sweep):
    """A sweep as the first round logged it: its parent run declares no comparisons, so the
    report infers the family (and says so)."""

    def protocol(self):
        return {P_SEEDS: json.dumps(list(self.config.seeds))}


def make_sweep(config: SweepConfig, trials: list) -> Sweep:
    """A sweep of exactly these trials: what the tracker reads of it (its config and trials)."""
    return FirstRoundSweep(config=config, trials=trials, arm_configs={}, family=[], reference_arm="")


REPO = Path(__file__).resolve().parents[1]
NAME = "sgu_test"
FINAL = {  # arm -> seed -> final val/loss as logged by invocation 1
    "sgu_split=true": {0: 1.00, 1: 1.10, 2: 1.05},
    "sgu_split=false": {0: 1.20, 1: 1.25},  # seed 2 fails
    "transformer": {0: 1.30, 1: 1.35, 2: 1.40},
}
RERUN = ("sgu_split=true", 0, 0.90)  # invocation 2
EXPECTED = {"sgu_split=true": [0.90, 1.10, 1.05], "sgu_split=false": [1.20, 1.25], "transformer": [1.30, 1.35, 1.40]}
PARAMS = {"sgu_split=true": 100_000, "sgu_split=false": 120_000, "transformer": 150_000}


def _trial(arm: str, seed: int, model: dict, factors: dict, baseline: bool = False) -> Trial:
    cfg = TrialConfig(task=TaskConfig(name="mlm", seq_len=64), model=ModelConfig(dim=32, depth=2, **model),
                      train=TrainConfig(steps=3, eval_every=1), seed=seed)
    return Trial(arm=arm, seed=seed, config=cfg, key=trial_key(cfg), factors=factors, baseline=baseline)


def _sgu_sweep() -> Sweep:
    trials = []
    for split in (True, False):
        for seed in (0, 1, 2):
            trials.append(_trial(f"sgu_split={'true' if split else 'false'}", seed, {"sgu_split": split},
                                 {"model.sgu_split": split}))
    for seed in (0, 1, 2):
        trials.append(_trial("transformer", seed, {"arch": "transformer", "heads": 4}, {}, baseline=True))
    cfg = SweepConfig(name=NAME, description="Split vs unsplit SGU (test)", grid={"model.sgu_split": [True, False]},
                      seeds=[0, 1, 2], baselines={"transformer": {"model": {"arch": "transformer", "heads": 4}}},
                      metric=MetricConfig(name="val/loss", mode="min"))
    return make_sweep(config=cfg, trials=trials)


def _log_trial(tr: Tracker, eid: str, pid: str, trial: Trial, final: float, status: str = "FINISHED") -> str:
    rid = tr.start_trial(eid, pid, trial, NAME if trial.arm in FINAL else "grid2",
                         extra_tags={"git_commit": "abc123", "device": "cpu"})
    p = PARAMS.get(trial.arm, 50_000)
    tr.log_metrics(rid, {"model/params": p, "model/flops_per_token": 6 * p}, 0)
    for step in range(3):
        last = step == 2
        loss = final + (2 - step) * 0.5
        tr.log_metrics(rid, {"train/loss": loss + 0.05, "val/loss": loss, "val/bpb": loss / np.log(2),
                             "perf/tokens_per_s": 1000.0 + step}, step)
        if status == "FAILED" and last:
            tr.end_trial(rid, "FAILED", error="RuntimeError: loss became nan at step 2", failure="nonfinite")
            return rid
    tr.end_trial(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    cwd = os.getcwd()
    os.chdir(root)  # artifacts of the sqlite store go to ./mlruns of the creating process
    try:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        tr = Tracker(uri)
        sweep = _sgu_sweep()
        eid = tr.experiment_id(NAME)
        pid1 = tr.start_parent(eid, sweep, command=f"python -m gmlp_ablate.run sweeps/{NAME}.yaml")
        for t in sweep.trials:
            if t.seed in FINAL[t.arm]:
                _log_trial(tr, eid, pid1, t, FINAL[t.arm][t.seed])
            else:
                _log_trial(tr, eid, pid1, t, 9.0, status="FAILED")
        tr.end_run(pid1)
        pid2 = tr.start_parent(eid, sweep, command=f"python -m gmlp_ablate.run sweeps/{NAME}.yaml --rerun")
        arm, seed, value = RERUN
        rerun_id = _log_trial(tr, eid, pid2, next(t for t in sweep.trials if t.arm == arm and t.seed == seed), value)
        tr.end_run(pid2)

        # grid2: 2 x 2 grid, one seed, no baseline
        g_trials = [_trial(f"sgu_split={'true' if s else 'false'},ff_mult={m}", 0, {"sgu_split": s, "ff_mult": m},
                           {"model.sgu_split": s, "model.ff_mult": m}) for s in (True, False) for m in (2, 4)]
        g_sweep = make_sweep(config=SweepConfig(name="grid2", grid={"model.sgu_split": [True, False], "model.ff_mult": [2, 4]},
                                           seeds=[0], metric=MetricConfig(name="val/bpb", mode="min")), trials=g_trials)
        geid = tr.experiment_id("grid2")
        gpid = tr.start_parent(geid, g_sweep, command="python -m gmlp_ablate.run sweeps/grid2.yaml")
        for i, t in enumerate(g_trials):
            _log_trial(tr, geid, gpid, t, 1.0 + 0.1 * i)
        tr.end_run(gpid)
        empty = tr.experiment_id("empty_sweep")
        tr.end_run(tr.start_parent(empty, make_sweep(config=SweepConfig(name="empty_sweep", grid={"model.dim": [8]}),
                                                trials=[]), command="x"))
    finally:
        os.chdir(cwd)
    return {"root": root, "uri": uri, "parents": (pid1, pid2), "rerun_id": rerun_id}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from analysis import report

    out = tmp_path_factory.mktemp("report") / NAME
    cwd = os.getcwd()
    os.chdir(store["root"])
    try:
        rc = report.main([NAME, "--tracking-uri", store["uri"], "--out", str(out)])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return out


# ----------------------------------------------------------------------------- load


def test_load_runs_rows_and_types(store):
    from analysis import load_runs

    runs = load_runs(NAME, store["uri"])
    assert len(runs) == 8  # 3 + 2 + 3: the failed trial is not a row, the rerun replaces its key
    assert runs["trial_key"].is_unique
    got = {a: sorted(g["val/loss"]) for a, g in runs.groupby("arm")}
    assert got == {a: sorted(v) for a, v in EXPECTED.items()}
    assert runs.loc[runs["val/loss"] == 0.90, "run_id"].item() == store["rerun_id"]
    assert runs.loc[runs["run_id"] == store["rerun_id"], "parent_run_id"].item() == store["parents"][1]
    assert runs["model.sgu_split"].dtype == bool
    assert runs["seed"].dtype == np.int64 and runs["model.dim"].dtype == np.int64
    assert runs["baseline"].dtype == bool and runs.loc[runs["arm"] == "transformer", "baseline"].all()
    assert runs["train.lr"].dtype == np.float64
    assert runs["model.attn_dim"].isna().all()  # Optional[int] "null" -> NA
    assert runs["task.corpus"].isna().all()
    assert runs["task.name"].eq("mlm").all()
    assert runs["model/params"].dtype == np.float64
    assert runs.loc[runs["arm"] == "sgu_split=false", "model/params"].eq(120_000).all()
    assert set(runs["factors"].map(json.dumps)) == {'{"model.sgu_split": true}', '{"model.sgu_split": false}', "{}"}
    assert (runs["duration_s"] >= 0).all() and runs["start_time"].notna().all()


def test_load_curves_and_meta(store):
    from analysis import load_meta, load_runs

    runs, curves = load_runs(NAME, store["uri"], curves=["val/loss"])
    assert set(curves.columns) == {"run_id", "arm", "seed", "metric", "step", "value"}
    assert len(curves) == 8 * 3
    one = curves[curves["run_id"] == store["rerun_id"]].sort_values("step")
    assert one["value"].tolist() == pytest.approx([1.90, 1.40, 0.90])
    meta = load_meta(NAME, store["uri"])
    assert meta.parent_run_id == store["parents"][1]
    assert meta.factors == ["model.sgu_split"] and meta.baselines == ["transformer"]
    assert (meta.metric, meta.metric_mode) == ("val/loss", "min")
    assert len(meta.parents) == 2


def test_missing_experiment_and_no_finished_runs(store):
    from analysis import AnalysisError, load_runs

    with pytest.raises(AnalysisError, match="did you mean 'sgu_test'"):
        load_runs("sgu_tset", store["uri"])
    with pytest.raises(AnalysisError, match="no FINISHED trial runs"):
        load_runs("empty_sweep", store["uri"])


# --------------------------------------------------------------------------- report


def test_report_files_exist_and_pngs_are_images(report):
    from PIL import Image

    for name in ("report.md", "report.html", "summary.csv", "table.tex", "curves.png", "final.png", "pareto.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    for png in report.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG"
        with Image.open(png) as im:
            assert im.size[0] >= 600 and im.size[1] >= 400
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table" in page
    assert not (report / "heatmap.png").exists()  # one factor: no heatmap


def test_summary_matches_scipy(report):
    s = pd.read_csv(report / "summary.csv", index_col="arm")
    for arm, vals in EXPECTED.items():
        x = np.array(vals)
        n = len(x)
        hw = sps.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n)
        assert s.loc[arm, "n"] == n
        assert s.loc[arm, "mean"] == pytest.approx(x.mean(), rel=1e-9)
        assert s.loc[arm, "std"] == pytest.approx(x.std(ddof=1), rel=1e-9)
        assert s.loc[arm, "ci"] == pytest.approx(hw, rel=1e-9) and s.loc[arm, "interval"] == "t"
        assert (s.loc[arm, "ci_lo"], s.loc[arm, "ci_hi"]) == pytest.approx((x.mean() - hw, x.mean() + hw), rel=1e-9)
    assert s.loc["sgu_split=false", "n_diverged"] == 1 and s.loc["sgu_split=true", "n_diverged"] == 0
    assert s.loc["transformer", "params"] == 150_000
    # the paper's numbers are in their own, labelled columns (masked LM: Table 3)
    assert s.loc["sgu_split=true", "paper_value"] == 4.35 and s.loc["sgu_split=false", "paper_value"] == 4.53
    assert s.loc["transformer", "paper_value"] == 4.37 and bool(s.loc["transformer", "paper_approx"])
    assert not bool(s.loc["sgu_split=true", "paper_approx"]) and s.loc["sgu_split=true", "paper_task"] == "mlm"

    # The inferred family: every arm against the first grid arm. The transformer has the same
    # seeds as sgu_split=true: paired; sgu_split=false lost seed 2: Welch.
    c = pd.read_csv(report / "comparisons.csv").set_index(["a", "b"])
    assert list(c.index) == [("sgu_split=false", "sgu_split=true"), ("transformer", "sgu_split=true")]
    assert set(c["view"]) == {"inferred"}
    ref = np.array(EXPECTED["sgu_split=true"])
    tf = np.array(EXPECTED["transformer"])
    paired = sps.ttest_rel(tf, ref)  # seeds 0, 1, 2 in the same order in both lists
    row = c.loc[("transformer", "sgu_split=true")]
    assert row["test"] == "paired t" and row["df"] == 2
    assert row["p"] == pytest.approx(paired.pvalue, rel=1e-9) and row["t"] == pytest.approx(paired.statistic, rel=1e-9)
    ci = paired.confidence_interval(0.95)
    assert (row["delta_lo"], row["delta_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    unsplit = np.array(EXPECTED["sgu_split=false"])
    welch = sps.ttest_ind(unsplit, ref, equal_var=False)
    row = c.loc[("sgu_split=false", "sgu_split=true")]
    assert row["test"] == "Welch t" and row["df"] == pytest.approx(welch.df, rel=1e-9)
    assert row["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    ci = welch.confidence_interval(0.95)
    assert (row["delta_lo"], row["delta_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # Holm over exactly the two, by a direct step-down computation
    ps = [welch.pvalue, paired.pvalue]
    lo, hi = sorted(ps)
    holm = {lo: min(1, 2 * lo), hi: max(min(1, 2 * lo), hi)}
    assert c["p_holm"].tolist() == pytest.approx([holm[p] for p in ps], rel=1e-9)
    assert c["resolved"].tolist() == [holm[p] < 0.05 for p in ps]
    # best: sgu_split=true has the best mean, but only if it is resolved against the runner-up
    assert s.loc["sgu_split=true", "rank"] == 1
    assert bool(s.loc["sgu_split=true", "best"]) == (welch.pvalue < 0.05)
    assert not s["best"].drop("sgu_split=true").any()


def test_report_text(report, store):
    md = (report / "report.md").read_text()
    assert "# Sweep report: sgu_test" in md and "Split vs unsplit SGU (test)" in md
    assert "failed trial runs: 1 (1 without a finished rerun, 1 of them diverged)" in md
    assert "loss became nan" in md and "nonfinite: 1" in md
    assert "`abc123`" in md
    # the reproduce line works from a fresh clone: no absolute path of this machine
    assert "```\npython -m analysis.report sgu_test\n```" in md
    assert str(store["root"]) not in md and str(report) not in md
    assert "python -m gmlp_ablate.run sweeps/sgu_test.yaml --rerun" in md
    assert "family: 2 comparison(s), inferred (the sweep declared no family)" in md
    assert "paired t (3 pairs)" in md and "Welch t (2 vs 3)" in md
    assert "| sgu_split=false | false | 1.23 ± 0.32 (n=2) | 1 diverged |" in md
    welch_p = sps.ttest_ind(EXPECTED["sgu_split=true"], EXPECTED["sgu_split=false"], equal_var=False).pvalue
    assert welch_p > 0.05  # the fixture's best mean is not resolved against the runner-up: nothing bold
    assert f"No arm is marked best: sgu_split=true (best mean) vs the runner-up sgu_split=false is not resolved " \
           f"(Welch t, p = {welch_p:.3g})." in md
    assert "**sgu_split=true**" not in md
    assert "1.20 (n=2" not in md and "(n=2)" in md
    assert "≈4.37" in md and "same ordering?" in md
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if " vs " in ln and ln.startswith("| ")}
    assert "a tie in the paper" in lines["sgu_split=true vs transformer"]  # 4.35 vs 4.37 perplexity
    assert "ours not resolved" in lines["sgu_split=true vs sgu_split=false"]
    assert "Table 1" not in md  # no survival-probability factor here
    tex = (report / "table.tex").read_text()
    assert "\\toprule" in tex and "sgu\\_split" in tex
    assert "sgu_split" not in tex.replace("sgu\\_split", "")


def test_report_logged_to_parent(report, store):
    """Exactly the files the report wrote (its manifest) are attached to the latest parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store["uri"])
    names = {Path(f.path).name for f in client.list_artifacts(store["parents"][1], "report")}
    assert {"report.md", "report.html", "summary.csv", "comparisons.csv", "table.tex", "final.png"} <= names
    assert ".analysis-report.json" not in names and names == set(json.loads((report / ".analysis-report.json").read_text())["files"])


def test_two_factor_grid_heatmap_and_single_seed(store, tmp_path):
    from analysis import report

    out = tmp_path / "g2"
    assert report.main(["grid2", "--tracking-uri", store["uri"], "--out", str(out), "--no-log"]) == 0
    assert (out / "heatmap.png").is_file()
    md = (out / "report.md").read_text()
    assert "n=1, no CI" in md and "family: 3 comparison(s), inferred" in md
    s = pd.read_csv(out / "summary.csv", index_col="arm")
    assert s["ci"].isna().all() and (s["interval"] == "none").all() and not s["best"].any()
    c = pd.read_csv(out / "comparisons.csv")
    assert len(c) == 3 and (c["p"] == 1).all() and (c["p_holm"] == 1).all()  # untestable, still in the family
    assert c["note"].str.contains("untestable").all()
    assert "has a single seed" in md or "is not resolved" in md


# ------------------------------------------------------------------------------ CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "analysis.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_missing_experiment_exits_2(store, tmp_path):
    res = _cli("sgu_tes", "--tracking-uri", store["uri"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "experiment 'sgu_tes' does not exist" in lines[0] and "did you mean 'sgu_test'" in lines[0]


@pytest.mark.parametrize("args, expect", [
    (["--metric", "val/los"], "unknown metric 'val/los' (--metric): the finished runs log"),
    (["--baseline", "transfomer"], "unknown baseline 'transfomer'"),
    (["--baseline", "sgu_split=ture"], "unknown baseline 'sgu_split=ture'"),
])
def test_cli_bad_choice_exits_2(store, tmp_path, capsys, args, expect):
    from analysis import report

    rc = report.main([NAME, "--tracking-uri", store["uri"], "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("analysis.report: error: ") and expect in lines[0], err
    assert "did you mean" in lines[0]
    assert "val/loss" in lines[0] if "metric" in expect else "transformer" in lines[0] or "sgu_split=true" in lines[0]
    assert not (tmp_path / "r").exists()


def test_cli_no_store(tmp_path):
    res = _cli("anything", cwd=tmp_path)
    assert res.returncode == 2 and "no MLflow store" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------- browser check
# scripts/screenshots.py drives the system Chromium through Playwright (the dev extra).

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (`chromium` not on PATH; Debian: apt-get install -y chromium)")


def _screenshots(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "screenshots.py"), *args],
                          capture_output=True, text=True, timeout=240)


def _colours(png: Path, size: tuple, thumb: tuple) -> int:
    """Distinct colours of a thumbnail of ``png`` (checked to be ``size`` pixels): text, tables
    and figures give many, a blank or error page a handful."""
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == size
        colours = im.convert("RGB").resize(thumb).getcolors(thumb[0] * thumb[1])
    return len(colours or ())


@needs_chromium
def test_report_html_renders_in_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    res = _screenshots("report", str(report), "--out", str(shot), "--height", "2000")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(shot)
    assert _colours(shot, (1280, 2000), (64, 100)) > 20


@needs_chromium
def test_mlflow_ui_shows_the_sweep_as_a_parent_run_with_nested_trials(store, tmp_path):
    """The README's screenshot script against a real `mlflow server` on 127.0.0.1: it fails
    unless the UI lists the parent run and, once that row is expanded, a trial nested in it."""
    shot = tmp_path / "ui.png"
    res = _screenshots("mlflow-ui", NAME, "--tracking-uri", store["uri"], "--out", str(shot), "--height", "700")
    assert res.returncode == 0, res.stderr
    assert _colours(shot, (1600, 700), (80, 35)) > 20


@needs_chromium
def test_mlflow_ui_unknown_experiment_exits_2(store, tmp_path):
    res = _screenshots("mlflow-ui", "no_such_sweep", "--tracking-uri", store["uri"], "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"screenshots: error: no experiment 'no_such_sweep' in {store['uri']}"
    assert not (tmp_path / "x.png").exists()


def test_curves_through_the_public_api_match_the_sql_path(store, monkeypatch):
    from analysis import load
    from analysis import store as store_mod

    runs, fast = load.load_runs(NAME, store["uri"], curves=["val/loss", "train/loss"])
    monkeypatch.setattr(store_mod, "sql_histories", lambda *a: None)
    _, slow = load.load_runs(NAME, store["uri"], curves=["val/loss", "train/loss"])
    key = ["run_id", "metric", "step"]
    pd.testing.assert_frame_equal(fast.sort_values(key).reset_index(drop=True), slow.sort_values(key).reset_index(drop=True))
    assert len(fast) == len(runs) * 3 * 2


def test_report_written_but_not_logged_exits_1(store, tmp_path, capsys, monkeypatch):
    from analysis import AnalysisError, report

    def refuse(*_a, **_k):
        raise AnalysisError("artifact store refused")

    monkeypatch.setattr(report, "log_report", refuse)
    out = tmp_path / "r"
    assert report.main([NAME, "--tracking-uri", store["uri"], "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not logged" in err and "artifact store refused" in err and str(out) in err
    assert (out / "report.html").is_file()


def test_an_arm_rerun_with_another_config_replaces_the_old_runs(tmp_path):
    """Re-running a sweep after changing its base (here train.steps) gives new trial keys for
    the same arms; the report must not pool the old config's runs into those arms."""
    from analysis.load import load_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri)
    eid = tr.experiment_id("changed")

    def invocation(steps: int, values: dict, failed=()) -> None:
        trials = []
        for seed in sorted(set(values) | set(failed)):
            cfg = TrialConfig(task=TaskConfig(name="charlm", seq_len=64), model=ModelConfig(dim=32, depth=2),
                              train=TrainConfig(steps=steps, eval_every=1), seed=seed)
            trials.append(Trial(arm="dim=32", seed=seed, config=cfg, key=trial_key(cfg), factors={"model.dim": 32}))
        sweep = make_sweep(config=SweepConfig(name="changed", grid={"model.dim": [32]}, seeds=[t.seed for t in trials]),
                      trials=trials)
        pid = tr.start_parent(eid, sweep, command="x")
        for t in trials:
            if t.seed in failed:  # a run that died, then (if in values) a rerun of the key that finished
                rid = tr.start_trial(eid, pid, t, "changed")
                tr.end_trial(rid, "FAILED", error="the sweep driver stopped", failure="driver_lost")
            if t.seed in values:
                rid = tr.start_trial(eid, pid, t, "changed")
                tr.log_metrics(rid, {"val/loss": values[t.seed]}, steps)
                tr.end_trial(rid, "FINISHED")
        tr.end_run(pid)

    invocation(3, {0: 2.0, 1: 2.2}, failed=(1, 2))   # old config: seed 1 failed then finished, seed 2 never
    invocation(5, {0: 1.0, 1: 1.2}, failed=(3,))     # new config: seed 3 failed
    data = load_sweep("changed", uri)
    assert sorted(data.runs["val/loss"]) == [1.0, 1.2]
    assert set(data.runs["train.steps"]) == {5}
    assert len(data.superseded) == 2 and set(data.superseded["train.steps"]) == {3}
    # only the current config's failure is reported; the older config's two are counted apart
    assert data.failures["seed"].tolist() == [3] and not data.failures["resolved"].any()
    assert data.superseded_failures == 2


def test_an_arm_whose_new_config_failed_in_every_seed_shows_no_old_results_as_current(tmp_path):
    """Failures are classified by time and config: the arm's latest runs are of the new
    config and all diverged, so they are the arm's current state (n = 0, three diverged
    seeds), and the older config's finished runs are left out, not shown as current."""
    from analysis.load import load_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri)
    eid = tr.experiment_id("newfail")

    def invocation(steps: int, status: str) -> None:
        trials = []
        for arm, dim in (("dim=32", 32), ("dim=48", 48)):
            for seed in (0, 1, 2):
                cfg = TrialConfig(task=TaskConfig(name="charlm", seq_len=64), model=ModelConfig(dim=dim, depth=2),
                                  train=TrainConfig(steps=steps if arm == "dim=48" else 3, eval_every=1), seed=seed)
                trials.append(Trial(arm=arm, seed=seed, config=cfg, key=trial_key(cfg), factors={"model.dim": dim}))
        sweep = make_sweep(config=SweepConfig(name="newfail", grid={"model.dim": [32, 48]}, seeds=[0, 1, 2]), trials=trials)
        pid = tr.start_parent(eid, sweep, command="x")
        for t in trials:
            if status == "FAILED" and t.arm == "dim=32":
                continue  # unchanged arm: its finished runs are skipped by the rerun
            rid = tr.start_trial(eid, pid, t, "newfail")
            if status == "FAILED":
                tr.end_trial(rid, "FAILED", error="loss became nan at step 2", failure="nonfinite")
            else:
                tr.log_metrics(rid, {"val/loss": 2.0 + 0.1 * t.seed - (0.5 if t.arm == "dim=48" else 0)}, 3)
                tr.end_trial(rid, "FINISHED")
        tr.end_run(pid)

    invocation(3, "FINISHED")
    invocation(9, "FAILED")  # dim=48 at 9 steps diverges in every seed
    data = load_sweep("newfail", uri)
    assert set(data.runs["arm"]) == {"dim=32"} and len(data.superseded) == 3
    assert data.failures["arm"].tolist() == ["dim=48"] * 3 and data.failures["diverged"].all()
    assert data.superseded_failures == 0
    from analysis.analyse import analyse

    an = analyse(data, "val/loss")
    assert an.summary.loc["dim=48", "n"] == 0 and an.summary.loc["dim=48", "n_diverged"] == 3
    assert an.summary.loc["dim=32", "n"] == 3 and not an.summary["best"].any()
    assert an.family.loc[0, "p"] == 1.0 and "no values for dim=48" in an.family.loc[0, "note"]


class _ProtocolTracker(Tracker):
    """A Tracker whose parent runs carry ``protocol`` params in place of the ones it writes
    itself (the sweep loader writes a sequential design's ``sweep.seeds`` as a JSON object)."""

    def __init__(self, uri: str, protocol: dict):
        super().__init__(uri)
        self.protocol = protocol

    def _log(self, run_id, params=None, tags=None):
        if params and "sweep.name" in params:
            params = {**params, **self.protocol}
        return super()._log(run_id, params=params, tags=tags)


def _declared_store(root: Path, extra: dict = None) -> str:
    """A sweep that declared its design on the parent run: MQAR-like accuracies where seeds
    split into solved and unsolved, a baseline whose training budget differs, a diverged seed
    counted as the worst value, a tune stage."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    tr = _ProtocolTracker(uri, extra or {})
    eid = tr.experiment_id("declared")
    acc = {"attn_dim=null": [0.52, 0.51, 0.53], "attn_dim=16": [1.0, 0.52, 0.517], "transformer": [1.0, 0.999, 1.0]}
    trials = []
    for arm, model, factors, base in (("attn_dim=null", {}, {"model.attn_dim": None}, False),
                                      ("attn_dim=16", {"attn_dim": 16}, {"model.attn_dim": 16}, False),
                                      ("transformer", {"arch": "transformer", "heads": 4}, {}, True)):
        for seed in (0, 1, 2, 3):
            cfg = TrialConfig(task=TaskConfig(name="mqar", seq_len=64), model=ModelConfig(dim=32, depth=2, **model),
                              train=TrainConfig(steps=6 if base else 3, eval_every=1), seed=seed)
            trials.append(Trial(arm=arm, seed=seed, config=cfg, key=trial_key(cfg), factors=factors, baseline=base))
    sweep = make_sweep(config=SweepConfig(name="declared", grid={"model.attn_dim": [None, 16]}, seeds=[0, 1, 2, 3],
                                     baselines={"transformer": {"model": {"arch": "transformer", "heads": 4}}},
                                     metric=MetricConfig(name="test/acc", mode="max")), trials=trials)
    pid = tr.start_parent(eid, sweep, command="python -m gmlp_ablate.run sweeps/mqar_recall.yaml")
    MlflowClient(uri).log_batch(pid, params=[__import__("mlflow").entities.Param(k, v) for k, v in {
        "sweep.family": json.dumps([["attn_dim=16", "attn_dim=null"], ["transformer", "attn_dim=null"]]),
        "sweep.alpha": "0.05", "sweep.reference": json.dumps({"model.attn_dim": None}),
        "sweep.reference_arm": "attn_dim=null", "sweep.solved": json.dumps({"metric": "test/acc", "threshold": 0.9}),
        "sweep.diverged": "worst", "sweep.matches": json.dumps({"transformer": {
            "to": "attn_dim=null", "by": "params", "vary": "model.depth", "tolerance": 0.05, "target": 1000,
            "achieved": 1010, "value": 2}})}.items()])
    for t in trials:
        rid = tr.start_trial(eid, pid, t, "declared", extra_tags={"git_commit": "abc123", "stage": "final"})
        if t.seed == 3 and t.arm == "attn_dim=16":
            tr.end_trial(rid, "FAILED", error="loss became nan at step 1", failure="nonfinite")
            continue
        if t.seed == 3:
            value = acc[t.arm][0]
        else:
            value = acc[t.arm][t.seed]
        tr.log_metrics(rid, {"test/acc": value, "val/acc": value, "train/loss": 1.0}, 3)
        tr.end_trial(rid, "FINISHED")
    tune = TrialConfig(task=TaskConfig(name="mqar", seq_len=64), model=ModelConfig(dim=32, depth=2),
                       train=TrainConfig(steps=3, eval_every=1, lr=3e-3), seed=100)
    rid = tr.start_trial(eid, pid, Trial(arm="attn_dim=null", seed=100, config=tune, key=trial_key(tune),
                                         factors={"model.attn_dim": None}), "declared", extra_tags={"stage": "tune"})
    tr.log_metrics(rid, {"val/acc": 0.4, "test/acc": 0.4}, 3)
    tr.end_trial(rid, "FINISHED")
    tr.end_run(pid)
    return uri


def test_declared_family_bounded_metric_solved_and_worst_in_the_report(tmp_path):
    from analysis import report

    uri = _declared_store(tmp_path)
    out = tmp_path / "rep"
    assert report.main(["declared", "--tracking-uri", uri, "--out", str(out), "--no-log", "--baseline",
                        "transformer"]) == 0
    md = (out / "report.md").read_text()
    c = pd.read_csv(out / "comparisons.csv")
    fam = c[c["view"] == "declared"]
    assert list(zip(fam["a"], fam["b"])) == [("attn_dim=16", "attn_dim=null"), ("transformer", "attn_dim=null")]
    ex = c[c["view"] == "exploratory vs transformer"]
    assert len(ex) == 2 and "Exploratory: every arm vs transformer" in md  # shown apart, the family unchanged
    s = pd.read_csv(out / "summary.csv", index_col="arm")
    # seed 3 of attn_dim=16 diverged: counted as accuracy 0 (declared diverged: worst)
    a16 = np.array([1.0, 0.52, 0.517, 0.0])
    assert s.loc["attn_dim=16", "n"] == 4 and s.loc["attn_dim=16", "n_diverged"] == 1
    assert s.loc["attn_dim=16", "mean"] == pytest.approx(a16.mean())
    assert s.loc["attn_dim=16", "interval"] == "bootstrap"
    assert 0.0 <= s.loc["attn_dim=16", "ci_lo"] <= s.loc["attn_dim=16", "ci_hi"] <= 1.0
    ci = sps.binomtest(1, 4).proportion_ci(method="exact")
    assert s.loc["attn_dim=16", "solved_k"] == 1 and s.loc["attn_dim=16", "solved_hi"] == pytest.approx(ci.high)
    assert "solved [95% exact CI]" in md and "1/4 [" in md
    assert "solved a vs b (exact p)" in md and fam["solved_test"].tolist() == ["exact McNemar"] * 2
    assert fam["solved_a"].tolist() == ["1/4", "4/4"] and fam["solved_b"].tolist() == ["0/4", "0/4"]
    assert "family: 2 comparison(s), declared before the sweep ran" in md
    # the baseline trained twice as long: flagged; the tune run is in the protocol, not in the comparisons
    assert "`train.steps` (6 vs 3)" in md
    assert "`transformer` sized to `attn_dim=null` by params: `model.depth` = 2 (+1.0% from the target)" in md
    assert "Tuning runs (stage tune)" in md and "| attn_dim=null | 1 | 0.003 → 0.001 |" in md
    assert s.loc["attn_dim=null", "n"] == 4
    # MQAR has no paper row: no agreement claimed
    assert "No arm of this sweep has a paper number on the same task (`mqar`)" in md


def test_a_sequential_design_is_decided_by_its_boundaries(tmp_path):
    from analysis import report
    from gmlp_ablate import sequential

    seeds = {"initial": 3, "max": 4, "step": 1, "first": 0, "boundary": "pocock"}
    uri = _declared_store(tmp_path, {"sweep.seeds": json.dumps(seeds)})
    out = tmp_path / "rep"
    assert report.main(["declared", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    c = pd.read_csv(out / "comparisons.csv")
    plan = sequential.plan(3, 4, 0.05, "pocock", family_size=2, step=1)
    ref = np.array([0.52, 0.51, 0.53, 0.52])
    diffs = {"16": np.array([1.0, 0.52, 0.517, 0.0]) - ref, "tf": np.array([1.0, 0.999, 1.0, 1.0]) - ref}
    dec = sequential.decide(plan, diffs, 1)
    assert c["resolved"].tolist() == [dec["16"].status == "resolved", dec["tf"].status == "resolved"]
    assert c["decision"].str.startswith("sequential (pocock, look 2 of 2)").all()
    md = (out / "report.md").read_text()
    assert "seeds: sequential: 3 seeds, then more in rounds up to 4" in md and "were added after" not in md


def test_report_folder_name_goes_through_path_component_and_never_overwrites(store, tmp_path, capsys, monkeypatch):
    from analysis import report
    from analysis.outdir import MANIFEST

    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("my own notes")
    (tmp_path / "summary.csv").write_text("mine")
    # a sweep named '..' cannot become a folder: one line, exit 2, nothing written
    assert report.main(["..", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot name the report folder" in err[0] and "--out" in err[0]
    # --out into a folder with the user's own files: refused
    assert report.main([NAME, "--tracking-uri", store["uri"], "--out", ".", "--no-log"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "refusing to overwrite" in err[0]
    # --out pointing at a file
    assert report.main([NAME, "--tracking-uri", store["uri"], "--out", "report.md", "--no-log"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert (tmp_path / "report.md").read_text() == "my own notes" and (tmp_path / "summary.csv").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "summary.csv"]
    # the default folder: reports/<path_component(name)>
    assert report.main(["grid2", "--tracking-uri", store["uri"], "--no-log"]) == 0
    out = tmp_path / "reports" / "grid2"
    assert (out / "heatmap.png").is_file() and (out / MANIFEST).is_file()
    # a second report into the same folder replaces exactly the files the first one wrote
    (out / "notes.txt").write_text("keep me")
    assert report.main([NAME, "--tracking-uri", store["uri"], "--out", str(out), "--no-log"]) == 0
    assert not (out / "heatmap.png").exists() and (out / "notes.txt").read_text() == "keep me"
    listed = set(json.loads((out / MANIFEST).read_text())["files"])
    assert "notes.txt" not in listed and {p.name for p in out.iterdir()} == listed | {"notes.txt", MANIFEST}


def test_cli_out_is_a_file_exits_2_without_a_traceback(store, tmp_path):
    (tmp_path / "taken").write_text("x")
    res = _cli(NAME, "--tracking-uri", store["uri"], "--out", "taken", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--out taken is a file, not a folder" in lines[0]
    assert (tmp_path / "taken").read_text() == "x"


def test_a_sweep_name_with_separators_stays_inside_reports(tmp_path, monkeypatch):
    from analysis import report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri)
    eid = tr.experiment_id("../escape")
    trials = [_trial(f"sgu_split={'true' if s else 'false'}", seed, {"sgu_split": s}, {"model.sgu_split": s})
              for s in (True, False) for seed in (0, 1)]
    sweep = make_sweep(config=SweepConfig(name="../escape", grid={"model.sgu_split": [True, False]}, seeds=[0, 1]),
                  trials=trials)
    pid = tr.start_parent(eid, sweep, command="x")
    for t in trials:
        rid = tr.start_trial(eid, pid, t, "../escape")
        tr.log_metrics(rid, {"val/loss": 1.0 + 0.1 * t.seed + (0.2 if t.arm.endswith("false") else 0)}, 3)
        tr.end_trial(rid, "FINISHED")
    tr.end_run(pid)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert report.main(["../escape", "--tracking-uri", uri, "--no-log"]) == 0
    assert sorted(str(p.relative_to(work)) for p in work.rglob("report.md")) == ["reports/escape/report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mlflow.db", "work"] + (["mlruns"] if (tmp_path / "mlruns").exists() else []))


def test_one_family_across_sweeps_is_holm_corrected_over_the_union(store, tmp_path, capsys):
    from analysis import family

    out = tmp_path / "union.csv"
    assert family.main([NAME, "grid2", "--tracking-uri", store["uri"], "--csv", str(out)]) == 0
    md = capsys.readouterr().out
    df = pd.read_csv(out)
    assert list(df["sweep"]) == [NAME, NAME, "grid2", "grid2", "grid2"]  # 2 + 3 declared (here: inferred) pairs
    ref = np.array(EXPECTED["sgu_split=true"])
    raw = [sps.ttest_ind(EXPECTED["sgu_split=false"], ref, equal_var=False).pvalue,
           sps.ttest_rel(EXPECTED["transformer"], ref).pvalue, 1.0, 1.0, 1.0]  # grid2: one seed each, untestable
    assert df["p"].tolist() == pytest.approx(raw, rel=1e-9)
    m = len(raw)
    order = np.argsort(raw, kind="stable")
    adjusted = np.maximum.accumulate([min(1.0, (m - i) * raw[j]) for i, j in enumerate(order)])
    expect = np.empty(m)
    expect[order] = adjusted
    assert df["p_holm"].tolist() == pytest.approx(list(expect), rel=1e-9)
    assert "Holm-corrected together" in md and "| sgu_test | transformer − sgu_split=true |" in md
    # bad input: one line, exit 2; an existing CSV is never overwritten
    assert family.main([NAME, "nope", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment 'nope' does not exist" in err[0]
    before = out.read_text()
    assert family.main([NAME, "--tracking-uri", store["uri"], "--csv", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and out.read_text() == before

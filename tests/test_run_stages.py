"""Sweeps in stages through the runner: a tuning stage then the final seeds at each arm's best
setting, and sequential seeds in rounds. A real local Ray and a real sqlite store."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import mlflow_runs, write_yaml
from gmlp_ablate import run

pytestmark = pytest.mark.integration

BASE = {
    "task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
    "model": {"dim": 16, "depth": 1},
    "train": {"steps": 40, "batch_size": 8, "eval_every": 20, "log_every": 10, "warmup_steps": 2},
}


def test_tuning_stage_then_final_seeds_at_each_arms_best_setting(tmp_path, capsys):
    data = {"name": "staged", "base": BASE, "grid": {"model.sgu_split": [True, False]},
            "tune": {"space": {"train.lr": [1.0e-3, 3.0e-3]}, "budget": 2, "steps": 20, "seeds": [1000],
                     "select": "val/loss"},
            "seeds": [0, 1], "metric": {"name": "val/loss", "mode": "min"}}
    path = write_yaml(tmp_path / "s.yaml", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [path, "--tracking-uri", uri, "--storage", str(tmp_path / "results"), "--num-cpus", "2"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "stage 1 (tune): 4 trials" in out and "stage 2 (final): 4 trials" in out

    got = mlflow_runs(uri, "staged")
    trials = got["trials"]
    assert Counter(r.data.tags["stage"] for r in trials) == {"tune": 4, "final": 4}
    assert {r.info.status for r in trials} == {"FINISHED"}
    for arm in ("sgu_split=true", "sgu_split=false"):
        tuned = [r for r in trials if r.data.tags["arm"] == arm and r.data.tags["stage"] == "tune"]
        assert sorted(r.data.params["train.lr"] for r in tuned) == ["0.001", "0.003"]
        assert {r.data.params["train.steps"] for r in tuned} == {"20"}
        best = min(tuned, key=lambda r: r.data.metrics["val/loss"]).data.params["train.lr"]
        final = [r for r in trials if r.data.tags["arm"] == arm and r.data.tags["stage"] == "final"]
        assert sorted(r.data.tags["seed"] for r in final) == ["0", "1"]
        assert {r.data.params["train.lr"] for r in final} == {best}, "the final seeds use the arm's best setting"
        assert {r.data.params["train.steps"] for r in final} == {"40"}
    parent = got["parents"][0]
    assert json.loads(parent.data.params["sweep.tune"])["budget"] == 2, "the declared design is on the parent run"

    assert run.main(args) == 0  # the same command again trains nothing
    assert "skipping 4 trial(s) already FINISHED" in capsys.readouterr().out
    assert len(mlflow_runs(uri, "staged")["trials"]) == 8


def test_sequential_seeds_run_in_rounds(tmp_path, capsys):
    data = {"name": "rounds", "base": BASE, "grid": {"model.sgu_split": [True, False]},
            "seeds": {"initial": 2, "max": 3}, "metric": {"name": "val/loss", "mode": "min"}}
    path = write_yaml(tmp_path / "s.yaml", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run.main([path, "--tracking-uri", uri, "--storage", str(tmp_path / "results"), "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 1/" in out
    trials = mlflow_runs(uri, "rounds")["trials"]
    seeds = Counter(r.data.tags["seed"] for r in trials)
    assert seeds["0"] == 2 and seeds["1"] == 2 and set(seeds) <= {"0", "1", "2"}, seeds
    assert {r.info.status for r in trials} == {"FINISHED"} and {r.data.tags["stage"] for r in trials} == {"final"}
    rounds = out.count("round ")
    assert len(trials) == (4 if rounds == 1 else 6), (rounds, len(trials))

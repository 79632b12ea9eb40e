"""A tuning stage with ``tune.scheduler: asha``: one ASHA per arm, its rungs at the arm's
evaluations, trials it stops tagged and left out of selection, the final stage at each arm's
chosen setting. The integration test runs a real two-stage sweep on a real local Ray and a
real sqlite MLflow store; the others check the pieces without Ray running."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from conftest import history_steps, mlflow_runs, write_yaml
from gmlp_ablate import run, stages
from gmlp_ablate.executor import ASHA_REDUCTION_FACTOR, _scheduler, asha_rungs
from gmlp_ablate.names import METRIC_TOTAL_TIME_S, TAG_STOPPED_AT
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.sweep import build_sweep
from gmlp_ablate.tuning import tune_trials

STEPS, EVAL = 40, 5
RUNGS = [5, 20]
LRS = [3.0e-3, 1.0e-2, 1.0e-3, 1.0e-6]
"""Candidates in trial order. 1e-6 barely moves the model (the clearly bad one) and comes
last: by the time it reaches the first rung, at least two of its arm's trials (2 run at a
time) have recorded better values there. 1e-2 learns fastest; whether 3e-3 is stopped at the
second rung depends on which of the two gets there first, and the test holds either way."""


def _data(tmp_path, **tune):
    return {
        "name": "asha",
        "base": {"task": {"name": "charlm", "seq_len": 32, "corpus_bytes": 100_000, "val_tokens": 1024,
                          "cache_dir": str(tmp_path / "cache")},
                 "model": {"dim": 16, "depth": 1},
                 "train": {"steps": STEPS, "batch_size": 8, "eval_every": EVAL, "log_every": EVAL,
                           "warmup_steps": 2}},
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0],
        "metric": {"name": "val/loss", "mode": "min"},
        "tune": {"space": {"train.lr": LRS}, "budget": len(LRS), "steps": STEPS, "seeds": [1000],
                 "select": "val/loss", "scheduler": "asha", **tune},
    }


def test_rungs_are_evaluation_steps_before_the_last():
    assert asha_rungs(STEPS, EVAL) == RUNGS
    assert asha_rungs(40, 10) == [10] and asha_rungs(161, 10) == [10, 40, 160] and asha_rungs(160, 10) == [10, 40]
    assert asha_rungs(2000, 250) == [250, 1000]
    assert asha_rungs(250, 250) == [] and asha_rungs(200, 250) == []


@pytest.mark.integration
def test_asha_stops_weak_candidates_and_only_trials_that_ran_to_the_end_are_selected(tmp_path, capsys):
    path = write_yaml(tmp_path / "s.yaml", _data(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tune runs of one trial: the scheduled tuning stage still runs as one (ASHA compares its
    # trials with each other); the final stage, without a scheduler, is split.
    args = [path, "--tracking-uri", uri, "--storage", str(tmp_path / "results"), "--num-cpus", "2",
            "--trials-per-tune-run", "1"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "stage 1 (tune): 8 trials" in out and "stage 2 (final): 2 trials" in out
    assert "running 8 trial(s)" in out and "Tune run 1/8" not in out
    assert "Tune run 1/2: 1 of the 2 trial(s)" in out and "Tune run 2/2: 1 of the 2 trial(s)" in out
    assert "stopped early by the scheduler at step" in out

    got = mlflow_runs(uri, "asha")
    client, trials = got["client"], got["trials"]
    assert len(trials) == 10 and {r.info.status for r in trials} == {"FINISHED"}
    for arm in ("sgu_split=true", "sgu_split=false"):
        tuned = [r for r in trials if r.data.tags["arm"] == arm and r.data.tags["stage"] == "tune"]
        assert sorted(float(r.data.params["train.lr"]) for r in tuned) == sorted(LRS)
        stopped = [r for r in tuned if TAG_STOPPED_AT in r.data.tags]
        ran = [r for r in tuned if TAG_STOPPED_AT not in r.data.tags]
        for r in stopped:
            at = int(r.data.tags[TAG_STOPPED_AT])
            assert at in RUNGS, f"{arm}: stopped at step {at}, not at one of ASHA's rungs {RUNGS}"
            assert history_steps(client, r.info.run_id, "val/loss")[-1] == at
            assert max(max(history_steps(client, r.info.run_id, k)) for k in r.data.metrics) == at < STEPS, \
                "nothing is logged after the step it was stopped at"
            assert "test/loss" not in r.data.metrics, "the test split is scored only at the last step"
        for r in ran:
            assert history_steps(client, r.info.run_id, "val/loss")[-1] == STEPS
            assert "test/loss" in r.data.metrics and METRIC_TOTAL_TIME_S in r.data.metrics, \
                "a trial that reaches its last step ends with its final report"
        lr_of = {float(r.data.params["train.lr"]): r for r in tuned}
        assert TAG_STOPPED_AT in lr_of[1.0e-6].data.tags, f"{arm}: the clearly bad candidate was not stopped"
        assert ran, f"{arm}: ASHA must let at least one of the arm's candidates run to the end"

        best = min(ran, key=lambda r: r.data.metrics["val/loss"]).data.params["train.lr"]
        final = [r for r in trials if r.data.tags["arm"] == arm and r.data.tags["stage"] == "final"]
        assert len(final) == 1 and final[0].data.params["train.lr"] == best, \
            "the final stage runs at the best setting among the trials that ran to the end"
        assert final[0].data.params["train.steps"] == str(STEPS) and TAG_STOPPED_AT not in final[0].data.tags
        assert history_steps(client, final[0].info.run_id, "val/loss")[-1] == STEPS

    ids = {r.info.run_id for r in trials}
    assert run.main(args) == 0  # the same command again trains nothing, stopped trials included
    out = capsys.readouterr().out
    assert "skipping 8 trial(s) already FINISHED" in out and "skipping 2 trial(s) already FINISHED" in out
    assert "started" not in out
    assert {r.info.run_id for r in mlflow_runs(uri, "asha")["trials"]} == ids


def test_a_trial_stopped_early_is_no_candidate_even_with_a_better_early_value(tmp_path):
    sw = build_sweep(_data(tmp_path))
    trials = tune_trials(sw, stages.candidates(sw))
    key = {(t.arm, t.settings["train.lr"]): t.key for t in trials}
    results = {}
    for arm in sw.arms:  # 1e-2 ran to the end; 3e-3 was stopped at step 20 with a lower (earlier) loss
        results[key[arm, 1.0e-2]] = {"val/loss": 3.0}
        results[key[arm, 3.0e-3]] = {"val/loss": 2.5, TAG_STOPPED_AT: 20.0}
        results[key[arm, 1.0e-3]] = {"val/loss": 3.4, TAG_STOPPED_AT: 5.0}
        results[key[arm, 1.0e-6]] = {"val/loss": math.nan}
    chosen = stages.chosen_settings(sw, trials, results)
    assert chosen == {arm: {"train.lr": 1.0e-2} for arm in sw.arms}
    unmarked = {k: {m: v for m, v in r.items() if m != TAG_STOPPED_AT} for k, r in results.items()}
    assert stages.chosen_settings(sw, trials, unmarked)["sgu_split=true"] == {"train.lr": 3.0e-3}, \
        "without the stopped mark the earlier value would win: the mark is what excludes it"

    only_stopped = {k: {**r, TAG_STOPPED_AT: 5.0} for k, r in results.items()}
    with pytest.raises(RuntimeError, match="trials stopped early do not count"):
        stages.chosen_settings(sw, trials, only_stopped)


def _stand_in(arm: str, n: int) -> SimpleNamespace:
    """What ASHA and the per-arm router read of a Tune trial: its id and config."""
    return SimpleNamespace(trial_id=f"{arm}-{n}", config={"trial": {"arm": arm}})


def test_each_arm_has_its_own_asha_with_its_own_rungs(tmp_path):
    data = _data(tmp_path)
    data["baselines"] = {"slow_eval": {"train": {"eval_every": 10}}}
    sw = build_sweep(data)
    sched = _scheduler({"name": "asha", "metric": "val/loss", "mode": "min"}, tune_trials(sw, stages.candidates(sw)))
    rungs = {arm: sorted(m for m, _ in s._brackets[0]._rungs) for arm, s in sched.by_arm.items()}
    assert rungs == {"sgu_split=true": RUNGS, "sgu_split=false": RUNGS, "slow_eval": [10]}
    assert _scheduler({"name": "none", "metric": "val/loss", "mode": "min"}, []) is None

    # Arm A's candidates recorded low losses at the first rung; arm B is worse across the board.
    # Its first candidate at the rung continues (it is compared only with its own arm), where
    # one ASHA over both arms would stop it.
    shared = ASHAScheduler(time_attr="step", metric="val/loss", mode="min", max_t=RUNGS[-1] * 2,
                           grace_period=RUNGS[0], reduction_factor=ASHA_REDUCTION_FACTOR, stop_last_trials=False)
    for s in (sched, shared):
        for i, loss in enumerate([1.0, 1.1, 1.2]):
            t = _stand_in("sgu_split=true", i)
            s.on_trial_add(None, t)
            s.on_trial_result(None, t, {"step": RUNGS[0], "val/loss": loss})
    b0, b1 = _stand_in("sgu_split=false", 0), _stand_in("sgu_split=false", 1)
    for s in (sched, shared):
        s.on_trial_add(None, b0)
        s.on_trial_add(None, b1)
    assert shared.on_trial_result(None, b0, {"step": RUNGS[0], "val/loss": 3.0}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, b0, {"step": RUNGS[0], "val/loss": 3.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b1, {"step": RUNGS[0], "val/loss": 3.5}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, b0, {"step": 10, "val/loss": 2.0}) == TrialScheduler.CONTINUE, "not a rung"


def test_asha_needs_an_evaluation_before_the_last_step(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_sweep(_data(tmp_path, steps=EVAL))
    assert e.value.key == "tune.scheduler" and "sgu_split=true" in str(e.value)
    build_sweep(_data(tmp_path, steps=EVAL, scheduler="none"))  # without a scheduler, any interval

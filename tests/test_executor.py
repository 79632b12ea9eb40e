"""What the driver hands Ray Tune for each trial: Tune keeps it for every trial until the run
ends, so it must not grow with the number of trials in the run. Real Tune ``Trial`` objects
(no Ray instance needed), the executor's own Tune settings and configs."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ray.tune.experiment import Trial

from gmlp_ablate.executor import TuneExecutor
from gmlp_ablate.run import run_trial
from gmlp_ablate.sweep import build_sweep
from gmlp_ablate.trial import merge_trial, to_dict


def _tune_trials(tmp_path, n: int):
    """A sweep of ``n`` trials as Tune holds them: the executor's Tune config and naming."""
    sweep = build_sweep({"name": "naming", "base": {"task": {"name": "mqar"}, "model": {"dim": 8, "depth": 1},
                                                    "train": {"steps": 5}},
                         "grid": {"model.sgu_split": [True]}, "seeds": list(range(n))})
    args = SimpleNamespace(max_concurrent=None, rerun=False)
    ex = TuneExecutor(args, sweep, None, "0", "parent", None, None, None, run_trial, str(tmp_path / "ck"))
    ex.index = {t.key: i for i, t in enumerate(sweep.trials)}  # as run() numbers a run's trials
    tc = ex._tune_config(None, sweep.trials, None)
    return sweep, [Trial("run_trial", config=ex._config(t), stub=True, trial_name_creator=tc.trial_name_creator,
                         trial_dirname_creator=tc.trial_dirname_creator) for t in sweep.trials[:3]]


def test_the_state_tune_keeps_per_trial_does_not_grow_with_the_run(tmp_path):
    small_sweep, small = _tune_trials(tmp_path, 3)
    big_sweep, big = _tune_trials(tmp_path, 600)
    for sweep, trials in ((small_sweep, small), (big_sweep, big)):  # names and folders as before
        t = sweep.trials[1]
        assert str(trials[1]) == f"{t.arm}#{t.key[:6]}"
        assert trials[1].custom_dirname == f"t0001_{t.key[:8]}"
        # the trainable gets the trial's config back as it was
        assert merge_trial(json.loads(trials[1].config["trial"]["config"])) == t.config
        assert to_dict(merge_trial(json.loads(trials[1].config["trial"]["config"]))) == to_dict(t.config)
    size = [len(tr.get_json_state()[0]) for tr in small + big]
    # The same trial (seed 0, 1, 2) in a run of 3 and of 600 trials: the same saved state but for
    # a few bytes (the seeds' own values and paths).
    assert max(size) - min(size) < 100, size

"""Stage 1 of the protocol: search spaces checked before anything runs, candidates drawn
deterministically by Ray Tune's variant generator, each arm's best setting picked on val."""

from __future__ import annotations

import math

import pytest

from gmlp_ablate.names import STAGE_TUNE
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.sweep import build_sweep
from gmlp_ablate.tuning import candidates, select, space_for, tune_trials


def _sweep(tune=None, **over):
    data = {
        "name": "t",
        "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16}, "model": {"dim": 16, "depth": 1},
                 "train": {"steps": 40}},
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0, 1],
        "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 2}}},
        "metric": {"name": "test/loss", "mode": "min"},
    }
    if tune is not None:
        data["tune"] = tune
    data.update(over)
    return data


LR_GRID = {"space": {"train.lr": [1e-3, 3e-3]}, "budget": 2, "steps": 20, "seeds": [1000]}


@pytest.mark.parametrize("tune, key", [
    ({"space": {}, "budget": 2}, "tune.space"),
    ({"space": {"train.lr": [1e-3]}, "budget": 0}, "tune.budget"),
    ({"space": {"train.lr": [1e-3, 3e-3]}, "budget": 3}, "tune.budget"),
    ({"space": {"train.lrr": [1e-3]}, "budget": 1}, "tune.space.train.lrr"),
    ({"space": {"model.arch": ["gmlp"]}, "budget": 1}, "tune.space.model.arch"),
    ({"space": {"train.lr": {"loguniform": [0, 1]}}, "budget": 2}, "tune.space.train.lr"),
    ({"space": {"train.lr": {"normal": [0, 1]}}, "budget": 2}, "tune.space.train.lr"),
    ({"space": {"train.lr": [1e-3]}, "budget": 1, "seeds": [0]}, "tune.seeds"),
    ({"space": {"train.lr": [1e-3]}, "budget": 1, "select": "test/loss"}, "tune.select"),
    ({"space": {"train.lr": [1e-3]}, "budget": 1, "select": "val/acc", "mode": "max"}, None),
    ({"space": {"train.lr": [1e-3]}, "budget": 1, "bogus": 1}, "tune.bogus"),
    ({"space": {"train.lr": [1e-3]}, "budget": 1, "arms": {"transfomer": {"train.lr": [1e-3]}}}, "tune.arms.transfomer"),
])
def test_bad_tune_sections_name_the_key(tune, key):
    if key is None:
        build_sweep(_sweep(tune))  # mqar reports val/acc: accepted
        return
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(tune))
    assert e.value.key == key, str(e.value)


def test_grid_candidates_are_the_grid():
    sw = build_sweep(_sweep(LR_GRID))
    assert candidates(space_for(sw, "transformer"), 2, 0) == [{"train.lr": 1e-3}, {"train.lr": 3e-3}]


def test_sampled_candidates_are_deterministic_and_in_range():
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.warmup_steps": [0, 10]}
    a, b = candidates(space, 6, 7), candidates(space, 6, 7)
    assert a == b and len(a) == 6
    assert all(1e-4 <= c["train.lr"] <= 1e-2 and c["train.warmup_steps"] in (0, 10) for c in a)
    assert candidates(space, 6, 8) != a


def test_tune_trials_are_per_arm_at_tune_steps_and_seeds():
    sw = build_sweep(_sweep(LR_GRID))
    cands = {arm: candidates(space_for(sw, arm), 2, 0) for arm in sw.arms}
    trials = tune_trials(sw, cands)
    assert len(trials) == len(sw.arms) * 2 * 1
    assert all(t.stage == STAGE_TUNE and t.seed == 1000 and t.config.train.steps == 20 for t in trials)
    assert {t.settings["train.lr"] for t in trials} == {1e-3, 3e-3}
    assert not ({t.key for t in trials} & {t.key for t in sw.trials})


def test_per_arm_space_changes_only_that_arms_trials():
    sw_a = build_sweep(_sweep(LR_GRID))
    changed = {**LR_GRID, "arms": {"transformer": {"train.lr": [3e-4, 1e-3]}}}
    sw_b = build_sweep(_sweep(changed))
    keys = {}
    for name, sw in (("a", sw_a), ("b", sw_b)):
        trials = tune_trials(sw, {arm: candidates(space_for(sw, arm), 2, 0) for arm in sw.arms})
        keys[name] = {(t.arm, t.key) for t in trials}
    moved = {arm for arm, key in keys["a"] ^ keys["b"]}
    assert moved == {"transformer"}


def test_select_picks_the_best_mean_and_never_a_diverged_setting():
    sw = build_sweep(_sweep(LR_GRID))
    lo, hi = {"train.lr": 1e-3}, {"train.lr": 3e-3}
    results = {"transformer": [(lo, 2.0), (lo, 2.2), (hi, 1.0), (hi, math.nan)],
               "sgu_split=true": [(lo, 2.0), (hi, 2.5)]}
    assert select(sw, results) == {"transformer": lo, "sgu_split=true": lo}
    with pytest.raises(RuntimeError, match="no tuning trial gave a finite"):
        select(sw, {"transformer": [(lo, math.inf)]})


def test_final_trials_carry_each_arms_own_setting():
    sw = build_sweep(_sweep(LR_GRID))
    best = {"sgu_split=true": {"train.lr": 3e-3}, "sgu_split=false": {"train.lr": 1e-3}, "transformer": {"train.lr": 1e-3}}
    trials = sw.trials_for([0, 1], best)
    for t in trials:
        assert t.config.train.lr == best[t.arm]["train.lr"] and t.settings == best[t.arm]
    assert {t.key for t in trials if t.arm == "sgu_split=false"} == {t.key for t in sw.trials if t.arm == "sgu_split=false"}


def test_a_choice_at_the_edge_of_a_grid_axis_is_flagged():
    from gmlp_ablate.tuning import on_edge

    space = {"train.lr": [1e-3, 2e-3, 4e-3], "train.warmup_steps": [30, 150], "train.beta2": {"uniform": [0.9, 0.99]}}
    assert on_edge(space, {"train.lr": 4e-3, "train.warmup_steps": 30, "train.beta2": 0.99}) == ["train.lr", "train.warmup_steps"]
    assert on_edge(space, {"train.lr": 2e-3, "train.warmup_steps": 30}) == ["train.warmup_steps"]


def test_edge_side_is_the_one_rule_for_runner_and_report():
    import pandas as pd

    from analysis.analyse import tuning_edges
    from gmlp_ablate.tuning import edge_side

    assert edge_side([4e-3, 1e-3, 2e-3], 1e-3) == "smallest" and edge_side([1e-3, 2e-3, 4e-3], 4e-3) == "largest"
    assert edge_side([1e-3, 2e-3, 4e-3], 2e-3) is None and edge_side([1e-3, 1e-3], 1e-3) is None
    assert edge_side([1e-3, 4e-3], 3e-3) is None and edge_side([True, False], True) is None
    tune = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "train.lr": [1e-3, 2e-3, 4e-3] * 2})
    runs = pd.DataFrame({"arm": ["a", "a", "b"], "train.lr": [4e-3, 4e-3, 2e-3]})
    (line,) = tuning_edges(tune, runs)  # a chose the top of its range, b an interior value
    assert line.startswith("a: `train.lr`") and "largest value searched" in line

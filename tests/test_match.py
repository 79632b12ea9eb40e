"""Baselines sized to another arm before running: resolved from the zoo's analytic counts,
checked against the models actually built."""

from __future__ import annotations

import pytest

from gmlp_ablate.models import build_model
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.sweep import build_sweep
from gmlp_ablate.tasks import task_shape


def _sweep(match, **over):
    data = {
        "name": "m",
        "base": {"task": {"name": "charlm", "seq_len": 32}, "model": {"dim": 96, "depth": 4, "ff_mult": 4}},
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0, 1],
        "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 4}, "match": match}},
        "metric": {"name": "test/bpb", "mode": "min"},
    }
    data.update(over)
    return data


def _built_params(cfg):
    return sum(p.numel() for p in build_model(cfg.model, task_shape(cfg.task)).parameters())


@pytest.mark.parametrize("vary", ["model.dim", "model.depth"])
def test_match_by_params_is_within_tolerance_of_the_built_models(vary):
    sw = build_sweep(_sweep({"to": "sgu_split=true", "by": "params", "vary": vary, "tolerance": 0.1}))
    ref = next(t for t in sw.trials if t.arm == "sgu_split=true").config
    tf = next(t for t in sw.trials if t.arm == "transformer").config
    target, got = _built_params(ref), _built_params(tf)
    m = sw.matches["transformer"]
    assert (m.target, m.achieved) == (target, got)
    assert abs(got / target - 1) <= 0.1
    assert getattr(tf.model, vary.split(".")[1]) == m.value


def test_match_changes_the_trial_keys_of_the_baseline_only():
    plain = build_sweep(_sweep({"to": "sgu_split=true", "vary": "model.dim", "tolerance": 0.1}))
    unmatched = build_sweep({**_sweep(None), "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 4}}}})
    same = {t.key for t in plain.trials if not t.baseline} == {t.key for t in unmatched.trials if not t.baseline}
    moved = {t.key for t in plain.trials if t.baseline} != {t.key for t in unmatched.trials if t.baseline}
    assert same and moved


def test_match_by_flops():
    from gmlp_ablate.models.flops import flops_per_token

    sw = build_sweep(_sweep({"to": "sgu_split=false", "by": "flops", "vary": "model.dim", "tolerance": 0.1}))
    ref = sw.arm_configs["sgu_split=false"]
    tf = sw.arm_configs["transformer"]
    ratio = flops_per_token(tf.model, task_shape(tf.task)) / flops_per_token(ref.model, task_shape(ref.task))
    assert abs(ratio - 1) <= 0.1


@pytest.mark.parametrize("match, key", [
    ({"to": "sgu_split=maybe"}, "baselines.transformer.match.to"),
    ({"to": "transformer"}, "baselines.transformer.match.to"),
    ({"to": "sgu_split=true", "vary": "model.heads"}, "baselines.transformer.match.vary"),
    ({"to": "sgu_split=true", "by": "speed"}, "baselines.transformer.match.by"),
    ({"to": "sgu_split=true", "tolerance": 0}, "baselines.transformer.match.tolerance"),
    ({"to": "sgu_split=true", "tolerence": 0.1}, "baselines.transformer.match.tolerence"),
    ({"to": "sgu_split=true", "vary": "model.depth", "tolerance": 0.001}, "baselines.transformer.match.tolerance"),
    ({"by": "params"}, "baselines.transformer.match.to"),
    ("sgu_split=true", "baselines.transformer.match"),
])
def test_bad_match_names_the_key(match, key):
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(match))
    assert e.value.key == key, str(e.value)


def test_unreachable_target_says_how_close_it_got():
    with pytest.raises(ConfigError, match=r"the closest model.depth=\d+ gives params [\d,]+, [\d.]+% from 'sgu_split=true'"):
        build_sweep(_sweep({"to": "sgu_split=true", "vary": "model.depth", "tolerance": 0.001}))

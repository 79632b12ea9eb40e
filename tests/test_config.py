"""The schema: loading, validation with errors naming the key, overrides, grid expansion, keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmlp_ablate.config import (
    TRIAL_KEYS,
    ConfigError,
    TrialConfig,
    build_sweep,
    field_docs,
    load_sweep,
    load_trial,
    merge_trial,
    trial_key,
)

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


def _sweep(**over):
    data = {
        "name": "t",
        "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16}, "model": {"dim": 16, "depth": 1}},
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0, 1],
        "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 2}}},
    }
    data.update(over)
    return data


def test_every_field_has_a_docstring():
    docs = field_docs()
    assert set(docs) == set(TRIAL_KEYS)
    assert [k for k, v in docs.items() if not v.strip()] == []


def test_defaults_validate():
    cfg = load_trial(None, [])
    assert isinstance(cfg, TrialConfig) and cfg.model.arch == "gmlp"


def test_overrides_are_typed():
    cfg = load_trial(None, ["model.dim=64", "model.sgu_split=false", "model.attn_dim=32", "train.lr=3e-4", "seed=3"])
    assert (cfg.model.dim, cfg.model.sgu_split, cfg.model.attn_dim, cfg.train.lr, cfg.seed) == (64, False, 32, 3e-4, 3)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.prob_survival=0", "model.prob_survival"),
        ("model.prob_survival=1.5", "model.prob_survival"),
        ("model.init_eps=-1", "model.init_eps"),
        ("model.attn_dim=0", "model.attn_dim"),
        ("model.arch=mlp", "model.arch"),
        ("model.sgu_act=relu6", "model.sgu_act"),
        ("model.drop_mode=block", "model.drop_mode"),
        ("model.dim=0", "model.dim"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.steps=-5", "train.steps"),
        ("train.lr=0", "train.lr"),
        ("train.beta2=1.0", "train.beta2"),
        ("train.device=tpu", "train.device"),
        ("task.name=imagenet", "task.name"),
        ("seed=-1", "seed"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_trial(None, [override])
    assert e.value.key == key and key in str(e.value)


def test_transformer_heads_must_divide_dim():
    with pytest.raises(ConfigError, match="model.heads"):
        load_trial(None, ["model.arch=transformer", "model.dim=30", "model.heads=4"])


def test_attn_heads_must_divide_attn_dim():
    with pytest.raises(ConfigError, match="model.attn_heads"):
        load_trial(None, ["model.attn_dim=30", "model.attn_heads=4"])


def test_unknown_key_has_did_you_mean():
    with pytest.raises(ConfigError) as e:
        load_trial(None, ["model.init_esp=0.1"])
    assert e.value.key == "model.init_esp" and "did you mean 'model.init_eps'" in str(e.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_trial(None, ["model.dim=wide"])
    assert e.value.key == "model.dim"


def test_trial_key_ignores_nonsemantic_fields():
    a = merge_trial({"train": {"device": "cpu", "log_every": 5, "threads": 2}})
    b = merge_trial({"train": {"device": "auto", "log_every": 50}})
    c = merge_trial({"train": {"lr": 2e-3}})
    assert trial_key(a) == trial_key(b) != trial_key(c)


def test_trial_key_is_stable():
    # The key is a pure function of the resolved config (no process state, no ordering).
    assert trial_key(merge_trial({"seed": 1, "model": {"dim": 8}})) == trial_key(merge_trial({"model": {"dim": 8}, "seed": 1}))


def test_sweep_expands_grid_seeds_and_baselines():
    sw = build_sweep(_sweep())
    assert len(sw.trials) == (2 + 1) * 2
    assert sw.arms == ["sgu_split=true", "sgu_split=false", "transformer"]
    assert {t.seed for t in sw.trials} == {0, 1}
    base = [t for t in sw.trials if t.baseline]
    assert all(t.config.model.arch == "transformer" and t.config.model.dim == 16 for t in base)
    assert len({t.key for t in sw.trials}) == 6


def test_two_factor_grid_is_full_factorial():
    sw = build_sweep(_sweep(grid={"model.sgu_split": [True, False], "model.ff_mult": [2, 4]}))
    grid_arms = [a for a in sw.arms if a != "transformer"]
    assert len(grid_arms) == 4 and "sgu_split=false,ff_mult=2" in grid_arms


def test_override_replaces_axis_and_base():
    sw = build_sweep(_sweep(), ["grid.model.sgu_split=[true]", "model.dim=32", "seeds=[5]"])
    assert sw.arms == ["sgu_split=true", "transformer"]
    assert all(t.config.model.dim == 32 and t.seed == 5 for t in sw.trials)


def test_adding_a_seed_keeps_existing_keys():
    a = {t.key for t in build_sweep(_sweep()).trials}
    b = {t.key for t in build_sweep(_sweep(seeds=[0, 1, 2])).trials}
    assert a < b and len(b - a) == 3


@pytest.mark.parametrize(
    "over, key",
    [
        ({"grid": {}}, "grid"),
        ({"grid": {"model.sgu_split": []}}, "grid.model.sgu_split"),
        ({"grid": {"model.sgu_splt": [True]}}, "grid.model.sgu_splt"),
        ({"grid": {"model.prob_survival": [1.0, 0.0]}}, "grid[prob_survival=0.0].model.prob_survival"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"baselines": {"sgu_split=true": {"model": {"arch": "transformer"}}}}, "baselines.sgu_split=true"),
        ({"metric": {"name": "val/loss", "mode": "lowest"}}, "metric.mode"),
        ({"resources": {"cpu": 0}}, "resources.cpu"),
        ({"resources": {"gpu": "lots"}}, "resources.gpu"),
        ({"bogus": 1}, "bogus"),
        ({"name": None}, "name"),
    ],
)
def test_bad_sweeps_name_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(**over))
    assert e.value.key == key, str(e.value)


def test_bad_base_key_is_named_with_prefix():
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(base={"model": {"dimm": 8}}))
    assert e.value.key == "base.model.dimm" and "did you mean" in str(e.value)


def test_seed_in_a_sweep_points_to_seeds():
    with pytest.raises(ConfigError, match=r"seeds=\[3\]"):
        build_sweep(_sweep(), ["seed=3"])
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(base={"seed": 1}))
    assert e.value.key == "base.seed"


def test_unknown_override_key():
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(), ["modle.dim=3"])
    assert e.value.key == "modle.dim"


def test_malformed_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngrid: {model.dim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_sweep(str(p))


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_sweep("/nonexistent/sweep.yaml")


def test_yaml_never_executes_code(tmp_path):
    p = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_sweep(str(p))
    assert not marker.exists()


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweeps_load_and_expand(path):
    sw = load_sweep(str(path))
    assert sw.name and len(sw.trials) >= 2 * len(sw.config.seeds)
    assert any(t.baseline and t.config.model.arch == "transformer" for t in sw.trials), "needs the attention baseline"
    assert len(sw.config.seeds) >= 2 or path.stem == "demo"

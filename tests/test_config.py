"""The schemas: loading, validation with errors naming the key, overrides, grid expansion,
declared comparisons, trial keys."""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path

import pytest

from gmlp_ablate.schema import ConfigError, field_docs, leaf_keys
from gmlp_ablate.sweep import SweepConfig, build_sweep, count_trials, load_sweep
from gmlp_ablate.trial import TRIAL_KEYS, TrialConfig, load_trial, merge_trial, trial_key

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
    docs = field_docs(TrialConfig)
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
        ({"grid": {"model.init_eps": [0, 0.0]}}, "grid[init_eps=0.0]"),
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
    assert sw.name and len(sw.trials) >= 2 * len(sw.seed_list)
    assert any(t.baseline and t.config.model.arch == "transformer" for t in sw.trials), "needs the attention baseline"
    assert len(sw.seed_list) >= 2 or path.stem == "demo"
    assert sw.family and all(b in sw.arms for pair in sw.family for b in pair)


# --------------------------------------------------------------------------------------
# Typed overrides: an arm's label is the same however the number is spelled
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelled", ["[0,1e-3]", "[0.0,1.0e-3]", "[0,0.001]"])
def test_override_numbers_are_typed_like_the_file(spelled):
    sw = build_sweep(_sweep(grid={"model.init_eps": [0.0, 1.0e-3]}), [f"grid.model.init_eps={spelled}"])
    assert [a for a in sw.arms if a != "transformer"] == ["init_eps=0.0", "init_eps=0.001"]
    assert {t.factors["model.init_eps"] for t in sw.trials if not t.baseline} == {0.0, 0.001}


@pytest.mark.parametrize("bad, key", [("model..dim=1", "model..dim"), ("=3", "=3"), ("model.dim", "model.dim")])
def test_malformed_override_names_it(bad, key):
    with pytest.raises(ConfigError) as e:
        load_trial(None, [bad])
    assert e.value.key == key


def test_group_given_a_scalar_names_the_group():
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(base={"model": 5}))
    assert e.value.key == "base.model" and "mapping" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(metric=5))
    assert e.value.key == "metric" and "mapping" in str(e.value)


# --------------------------------------------------------------------------------------
# Every numeric field refuses NaN, infinities and overflow (the table comes from the schemas)
# --------------------------------------------------------------------------------------


def _numeric_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += _numeric_keys(t, f"{prefix}{f.name}.")
        elif t in (int, float, typing.Optional[int], typing.Optional[float]):
            out.append((f"{prefix}{f.name}", float if float in typing.get_args(t) or t is float else int))
    return out


TRIAL_FLOATS = [k for k, t in _numeric_keys(TrialConfig) if t is float]
TRIAL_INTS = [k for k, t in _numeric_keys(TrialConfig) if t is int]


def test_the_table_covers_the_fields_named_in_the_reports():
    assert {"train.lr", "train.weight_decay", "train.min_lr_ratio", "model.init_eps"} <= set(TRIAL_FLOATS)
    assert {"model.dim", "seed", "train.steps"} <= set(TRIAL_INTS)


@pytest.mark.parametrize("key", TRIAL_FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused(key, value):
    with pytest.raises(ConfigError) as e:
        load_trial(None, [f"{key}={value}"])
    assert e.value.key == key


@pytest.mark.parametrize("key", TRIAL_INTS)
def test_huge_integers_are_refused(key):
    with pytest.raises(ConfigError) as e:
        load_trial(None, [f"{key}={10**30}"])
    assert e.value.key == key


@pytest.mark.parametrize("over, key", [
    ("resources.cpu=nan", "resources.cpu"), ("resources.cpu=inf", "resources.cpu"), ("resources.cpu=-1", "resources.cpu"),
    ("resources.gpu=nan", "resources.gpu"), ("resources.gpu=inf", "resources.gpu"), ("resources.gpu=-0.5", "resources.gpu"),
    ("resources.trials_per_gpu=0", "resources.trials_per_gpu"), ("alpha=nan", "alpha"), ("alpha=0.7", "alpha"),
    (f"seeds=[0,{2**64}]", "seeds[1]"), ("seeds=[-1]", "seeds[0]"),
])
def test_sweep_level_numbers_are_checked(over, key):
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(), [over])
    assert e.value.key == key, str(e.value)


# --------------------------------------------------------------------------------------
# Files a user might hand in by mistake
# --------------------------------------------------------------------------------------


def test_duplicate_yaml_key_is_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: x\ngrid:\n  model.sgu_split: [true, false]\n  model.sgu_split: [true]\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: .*duplicate key 'model.sgu_split' \(first given on line 3\)"):
        load_sweep(str(p))


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    p = tmp_path / "lol.yaml"
    p.write_text("\n".join(lines) + "\nname: x\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_sweep(str(p))
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("content, match", [(b"name: x\x00\x01\x02", "binary"), (b"name: \xff\xfe caf\xe9", "not UTF-8")])
def test_binary_and_non_utf8_files_are_named(tmp_path, content, match):
    p = tmp_path / "odd.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=f"odd.yaml: .*{match}"):
        load_sweep(str(p))


def test_unreadable_file_is_named(tmp_path):
    import os

    p = tmp_path / "locked.yaml"
    p.write_text("name: x\n")
    p.chmod(0)
    if os.access(p, os.R_OK):  # root reads anything: use a folder in its place
        p.chmod(0o644)
        p = tmp_path / "folder.yaml"
        p.mkdir()
    with pytest.raises(ConfigError, match=f"{p.name}: "):
        load_sweep(str(p))


def test_huge_grid_is_counted_instantly_and_refused():
    grid = {"model.dim": list(range(8, 8 + 100)), "model.depth": list(range(1, 101)), "train.lr": [1e-3 * (i + 1) for i in range(1000)]}
    data = _sweep(grid=grid)
    t0 = time.monotonic()
    assert count_trials(data) == (100 * 100 * 1000 + 1) * 2
    with pytest.raises(ConfigError, match=r"expands to 20000002 trials.*--max-trials"):
        build_sweep(data)
    assert time.monotonic() - t0 < 2


def test_max_trials_can_be_raised():
    data = _sweep(grid={"model.dim": [8, 16, 24]})
    with pytest.raises(ConfigError, match="expands to 8 trials"):
        build_sweep(data, max_trials=7)
    assert len(build_sweep(data, max_trials=8).trials) == 8


def test_long_name_is_refused():
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(name="x" * 300))
    assert e.value.key == "name"


# --------------------------------------------------------------------------------------
# The comparison protocol's keys
# --------------------------------------------------------------------------------------


def test_default_family_is_every_arm_against_the_reference():
    sw = build_sweep(_sweep(reference={"model.sgu_split": False}))
    assert sw.reference_arm == "sgu_split=false"
    assert sw.family == [("sgu_split=true", "sgu_split=false"), ("transformer", "sgu_split=false")]


def test_explicit_family_is_kept_and_checked():
    sw = build_sweep(_sweep(compare=["transformer vs sgu_split=true"]))
    assert sw.family == [("transformer", "sgu_split=true")]
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(compare=["transformr vs sgu_split=true"]))
    assert e.value.key == "compare[0]" and "did you mean 'transformer'" in str(e.value)


@pytest.mark.parametrize("over, key", [
    ({"reference": {"model.dim": 16}}, "reference.model.dim"),
    ({"reference": {"model.sgu_split": "maybe"}}, "reference.model.sgu_split"),
    ({"compare": "everything"}, "compare"),
    ({"compare": ["transformer vs transformer"]}, "compare[0]"),
])
def test_bad_reference_and_compare(over, key):
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(**over))
    assert e.value.key == key, str(e.value)


def test_protocol_is_recorded_as_json_params():
    import json

    sw = build_sweep(_sweep(seeds={"initial": 3, "max": 6}, alpha=0.01))
    p = sw.protocol()
    assert json.loads(p["sweep.family"]) == [["sgu_split=false", "sgu_split=true"], ["transformer", "sgu_split=true"]]
    assert json.loads(p["sweep.seeds"])["max"] == 6 and p["sweep.alpha"] == "0.01"
    assert sw.seed_list == [0, 1, 2] and len(sw.trials) == 9


@pytest.mark.parametrize("seeds, key", [({"initial": 5, "max": 3}, "seeds.max"), ({"initial": 1}, "seeds.initial"),
                                        ({"start": 3}, "seeds.start")])
def test_bad_sequential_design(seeds, key):
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(seeds=seeds))
    assert e.value.key == key, str(e.value)


def test_metric_must_be_reported_by_the_task():
    with pytest.raises(ConfigError) as e:
        build_sweep(_sweep(base={"task": {"name": "charlm", "seq_len": 16}, "model": {"dim": 16, "depth": 1}},
                           metric={"name": "val/acc", "mode": "max"}))
    assert e.value.key == "metric.name" and "charlm" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'test/acc'"):
        build_sweep(_sweep(metric={"name": "test/accc", "mode": "max"}))


def test_code_version_can_be_part_of_the_key():
    plain = {t.key for t in build_sweep(_sweep()).trials}
    versioned = {t.key for t in build_sweep(_sweep(key_code_version=True)).trials}
    assert len(versioned) == len(plain) and not (plain & versioned)


def test_every_sweep_key_has_a_docstring():
    docs = field_docs(SweepConfig)
    assert [k for k in leaf_keys(SweepConfig) if not k.startswith("base.") and not docs.get(k)] == []


# --------------------------------------------------------------------------------------
# Values out of range: one table for every group, as command-line overrides of a sweep
# --------------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("model.dim=0", "model.dim"), ("model.depth=0", "model.depth"), ("model.ff_mult=0", "model.ff_mult"),
    ("model.heads=0", "model.heads"), ("model.heads=3", "model.heads"), ("model.attn_heads=0", "model.attn_heads"),
    ("model.init_eps=-1", "model.init_eps"), ("model.prob_survival=0", "model.prob_survival"),
    ("model.prob_survival=1.5", "model.prob_survival"), ("model.attn_dim=0", "model.attn_dim"),
    ("model.attn_dim=6 model.attn_heads=4", "model.attn_heads"), ("model.dim=15 model.ff_mult=1", "model.ff_mult"),
    ("model.sgu_act=relu6", "model.sgu_act"), ("model.drop_mode=row", "model.drop_mode"),
    ("model.dropout=1", "model.dropout"), ("model.pos=alibi", "model.pos"),
    ("train.steps=0", "train.steps"), ("train.batch_size=0", "train.batch_size"), ("train.lr=0", "train.lr"),
    ("train.eval_every=0", "train.eval_every"), ("train.log_every=0", "train.log_every"),
    ("train.warmup_steps=-1", "train.warmup_steps"), ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.grad_clip=-1", "train.grad_clip"), ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.min_lr_ratio=2", "train.min_lr_ratio"), ("train.beta1=1", "train.beta1"), ("train.beta2=-0.1", "train.beta2"),
    ("train.device=tpu", "train.device"), ("train.precision=fp8", "train.precision"), ("train.threads=0", "train.threads"),
    ("task.num_kv_pairs=0", "task.num_kv_pairs"), ("task.vocab_size=3", "task.vocab_size"),
    ("task.seq_len=4", "task.seq_len"), ("task.num_val=0", "task.num_val"),
    ("resources.cpu=0", "resources.cpu"), ("resources.gpu=lots", "resources.gpu"), ("resources.gpu=-1", "resources.gpu"),
    ("resources.trials_per_gpu=0", "resources.trials_per_gpu"), ("metric.mode=up", "metric.mode"),
    ("seeds=[]", "seeds"), ("seeds=[0,0]", "seeds"),
    ("task.name=charlm task.seq_len=1", "task.seq_len"), ("task.name=charlm task.corpus_bytes=0", "task.corpus_bytes"),
    ("task.name=charlm task.val_fraction=1", "task.val_fraction"), ("task.name=charlm task.val_tokens=8", "task.val_tokens"),
    ("task.name=mlm task.mask_prob=1", "task.mask_prob"), ("task.name=digits task.patch_size=3", "task.patch_size"),
    ("task.name=digits task.seq_len=5", "task.seq_len"), ("task.name=digits task.val_fraction=0.001", "task.val_fraction"),
]


@pytest.mark.parametrize("overrides, key", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_values_name_the_key(overrides, key):
    data = _sweep(metric={"name": "val/loss", "mode": "min"})
    with pytest.raises(ConfigError) as e:
        build_sweep(data, overrides.split())
    assert e.value.key is not None and e.value.key.endswith(key), str(e.value)

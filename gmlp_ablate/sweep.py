"""Sweep files: their schema, loading with overrides, grid expansion and declared comparisons.

A sweep is a partial trial config (``base``) crossed with a full-factorial ``grid`` and
named ``baselines``, run once per seed. Around that it declares how the comparison is made
(the comparison protocol): the factor's ``reference`` level, the family of comparisons
(``compare``) the report corrects together, the seeds (a fixed list, or a sequential design
``{initial, max}``), an optional per-arm tuning stage (``tune``), baselines sized to another
arm (``match``), and the metric the report compares (``val/*`` selects, ``test/*`` reports).

Everything is checked here, before any work: a bad key or value raises ConfigError naming
it. Counting the trials is instant; expansion refuses more than ``max_trials`` of them.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

from gmlp_ablate.config import deep_merge, load_yaml, merge_structured, nest, parse_overrides
from gmlp_ablate import names
from gmlp_ablate.names import STAGE_FINAL
from gmlp_ablate.schema import MAX_INT, ConfigError, check, did_you_mean, knob, leaf_keys
from gmlp_ablate.trial import TRIAL_KEYS, TrialConfig, to_dict, trial_key, validate_trial

MAX_TRIALS = 10_000
"""Default cap on a sweep's expanded trials (``--max-trials`` raises it)."""
MATCH_VARY = ("model.depth", "model.dim", "model.ff_mult")


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


@dataclass
class MetricConfig:
    """The metric a sweep's report compares."""

    name: str = "val/loss"
    """A metric the trials log: ``test/*`` (held out, never used for selection: what a report
    should compare), or ``val/*`` (the selection split)."""
    mode: Literal["min", "max"] = "min"
    """``min`` or ``max``: which direction is better."""


@dataclass
class ResourcesConfig:
    """Per-trial resources on Ray."""

    cpu: float = knob(1.0, gt=0, max_value=4096)
    """CPUs per trial (also the trial's torch thread count, rounded down, at least 1)."""
    gpu: str = "auto"
    """GPUs per trial: ``auto`` = a fraction that packs ``trials_per_gpu`` trials on each
    visible GPU (0 where there is none), or a number such as 0, 0.25, 1."""
    trials_per_gpu: int = knob(4, ge=1, max_value=1024)
    """With ``gpu: auto``: how many trials share one GPU."""

    def check(self) -> None:
        if self.gpu == "auto":
            return
        try:
            g = float(self.gpu)
        except ValueError:
            raise ConfigError("gpu", f"expected 'auto' or a number, got {self.gpu!r}") from None
        if not math.isfinite(g) or g < 0 or g > 1024:
            raise ConfigError("gpu", f"must be 'auto' or a number in [0, 1024], got {self.gpu!r}")


@dataclass
class SeedsConfig:
    """A sequential design: rounds of seeds, each comparison stopped once decided."""

    initial: int = knob(3, ge=2, max_value=1000)
    """Seeds of the first round."""
    max: int = knob(10, ge=2, max_value=1000)
    """Most seeds any arm gets."""
    step: int = knob(1, ge=1, max_value=1000)
    """Seeds added per later round."""
    first: int = knob(0, ge=0, le=MAX_INT)
    """The first seed; rounds use first, first+1, ..."""
    boundary: Literal["obrien-fleming", "pocock"] = "obrien-fleming"
    """Alpha-spending boundary that keeps the family-wise error at ``alpha`` over the looks."""

    def check(self) -> None:
        if self.max < self.initial:
            raise ConfigError("max", f"must be >= initial ({self.initial}), got {self.max}")

    def seeds(self, n: int) -> List[int]:
        return list(range(self.first, self.first + n))

    def looks(self) -> List[int]:
        """Number of seeds at each look: initial, initial+step, ..., max."""
        return sorted(set(list(range(self.initial, self.max, self.step)) + [self.max]))


@dataclass
class TuneConfig:
    """Stage 1: each arm's own search over training settings, with an equal budget."""

    space: Dict[str, Any] = field(default_factory=dict)
    """Dotted trial keys -> a list of values (a grid) or ``{loguniform: [lo, hi]}``,
    ``{uniform: [lo, hi]}``, ``{choice: [...]}`` (sampled)."""
    budget: int = knob(8, ge=1, max_value=10_000)
    """Tuning trials per arm, the same for every arm (a pure grid must have this many points)."""
    steps: Optional[int] = knob(None, ge=1, max_value=10**9)
    """Training steps of a tuning trial (null = the final trials' ``train.steps``)."""
    seeds: List[int] = field(default_factory=lambda: [1000])
    """Tuning seeds, disjoint from the final seeds."""
    select: str = "val/loss"
    """The metric that picks each arm's setting (a ``val/*`` metric: selection never reads test)."""
    mode: Literal["min", "max"] = "min"
    """Direction of ``select``."""
    scheduler: Literal["none", "asha"] = "none"
    """``asha``: Ray Tune's ASHA stops poor tuning trials early. Each arm has its own ASHA (its
    candidates are compared only with each other), with rungs at the arm's evaluations
    ``train.eval_every x 4^k`` before its last step: the first at the first evaluation, and a
    trial continues past a rung when it is in the best quarter of its arm's trials recorded
    there so far. The arm must be evaluated before its last step (``train.eval_every`` <
    the tuning steps). A trial stopped early is tagged ``stopped_at_step`` and is no candidate
    for selection (its metric is from fewer steps); the first of an arm's trials to reach a rung
    always continues, so each arm has a trial that runs to the end unless it fails."""
    search_seed: int = knob(0, ge=0, le=MAX_INT)
    """Seed of the search algorithm's sampling (same seed, same candidates, same trial keys)."""
    arms: Dict[str, Any] = field(default_factory=dict)
    """Per-arm search spaces replacing ``space`` for the arms named (a changed space
    re-tunes only its arm)."""


@dataclass
class MatchConfig:
    """Size a baseline to another arm before running."""

    to: str = ""
    """The arm whose size is matched, e.g. ``sgu_split=true``."""
    by: Literal["params", "flops"] = "params"
    """Match the parameter count or the forward FLOPs per token."""
    vary: Literal["model.depth", "model.dim", "model.ff_mult"] = "model.depth"
    """The size knob varied to reach the target."""
    tolerance: float = knob(0.05, gt=0, lt=1)
    """Largest accepted relative difference to the target."""


@dataclass
class SolvedConfig:
    """A binary outcome per seed: solved when ``metric`` reaches ``threshold``."""

    metric: str = "test/acc"
    """The metric compared with the threshold."""
    threshold: float = knob(0.9)
    """Solved when the metric is >= this (mode max) or <= this (mode min)."""


@dataclass
class SweepConfig:
    """A sweep file."""

    name: str = ""
    """MLflow experiment name and report title."""
    description: str = ""
    """One line shown in the report."""
    base: TrialConfig = field(default_factory=TrialConfig)
    """Partial trial config merged over the schema defaults."""
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    """Full factorial over dotted trial keys, e.g. ``model.sgu_split: [true, false]``."""
    seeds: Any = field(default_factory=lambda: [0])
    """A list of seeds (every arm runs once per seed), or a sequential design
    ``{initial: 3, max: 10}``."""
    baselines: Dict[str, Any] = field(default_factory=dict)
    """Named arms: partial trial configs merged over ``base`` (no grid), each with an
    optional ``match: {to, by, vary, tolerance}``."""
    metric: MetricConfig = field(default_factory=MetricConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    reference: Dict[str, Any] = field(default_factory=dict)
    """The factor's reference level as grid values, e.g. ``{model.sgu_split: true}``: grid
    arms and baselines are compared with it. Empty = the first level of every axis."""
    compare: Any = "auto"
    """``auto`` (every other grid arm and every baseline vs the reference arm) or a list of
    ``"arm vs arm"``: the family of comparisons the report corrects together (Holm)."""
    alpha: float = knob(0.05, gt=0, lt=0.5)
    """Family-wise error rate of the declared comparisons."""
    tune: Optional[TuneConfig] = None
    """Stage 1: per-arm tuning (none = every arm runs at the base settings)."""
    solved: Optional[SolvedConfig] = None
    """Optional binary outcome per seed, reported with exact binomial intervals."""
    diverged: Literal["drop", "worst"] = "drop"
    """A diverged (non-finite) seed: left out of its arm's mean, or counted as the worst value."""
    key_code_version: bool = False
    """Make the code version (git commit) part of every trial key: a new commit reruns all."""


TOP_KEYS = tuple(f.name for f in dataclasses.fields(SweepConfig))
_RAW_KEYS = ("base", "grid", "seeds", "baselines", "compare")  # checked here, not by OmegaConf


@dataclass
class Trial:
    """One expanded sweep cell."""

    arm: str
    """Grid cell (``sgu_split=false``) or baseline name."""
    seed: int
    config: TrialConfig
    key: str
    """trial_key(config)."""
    factors: Dict[str, Any]
    """The grid values of this cell ({} for a baseline)."""
    baseline: bool = False
    stage: str = STAGE_FINAL
    """``final`` (reported) or ``tune`` (stage 1, selection only)."""
    settings: Dict[str, Any] = field(default_factory=dict)
    """Tuned settings applied to this trial (dotted key -> value)."""


@dataclass
class Match:
    """How a baseline's size was resolved."""

    arm: str
    spec: MatchConfig
    target: float
    achieved: float
    value: int
    """The resolved value of ``spec.vary``."""

    @property
    def rel_diff(self) -> float:
        return self.achieved / self.target - 1.0


@dataclass
class Sweep:
    """A loaded, validated sweep and its expanded (final-stage) trials."""

    config: SweepConfig
    trials: List[Trial]
    arm_configs: Dict[str, TrialConfig]
    """Each arm's trial config at seed 0 (before tuning)."""
    family: List[Tuple[str, str]]
    """The declared comparisons (arm, compared-with arm)."""
    reference_arm: str
    matches: Dict[str, Match] = field(default_factory=dict)
    path: Optional[str] = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def arms(self) -> List[str]:
        return list(self.arm_configs)

    @property
    def factor_keys(self) -> List[str]:
        return list(self.config.grid.keys())

    @property
    def sequential(self) -> Optional[SeedsConfig]:
        return self.config.seeds if isinstance(self.config.seeds, SeedsConfig) else None

    @property
    def seed_list(self) -> List[int]:
        """The seeds of the first (or only) round."""
        seq = self.sequential
        return seq.seeds(seq.initial) if seq else list(self.config.seeds)

    def trials_for(self, seeds: List[int], settings: Optional[Dict[str, Dict[str, Any]]] = None,
                   stage: str = STAGE_FINAL, arms: Optional[List[str]] = None,
                   shown: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Trial]:
        """Trials of ``arms`` (default: all) at ``seeds``, each arm's ``settings`` (dotted key ->
        value, e.g. its tuned learning rate) applied over its config; ``shown`` = the settings
        recorded on the trial (default: ``settings``)."""
        settings = settings or {}
        shown = shown if shown is not None else settings
        out = []
        for arm in arms or list(self.arm_configs):
            cfg = self.arm_configs[arm]
            if settings.get(arm):
                cfg = merge_structured(TrialConfig, [to_dict(cfg), *[nest(k, v) for k, v in settings[arm].items()]])
                validate_trial(cfg, f"{arm}: ")
            out += [_trial(arm, s, cfg, self, stage, shown.get(arm)) for s in seeds]
        return out

    def parent_params(self) -> Dict[str, str]:
        """Every ``sweep.*`` param of the parent run: what was run (name, grid, baselines,
        metric, resources, trial count) and the declared design (:meth:`protocol`)."""
        c = self.config
        return {
            "sweep.name": c.name,
            names.P_GRID: json.dumps(c.grid),
            names.P_BASELINES: json.dumps(c.baselines),
            names.P_METRIC: c.metric.name,
            names.P_METRIC_MODE: c.metric.mode,
            "sweep.resources": json.dumps(dataclasses.asdict(c.resources)),
            "sweep.trials": str(len(self.trials)),
            **self.protocol(),
        }

    def protocol(self) -> Dict[str, str]:
        """The declared design as parent-run params (JSON values)."""
        c = self.config
        seeds = dataclasses.asdict(c.seeds) if self.sequential else list(c.seeds)
        return {
            names.P_FAMILY: json.dumps([list(p) for p in self.family]),
            names.P_ALPHA: str(c.alpha),
            names.P_REFERENCE: json.dumps(c.reference or dict(_first_cell(c.grid))),
            names.P_REFERENCE_ARM: self.reference_arm,
            names.P_SEEDS: json.dumps(seeds),
            names.P_SOLVED: json.dumps(dataclasses.asdict(c.solved) if c.solved else None),
            names.P_DIVERGED: c.diverged,
            names.P_TUNE: json.dumps(dataclasses.asdict(c.tune) if c.tune else None),
            names.P_MATCHES: json.dumps({a: {**dataclasses.asdict(m.spec), "target": m.target, "achieved": m.achieved,
                                             "value": m.value} for a, m in self.matches.items()}),
        }


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_sweep(path: str, overrides: Optional[List[str]] = None, max_trials: int = MAX_TRIALS) -> Sweep:
    """Load a sweep file, apply ``key=value`` overrides, validate everything, expand the trials."""
    return build_sweep(load_yaml(path), overrides, path=path, max_trials=max_trials)


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Command-line ``key=value`` items applied to a raw sweep dict.

    ``task.* / model.* / train.*`` go to ``base``; ``grid.KEY=[...]`` replaces (or adds) a
    grid axis; other keys address the sweep itself (``seeds=[0,1]``, ``metric.name=...``,
    ``baselines.NAME.model.heads=2``, ``tune.budget=4``).
    """
    groups = {k.split(".")[0] for k in TRIAL_KEYS if "." in k}
    for key, value in parse_overrides(overrides):
        head = key.split(".")[0]
        if key.startswith("grid."):
            grid = dict(data.get("grid") or {})
            grid[key[len("grid."):]] = value
            data = {**data, "grid": grid}
        elif key == "seed":
            raise ConfigError("seed", f"a sweep runs every arm once per seed: use seeds=[{value}] (or seeds=[0,1,2])")
        elif head in groups:
            data = {**data, "base": deep_merge(data.get("base") or {}, nest(key, value))}
        elif head in TOP_KEYS:
            data = deep_merge(data, nest(key, value))
        else:
            allowed = [k for k in TRIAL_KEYS if k != "seed"] + [k for k in TOP_KEYS if k != "base"] + ["grid.KEY"]
            raise ConfigError(key, "unknown key" + did_you_mean(key, allowed))
    return data


def count_trials(data: Dict[str, Any]) -> int:
    """Final-stage trials a raw sweep expands to (instant: no config is built)."""
    grid = data.get("grid") or {}
    cells = math.prod(len(v) if isinstance(v, list) else 1 for v in grid.values()) if isinstance(grid, dict) else 1
    baselines = data.get("baselines") or {}
    arms = cells + (len(baselines) if isinstance(baselines, dict) else 0)
    seeds = data.get("seeds", [0])
    n_seeds = len(seeds) if isinstance(seeds, list) else (seeds.get("initial", 3) if isinstance(seeds, dict) else 1)
    return arms * max(n_seeds, 1)


def build_sweep(data: Dict[str, Any], overrides: Optional[List[str]] = None, path: Optional[str] = None,
                max_trials: int = MAX_TRIALS) -> Sweep:
    """Validate a raw sweep dict (as read from YAML) and expand it into trials."""
    data = apply_overrides(data, overrides or [])
    for k in data:
        if k not in TOP_KEYS:
            raise ConfigError(k, "unknown key" + did_you_mean(k, list(TOP_KEYS)))
    n = count_trials(data)
    if n > max_trials:
        raise ConfigError("grid", f"the sweep expands to {n} trials, more than the limit of {max_trials} "
                          "(pass --max-trials N to allow more)")
    cfg = _sweep_config(data)
    base_raw = data.get("base") or {}
    if isinstance(base_raw, dict) and "seed" in base_raw:
        raise ConfigError("base.seed", "a sweep runs every arm once per seed: list them in `seeds: [...]`")
    base = merge_structured(TrialConfig, [base_raw], "base.")
    grid = _check_grid(data.get("grid"))
    cfg.base, cfg.grid = base, grid
    cfg.seeds = _check_seeds(data.get("seeds", [0]))
    baselines = data.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise ConfigError("baselines", f"expected a mapping of name -> partial config, got {baselines!r}")
    cfg.baselines = baselines

    base_dict = to_dict(base)
    arm_cfgs: Dict[str, TrialConfig] = {}
    where: Dict[str, str] = {}
    factors: Dict[str, Dict[str, Any]] = {}
    axes = list(grid.items())
    for values in itertools.product(*[v for _, v in axes]):
        raw_cell = {k: v for (k, _), v in zip(axes, values)}
        label = arm_name(raw_cell)
        cfg_cell = merge_structured(TrialConfig, [base_dict, *[nest(k, v) for k, v in raw_cell.items()]], f"grid[{label}].")
        cell = {k: _get(cfg_cell, k) for k in raw_cell}  # typed: 1e-3 and 1.0e-3 name one arm
        arm = arm_name(cell)
        _add_arm(arm_cfgs, where, arm, f"grid[{arm}].", base_dict, [nest(k, v) for k, v in cell.items()])
        factors[arm] = cell
    matches: Dict[str, MatchConfig] = {}
    for bname, part in baselines.items():
        bname = str(bname)
        if not isinstance(part, dict):
            raise ConfigError(f"baselines.{bname}", f"expected a partial trial config (mapping), got {part!r}")
        part = dict(part)
        if "seed" in part:
            raise ConfigError(f"baselines.{bname}.seed", "baselines run once per sweep seed: list them in `seeds: [...]`")
        if "match" in part:
            matches[bname] = _match_config(part.pop("match"), f"baselines.{bname}.match.")
        _add_arm(arm_cfgs, where, bname, f"baselines.{bname}.", base_dict, [part])
    reference_arm = _reference_arm(cfg, factors)
    resolved = {b: _resolve_match(b, spec, arm_cfgs, f"baselines.{b}.match.") for b, spec in matches.items()}
    for b, m in resolved.items():
        arm_cfgs[b] = _with_value(arm_cfgs[b], m.spec.vary, m.value)
        validate_trial(arm_cfgs[b], f"baselines.{b}.")
    family = _family(cfg, list(arm_cfgs), reference_arm, set(baselines))
    _check_tune(cfg, arm_cfgs)
    _check_metric_names(cfg, arm_cfgs)
    sweep = Sweep(config=cfg, trials=[], arm_configs=arm_cfgs, family=family, reference_arm=reference_arm,
                  matches=resolved, path=path)
    sweep.trials = sweep.trials_for(sweep.seed_list)
    _check_unique_keys(sweep.trials)
    return sweep


def _sweep_config(data: Dict[str, Any]) -> SweepConfig:
    rest = {k: v for k, v in data.items() if k not in _RAW_KEYS}
    if not rest.get("name"):
        raise ConfigError("name", "missing: a sweep needs a name (the MLflow experiment)")
    if not isinstance(rest["name"], str):
        raise ConfigError("name", f"must be a string, got {rest['name']!r}")
    from gmlp_ablate.names import path_component

    try:
        path_component(rest["name"])
    except ValueError as e:
        raise ConfigError("name", str(e)) from None
    cfg = merge_structured(SweepConfig, [rest])
    check(cfg)
    cfg.compare = data.get("compare", "auto")
    return cfg


def _check_seeds(raw: Any) -> Any:
    if isinstance(raw, dict):
        seq = merge_structured(SeedsConfig, [raw], "seeds.")
        check(seq, "seeds.")
        return seq
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise ConfigError("seeds", f"expected a non-empty list of integers or {{initial: N, max: M}}, got {raw!r}")
    for i, s in enumerate(raw):
        if not 0 <= s <= MAX_INT:
            raise ConfigError(f"seeds[{i}]", f"must be in [0, {MAX_INT}], got {s}")
    if len(set(raw)) != len(raw):
        raise ConfigError("seeds", f"duplicate seeds in {raw}")
    return list(raw)


def _check_grid(raw: Any) -> Dict[str, List[Any]]:
    if raw is None or raw == {}:
        raise ConfigError("grid", "empty: give at least one axis, e.g. model.sgu_split: [true, false]")
    if not isinstance(raw, dict):
        raise ConfigError("grid", f"expected a mapping of dotted key -> list of values, got {raw!r}")
    grid: Dict[str, List[Any]] = {}
    for k, v in raw.items():
        if k == "seed":
            raise ConfigError("grid.seed", "seeds are a sweep axis of their own: use `seeds: [...]`")
        if k not in TRIAL_KEYS:
            raise ConfigError(f"grid.{k}", "unknown key" + did_you_mean(str(k), list(TRIAL_KEYS)))
        v = v if isinstance(v, list) else [v]
        if not v:
            raise ConfigError(f"grid.{k}", "empty list of values")
        if len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            raise ConfigError(f"grid.{k}", f"duplicate values in {v}")
        grid[k] = v
    return grid


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def arm_name(cell: Dict[str, Any]) -> str:
    """``{"model.sgu_split": False, "model.ff_mult": 4}`` -> ``sgu_split=false,ff_mult=4``.

    Uses the last key component unless two grid keys share it.
    """
    lasts = [k.rsplit(".", 1)[-1] for k in cell]
    names = [k.rsplit(".", 1)[-1] if lasts.count(k.rsplit(".", 1)[-1]) == 1 else k for k in cell]
    return ",".join(f"{n}={_fmt_value(v)}" for n, v in zip(names, cell.values()))


def _add_arm(arms: Dict[str, TrialConfig], where: Dict[str, str], arm: str, prefix: str,
             base_dict: Dict[str, Any], parts: List[Dict[str, Any]]) -> None:
    if arm in arms:
        raise ConfigError(prefix.rstrip("."), f"duplicate arm name '{arm}' (also {where[arm]})")
    where[arm] = prefix.rstrip(".")
    cfg = merge_structured(TrialConfig, [base_dict, *parts], prefix)
    validate_trial(cfg, prefix)
    arms[arm] = cfg


def _trial(arm: str, seed: int, cfg: TrialConfig, sweep: Sweep, stage: str = STAGE_FINAL,
           settings: Optional[Dict[str, Any]] = None) -> Trial:
    c = dataclasses.replace(copy.deepcopy(cfg), seed=seed)
    key = trial_key(c)
    if sweep.config.key_code_version:
        from gmlp_ablate.trial import code_version

        key = trial_key(c, code_version())
    factors = dict(zip(sweep.factor_keys, (_get(c, k) for k in sweep.factor_keys))) if arm not in sweep.config.baselines else {}
    return Trial(arm=arm, seed=seed, config=c, key=key, factors=factors, baseline=arm in sweep.config.baselines,
                 stage=stage, settings=dict(settings or {}))


def _check_unique_keys(trials: List[Trial]) -> None:
    keys: Dict[str, Trial] = {}
    for t in trials:
        if t.key in keys:
            raise ConfigError("grid", f"arms '{keys[t.key].arm}' and '{t.arm}' (seed {t.seed}) resolve to the same trial config")
        keys[t.key] = t


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with_value(cfg: TrialConfig, key: str, value: Any) -> TrialConfig:
    return merge_structured(TrialConfig, [to_dict(cfg), nest(key, value)])


def _typed(cfg: SweepConfig, cell: Dict[str, Any]) -> Dict[str, Any]:
    """Grid values as the schema types them (``0`` for a float key is ``0.0``)."""
    merged = merge_structured(TrialConfig, [to_dict(cfg.base), *[nest(k, v) for k, v in cell.items()]])
    return {k: _get(merged, k) for k in cell}


def _first_cell(grid: Dict[str, List[Any]]) -> Dict[str, Any]:
    return {k: v[0] for k, v in grid.items()}


def _reference_arm(cfg: SweepConfig, factors: Dict[str, Dict[str, Any]]) -> str:
    ref = cfg.reference
    if not ref:
        return arm_name(_typed(cfg, _first_cell(cfg.grid)))
    for k, v in ref.items():
        if k not in cfg.grid:
            raise ConfigError(f"reference.{k}", "not a grid axis" + did_you_mean(k, list(cfg.grid)))
        typed_levels = [_typed(cfg, {k: x})[k] for x in cfg.grid[k]]
        try:
            typed = _typed(cfg, {k: v})[k]
        except ConfigError as e:
            raise ConfigError(f"reference.{k}", e.message) from None
        if typed not in typed_levels:
            raise ConfigError(f"reference.{k}", f"{v!r} is not one of the grid's levels {cfg.grid[k]}")
    cell = {k: ref.get(k, levels[0]) for k, levels in cfg.grid.items()}
    return arm_name(_typed(cfg, cell))


def _family(cfg: SweepConfig, arms: List[str], reference_arm: str, baselines: set) -> List[Tuple[str, str]]:
    if cfg.compare == "auto":
        return [(a, reference_arm) for a in arms if a != reference_arm]
    if not isinstance(cfg.compare, list) or not cfg.compare:
        raise ConfigError("compare", f"expected 'auto' or a non-empty list of 'ARM vs ARM', got {cfg.compare!r}")
    out: List[Tuple[str, str]] = []
    for i, item in enumerate(cfg.compare):
        pair = item.split(" vs ") if isinstance(item, str) else item
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"compare[{i}]", f"expected 'ARM vs ARM' or [ARM, ARM], got {item!r}")
        a, b = (str(x).strip() for x in pair)
        for x in (a, b):
            if x not in arms:
                raise ConfigError(f"compare[{i}]", f"no arm named {x!r}" + did_you_mean(x, arms))
        if a == b or (a, b) in out or (b, a) in out:
            raise ConfigError(f"compare[{i}]", f"{a!r} vs {b!r} is not a new comparison of two arms")
        out.append((a, b))
    return out


def _match_config(raw: Any, prefix: str) -> MatchConfig:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip("."), f"expected {{to, by, vary, tolerance}}, got {raw!r}")
    spec = merge_structured(MatchConfig, [raw], prefix)
    check(spec, prefix)
    if not spec.to:
        raise ConfigError(f"{prefix}to", "missing: the arm whose size is matched")
    return spec


def _resolve_match(arm: str, spec: MatchConfig, arms: Dict[str, TrialConfig], prefix: str) -> Match:
    """Size ``arm`` to ``spec.to`` with the model zoo's analytic counts (torch-free)."""
    from gmlp_ablate.models.flops import flops_per_token, match_size, param_count
    from gmlp_ablate.tasks import task_shape

    if spec.to not in arms or spec.to == arm:
        raise ConfigError(f"{prefix}to", f"no other arm named {spec.to!r}" + did_you_mean(spec.to, [a for a in arms if a != arm]))
    target_cfg = arms[spec.to]
    count = param_count if spec.by == "params" else flops_per_token
    target = float(count(target_cfg.model, task_shape(target_cfg.task)))
    cfg = arms[arm]
    knob_name = spec.vary.split(".", 1)[1]
    try:
        model, achieved = match_size(cfg.model, task_shape(cfg.task), target, by=spec.by, vary=knob_name)
    except ValueError as e:
        raise ConfigError(f"{prefix}vary", f"cannot reach {spec.by} {target:,.0f} of '{spec.to}': {e}") from None
    rel = abs(achieved / target - 1.0)
    if rel > spec.tolerance:
        raise ConfigError(f"{prefix}tolerance", f"the closest {spec.vary}={getattr(model, knob_name)} gives {spec.by} "
                          f"{achieved:,.0f}, {rel:.1%} from '{spec.to}' ({target:,.0f}); more than {spec.tolerance:.0%}")
    return Match(arm=arm, spec=spec, target=target, achieved=float(achieved), value=int(getattr(model, knob_name)))


def _check_tune(cfg: SweepConfig, arm_cfgs: Dict[str, TrialConfig]) -> None:
    t = cfg.tune
    if t is None:
        return
    from gmlp_ablate.tuning import check_space

    arms = list(arm_cfgs)
    check_space(t.space, "tune.space", t.budget)
    for arm, space in t.arms.items():
        if arm not in arms:
            raise ConfigError(f"tune.arms.{arm}", "no such arm" + did_you_mean(str(arm), arms))
        check_space(space, f"tune.arms.{arm}", t.budget)
    if not t.seeds:
        raise ConfigError("tune.seeds", "empty: give at least one tuning seed")
    final = set(cfg.seeds.seeds(cfg.seeds.max) if isinstance(cfg.seeds, SeedsConfig) else cfg.seeds)
    shared = sorted(final & set(t.seeds))
    if shared:
        raise ConfigError("tune.seeds", f"seeds {shared} are also final seeds: tuning seeds must be disjoint from them")
    if not t.select.startswith("val/"):
        raise ConfigError("tune.select", f"selection must use a val/* metric (test/* is only for reporting), got {t.select!r}")
    if t.scheduler == "asha":
        for arm, tc in arm_cfgs.items():
            steps = t.steps or tc.train.steps
            if tc.train.eval_every >= steps:
                raise ConfigError("tune.scheduler", f"asha compares an arm's trials at evaluations before their last step, "
                                  f"but arm '{arm}' is evaluated every {tc.train.eval_every} of its {steps} tuning "
                                  "steps: lower train.eval_every or raise tune.steps")


def _check_metric_names(cfg: SweepConfig, arms: Dict[str, TrialConfig]) -> None:
    """``metric.name`` (and ``tune.select``, ``solved.metric``) must be reported by every arm's task."""
    from gmlp_ablate.tasks import task_metrics

    checks = [("metric.name", cfg.metric.name)]
    if cfg.tune is not None:
        checks.append(("tune.select", cfg.tune.select))
    if cfg.solved is not None:
        checks.append(("solved.metric", cfg.solved.metric))
    for key, name in checks:
        for arm, tc in arms.items():
            known = task_metrics(tc.task)
            if name not in known:
                raise ConfigError(key, f"{name!r} is not reported by task {tc.task.name!r} (arm '{arm}'); it reports "
                                  f"{', '.join(known)}" + did_you_mean(name, list(known)))


def sweep_keys() -> List[str]:
    """Every dotted key a sweep file accepts (for help and did-you-mean)."""
    return [k for k in leaf_keys(SweepConfig) if not k.startswith("base.")]

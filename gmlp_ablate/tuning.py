"""Stage 1 of the comparison protocol: each arm's own search, under the same budget.

A sweep's ``tune:`` declares a search space over trial keys (lists are a grid; ``loguniform``,
``uniform`` and ``choice`` are sampled by Ray Tune's variant generator with a fixed seed, so
the same sweep always proposes the same candidates and so the same trial keys), a budget of
tuning trials per arm, tuning seeds disjoint from the final ones and a ``val/*`` metric that
picks. Stage 2 runs every arm's final seeds at its own best setting.

The functions here are pure except :func:`candidates`, which asks Ray Tune for the samples.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from gmlp_ablate.names import STAGE_TUNE, TAG_STOPPED_AT
from gmlp_ablate.schema import ConfigError, did_you_mean

SAMPLERS = ("loguniform", "uniform", "choice")
FIXED_KEYS = ("seed", "task.name", "model.arch")
"""Keys a search may not vary: they define the arm, not its training."""


def check_space(space: Any, key: str, budget: int) -> None:
    """Raise ConfigError naming the key unless ``space`` is a usable search space for ``budget``."""
    from gmlp_ablate.trial import TRIAL_KEYS

    if not isinstance(space, dict) or not space:
        raise ConfigError(key, "empty: give at least one key to search, e.g. train.lr: [3.0e-4, 1.0e-3, 3.0e-3]")
    grid = 1
    sampled = False
    for k, v in space.items():
        where = f"{key}.{k}"
        if k not in TRIAL_KEYS:
            raise ConfigError(where, "unknown key" + did_you_mean(str(k), list(TRIAL_KEYS)))
        if k in FIXED_KEYS:
            raise ConfigError(where, "defines the arm, not its training: it cannot be searched")
        if isinstance(v, list):
            if not v:
                raise ConfigError(where, "empty list of values")
            grid *= len(v)
        elif isinstance(v, dict) and len(v) == 1 and next(iter(v)) in SAMPLERS:
            sampler, args = next(iter(v.items()))
            _check_sampler(where, sampler, args)
            sampled = True
        else:
            raise ConfigError(where, f"expected a list of values or one of {{{', '.join(SAMPLERS)}: [...]}}, got {v!r}")
    if not sampled and grid != budget:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.budget" if key.endswith(".space") else key,
                          f"the search grid has {grid} points but the budget is {budget}: make them equal "
                          "(every arm gets exactly the budget)")
    if sampled and budget % grid:
        raise ConfigError(key, f"the budget {budget} is not a multiple of the grid's {grid} points")


def _check_sampler(where: str, sampler: str, args: Any) -> None:
    if sampler == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(where, "choice: expected a non-empty list")
        return
    ok = (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                                and math.isfinite(a) for a in args))
    if not ok or args[0] >= args[1] or (sampler == "loguniform" and args[0] <= 0):
        raise ConfigError(where, f"{sampler}: expected [low, high] with {'0 < ' if sampler == 'loguniform' else ''}"
                          f"low < high, got {args!r}")


def space_for(sweep: Any, arm: str) -> Dict[str, Any]:
    """The search space of ``arm`` (its own under ``tune.arms``, else ``tune.space``)."""
    t = sweep.config.tune
    return dict(t.arms.get(arm, t.space))


def candidates(space: Dict[str, Any], budget: int, seed: int) -> List[Dict[str, Any]]:
    """``budget`` settings from ``space``, drawn by Ray Tune's variant generator (deterministic)."""
    import numpy as np
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    grid = math.prod(len(v) for v in space.values() if isinstance(v, list))
    spec: Dict[str, Any] = {}
    for k, v in space.items():
        if isinstance(v, list):
            spec[k] = tune.grid_search(v)
        else:
            sampler, args = next(iter(v.items()))
            spec[k] = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
                       "choice": lambda a: tune.choice(a)}[sampler](args)
    rng = np.random.RandomState(seed)
    out: List[Dict[str, Any]] = []
    for _ in range(budget // grid):
        out += [dict(resolved) for _, resolved in generate_variants(spec, random_state=rng)]
    return [{k: _plain(c[k]) for k in space} for c in out]


def _plain(v: Any) -> Any:
    """numpy scalars -> Python (trial keys and MLflow params need plain values)."""
    return v.item() if hasattr(v, "item") else v


def tune_trials(sweep: Any, cands: Dict[str, List[Dict[str, Any]]]) -> List[Any]:
    """Stage-1 trials: every arm x its candidates x the tuning seeds (at ``tune.steps``)."""
    t = sweep.config.tune
    steps = {"train.steps": t.steps} if t.steps else {}
    out = []
    for arm, settings_list in cands.items():
        for settings in settings_list:
            out += sweep.trials_for(list(t.seeds), {arm: {**settings, **steps}}, stage=STAGE_TUNE, arms=[arm],
                                    shown={arm: settings})
    return out


def selection_value(metrics: Dict[str, float], select: str) -> Optional[float]:
    """What one tuning trial's results (``metrics``: its last values, with ``stopped_at_step``
    when the stage's scheduler stopped it) give selection: its last ``select``, or None for a
    trial stopped early. A stopped trial's last value was scored after fewer steps than those
    of the trials that ran to the end, so it is no candidate: it could otherwise win merely
    because it was scored earlier (when the trials that ran on got worse later)."""
    if TAG_STOPPED_AT in metrics:
        return None
    return metrics.get(select)


def select(sweep: Any, results: Dict[str, List[Tuple[Dict[str, Any], Optional[float]]]]) -> Dict[str, Dict[str, Any]]:
    """Each arm's best settings from its tuning results ``[(settings, value of select), ...]``.

    A setting's value is its mean over the tuning seeds; a setting without a finite value on
    each of them (a seed diverged, failed, or was stopped early by the scheduler: None, see
    :func:`selection_value`) never wins. An arm with no finite value at all raises RuntimeError.
    """
    t = sweep.config.tune
    best: Dict[str, Dict[str, Any]] = {}
    for arm, rows in results.items():
        by_setting: Dict[str, Tuple[Dict[str, Any], List[float]]] = {}
        for settings, value in rows:
            key = repr(sorted(settings.items()))
            by_setting.setdefault(key, (settings, []))[1].append(value if value is not None else math.nan)
        scored = [(s, sum(v) / len(v)) for s, v in by_setting.values() if all(math.isfinite(x) for x in v)]
        if not scored:
            raise RuntimeError(f"arm '{arm}': no tuning trial gave a finite {t.select}"
                               + (" at its last step (trials stopped early do not count)" if t.scheduler != "none"
                                  else ""))
        sign = 1 if t.mode == "min" else -1
        best[arm] = min(scored, key=lambda sv: sign * sv[1])[0]
    return best


def edge_side(tried: List[Any], chosen: Any) -> Optional[str]:
    """``"smallest"`` or ``"largest"`` when ``chosen`` is that end of the numbers ``tried``
    (at least two distinct), else None: the one rule for an unfinished search, used by the
    runner's warning and by the report."""
    nums = sorted({x for x in tried if isinstance(x, (int, float)) and not isinstance(x, bool)})
    if len(nums) < 2 or chosen not in nums:
        return None
    return "smallest" if chosen == nums[0] else "largest" if chosen == nums[-1] else None


def on_edge(space: Dict[str, Any], settings: Dict[str, Any]) -> List[str]:
    """Keys of a grid (list) axis whose chosen value is its smallest or largest number
    (a sampled range is never hit exactly at its bounds, so it is not flagged)."""
    return [k for k, v in space.items()
            if isinstance(v, list) and k in settings and edge_side(v, settings[k]) is not None]

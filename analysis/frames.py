"""MLflow run entities -> tidy DataFrames (pure: no store access).

The layout is the one :mod:`gmlp_ablate.tracking` writes: experiment = sweep name, one parent
run per invocation, one nested trial run per trial. A sweep run several times (reruns, added
seeds) is pooled: each ``trial_key`` contributes its latest FINISHED run. Each arm is reported
at its *current* config: the config of its latest trial run, finished or failed (so an arm
whose new setting failed in every seed shows no old results as if they were current).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from gmlp_ablate.names import (
    FAILURE_NONFINITE,
    P_BASELINES,
    P_GRID,
    P_MATCHES,
    P_METRIC,
    P_METRIC_MODE,
    P_SEEDS,
    STAGE_FINAL,
    TAG_ARM,
    TAG_BASELINE,
    TAG_BASELINES,
    TAG_COMMAND,
    TAG_COMMIT,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_FACTORS,
    TAG_FAILURE,
    TAG_KEY,
    TAG_METRIC,
    TAG_METRIC_MODE,
    TAG_NOTE,
    TAG_PARENT_RUN,
    TAG_SEED,
    TAG_STAGE,
    TAG_SWEEP,
)

from gmlp_ablate.trial import NONSEMANTIC_KEYS, TRIAL_KEYS, TrialConfig

TASK_INFO_PREFIX = "task."
"""Trial tags that describe the task's data (corpus hash, split sizes, ...)."""


@dataclass
class SweepMeta:
    """What the sweep's latest parent run says about it."""

    name: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: Optional[str]
    """The latest invocation's parent run (where the report is logged)."""
    factors: List[str] = field(default_factory=list)
    """The grid's dotted keys, in grid order."""
    baselines: List[str] = field(default_factory=list)
    """Baseline arm names, in sweep-file order."""
    baseline_overrides: Dict[str, Any] = field(default_factory=dict)
    """Baseline arm -> its (nested) config override, as in the sweep file."""
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    """The grid's values per key (value order of the sweep file)."""
    matches: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Baseline arm -> how it was sized to another arm (``to``, ``by``, ``vary``, ``target``,
    ``achieved``, ``value``), from the ``sweep.matches`` param."""
    metric: str = "val/loss"
    metric_mode: str = "min"
    description: str = ""
    command: str = ""
    """The command line of the latest invocation."""
    git_commit: str = ""
    params: Dict[str, str] = field(default_factory=dict)
    """Every param of the latest parent run (the declared design is read from them)."""
    parents: List[Dict[str, Any]] = field(default_factory=list)
    """Every invocation: run_id, start_time, status, command, git_commit, seeds (its
    ``sweep.seeds`` param, JSON text) (oldest first)."""


# --------------------------------------------------------------------------------------
# Schema: dotted config key -> Python type
# --------------------------------------------------------------------------------------


def schema_types(schema: type = TrialConfig, prefix: str = "") -> Dict[str, Tuple[type, bool]]:
    """Dotted leaf key -> (base type, optional) from the trial-config dataclasses."""
    hints = typing.get_type_hints(schema)
    out: Dict[str, Tuple[type, bool]] = {}
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(schema_types(tp, f"{prefix}{f.name}."))
            continue
        args = typing.get_args(tp)
        optional = typing.get_origin(tp) is Union and type(None) in args
        if optional:
            tp = next(a for a in args if a is not type(None))
        out[f"{prefix}{f.name}"] = (tp if isinstance(tp, type) else object, optional)
    return out


def cast_param(values: pd.Series, tp: type, optional: bool) -> pd.Series:
    """Cast a column of MLflow param strings back to the schema type.

    bool: "true"/"false" -> bool (``boolean`` dtype if a value is missing); int: int64, or
    nullable ``Int64`` when Optional/missing ("null" -> NA); float: float64 ("null" -> NaN);
    str: "null" -> None when Optional.
    """
    s = values.where(values != "null", None) if optional else values
    missing = s.isna().any()
    if tp is bool:
        mapped = s.map({"true": True, "false": False, "True": True, "False": False})
        return mapped.astype("boolean") if missing or mapped.isna().any() else mapped.astype(bool)
    if tp is int:
        num = pd.to_numeric(s, errors="coerce")
        if missing or num.isna().any():
            return num.astype("Int64")
        return num.astype("int64")
    if tp is float:
        return pd.to_numeric(s, errors="coerce").astype("float64")
    return s.astype(object).where(s.notna(), None)


# --------------------------------------------------------------------------------------
# Parent runs
# --------------------------------------------------------------------------------------


def parse_json(text: Optional[str], default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


def _ts(ms: Optional[int]) -> Any:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms else pd.NaT


def parse_meta(name: str, experiment_id: str, uri: str, parents: Sequence[Any]) -> SweepMeta:
    """SweepMeta from the parent runs (the latest one by start time wins)."""
    parents = sorted(parents, key=lambda r: r.info.start_time or 0)
    meta = SweepMeta(name=name, experiment_id=experiment_id, tracking_uri=uri, parent_run_id=None)
    meta.parents = [{
        "run_id": r.info.run_id,
        "start_time": _ts(r.info.start_time),
        "status": r.info.status,
        "command": r.data.tags.get(TAG_COMMAND, ""),
        "git_commit": r.data.tags.get(TAG_COMMIT, ""),
        "seeds": r.data.params.get(P_SEEDS, ""),
    } for r in parents]
    if not parents:
        return meta
    last = parents[-1]
    tags, params = last.data.tags, last.data.params
    meta.parent_run_id = last.info.run_id
    meta.params = dict(params)
    meta.factors = list(parse_json(tags.get(TAG_FACTORS), []))
    meta.baselines = list(parse_json(tags.get(TAG_BASELINES), []))
    overrides = parse_json(params.get(P_BASELINES), {})
    meta.baseline_overrides = overrides if isinstance(overrides, dict) else {}
    meta.grid = dict(parse_json(params.get(P_GRID), {}))
    matches = parse_json(params.get(P_MATCHES), {})
    meta.matches = {a: m for a, m in matches.items() if isinstance(m, dict)} if isinstance(matches, dict) else {}
    meta.metric = tags.get(TAG_METRIC) or params.get(P_METRIC) or meta.metric
    meta.metric_mode = tags.get(TAG_METRIC_MODE) or params.get(P_METRIC_MODE) or meta.metric_mode
    note = tags.get(TAG_NOTE, "")
    meta.description = "" if note == name else note
    meta.command = tags.get(TAG_COMMAND, "")
    meta.git_commit = tags.get(TAG_COMMIT, "")
    return meta


# --------------------------------------------------------------------------------------
# Trial runs
# --------------------------------------------------------------------------------------


def stage_of(run: Any) -> str:
    """A trial run's stage tag (``tune`` | ``final``); runs without one are final."""
    return run.data.tags.get(TAG_STAGE) or STAGE_FINAL


def _trial_record(run: Any) -> Dict[str, Any]:
    info, tags = run.info, run.data.tags
    start, end = info.start_time, info.end_time
    return {
        "run_id": info.run_id,
        "parent_run_id": tags.get(TAG_PARENT_RUN),
        "status": info.status,
        "trial_key": tags.get(TAG_KEY),
        "arm": tags.get(TAG_ARM),
        "seed_tag": tags.get(TAG_SEED),
        "baseline": tags.get(TAG_BASELINE, "false") == "true",
        "factors": parse_json(tags.get(TAG_FACTORS), {}),
        "sweep": tags.get(TAG_SWEEP),
        "stage": stage_of(run),
        "git_commit": tags.get(TAG_COMMIT),
        "device": tags.get(TAG_DEVICE),
        "data": {k: v for k, v in sorted(tags.items()) if k.startswith(TASK_INFO_PREFIX)},
        "error": tags.get(TAG_ERROR),
        "failure": tags.get(TAG_FAILURE),
        "start_ms": start or 0,
        "start_time": _ts(start),
        "end_time": _ts(end),
        "duration_s": (end - start) / 1000.0 if start and end else np.nan,
    }


def runs_frame(trial_runs: Sequence[Any]) -> pd.DataFrame:
    """One row per trial key from FINISHED trial runs: the latest run of each key wins.

    Columns: run_id, parent_run_id, trial_key, arm, seed (int), baseline (bool), factors (dict),
    sweep, stage, git_commit, device, data (dict of the task's info tags), start_ms,
    start_time, end_time, duration_s; the trial config as typed dotted columns
    (``model.sgu_split`` bool, ``model.attn_dim`` Int64, ...); the last value of every
    metric, named by its key (``val/loss``, ``model/params``, ...).
    """
    finished = [r for r in trial_runs if r.info.status == "FINISHED"]
    if not finished:
        return pd.DataFrame()
    base = pd.DataFrame.from_records([_trial_record(r) for r in finished])
    cfg = pd.DataFrame.from_records([r.data.params for r in finished], index=base.index)
    met = pd.DataFrame.from_records([r.data.metrics for r in finished], index=base.index).astype("float64")
    types = schema_types()
    for col in cfg.columns:
        if col in types:
            cfg[col] = cast_param(cfg[col], *types[col])
    cfg = cfg[[c for c in types if c in cfg.columns] + sorted(c for c in cfg.columns if c not in types)]
    if "seed" in cfg.columns:
        base["seed"] = cfg.pop("seed")
    else:
        base["seed"] = pd.to_numeric(base["seed_tag"], errors="coerce").astype("Int64")
    base = base.drop(columns=["seed_tag", "status", "error", "failure"])
    df = pd.concat([base, cfg, met[sorted(met.columns)]], axis=1)
    # Pool invocations: the latest FINISHED run per trial key (runs without a key stay).
    keyed = df["trial_key"].fillna(df["run_id"])
    df = (df.assign(_key=keyed).sort_values(["start_ms", "run_id"])
          .drop_duplicates("_key", keep="last").drop(columns=["_key"]))
    return df.reset_index(drop=True)


_SIG_KEYS = [k for k in TRIAL_KEYS if k != "seed" and k not in NONSEMANTIC_KEYS]


def config_signature(params: Dict[str, Any]) -> str:
    """A trial's config without its seed and non-semantic fields, as one string: two runs of
    one arm have the same signature exactly when they ran the same config (seed aside)."""
    return "\x1f".join(f"{k}={params.get(k)}" for k in _SIG_KEYS)


def current_signatures(finished: pd.DataFrame, failed: pd.DataFrame) -> pd.Series:
    """Arm -> the config signature of its latest trial run, finished or failed (by start
    time). Both frames need columns arm, signature, start_ms."""
    parts = [f[["arm", "signature", "start_ms"]] for f in (finished, failed) if len(f)]
    if not parts:
        return pd.Series(dtype=object)
    both = pd.concat(parts, ignore_index=True)
    return both.sort_values("start_ms", kind="stable").groupby("arm", dropna=False)["signature"].last()


def split_by_config(df: pd.DataFrame, current: pd.Series) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, superseded): rows of each arm's current config and rows of an older one."""
    if df.empty:
        return df, df.iloc[0:0]
    keep = df["signature"].to_numpy() == df["arm"].map(current).to_numpy()
    return df[keep].reset_index(drop=True), df[~keep].reset_index(drop=True)


FAILURE_COLUMNS = ["run_id", "parent_run_id", "arm", "baseline", "factors", "seed", "trial_key", "failure", "error", "diverged", "resolved",
                   "start_time", "start_ms", "signature"]


def failures_frame(trial_runs: Sequence[Any], finished_keys: Iterable[str]) -> pd.DataFrame:
    """One row per FAILED trial run: arm, seed, trial_key, failure, error, diverged (the loss
    went non-finite), resolved (a FINISHED run of its key exists), run_id, start time and its
    config ``signature``."""
    done = set(finished_keys)
    rows = []
    for r in trial_runs:
        if r.info.status != "FAILED":
            continue
        rec = _trial_record(r)
        rows.append({
            "run_id": rec["run_id"], "parent_run_id": rec["parent_run_id"], "arm": rec["arm"],
            "baseline": rec["baseline"], "factors": rec["factors"], "seed": pd.to_numeric(rec["seed_tag"], errors="coerce"), "trial_key": rec["trial_key"],
            "failure": rec["failure"] or "", "error": rec["error"] or "",
            "diverged": rec["failure"] == FAILURE_NONFINITE,
            "resolved": rec["trial_key"] in done, "start_time": rec["start_time"], "start_ms": rec["start_ms"],
            "signature": config_signature(r.data.params),
        })
    return pd.DataFrame(rows, columns=FAILURE_COLUMNS).sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)


def tidy_histories(long: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Long histories (run_id, metric, step, value, timestamp) -> run_id, arm, seed, metric,
    step, value: one value per step (the last logged), labelled with the run's arm and seed."""
    cols = ["run_id", "arm", "seed", "metric", "step", "value"]
    if long.empty:
        return pd.DataFrame(columns=cols)
    long = (long.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
            .drop_duplicates(["run_id", "metric", "step"], keep="last"))
    long = long.merge(runs[["run_id", "arm", "seed"]], on="run_id", how="left")
    return long[cols].reset_index(drop=True)


def history_metrics(runs: pd.DataFrame) -> List[str]:
    """Metric columns of a runs frame (keys with a slash: ``val/loss``, ``perf/...``)."""
    return [c for c in runs.columns if "/" in c]

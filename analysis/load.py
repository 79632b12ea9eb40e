"""Read a sweep back from MLflow into tidy DataFrames (the only MLflow code in ``analysis``).

The layout is the one :mod:`gmlp_ablate.tracking` writes: experiment = sweep name, one parent
run per invocation, one nested trial run per trial. A sweep run several times (reruns, added
seeds) is pooled: each ``trial_key`` contributes its latest FINISHED run.

Everything after this module is pure pandas: :func:`load_sweep` returns every table the
report needs from one ``search_runs`` pass plus one bulk read of the metric histories.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from gmlp_ablate.config import NONSEMANTIC_KEYS, TRIAL_KEYS, TrialConfig, did_you_mean
from gmlp_ablate.names import (
    PARENT,
    TAG_ARM,
    TAG_BASELINE,
    TAG_BASELINES,
    TAG_COMMIT,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_FACTORS,
    TAG_FAILURE,
    TAG_KEY,
    TAG_METRIC,
    TAG_METRIC_MODE,
    TAG_ROLE,
    TAG_SEED,
    TAG_SWEEP,
    TRIAL,
    TAG_PARENT_RUN,
    TAG_NOTE,
    TAG_COMMAND,
    REPORT_ARTIFACT_PATH,
)
from gmlp_ablate.tracking import normalize_uri
_BULK_CHUNK = 500  # run ids per bulk history query (well under sqlite's variable limit)


class AnalysisError(RuntimeError):
    """The sweep cannot be analysed as asked (no such experiment, no finished runs, ...)."""


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


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
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    """The grid's values per key (value order of the sweep file)."""
    seeds: List[int] = field(default_factory=list)
    metric: str = "val/loss"
    metric_mode: str = "min"
    description: str = ""
    command: str = ""
    """The command line of the latest invocation."""
    git_commit: str = ""
    parents: List[Dict[str, Any]] = field(default_factory=list)
    """Every invocation: run_id, start_time, status, command, git_commit (oldest first)."""


@dataclass
class SweepData:
    """Everything :func:`load_sweep` reads: metadata, trial rows, failures, curves."""

    meta: SweepMeta
    runs: pd.DataFrame
    """One row per trial key (its latest FINISHED run); see :func:`load_runs`."""
    failures: pd.DataFrame
    """One row per FAILED trial run, with ``resolved`` = a FINISHED run of the key exists."""
    curves: Optional[pd.DataFrame] = None
    """Long metric histories (run_id, arm, seed, metric, step, value), if asked for."""
    n_running: int = 0
    """Trial runs still RUNNING (not in ``runs``)."""
    superseded: Optional[pd.DataFrame] = None
    """Finished runs left out because their arm was later run with another config."""
    superseded_failures: int = 0
    """FAILED runs of an older config of their arm (left out of ``failures``)."""


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
# Store access
# --------------------------------------------------------------------------------------


def _client(tracking_uri: Optional[str]):
    from mlflow.tracking import MlflowClient

    uri = normalize_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); "
                                f"run a sweep first or pass --tracking-uri")
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as e:  # bad scheme, unreachable server
        raise AnalysisError(f"tracking URI {uri!r} is not usable: {_one_line(e)}") from None


def experiment_names(tracking_uri: Optional[str] = None) -> List[str]:
    """Names of the active experiments in the store."""
    client, _ = _client(tracking_uri)
    return [e.name for e in _all_experiments(client)]


def _all_experiments(client) -> List[Any]:
    out: List[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _experiment(client, uri: str, name: str):
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as e:
        raise AnalysisError(f"tracking URI {uri!r} is not reachable: {_one_line(e)}") from None
    if exp is None or exp.lifecycle_stage == "deleted":
        names = [e.name for e in _all_experiments(client)]
        hint = did_you_mean(name, names) if names else ""
        known = f"; experiments in the store: {', '.join(sorted(names)[:10])}" if names and not hint else ""
        state = "is deleted" if exp is not None else "does not exist"
        raise AnalysisError(f"experiment '{name}' {state} in {uri}{hint}{known}")
    return exp


def _search_all(client, experiment_id: str) -> List[Any]:
    """Every run of the experiment (parents and trials, any status), all pages."""
    out: List[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=50000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _one_line(e: Any) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(e).__name__


# --------------------------------------------------------------------------------------
# Runs -> DataFrames (pure)
# --------------------------------------------------------------------------------------


def _json(text: Optional[str], default: Any) -> Any:
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
    } for r in parents]
    if not parents:
        return meta
    last = parents[-1]
    tags, params = last.data.tags, last.data.params
    meta.parent_run_id = last.info.run_id
    meta.factors = list(_json(tags.get(TAG_FACTORS), []))
    meta.baselines = list(_json(tags.get(TAG_BASELINES), []))
    meta.grid = dict(_json(params.get("sweep.grid"), {}))
    meta.seeds = list(_json(params.get("sweep.seeds"), []))
    meta.metric = tags.get(TAG_METRIC) or params.get("sweep.metric") or meta.metric
    meta.metric_mode = tags.get(TAG_METRIC_MODE) or params.get("sweep.metric_mode") or meta.metric_mode
    note = tags.get(TAG_NOTE, "")
    meta.description = "" if note == name else note
    meta.command = tags.get(TAG_COMMAND, "")
    meta.git_commit = tags.get(TAG_COMMIT, "")
    return meta


def _trial_record(run: Any) -> Dict[str, Any]:
    info, tags = run.info, run.data.tags
    start, end = info.start_time, info.end_time
    rec: Dict[str, Any] = {
        "run_id": info.run_id,
        "parent_run_id": tags.get(TAG_PARENT_RUN),
        "status": info.status,
        "trial_key": tags.get(TAG_KEY),
        "arm": tags.get(TAG_ARM),
        "seed_tag": tags.get(TAG_SEED),
        "baseline": tags.get(TAG_BASELINE, "false") == "true",
        "factors": _json(tags.get(TAG_FACTORS), {}),
        "sweep": tags.get(TAG_SWEEP),
        "git_commit": tags.get(TAG_COMMIT),
        "device": tags.get(TAG_DEVICE),
        "error": tags.get(TAG_ERROR),
        "failure": tags.get(TAG_FAILURE),
        "start_ms": start or 0,
        "start_time": _ts(start),
        "end_time": _ts(end),
        "duration_s": (end - start) / 1000.0 if start and end else np.nan,
    }
    return rec


def runs_frame(trial_runs: Sequence[Any]) -> pd.DataFrame:
    """One row per trial key from FINISHED trial runs: the latest run of each key wins.

    Columns: run_id, parent_run_id, trial_key, arm, seed (int), baseline (bool), factors (dict),
    sweep, git_commit, device, start_time, end_time, duration_s; the trial config as typed
    dotted columns (``model.sgu_split`` bool, ``model.attn_dim`` Int64, ...); the last value of
    every metric, named by its key (``val/loss``, ``model/params``, ...).
    """
    finished = [r for r in trial_runs if r.info.status == "FINISHED"]
    if not finished:
        return pd.DataFrame()
    recs, params, metrics = [], [], []
    for r in finished:
        recs.append(_trial_record(r))
        params.append(r.data.params)
        metrics.append(r.data.metrics)
    base = pd.DataFrame.from_records(recs)
    cfg = pd.DataFrame.from_records(params, index=base.index)
    met = pd.DataFrame.from_records(metrics, index=base.index).astype("float64")
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


def latest_config_per_arm(df: pd.DataFrame, signatures: pd.Series) -> Tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Split pooled rows into (kept, superseded, latest): per arm, the runs whose config
    signature (``signatures``, per row, from :func:`config_signature`) equals that of the
    arm's latest run are kept; runs of an older config of the same arm (e.g. before
    ``train.steps=...`` was changed) are left out, so an arm never mixes runs of different
    configs. ``latest`` maps each arm to its latest signature."""
    if df.empty:
        df = df.drop(columns=["start_ms"], errors="ignore")
        return df, df.iloc[0:0], pd.Series(dtype=object)
    sig = signatures.reindex(df.index)
    latest = df.assign(_sig=sig).sort_values("start_ms").groupby("arm", dropna=False)["_sig"].last()
    keep = sig.values == df["arm"].map(latest).values
    clean = df.drop(columns=["start_ms"])
    return clean[keep].reset_index(drop=True), clean[~keep].reset_index(drop=True), latest


def failures_frame(trial_runs: Sequence[Any], finished_keys: Iterable[str]) -> pd.DataFrame:
    """One row per FAILED trial run: arm, seed, trial_key, failure, error, resolved (a FINISHED
    run of its key exists), run_id, and its config ``signature``."""
    done = set(finished_keys)
    rows = []
    for r in trial_runs:
        if r.info.status != "FAILED":
            continue
        rec = _trial_record(r)
        rows.append({
            "run_id": rec["run_id"], "parent_run_id": rec["parent_run_id"], "arm": rec["arm"],
            "seed": pd.to_numeric(rec["seed_tag"], errors="coerce"), "trial_key": rec["trial_key"],
            "failure": rec["failure"] or "", "error": rec["error"] or "",
            "resolved": rec["trial_key"] in done, "start_time": rec["start_time"],
            "signature": config_signature(r.data.params),
        })
    cols = ["run_id", "parent_run_id", "arm", "seed", "trial_key", "failure", "error", "resolved", "start_time",
            "signature"]
    return pd.DataFrame(rows, columns=cols).sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)


def current_failures(failures: pd.DataFrame, latest: pd.Series) -> Tuple[pd.DataFrame, int]:
    """Split FAILED runs into those of each arm's current config (returned, without the
    ``signature`` column) and the number of those of an older config of an arm whose latest
    finished runs (``latest``: arm -> signature) have another one."""
    older = np.asarray([arm in latest.index and sig != latest[arm]
                        for arm, sig in zip(failures["arm"], failures["signature"])], dtype=bool)
    return failures[~older].drop(columns=["signature"]).reset_index(drop=True), int(older.sum())


# --------------------------------------------------------------------------------------
# Metric histories
# --------------------------------------------------------------------------------------


def _histories_sql(client, run_ids: List[str], keys: Sequence[str]) -> Optional[pd.DataFrame]:
    """Histories straight from a SQL tracking store: one column query per chunk of runs,
    through MLflow's own table model (no per-row entity objects). None if the store is not SQL."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None or not hasattr(store, "ManagedSessionMaker"):
        return None
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
    except ImportError:
        return None
    cols = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp, SqlMetric.is_nan)
    rows: List[Any] = []
    with store.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), _BULK_CHUNK):
            chunk = run_ids[i:i + _BULK_CHUNK]
            rows.extend(session.query(*cols).filter(SqlMetric.key.in_(list(keys)), SqlMetric.run_uuid.in_(chunk)).all())
    df = pd.DataFrame.from_records(rows, columns=["run_id", "metric", "step", "value", "timestamp", "is_nan"])
    df["value"] = df["value"].astype("float64").where(~df["is_nan"].astype(bool), np.nan)
    return df.drop(columns="is_nan")


def _histories_api(client, run_ids: List[str], keys: Sequence[str]) -> pd.DataFrame:
    """Histories through ``MlflowClient.get_metric_history`` (any store; round trips overlapped)."""
    def one(job: Tuple[str, str]) -> List[Tuple[str, str, int, float, int]]:
        rid, key = job
        return [(rid, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)]

    rows: List[Any] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for part in pool.map(one, [(r, k) for r in run_ids for k in keys]):
            rows.extend(part)
    return pd.DataFrame.from_records(rows, columns=["run_id", "metric", "step", "value", "timestamp"])


def read_curves(client, runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Long histories: run_id, arm, seed, metric, step, value (one value per step, the last logged)."""
    cols = ["run_id", "arm", "seed", "metric", "step", "value"]
    run_ids = runs["run_id"].tolist()
    if not metrics or not run_ids:
        return pd.DataFrame(columns=cols)
    long = _histories_sql(client, run_ids, metrics)
    if long is None:
        long = _histories_api(client, run_ids, metrics)
    long = (long.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
            .drop_duplicates(["run_id", "metric", "step"], keep="last"))
    long = long.merge(runs[["run_id", "arm", "seed"]], on="run_id", how="left")
    return long[cols].reset_index(drop=True)


def history_metrics(runs: pd.DataFrame) -> List[str]:
    """Metric columns of a runs frame (keys with a slash: ``val/loss``, ``perf/...``)."""
    return [c for c in runs.columns if "/" in c]


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def load_sweep(experiment: str, tracking_uri: Optional[str] = None,
               curve_metrics: Optional[Sequence[str]] = None) -> SweepData:
    """Metadata, pooled trial rows, failed trials and (optionally) curves of one sweep.

    ``curve_metrics``: metric keys whose full histories to read (None: no curves; an empty
    list: every metric). Raises AnalysisError for a missing experiment or no finished runs.
    """
    client, uri = _client(tracking_uri)
    exp = _experiment(client, uri, experiment)
    try:
        all_runs = _search_all(client, exp.experiment_id)
    except Exception as e:
        raise AnalysisError(f"cannot read runs of '{experiment}' from {uri}: {_one_line(e)}") from None
    parents = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == PARENT]
    trials = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == TRIAL]
    meta = parse_meta(experiment, exp.experiment_id, uri, parents)
    pooled = runs_frame(trials)
    params = {r.info.run_id: r.data.params for r in trials}
    sigs = pd.Series([config_signature(params[rid]) for rid in pooled.get("run_id", [])], index=pooled.index, dtype=object)
    runs, superseded, latest = latest_config_per_arm(pooled, sigs)
    if runs.empty:
        n_failed = sum(r.info.status == "FAILED" for r in trials)
        extra = f" ({len(trials)} trial runs, {n_failed} FAILED)" if trials else " (no trial runs)"
        raise AnalysisError(f"experiment '{experiment}' has no FINISHED trial runs in {uri}{extra}")
    parent_commit = {p["run_id"]: p["git_commit"] or None for p in meta.parents}
    runs["git_commit"] = runs["git_commit"].fillna(runs["parent_run_id"].map(parent_commit))  # older trial runs
    finished_keys = pd.concat([runs["trial_key"], superseded.get("trial_key", pd.Series(dtype=object))]).dropna()
    failures, n_older_failed = current_failures(failures_frame(trials, finished_keys), latest)
    curves = None if curve_metrics is None else _curves(client, meta, runs, curve_metrics)
    n_running = sum(r.info.status == "RUNNING" for r in trials)
    return SweepData(meta=meta, runs=runs, failures=failures, curves=curves, n_running=n_running,
                     superseded=superseded, superseded_failures=n_older_failed)


def load_runs(experiment: str, tracking_uri: Optional[str] = None, curves: Union[bool, Sequence[str]] = False):
    """One tidy row per finished trial of sweep ``experiment`` (the latest run per trial key).

    ``tracking_uri`` defaults to ``sqlite:///<cwd>/mlflow.db``. With ``curves`` true (or a list
    of metric keys) returns ``(runs, curves)``, ``curves`` being the long metric histories
    (run_id, arm, seed, metric, step, value). Raises AnalysisError when the experiment is
    missing or has no finished trial.
    """
    want = None if curves is False else ([] if curves is True else list(curves))
    data = load_sweep(experiment, tracking_uri, curve_metrics=want)
    return data.runs if want is None else (data.runs, data.curves)


def load_curves(meta: SweepMeta, runs: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Histories of ``metrics`` (default: every metric) for the runs of a loaded sweep."""
    client, _ = _client(meta.tracking_uri)
    return _curves(client, meta, runs, metrics or [])


def _curves(client, meta: SweepMeta, runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    keys = list(metrics) or history_metrics(runs)
    try:
        return read_curves(client, runs, [k for k in keys if k in runs.columns])
    except Exception as e:
        raise AnalysisError(f"cannot read metric histories of '{meta.name}': {_one_line(e)}") from None


def load_meta(experiment: str, tracking_uri: Optional[str] = None) -> SweepMeta:
    """The sweep's metadata from its latest parent run (factors, baselines, metric, mode, ...)."""
    client, uri = _client(tracking_uri)
    exp = _experiment(client, uri, experiment)
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{PARENT}'",
                                 max_results=50000)
    return parse_meta(experiment, exp.experiment_id, uri, list(parents))


def log_report(meta: SweepMeta, folder: str, artifact_path: str = REPORT_ARTIFACT_PATH) -> str:
    """Log a folder as artifacts of the sweep's latest parent run; returns the artifact URI."""
    if not meta.parent_run_id:
        raise AnalysisError(f"experiment '{meta.name}' has no parent run to log the report to")
    client, _ = _client(meta.tracking_uri)
    try:
        client.log_artifacts(meta.parent_run_id, folder, artifact_path)
        run = client.get_run(meta.parent_run_id)
    except Exception as e:
        raise AnalysisError(f"cannot log the report to parent run {meta.parent_run_id}: {_one_line(e)}") from None
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"

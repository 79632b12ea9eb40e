"""Read a sweep back from MLflow: :func:`load_sweep` returns every table the report needs,
from one paged run search plus one bulk read of the metric histories.

Store access is in :mod:`analysis.store`, the run -> DataFrame conversion in
:mod:`analysis.frames`; this module puts the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pandas as pd

from analysis import frames, store
from analysis.frames import SweepMeta, config_signature
from analysis.store import AnalysisError
from gmlp_ablate.names import PARENT, REPORT_ARTIFACT_PATH, STAGE_FINAL, STAGE_TUNE, TAG_ROLE, TRIAL

__all__ = ["AnalysisError", "SweepData", "SweepMeta", "load_curves", "load_meta", "load_runs",
           "load_sweep", "log_report"]


@dataclass
class SweepData:
    """Everything :func:`load_sweep` reads: metadata, trial rows, failures, curves."""

    meta: SweepMeta
    runs: pd.DataFrame
    """One row per trial key of the ``final`` stage (its latest FINISHED run), each arm at its
    current config; see :func:`analysis.frames.runs_frame`."""
    failures: pd.DataFrame
    """One row per FAILED final-stage run of its arm's current config (``resolved``: a
    FINISHED run of the key exists; ``diverged``: the loss went non-finite)."""
    curves: Optional[pd.DataFrame] = None
    """Long metric histories (run_id, arm, seed, metric, step, value), if asked for."""
    n_running: int = 0
    """Trial runs still RUNNING (not in ``runs``)."""
    superseded: Optional[pd.DataFrame] = None
    """Finished runs left out because their arm was later run with another config."""
    superseded_failures: int = 0
    """FAILED runs of an older config of their arm (left out of ``failures``)."""
    tune: Optional[pd.DataFrame] = None
    """FINISHED runs of the ``tune`` stage (settings tried before the final runs), if any."""


def load_sweep(experiment: str, tracking_uri: Optional[str] = None,
               curve_metrics: Optional[Sequence[str]] = None) -> SweepData:
    """Metadata, pooled trial rows, failed trials and (optionally) curves of one sweep.

    ``curve_metrics``: metric keys whose full histories to read (None: no curves; an empty
    list: every metric). Raises AnalysisError for a missing experiment or no finished runs.
    """
    client, uri = store.connect(tracking_uri)
    exp = store.experiment(client, uri, experiment)
    all_runs = store.search_runs(client, uri, exp.experiment_id)
    parents = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == PARENT]
    trials = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == TRIAL]
    final = [r for r in trials if frames.stage_of(r) == STAGE_FINAL]
    meta = frames.parse_meta(experiment, exp.experiment_id, uri, parents)

    pooled = frames.runs_frame(final)
    params = {r.info.run_id: r.data.params for r in final}
    if not pooled.empty:
        pooled["signature"] = [config_signature(params[rid]) for rid in pooled["run_id"]]
    finished_keys: Iterable[str] = pooled["trial_key"].dropna() if not pooled.empty else []
    failed = frames.failures_frame(final, finished_keys)
    current = frames.current_signatures(pooled, failed)
    runs, superseded = frames.split_by_config(pooled, current)
    failures, older_failures = frames.split_by_config(failed, current)
    if runs.empty:
        n_failed = sum(r.info.status == "FAILED" for r in final)
        extra = f" ({len(final)} trial runs, {n_failed} FAILED)" if final else " (no trial runs)"
        which = " of its arms' current configs" if len(superseded) else ""
        raise AnalysisError(f"experiment '{experiment}' has no FINISHED trial runs{which} in {uri}{extra}")
    parent_commit = {p["run_id"]: p["git_commit"] or None for p in meta.parents}
    runs["git_commit"] = runs["git_commit"].fillna(runs["parent_run_id"].map(parent_commit))  # older trial runs
    runs = runs.drop(columns=["signature", "start_ms"], errors="ignore")
    superseded = superseded.drop(columns=["signature", "start_ms"], errors="ignore")
    failures = failures.drop(columns=["signature", "start_ms"]).reset_index(drop=True)
    tune = frames.runs_frame([r for r in trials if frames.stage_of(r) == STAGE_TUNE])
    data = SweepData(meta=meta, runs=runs, failures=failures, n_running=sum(r.info.status == "RUNNING" for r in trials),
                     superseded=superseded, superseded_failures=len(older_failures),
                     tune=tune if not tune.empty else None)
    if curve_metrics is not None:
        data.curves = _curves(client, meta, runs, curve_metrics)
    return data


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
    client, _ = store.connect(meta.tracking_uri)
    return _curves(client, meta, runs, metrics or [])


def _curves(client, meta: SweepMeta, runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in (list(metrics) or frames.history_metrics(runs)) if k in runs.columns]
    try:
        long = store.histories(client, runs["run_id"].tolist(), keys)
    except Exception as e:
        raise AnalysisError(f"cannot read metric histories of '{meta.name}': {store.one_line(e)}") from None
    return frames.tidy_histories(long, runs)


def load_meta(experiment: str, tracking_uri: Optional[str] = None) -> SweepMeta:
    """The sweep's metadata from its latest parent run (factors, baselines, metric, mode, ...)."""
    client, uri = store.connect(tracking_uri)
    exp = store.experiment(client, uri, experiment)
    parents = store.search_runs(client, uri, exp.experiment_id, f"tags.`{TAG_ROLE}` = '{PARENT}'")
    return frames.parse_meta(experiment, exp.experiment_id, uri, parents)


def log_report(meta: SweepMeta, folder: Path, names: Sequence[str], artifact_path: str = REPORT_ARTIFACT_PATH) -> str:
    """Log the report files ``names`` of ``folder`` to the sweep's latest parent run; returns
    the artifact URI."""
    return store.log_files(meta.tracking_uri, meta.parent_run_id, Path(folder), names, artifact_path,
                           f"experiment '{meta.name}'")

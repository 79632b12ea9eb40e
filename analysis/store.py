"""The MLflow store, read and written (the only module of ``analysis`` that imports MLflow).

Reads go through ``MlflowClient``'s public, paged API (:func:`all_pages` walks the pages of
any of its ``search_*`` calls). The one exception is :func:`sql_histories`: on a SQL store
it reads the metric histories of many runs in one query per chunk of runs, through MLflow's
own table model, because ``get_metric_history`` costs one round trip per run and metric.
It is the only private path; ``tests/test_analysis_store.py`` runs it against a real sqlite
store and fails when an MLflow upgrade breaks it.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from gmlp_ablate.schema import did_you_mean
from gmlp_ablate.tracking import normalize_uri

_BULK_CHUNK = 500  # run ids per bulk history query (well under sqlite's variable limit)
CONNECT_TIMEOUT_S = 5.0
HISTORY_COLUMNS = ["run_id", "metric", "step", "value", "timestamp"]


class AnalysisError(RuntimeError):
    """The sweep cannot be analysed as asked (no such experiment, no finished runs, ...)."""


def one_line(e: Any) -> str:
    """The first non-empty line of an exception's message."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(e).__name__


# --------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------


def _probe_server(uri: str) -> None:
    """Fail within seconds when an http(s) tracking server does not accept connections
    (MLflow's own client retries for minutes before it gives up)."""
    url = urlparse(uri)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        raise AnalysisError(f"tracking URI {uri!r} names no host")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        timed_out = isinstance(e, socket.timeout)
        reason = f"no answer in {CONNECT_TIMEOUT_S:g} s" if timed_out else (e.strerror or type(e).__name__)
        raise AnalysisError(f"tracking server {uri} is not reachable: {reason}") from None


def connect(tracking_uri: Optional[str]) -> Tuple[Any, str]:
    """An ``MlflowClient`` for the store and its normalised URI. Raises AnalysisError for a
    missing sqlite file or a server that does not answer."""
    from mlflow.tracking import MlflowClient

    uri = normalize_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); "
                                f"run a sweep first or pass --tracking-uri")
    elif uri.startswith(("http://", "https://")):
        _probe_server(uri)
        # a server that dies later: a few quick retries, not MLflow's minutes of backoff
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as e:  # bad scheme
        raise AnalysisError(f"tracking URI {uri!r} is not usable: {one_line(e)}") from None


def all_pages(search: Callable[..., Any], *args: Any, **kwargs: Any) -> List[Any]:
    """Every item of a paged ``MlflowClient.search_*`` call (follows ``PagedList.token``)."""
    out: List[Any] = []
    token = None
    while True:
        page = search(*args, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def experiment_names(client: Any) -> List[str]:
    """Names of the active experiments in the store."""
    return [e.name for e in all_pages(client.search_experiments, max_results=1000)]


def experiment(client: Any, uri: str, name: str) -> Any:
    """The active experiment ``name``; AnalysisError (with a did-you-mean) if there is none."""
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as e:
        raise AnalysisError(f"tracking URI {uri!r} is not reachable: {one_line(e)}") from None
    if exp is None or exp.lifecycle_stage == "deleted":
        names = experiment_names(client)
        hint = did_you_mean(name, names) if names else ""
        known = f"; experiments in the store: {', '.join(sorted(names)[:10])}" if names and not hint else ""
        state = "is deleted" if exp is not None else "does not exist"
        raise AnalysisError(f"experiment '{name}' {state} in {uri}{hint}{known}")
    return exp


def search_runs(client: Any, uri: str, experiment_id: str, filter_string: str = "") -> List[Any]:
    """Every run of an experiment matching ``filter_string`` (any status), all pages."""
    try:
        return all_pages(client.search_runs, [experiment_id], filter_string=filter_string, max_results=50000)
    except Exception as e:
        raise AnalysisError(f"cannot read runs of experiment {experiment_id} from {uri}: {one_line(e)}") from None


# --------------------------------------------------------------------------------------
# Metric histories
# --------------------------------------------------------------------------------------


def sql_histories(client: Any, run_ids: Sequence[str], keys: Sequence[str]) -> Optional[pd.DataFrame]:
    """Histories straight from a SQL tracking store (the one private path, see the module
    docstring): columns run_id, metric, step, value (NaN where MLflow stored a NaN),
    timestamp. None when the store is not a SQL store or MLflow's table model moved."""
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
            chunk = list(run_ids[i:i + _BULK_CHUNK])
            rows.extend(session.query(*cols).filter(SqlMetric.key.in_(list(keys)), SqlMetric.run_uuid.in_(chunk)).all())
    df = pd.DataFrame.from_records(rows, columns=HISTORY_COLUMNS + ["is_nan"])
    df["value"] = df["value"].astype("float64").where(~df["is_nan"].astype(bool), np.nan)
    return df.drop(columns="is_nan")


def api_histories(client: Any, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Histories through ``MlflowClient.get_metric_history`` (any store; round trips overlapped)."""
    def one(job: Tuple[str, str]) -> List[Tuple[str, str, int, float, int]]:
        rid, key = job
        return [(rid, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)]

    rows: List[Any] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for part in pool.map(one, [(r, k) for r in run_ids for k in keys]):
            rows.extend(part)
    return pd.DataFrame.from_records(rows, columns=HISTORY_COLUMNS)


def histories(client: Any, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Metric histories of ``run_ids``: the bulk SQL read where possible, else the public API."""
    if not run_ids or not keys:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    long = sql_histories(client, run_ids, keys)
    return api_histories(client, run_ids, keys) if long is None else long


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def log_files(tracking_uri: str, run_id: Optional[str], folder: Path, names: Iterable[str], artifact_path: str,
              what: str) -> str:
    """Log the files ``names`` of ``folder`` as artifacts of ``run_id``; returns the artifact URI."""
    if not run_id:
        raise AnalysisError(f"{what} has no parent run to log the report to")
    client, _ = connect(tracking_uri)
    try:
        for name in names:
            client.log_artifact(run_id, str(folder / name), artifact_path)
        run = client.get_run(run_id)
    except Exception as e:
        raise AnalysisError(f"cannot log the report to parent run {run_id}: {one_line(e)}") from None
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"

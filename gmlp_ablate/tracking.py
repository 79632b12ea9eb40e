"""MLflow on the run side: experiments, the parent run, nested trial runs, resume lookups.

Layout (DESIGN.md section 4): experiment = sweep name; one parent run per invocation of
``gmlp_ablate.run``; one nested child run per trial (tag ``mlflow.parentRunId``), with the
whole resolved trial config as dotted params and the tags below. All writes go through one
``MlflowClient`` in the driver (batched with ``log_batch``), so a sweep has one writer per
store; "database is locked" from a second process on the same sqlite file is retried, and
the first creation (schema migration) of a sqlite store is serialised across processes by an
``flock`` on the store's folder (two drivers started at once on a new store both work).

URIs are checked in two stages: :func:`check_uri` (no MLflow import: scheme, sqlite folder,
a TCP connect to a server) so that bad input fails in a fraction of a second and creates
nothing, then :meth:`Tracker.check` (a real request).

This is the only module on the run side that imports MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar
from urllib.parse import urlsplit

from gmlp_ablate.config import Sweep, Trial, did_you_mean, flatten, to_dict

from gmlp_ablate.names import (  # noqa: F401  (re-exported for the run side)
    PARENT,
    TAG_ARM,
    TAG_BASELINE,
    TAG_BASELINES,
    TAG_COMMIT,
    TAG_ERROR,
    TAG_FACTORS,
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_HOST,
    TAG_KEY,
    TAG_METRIC,
    TAG_METRIC_MODE,
    TAG_PID,
    TAG_PID_START,
    TAG_RESTART_REASON,
    TAG_RESTARTS,
    TAG_ROLE,
    TAG_SEED,
    TAG_SWEEP,
    TAG_WORKER,
    TRIAL,
)

HEARTBEAT_STALE_S = 600.0
"""A RUNNING parent whose heartbeat is older than this is considered dead (any host)."""

_T = TypeVar("_T")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI, unwritable path)."""


def default_tracking_uri(cwd: Optional[str] = None) -> str:
    """``sqlite:///<absolute cwd>/mlflow.db``."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


SERVER_SCHEMES = ("http", "https")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("file", "databricks", "databricks-uc", "uc")


def check_uri(uri: Optional[str]) -> str:
    """The normalised URI, or TrackingError with one line naming the problem.

    Cheap and side-effect free (no MLflow import, nothing created): a known scheme, an
    existing folder for a sqlite file, a TCP connection to an HTTP server.
    """
    uri = normalize_uri(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    known = SERVER_SCHEMES + DB_SCHEMES + OTHER_SCHEMES
    if scheme not in known:
        raise TrackingError(f"tracking URI {uri!r}: unknown scheme '{parts.scheme}'{did_you_mean(scheme, list(known))} "
                            f"(expected sqlite:///PATH, http(s)://HOST:PORT of an MLflow server, or "
                            f"{', '.join(DB_SCHEMES[1:])}://...)")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:////"):
            raise TrackingError(f"tracking URI {uri!r}: expected sqlite:///ABSOLUTE/PATH.db")
        path = Path(uri[len("sqlite:///"):])
        if path.is_dir():
            raise TrackingError(f"tracking URI {uri!r}: {path} is a folder, expected a database file")
        if not path.parent.is_dir():
            raise TrackingError(f"tracking URI {uri!r}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise TrackingError(f"tracking URI {uri!r}: {path if path.exists() else path.parent} is not writable")
    elif scheme in SERVER_SCHEMES:
        if not parts.hostname:
            raise TrackingError(f"tracking URI {uri!r}: no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise TrackingError(f"tracking URI {uri!r}: bad port") from None
        try:
            with socket.create_connection((parts.hostname, port), timeout=5):
                pass
        except OSError as e:
            raise TrackingError(f"tracking URI {uri!r} is not reachable: no MLflow server answers at "
                                f"{parts.hostname}:{port} ({e.strerror or e})") from None
    return uri


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store across processes (its schema migration races).

    An exclusive ``flock`` on the folder holding the database (no lock file is created);
    a no-op for other stores. Held only while the client (and so the schema) is created.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    fd = os.open(Path(uri[len("sqlite:///"):]).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def normalize_uri(uri: Optional[str]) -> str:
    """Make a sqlite URI absolute (trial processes and servers run in other directories)."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        return f"sqlite:///{Path(rel).resolve()}"
    return uri


def _retry_locked(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Retry a store call while another process holds the sqlite write lock."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        delay = 0.05
        deadline = time.monotonic() + 120.0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # MlflowException wraps sqlalchemy OperationalError
                if "locked" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return wrapper


def git_commit() -> str:
    """The commit of the installed source tree (``-dirty`` if modified), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """All MLflow writes and run-side lookups of a sweep driver."""

    def __init__(self, tracking_uri: Optional[str] = None):
        self.uri = normalize_uri(tracking_uri)
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The MlflowClient, made on first use (making one creates a sqlite store's file)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            try:
                with _store_creation_lock(self.uri):
                    self._client = MlflowClient(tracking_uri=self.uri)
            except Exception as e:
                raise TrackingError(f"tracking URI {self.uri!r} is not usable: {_one_line(e)}") from None
        return self._client

    def store_exists(self) -> bool:
        """False for a sqlite store whose file does not exist yet (servers: True)."""
        return not self.uri.startswith("sqlite:///") or Path(self.uri[len("sqlite:///"):]).exists()

    # ----------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise TrackingError unless the store answers (creates nothing on a server; creates
        and migrates a new sqlite file)."""
        check_uri(self.uri)
        client = self.client
        # Fail fast here (a server that answers with errors is not retried for minutes); the
        # sweep's own writes keep MLflow's retries, so a server restart is only a pause.
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
        saved = {k: os.environ.get(k) for k in quick}
        os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
        try:
            client.search_experiments(max_results=1)
        except Exception as e:
            why = _one_line(e).split(" Response body:")[0]
            raise TrackingError(f"tracking URI {self.uri!r} does not answer as an MLflow store: {why}") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)

    # ------------------------------------------------------------- experiments
    @_retry_locked
    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        """The id of experiment ``name``; created if missing (safe against a creation race)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(f"experiment '{name}' is deleted in {self.uri}; restore it "
                                    f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or rename the sweep")
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(name)
        except Exception:
            exp = self.client.get_experiment_by_name(name)  # another driver created it first
            if exp is None:
                raise
            return exp.experiment_id

    # ------------------------------------------------------------------ parent
    @_retry_locked
    def start_parent(self, experiment_id: str, sweep: Sweep, command: str) -> str:
        """Create the sweep's parent run for this invocation; returns its run id."""
        c = sweep.config
        tags = {
            TAG_ROLE: PARENT,
            TAG_SWEEP: c.name,
            TAG_FACTORS: json.dumps(sweep.factor_keys),
            TAG_BASELINES: json.dumps(list(c.baselines.keys())),
            TAG_METRIC: c.metric.name,
            TAG_METRIC_MODE: c.metric.mode,
            TAG_COMMIT: git_commit(),
            TAG_HOST: socket.gethostname(),
            TAG_PID: str(os.getpid()),
            TAG_PID_START: str(_process_start(os.getpid()) or ""),
            TAG_HEARTBEAT: str(time.time()),
            "mlflow.note.content": c.description or c.name,
            "command": command[:5000],
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{c.name} sweep")
        rid = run.info.run_id
        params = {
            "sweep.name": c.name,
            "sweep.seeds": json.dumps(list(c.seeds)),
            "sweep.grid": json.dumps(c.grid),
            "sweep.baselines": json.dumps(c.baselines),
            "sweep.metric": c.metric.name,
            "sweep.metric_mode": c.metric.mode,
            "sweep.resources": json.dumps(to_dict(c.resources)),
            "sweep.trials": str(len(sweep.trials)),
        }
        self._log(rid, params=params)
        return rid

    def heartbeat(self, parent_id: str) -> None:
        self._log(parent_id, tags={TAG_HEARTBEAT: str(time.time())})

    @_retry_locked
    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------ trials
    @_retry_locked
    def start_trial(self, experiment_id: str, parent_id: str, trial: Trial, sweep_name: str,
                    extra_tags: Optional[Dict[str, str]] = None) -> str:
        """Create the nested run of one trial, with its config as params; returns the run id."""
        tags = {
            "mlflow.parentRunId": parent_id,
            TAG_ROLE: TRIAL,
            TAG_SWEEP: sweep_name,
            TAG_KEY: trial.key,
            TAG_ARM: trial.arm,
            TAG_SEED: str(trial.seed),
            TAG_BASELINE: "true" if trial.baseline else "false",
            TAG_FACTORS: json.dumps(trial.factors),
            **(extra_tags or {}),
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{trial.arm} seed={trial.seed}")
        rid = run.info.run_id
        params = {k: _param(v) for k, v in flatten(to_dict(trial.config)).items()}
        self._log(rid, params=params)
        return rid

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int) -> None:
        """Log many metrics at one step in one call."""
        from mlflow.entities import Metric

        ts = _now_ms()
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        self._batch(run_id, metrics=batch)

    def log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        self._log(run_id, params=params)

    def set_tags(self, run_id: str, tags: Dict[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def end_trial(self, run_id: str, status: str = "FINISHED", error: Optional[str] = None,
                  failure: Optional[str] = None, tags: Optional[Dict[str, Any]] = None) -> None:
        """Close a trial run; a failed one carries its reason in tags."""
        extra = dict(tags or {})
        if error is not None:
            extra[TAG_ERROR] = _one_line(error)[:4900]
        if failure is not None:
            extra[TAG_FAILURE] = failure
        if extra:
            self._log(run_id, tags=extra)
        self.end_run(run_id, status)

    @_retry_locked
    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    # ----------------------------------------------------------------- lookups
    @_retry_locked
    def search(self, experiment_id: str, filter_string: str = "") -> List[Any]:
        """All runs of an experiment matching a filter (every page)."""
        out: List[Any] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string,
                                           max_results=5000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def finished_runs_by_key(self, experiment_id: str) -> Dict[str, Any]:
        """trial_key -> the latest FINISHED trial run, over every invocation of the sweep."""
        runs = self.search(experiment_id, f"tags.`{TAG_ROLE}` = '{TRIAL}' and attributes.status = 'FINISHED'")
        out: Dict[str, Any] = {}
        for r in sorted(runs, key=lambda r: r.info.end_time or 0):
            if TAG_KEY in r.data.tags:
                out[r.data.tags[TAG_KEY]] = r
        return out

    def finished_keys(self, experiment_id: str) -> Dict[str, str]:
        """trial_key -> run id of its latest FINISHED trial run."""
        return {k: r.info.run_id for k, r in self.finished_runs_by_key(experiment_id).items()}

    def running_elsewhere(self, experiment_id: str) -> Dict[str, str]:
        """trial_key -> run id of trials RUNNING under another live driver."""
        live_parents = {r.info.run_id for r in self._running(experiment_id, PARENT) if not self._is_dead(r)}
        return {
            r.data.tags[TAG_KEY]: r.info.run_id
            for r in self._running(experiment_id, TRIAL)
            if r.data.tags.get("mlflow.parentRunId") in live_parents and TAG_KEY in r.data.tags
        }

    def close_stale(self, experiment_id: str) -> List[str]:
        """Close runs left RUNNING by a driver that died: parents and their trials -> FAILED."""
        parents = self._running(experiment_id, PARENT)
        dead = {r.info.run_id for r in parents if self._is_dead(r)}
        all_parents_running = {r.info.run_id for r in parents}
        closed: List[str] = []
        for r in self._running(experiment_id, TRIAL):
            parent = r.data.tags.get("mlflow.parentRunId")
            if parent in dead or parent not in all_parents_running:
                self.end_trial(r.info.run_id, "FAILED", error="the sweep driver stopped before this trial ended",
                               failure="driver_lost")
                closed.append(r.info.run_id)
        for rid in dead:
            self.set_tags(rid, {TAG_ERROR: "the sweep driver stopped before the sweep ended", TAG_FAILURE: "driver_lost"})
            self.end_run(rid, "FAILED")
            closed.append(rid)
        return closed

    def _running(self, experiment_id: str, role: str) -> List[Any]:
        return self.search(experiment_id, f"tags.`{TAG_ROLE}` = '{role}' and attributes.status = 'RUNNING'")

    @staticmethod
    def _is_dead(parent: Any) -> bool:
        tags = parent.data.tags
        try:
            beat = float(tags.get(TAG_HEARTBEAT, "0"))
        except ValueError:
            beat = 0.0
        if time.time() - beat > HEARTBEAT_STALE_S:
            return True
        if tags.get(TAG_HOST) != socket.gethostname():
            return False  # another machine: only the heartbeat can tell
        try:
            pid = int(tags.get(TAG_PID, "-1"))
        except ValueError:
            return True
        start = _process_start(pid)
        if start is None:
            return True
        recorded = tags.get(TAG_PID_START, "")
        return bool(recorded) and abs(float(recorded) - start) > 1.0  # pid reused by another process

    # ---------------------------------------------------------------- writes
    def _log(self, run_id: str, params: Optional[Dict[str, Any]] = None, tags: Optional[Dict[str, Any]] = None) -> None:
        from mlflow.entities import Param, RunTag

        p = [Param(k, _param(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(p), 1), 100):  # log_batch takes at most 100 params a call
            self._batch(run_id, params=p[i:i + 100], tags=t if i == 0 else [])

    @_retry_locked
    def _batch(self, run_id: str, metrics: Iterable[Any] = (), params: Iterable[Any] = (), tags: Iterable[Any] = ()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        if metrics or params or tags:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)[:6000]


def _one_line(e: Any) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines and len(lines[0]) < 8 else lines[0] if lines else type(e).__name__).strip()

"""MLflow on the run side: experiments, the parent run, nested trial runs, claims, lookups.

Layout: experiment = sweep name; one parent run per invocation of ``gmlp_ablate.run``; one
nested child run per trial (tag ``mlflow.parentRunId``), with the whole resolved trial config
as dotted params and the tags of :mod:`gmlp_ablate.names`. All writes go through one
``MlflowClient`` in the driver (batched with ``log_batch``); "database is locked" from another
process on the same sqlite file is retried, and the first creation of a sqlite store is
serialised across processes by an ``flock`` on the store's folder. A new sqlite store starts
as a copy of an empty one this MLflow made and migrated before (:func:`_store_template`,
cached per MLflow version), so MLflow opens it instead of running its schema migrations.

URIs are checked in stages: :func:`check_uri` (no MLflow import, nothing created: scheme,
sqlite folder, that an existing sqlite file is an MLflow store, a TCP connect to a server),
then :meth:`Tracker.check` (writability, then a real request). A dry run reads a sqlite store
read-only (:func:`finished_keys_readonly`) and never opens it through MLflow, which would
migrate it.

This module is MLflow I/O only: what a run's tags mean for the driver that wrote them is
:mod:`gmlp_ablate.liveness`; who runs which trial is :mod:`gmlp_ablate.claims`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar
from urllib.parse import urlsplit

from gmlp_ablate.names import (
    PARENT,
    STAGE_FINAL,
    TAG_ARM,
    TAG_BASELINE,
    TAG_BASELINES,
    TAG_COMMAND,
    TAG_COMMIT,
    TAG_ERROR,
    TAG_FACTORS,
    TAG_FAILURE,
    TAG_KEY,
    TAG_METRIC,
    TAG_METRIC_MODE,
    TAG_NOTE,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_SEED,
    TAG_STAGE,
    TAG_SWEEP,
    TRIAL,
    default_cache_dir,
)
from gmlp_ablate.schema import did_you_mean
from gmlp_ablate.trial import flatten, to_dict

_T = TypeVar("_T")
LOCKED_RETRY_S = 120.0
"""How long a write waits for another process's sqlite write lock."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI, unwritable path)."""


def default_tracking_uri(cwd: Optional[str] = None) -> str:
    """``sqlite:///<absolute cwd>/mlflow.db``."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


SERVER_SCHEMES = ("http", "https")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("file", "databricks", "databricks-uc", "uc")
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _sqlite_tables(path: Path) -> List[str]:
    """The tables of an existing sqlite file, opened read-only (creates and changes nothing)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    finally:
        con.close()


def check_uri(uri: Optional[str]) -> str:
    """The normalised URI, or TrackingError with one line naming the problem.

    Cheap and side-effect free (no MLflow import, nothing created): a known scheme, an
    existing folder for a sqlite file, an existing non-empty sqlite file that is an MLflow
    store (never someone else's database), a TCP connection to an HTTP server.
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
        if path.exists() and path.stat().st_size > 0:
            try:
                tables = set(_sqlite_tables(path))
            except sqlite3.Error as e:
                raise TrackingError(f"tracking URI {uri!r}: {path} is not an MLflow store ({e})") from None
            if tables and not _MLFLOW_TABLES <= tables:
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                raise TrackingError(f"tracking URI {uri!r}: {path} is a database that is not an MLflow store "
                                    f"(tables: {shown}); MLflow would add its tables to it")
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


def check_writable(uri: str) -> None:
    """TrackingError unless a sqlite store can be written (its file, or a new file in its folder).

    An actual attempt (``os.access`` says yes to root even on a read-only mount); a probe
    file is removed at once. Other stores: nothing to check here.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
        else:
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".gmlp_ablate_probe_")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        what = path if path.exists() else path.parent
        raise TrackingError(f"tracking URI {uri!r}: {what} is not writable ({e.strerror or e})") from None


def finished_keys_readonly(uri: str, experiment: str) -> Optional[Dict[str, str]]:
    """trial_key -> run id of the FINISHED trial runs of ``experiment``, read without writing.

    A sqlite store is read with a read-only connection (MLflow would migrate or seed it); a
    server is asked (reads change nothing there). None when this cannot be known without
    writing (another database, a missing or foreign file).
    """
    path = sqlite_path(uri)
    if path is not None:
        if not path.exists() or path.stat().st_size == 0:
            return {}
        try:
            if not _MLFLOW_TABLES <= set(_sqlite_tables(path)):
                return None
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                rows = con.execute(
                    "SELECT k.value, r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
                    "JOIN tags o ON o.run_uuid = r.run_uuid AND o.key = ? AND o.value = ? "
                    "WHERE e.name = ? AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active' ORDER BY r.end_time",
                    (TAG_KEY, TAG_ROLE, TRIAL, experiment)).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return {k: rid for k, rid in rows}
    if urlsplit(uri).scheme in SERVER_SCHEMES:
        tracker = Tracker(uri)
        eid = tracker.experiment_id(experiment, create=False)
        return tracker.finished_keys(eid) if eid else {}
    return None


STORE_TEMPLATE = "mlflow-{version}-empty.db"
"""The empty, migrated sqlite store a new one is copied from, in the project's cache folder
(:func:`gmlp_ablate.names.default_cache_dir`), one per MLflow version."""


def store_template_path(cache_dir: Optional[str] = None) -> Path:
    """Where the empty store of the installed MLflow is kept (``cache_dir``: as
    :func:`gmlp_ablate.names.default_cache_dir` reads it)."""
    import mlflow

    return Path(default_cache_dir(cache_dir)) / STORE_TEMPLATE.format(version=mlflow.__version__)


def _store_template() -> Optional[Path]:
    """The cached empty store of this MLflow version, made first if it is missing or not at
    the schema this MLflow opens (by MLflow itself: its own creation and schema migration of
    a new file, then its default experiment removed, which every store makes for itself on
    opening, with its own artifact location). None where it cannot be made (an unwritable
    cache folder, an MLflow without the revision lookup used here): stores are then created
    by MLflow directly, as before."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision  # what MLflow checks on opening

        head = _get_latest_schema_revision()
    except Exception:
        return None
    path = store_template_path()
    if _template_revision(path) == head:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".store-template-") as tmp:
            made = Path(tmp) / "empty.db"
            from mlflow.tracking import MlflowClient

            uri = f"sqlite:///{made}"
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            with contextlib.closing(sqlite3.connect(made)) as db, db:
                db.execute("DELETE FROM experiment_tags")
                db.execute("DELETE FROM experiments")
            os.replace(made, path)  # atomic: another process may be making the same file
    except (OSError, sqlite3.Error):
        return None
    return path if _template_revision(path) == head else None


def _template_revision(path: Path) -> Optional[str]:
    """The schema revision of a cached empty store; None if it is missing, unreadable, or
    not empty."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
            (runs,) = db.execute("SELECT COUNT(*) FROM runs").fetchone()
            (experiments,) = db.execute("SELECT COUNT(*) FROM experiments").fetchone()
    except (sqlite3.Error, TypeError, ValueError):
        return None
    return str(revision) if runs == 0 and experiments == 0 else None


def _create_from_template(path: Path) -> None:
    """Start a new sqlite store as a copy of the cached empty one: MLflow then opens an
    existing store at its current schema, instead of creating the file and running its
    schema migrations (about 0.6 s of CPU, on the cores Ray is starting on). The copy is
    written beside the store and renamed into place; nothing is copied where there is no
    template, and MLflow creates the store as before."""
    import secrets
    import shutil

    template = _store_template()
    if template is None:
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    try:  # created as MLflow would create the file (mode 0666 less the umask)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out, \
                open(template, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store across processes (its schema migration races).

    An exclusive ``flock`` on the folder holding the database (no lock file is created);
    a no-op for other stores. Held only while the client (and so the schema) is created.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    fd = os.open(path.parent, os.O_RDONLY)
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
        deadline = time.monotonic() + LOCKED_RETRY_S
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # MlflowException wraps sqlalchemy OperationalError
                if "database is locked" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return wrapper


def git_commit() -> str:
    """The code version recorded on every run (see :func:`gmlp_ablate.trial.code_version`)."""
    from gmlp_ablate.trial import code_version

    return code_version()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _already_exists(e: Exception) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(e, "error_code", "")) or "already exists" in str(e).lower()


def _not_found(e: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower()


class Tracker:
    """All MLflow reads and writes of a sweep driver."""

    def __init__(self, tracking_uri: Optional[str] = None):
        self.uri = normalize_uri(tracking_uri)
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The MlflowClient, made on first use (making one creates a sqlite store's file)."""
        if self._client is None:
            import logging

            from mlflow.tracking import MlflowClient

            # A failing store is reported by the driver in one line; MLflow's own error log of
            # it is a traceback per failed call.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

            try:
                with _store_creation_lock(self.uri):
                    path = sqlite_path(self.uri)
                    if path is not None and not path.exists():
                        _create_from_template(path)
                    self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            except Exception as e:
                raise TrackingError(f"tracking URI {self.uri!r} is not usable: {one_line(e)}") from None
        return self._client

    # ----------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise TrackingError unless the store answers (creates nothing on a server; creates
        and migrates a new sqlite file)."""
        check_uri(self.uri)
        check_writable(self.uri)
        client = self.client
        # Fail fast here (a server that answers with errors is not retried for minutes); the
        # sweep's own writes keep MLflow's retries, so a server restart is only a pause.
        # (MLflow reads them from the environment only, and a sqlite store makes no requests:
        # its check, in the store thread, leaves the environment alone.)
        http = self.uri.startswith(("http://", "https://"))
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"} if http else {}
        saved = {k: os.environ.get(k) for k in quick}
        os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
        try:
            client.search_experiments(max_results=1)
        except Exception as e:
            why = one_line(e).split(" Response body:")[0]
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

    # ------------------------------------------------------------------- runs
    @_retry_locked
    def start_parent(self, experiment_id: str, sweep: Any, command: str, tags: Optional[Dict[str, str]] = None) -> str:
        """Create the sweep's parent run for this invocation (with extra ``tags``, e.g. the
        driver's :func:`gmlp_ablate.liveness.identity`); returns its id."""
        c = sweep.config
        all_tags = {
            TAG_ROLE: PARENT,
            TAG_SWEEP: c.name,
            TAG_FACTORS: json.dumps(sweep.factor_keys),
            TAG_BASELINES: json.dumps(list(c.baselines.keys())),
            TAG_METRIC: c.metric.name,
            TAG_METRIC_MODE: c.metric.mode,
            TAG_NOTE: c.description or c.name,
            TAG_COMMAND: command[:5000],
            TAG_COMMIT: git_commit(),
            **(tags or {}),
        }
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=f"{c.name} sweep")
        rid = run.info.run_id
        params = sweep.parent_params()  # every sweep.* param, one encoding each
        self._log(rid, params=params)
        return rid

    @_retry_locked
    def start_trial(self, experiment_id: str, parent_id: str, trial: Any, sweep_name: str,
                    extra_tags: Optional[Dict[str, str]] = None) -> str:
        """Create the nested run of one trial, with its config as params; returns the run id."""
        tags = {
            TAG_PARENT_RUN: parent_id,
            TAG_ROLE: TRIAL,
            TAG_SWEEP: sweep_name,
            TAG_KEY: trial.key,
            TAG_ARM: trial.arm,
            TAG_SEED: str(trial.seed),
            TAG_BASELINE: "true" if trial.baseline else "false",
            TAG_FACTORS: json.dumps(trial.factors),
            TAG_STAGE: getattr(trial, "stage", STAGE_FINAL),
            **(extra_tags or {}),
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{trial.arm} seed={trial.seed}")
        rid = run.info.run_id
        params = {k: _param(v) for k, v in flatten(to_dict(trial.config)).items()}
        self._log(rid, params=params)
        return rid

    @_retry_locked
    def reopen_trial(self, run_id: str, parent_id: str, tags: Dict[str, str]) -> int:
        """Continue a trial run an earlier invocation left unfinished: RUNNING again, nested
        under ``parent_id``, its failure tags removed; returns the last step it logged."""
        run = self.client.get_run(run_id)
        for key in (TAG_FAILURE, TAG_ERROR):
            if key in run.data.tags:
                self.client.delete_tag(run_id, key)
        self._log(run_id, tags={**tags, TAG_PARENT_RUN: parent_id})
        self.client.update_run(run_id, status="RUNNING")
        last = -1
        for key in run.data.metrics:
            steps = [m.step for m in self.client.get_metric_history(run_id, key)]
            last = max([last, *steps])
        return last

    @_retry_locked
    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int,
                    tags: Optional[Dict[str, Any]] = None) -> None:
        """Log many metrics at one step (and ``tags``) in one write."""
        from mlflow.entities import Metric, RunTag

        ts = _now_ms()
        self._batch(run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()],
                    tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def set_tags(self, run_id: str, tags: Dict[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def end_trial(self, run_id: str, status: str = "FINISHED", error: Optional[str] = None,
                  failure: Optional[str] = None, metrics: Optional[Dict[str, float]] = None, step: int = 0,
                  tags: Optional[Dict[str, Any]] = None) -> None:
        """Close a trial run, with its last ``metrics`` (at ``step``) and ``tags`` in the same
        write; a failed one carries its reason in tags."""
        extra: Dict[str, Any] = dict(tags or {})
        if error is not None:
            extra[TAG_ERROR] = one_line(error)[:4900]
        if failure is not None:
            extra[TAG_FAILURE] = failure
        if metrics or extra:
            self.log_metrics(run_id, metrics or {}, step, tags=extra)
        self.end_run(run_id, status)

    # ----------------------------------------------------------------- lookups
    @_retry_locked
    def search(self, experiment_id: str, filter_string: str = "") -> List[Any]:
        """All runs of an experiment matching a filter (MLflow pages through them)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)  # mlflow.search_runs reads the process's tracking URI
        return mlflow.search_runs([experiment_id], filter_string=filter_string, output_format="list")

    @_retry_locked
    def get_run(self, run_id: str) -> Optional[Any]:
        try:
            return self.client.get_run(run_id)
        except Exception as e:
            if _not_found(e):
                return None
            raise

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

    def trial_runs(self, experiment_id: str, key: str) -> List[Any]:
        """Every trial run of one trial key, oldest first."""
        runs = self.search(experiment_id, f"tags.`{TAG_ROLE}` = '{TRIAL}' and tags.`{TAG_KEY}` = '{key}'")
        return sorted(runs, key=lambda r: r.info.start_time or 0)

    def running(self, experiment_id: str, role: str) -> List[Any]:
        """RUNNING runs of one role (PARENT or TRIAL)."""
        return self.search(experiment_id, f"tags.`{TAG_ROLE}` = '{role}' and attributes.status = 'RUNNING'")

    # ------------------------------------------------------------------ claims
    @_retry_locked
    def create_unique(self, name: str, tags: Dict[str, str]) -> bool:
        """Create the registered model ``name`` with ``tags``; False if the name exists.

        The store enforces unique registered-model names (a primary key in a database
        store, so also behind a server): of several processes creating one name, exactly one
        succeeds. See :mod:`gmlp_ablate.claims`.
        """
        try:
            self.client.create_registered_model(name, tags=tags)
            return True
        except Exception as e:
            if _already_exists(e):
                return False
            raise

    @_retry_locked
    def unique_tags(self, name: str) -> Optional[Dict[str, str]]:
        """The tags of registered model ``name``, or None if it does not exist."""
        try:
            return dict(self.client.get_registered_model(name).tags)
        except Exception as e:
            if _not_found(e):
                return None
            raise

    @_retry_locked
    def delete_unique(self, name: str) -> None:
        try:
            self.client.delete_registered_model(name)
        except Exception as e:
            if not _not_found(e):
                raise

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


def one_line(e: Any) -> str:
    """The line of an error's text that says what went wrong (a traceback's last line)."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    last_first = len(lines[0]) < 8 or lines[0].startswith("Traceback")
    return (lines[-1] if last_first else lines[0]).strip()


def _chain_text(e: BaseException) -> str:
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def store_failure(e: BaseException, uri: str) -> Optional[str]:
    """One line when ``e`` (or what it wraps) says the tracking store itself failed, else None."""
    text = _chain_text(e)
    low = text.lower()
    if urlsplit(uri).scheme in SERVER_SCHEMES and any(
            s in text for s in ("Max retries exceeded", "ConnectionError", "Connection refused", "Read timed out")):
        why = "connection refused" if "Connection refused" in text else "timed out" if "timed out" in low else \
            "no answer"
        return f"the tracking server {uri} stopped answering ({why})"
    path = sqlite_path(uri)
    if path is not None and any(s in low for s in ("readonly database", "unable to open database file",
                                                   "disk i/o error", "database or disk is full")):
        why = next(s for s in ("readonly database", "unable to open database file", "disk i/o error",
                               "database or disk is full") if s in low)
        return f"the tracking store {path} can no longer be written ({why})"
    return None

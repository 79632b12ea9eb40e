"""Shared helpers for the tests that start real processes: sweep drivers, a Ray cluster, an
MLflow server. Every process a test starts carries an environment marker, so teardown can
find and stop exactly those processes (and everything they spawned, e.g. Ray's own daemons
and workers) without touching anyone else's Ray or MLflow."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import psutil
import pytest
import yaml

VENV_BIN = Path(sys.executable).parent
MARK = "GMLP_ABLATE_TEST_MARK"
"""Environment variable set on every process a test starts; children inherit it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def marked(mark: str) -> List[psutil.Process]:
    """Live processes whose environment carries ``MARK=mark``."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def kill_marked(mark: str, grace: float = 1.0) -> List[int]:
    """SIGTERM then SIGKILL every process carrying ``mark``; returns the pids found at first."""
    procs = marked(mark)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in procs]


def wait_for_server(url: str, timeout: float = 120) -> None:
    """Wait until the MLflow server at ``url`` answers ``/health``."""
    import requests

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, timeout, f"the MLflow server at {url} to answer /health", every=0.5)


def write_yaml(path: Path, data: Dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Processes:
    """Start marked subprocesses (drivers, servers) and clean up all they leave behind."""

    def __init__(self, root: Path):
        self.mark = uuid.uuid4().hex
        self.root = root
        # Ray's sockets live under its temp dir: keep the path short (AF_UNIX limit).
        self.ray_tmp = tempfile.mkdtemp(prefix="gat", dir="/tmp")
        self.procs: List[subprocess.Popen] = []

    @property
    def tmpdir(self) -> Path:
        """``TMPDIR`` of every process started here (trial scratch folders land in it)."""
        d = self.root / "tmpdir"
        d.mkdir(exist_ok=True)
        return d

    def env(self, **extra: str) -> Dict[str, str]:
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
            env.pop(k, None)
        env.update({MARK: self.mark, "RAY_TMPDIR": self.ray_tmp, "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def start(self, cmd: List[str], log: Path, cwd: Optional[Path] = None, **env: str) -> subprocess.Popen:
        p = subprocess.Popen(cmd, cwd=str(cwd or self.root), env=self.env(**env), stdout=open(log, "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def driver(self, sweep: str, *args: str, log: Path, cwd: Optional[Path] = None, **env: str) -> subprocess.Popen:
        """``python -m gmlp_ablate.run SWEEP ARGS`` in the background, output to ``log``."""
        return self.start([sys.executable, "-m", "gmlp_ablate.run", sweep, *args], log, cwd, **env)

    def run_driver(self, sweep: str, *args: str, log: Path, timeout: float = 240, **env: str) -> int:
        p = self.driver(sweep, *args, log=log, **env)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"driver did not finish in {timeout}s:\n{log.read_text()[-3000:]}")

    def cleanup(self) -> List[int]:
        left = kill_marked(self.mark)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return left


@pytest.fixture
def procs(tmp_path: Path):
    """A :class:`Processes` for this test; teardown stops everything it started."""
    p = Processes(tmp_path)
    yield p
    p.cleanup()


def mlflow_runs(uri: str, experiment: str) -> Dict[str, List[Any]]:
    """{'parents': [...], 'trials': [...]} of an experiment (MlflowClient; after the drivers
    have created the store, so the reader never races the schema creation)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {"parents": [], "trials": [], "client": client}
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return {
        "parents": [r for r in runs if r.data.tags.get("gmlp_ablate.role") == "parent"],
        "trials": [r for r in runs if r.data.tags.get("gmlp_ablate.role") == "trial"],
        "client": client,
    }


def history_steps(client: Any, run_id: str, key: str) -> List[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def assert_clean_curves(client: Any, run: Any) -> None:
    """Every metric of a run: each step logged once, steps strictly increasing."""
    for key in run.data.metrics:
        steps = history_steps(client, run.info.run_id, key)
        assert steps == sorted(set(steps)), f"{run.data.tags.get('arm')} {key}: steps {steps}"


def signal_group(p: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group of ``p`` (what a terminal's Ctrl-C does)."""
    os.killpg(p.pid, sig)


__all__ = ["VENV_BIN", "free_port", "wait_for", "marked", "kill_marked", "write_yaml", "Processes", "mlflow_runs",
           "history_steps", "assert_clean_curves", "signal_group"]

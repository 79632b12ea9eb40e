"""The tracking store fails mid-sweep: one line, in seconds once MLflow's own retries are
spent. A real ``mlflow server`` on 127.0.0.1 that is killed (the same command against the
restarted server finishes the sweep, continuing the trial from its checkpoint), and a sqlite
store whose folder becomes read-only; a real local Ray."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import VENV_BIN, Processes, free_port, history_steps, mlflow_runs, wait_for, wait_for_server, write_yaml

pytestmark = pytest.mark.integration

SWEEP = {
    "name": "outage",
    "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
             "model": {"dim": 16, "depth": 1},
             "train": {"steps": 6000, "batch_size": 8, "eval_every": 500, "log_every": 100, "warmup_steps": 2}},
    "grid": {"model.sgu_split": [True]},
    "seeds": [0],
}


def _server(tmp: Path, port: int) -> Processes:
    home = tmp / f"server_{time.monotonic_ns()}"
    home.mkdir()
    srv = Processes(home)
    srv.start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
               "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"], home / "server.log")

    wait_for_server(f"http://127.0.0.1:{port}")
    return srv


def test_tracking_server_outage_is_one_line_and_the_rerun_finishes(tmp_path, procs):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = write_yaml(tmp_path / "s.yaml", SWEEP)
    args = ["--tracking-uri", url, "--storage", str(tmp_path / "results"), "--num-cpus", "1"]
    server = _server(tmp_path, port)
    log = tmp_path / "run1.log"
    try:
        # MLflow's retries shortened (default: about 4 minutes of back-off per request)
        p = procs.driver(path, *args, log=log, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                         MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
        wait_for(lambda: _val_logged(url), 180, "an evaluation logged", every=0.5)
    finally:
        server.cleanup()  # the server dies (SIGTERM, then SIGKILL)
    t0 = time.monotonic()
    code = p.wait(timeout=120)
    took = time.monotonic() - t0
    out = log.read_text()
    errors = [ln for ln in out.splitlines() if ln.startswith(("error", "warning", "Traceback"))]
    assert code == 1, out
    assert errors == [f"error: the tracking server {url} stopped answering (connection refused); the next run of "
                      "this sweep closes the runs left open"], out
    assert "Traceback" not in out and took < 60, (took, out)

    server = _server(tmp_path, port)  # back, on the same store
    try:
        log2 = tmp_path / "run2.log"
        code = procs.run_driver(path, *args, log=log2, timeout=400)
        out2 = log2.read_text()
        assert code == 0, out2
        assert "closed 2 run(s) left RUNNING" in out2 and "resumed from its checkpoint at step" in out2
        runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [_eid(url)]},
                             timeout=10).json()["runs"]
        trials = [r for r in runs if _tags(r).get("gmlp_ablate.role") == "trial"]
        assert len(trials) == 1 and trials[0]["info"]["status"] == "FINISHED", trials
        assert int(_tags(trials[0])["resumed_from_step"]) >= 500
        steps = _history(url, trials[0]["info"]["run_id"], "train/loss")
        assert steps == sorted(set(steps)) and steps[-1] == 6000, steps
    finally:
        server.cleanup()


def _tags(run):
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _eid(url: str) -> str:
    r = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "outage"}, timeout=5)
    return r.json()["experiment"]["experiment_id"]


def _history(url: str, run_id: str, key: str):
    r = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": key},
                     timeout=10)
    return [m["step"] for m in r.json().get("metrics", [])]


def _val_logged(url: str) -> bool:
    """Whether the sweep's trial run has logged an evaluation yet."""
    try:
        runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [_eid(url)]},
                             timeout=5).json().get("runs", [])
    except Exception:  # the experiment does not exist yet
        return False
    return any(_tags(r).get("gmlp_ablate.role") == "trial" and _history(url, r["info"]["run_id"], "val/loss")
               for r in runs)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def test_store_folder_turning_read_only_mid_sweep_is_one_line(tmp_path, procs):
    """The sqlite store's folder becomes read-only while the sweep runs (a read-only bind
    mount over it: sqlite can no longer create its journal there): one line naming the file,
    exit 1, and what was logged before is intact."""
    store = tmp_path / "store"
    store.mkdir()
    db = store / "mlflow.db"
    uri = f"sqlite:///{db}"
    path = write_yaml(tmp_path / "s.yaml", {**SWEEP, "name": "readonly"})
    log = tmp_path / "run.log"
    p = procs.driver(path, "--tracking-uri", uri, "--storage", str(tmp_path / "results"), "--num-cpus", "1", log=log)
    wait_for(lambda: ": started" in log.read_text() or p.poll() is not None, 180, "the trial to start")

    def evaluated():
        got = mlflow_runs(uri, "readonly")
        return got if got["trials"] and history_steps(got["client"], got["trials"][0].info.run_id, "val/loss") else None

    before = wait_for(evaluated, 180, "an evaluation logged", every=0.5)
    logged = history_steps(before["client"], before["trials"][0].info.run_id, "val/loss")
    bound = _mount("--bind", str(store), str(store))
    if bound.returncode != 0:
        p.kill()
        pytest.skip(f"cannot make a read-only mount here: {bound.stderr.strip()}")
    try:
        ro = _mount("-o", "remount,ro,bind", str(store))
        assert ro.returncode == 0, ro.stderr
        t0 = time.monotonic()
        code = p.wait(timeout=180)
        took = time.monotonic() - t0
    finally:
        subprocess.run(["umount", str(store)], capture_output=True)
    out = log.read_text()
    errors = [ln for ln in out.splitlines() if ln.startswith(("error", "warning", "Traceback"))]
    assert code == 1, out
    assert errors == [f"error: the tracking store {db} can no longer be written (unable to open database file); "
                      "the next run of this sweep closes the runs left open"], out
    assert "Traceback" not in out and took < 60, (took, out)
    after = mlflow_runs(uri, "readonly")
    assert history_steps(after["client"], after["trials"][0].info.run_id, "val/loss")[:len(logged)] == logged

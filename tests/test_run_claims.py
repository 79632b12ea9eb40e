"""Several drivers on one sweep and store: each trial key is claimed, and finished, once.

Real processes throughout: claim races between processes on a real sqlite store and a real
``mlflow server``, and whole sweep drivers (each with its own local Ray) started together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import requests

from conftest import VENV_BIN, Processes, free_port, history_steps, marked, mlflow_runs, wait_for, wait_for_server, write_yaml

pytestmark = pytest.mark.integration

KEYS = [f"{i:016x}" for i in range(6)]

# One contender: its own parent run (alive: this process), then, once the go file exists,
# claims every key it can; prints the keys it won.
_CONTENDER = """
import json, os, sys, time
from gmlp_ablate import liveness
from gmlp_ablate.claims import Claims
from gmlp_ablate.tracking import Tracker
uri, go, keys, eid = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
tr = Tracker(uri)
parent = tr.client.create_run(eid, tags={"gmlp_ablate.role": "parent", **liveness.identity()}).info.run_id
claims = Claims(tr, eid, parent)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
print(json.dumps([k for k in keys if claims.claim(k)]), flush=True)
"""


def _race(uri: str, tmp: Path, n: int, eid: str) -> List[List[str]]:
    go = tmp / f"go{n}"
    ps = [subprocess.Popen([sys.executable, "-c", _CONTENDER, uri, str(go), json.dumps(KEYS), eid],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for p in ps:  # every contender has its client and parent run: the race is on the claims only
        line = p.stdout.readline().strip()
        assert line == "ready", p.stderr.read()[-2000:]
    go.touch()
    outs = [p.communicate(timeout=120) for p in ps]
    assert [p.returncode for p in ps] == [0] * n, [e[-1500:] for _, e in outs]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def _assert_each_key_once(won: List[List[str]]) -> None:
    flat = [k for w in won for k in w]
    assert sorted(flat) == sorted(KEYS), won


def _experiment(uri: str, name: str) -> str:
    from gmlp_ablate.tracking import Tracker

    tr = Tracker(uri)
    tr.check()
    return tr.experiment_id(name)


def test_claims_race_on_sqlite_each_key_won_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    eid = _experiment(uri, "race")
    _assert_each_key_once(_race(uri, tmp_path, 3, eid))


def test_a_dead_drivers_claim_is_taken_over_by_exactly_one(tmp_path):
    from gmlp_ablate import liveness
    from gmlp_ablate.claims import Claims
    from gmlp_ablate.names import TAG_PID, TAG_PID_START
    from gmlp_ablate.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    eid = _experiment(uri, "takeover")
    tr = Tracker(uri)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = {**liveness.identity(), TAG_PID: str(gone.pid), TAG_PID_START: ""}
    dead_parent = tr.client.create_run(eid, tags={"gmlp_ablate.role": "parent", **dead}).info.run_id
    held = Claims(tr, eid, dead_parent)
    assert all(held.claim(k) for k in KEYS)
    won = _race(uri, tmp_path, 3, eid)
    _assert_each_key_once(won)
    assert tr.unique_tags(held.name(KEYS[0], 1)) is not None, "the winners hold generation 1"
    # the contenders have exited, so their claims are dead too: the next driver takes them over
    me = [Claims(tr, eid, tr.client.create_run(eid, tags=liveness.identity()).info.run_id) for _ in range(2)]
    assert all(me[0].claim(k) for k in KEYS) and me[0].held == {k: 2 for k in KEYS}
    assert not any(me[1].claim(k) for k in KEYS), "the claims of a live driver are respected"
    me[0].release_all()
    assert tr.client.search_registered_models() == [], "a release removes the dead generations too"


# --------------------------------------------------------------------------------------
# Whole drivers started at the same instant
# --------------------------------------------------------------------------------------

SWEEP = {
    "name": "shared",
    "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
             "model": {"dim": 16, "depth": 1},
             "train": {"steps": 60, "batch_size": 8, "eval_every": 20, "log_every": 10, "warmup_steps": 2}},
    "grid": {"model.sgu_split": [True, False], "train.lr": [1e-3, 2e-3, 3e-3]},
    "seeds": [0],
}


def _drivers_together(tmp: Path, procs: Processes, n: int, uri: str, staggered: bool = False) -> List[str]:
    """``n`` drivers of one sweep on one store; ``staggered``: each starts once the previous
    one has finished a trial (the others' trials still pending)."""
    data = json.loads(json.dumps(SWEEP))
    if staggered:  # long enough for the first driver to still have pending trials when the next starts
        data["base"]["train"].update(steps=3000, eval_every=1000, log_every=500)
    path = write_yaml(tmp / "shared.yaml", data)
    ps = []
    for i in range(n):  # each its own local Ray instance (own temp dir); one store
        if staggered and i:
            prev = tmp / f"run{i - 1}.log"
            wait_for(lambda: ": done " in prev.read_text() or ps[-1].poll() is not None, 240, "a finished trial")
        ray_tmp = Path(procs.ray_tmp) / str(i)
        ray_tmp.mkdir()
        ps.append(procs.driver(path, "--tracking-uri", uri, "--storage", str(tmp / "ray_results"), "--num-cpus", "1",
                               log=tmp / f"run{i}.log", RAY_TMPDIR=str(ray_tmp)))
    codes = [p.wait(timeout=400) for p in ps]
    logs = [(tmp / f"run{i}.log").read_text() for i in range(n)]
    assert codes == [0] * n, [lg[-3000:] for lg in logs]
    return logs


def _assert_each_key_finished_once(trials: List[Dict[str, Any]], key_of, status_of) -> None:
    keys = [key_of(r) for r in trials]
    assert len(keys) == 6 and len(set(keys)) == 6, f"one run per trial key, no wasted trial: {keys}"
    assert {status_of(r) for r in trials} == {"FINISHED"}


@pytest.mark.parametrize("n, staggered", [(2, False), (3, False), (2, True)])
def test_drivers_started_together_finish_each_key_exactly_once(tmp_path, procs, n, staggered):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logs = _drivers_together(tmp_path, procs, n, uri, staggered)
    got = mlflow_runs(uri, "shared")
    _assert_each_key_finished_once(got["trials"], lambda r: r.data.tags["trial_key"], lambda r: r.info.status)
    assert sorted(r.info.status for r in got["parents"]) == ["FINISHED"] * n
    steps, every = (3000, 500) if staggered else (60, 10)
    for r in got["trials"]:
        assert history_steps(got["client"], r.info.run_id, "train/loss") == list(range(every, steps + 1, every))
    assert sum(lg.count(": done ") for lg in logs) == 6 and all(": done " in lg for lg in logs), \
        "every driver ran trials"
    from gmlp_ablate.tracking import Tracker

    models = Tracker(uri).client.search_registered_models()
    assert [m.name for m in models] == [], "every claim was released"
    wait_for(lambda: not marked(procs.mark), 30, "the drivers' Ray processes to exit")


def test_drivers_started_together_on_an_mlflow_server(tmp_path, procs):
    port = free_port()
    server = Processes(tmp_path / "server_home")
    (tmp_path / "server_home").mkdir()
    server.start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                  "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url)
        _drivers_together(tmp_path, procs, 2, url)
        eid = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "shared"},
                           timeout=10).json()["experiment"]["experiment_id"]
        runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [eid], "max_results": 100},
                             timeout=10).json()["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
        trials = [(t["trial_key"], r["info"]["status"]) for t, r in zip(tags, runs) if t.get("gmlp_ablate.role") == "trial"]
        _assert_each_key_finished_once(trials, lambda r: r[0], lambda r: r[1])
        models = requests.get(f"{url}/api/2.0/mlflow/registered-models/search", timeout=10).json()
        assert models.get("registered_models", []) == [], "every claim was released"
    finally:
        server.cleanup()

"""Reliability of the sweep runner (docs/RELIABILITY.md), with real processes throughout:
driver subprocesses on a real local Ray (or a real `ray start` cluster), real sqlite stores
and a real `mlflow server`. Faults are injected from outside (SIGKILL of the driver or of a
trial's worker, found by the `worker` tag the driver writes; SIGINT/SIGTERM), never through
hooks in the product code."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil
import pytest
import requests

from conftest import (
    VENV_BIN,
    Processes,
    assert_clean_curves,
    free_port,
    history_steps,
    marked,
    mlflow_runs,
    signal_group,
    wait_for,
    wait_for_server,
    write_yaml,
)

pytestmark = pytest.mark.integration

MQAR = {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64}
SMALL = {"dim": 32, "depth": 2}


def _sweep(name: str, steps: int, **extra: Any) -> Dict[str, Any]:
    """A sweep of small mqar trials: ~4 ms a step on one core, evaluation every 250 steps."""
    data = {
        "name": name,
        "base": {"task": dict(MQAR), "model": dict(SMALL),
                 "train": {"steps": steps, "batch_size": 16, "eval_every": 250, "log_every": 50, "warmup_steps": 2}},
        "grid": {"train.lr": [1e-3]},
        "seeds": [0],
    }
    data.update(extra)
    return data


def _common(tmp: Path, uri: str) -> List[str]:
    return ["--tracking-uri", uri, "--storage", str(tmp / "ray_results"), "--num-cpus", "2"]


def _by_arm(runs: List[Any]) -> Dict[str, List[Any]]:
    out: Dict[str, List[Any]] = {}
    for r in runs:
        out.setdefault(r.data.tags["arm"], []).append(r)
    return out


def _wait_until_running(log: Path, p: subprocess.Popen) -> None:
    """Wait until the driver prints that trials run: its store exists and is migrated, so
    a reader opening it now does not race the schema creation."""
    wait_for(lambda: "running " in log.read_text() or p.poll() is not None, 180, "the driver to start its trials")
    assert p.poll() is None, log.read_text()


def _val_steps(client: Any, run: Any) -> List[int]:
    return history_steps(client, run.info.run_id, "val/loss")


def _histories(client: Any, run: Any) -> Dict[str, List[tuple]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def _no_leftovers(procs: Processes, timeout: float = 30) -> None:
    """Every process the test started (Ray's daemons and workers included) is gone."""
    wait_for(lambda: not marked(procs.mark), timeout, "the driver's Ray processes to exit")


# --------------------------------------------------------------------------------------
# 1. The driver is killed (SIGKILL) mid-sweep; the same command again finishes the sweep
# --------------------------------------------------------------------------------------


def test_driver_sigkill_then_rerun_continues_the_interrupted_trial(tmp_path, procs):
    """kill -9 of the driver mid-trial: its local Ray dies with it within seconds; the same
    command again closes what it left, skips the finished trial and continues the
    interrupted one from its checkpoint, in the same MLflow run, without a step logged twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_yaml(tmp_path / "kill9.yaml", _sweep("kill9", 400, grid={"train.steps": [400, 1500]}))
    log1 = tmp_path / "run1.log"
    p = procs.driver(path, *_common(tmp_path, uri), log=log1)
    _wait_until_running(log1, p)

    def short_done_long_running():
        got = mlflow_runs(uri, "kill9")
        arms = _by_arm(got["trials"])
        short, long_ = arms.get("steps=400", []), arms.get("steps=1500", [])
        if short and long_ and short[0].info.status == "FINISHED" and long_[0].info.status == "RUNNING":
            return got if _val_steps(got["client"], long_[0]) else None
        return None

    wait_for(short_done_long_running, 180, "one trial FINISHED and one RUNNING with a logged evaluation")
    os.kill(p.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    p.wait(timeout=10)
    _no_leftovers(procs, timeout=20)  # Ray's processes die with the driver (its reaper)
    gone_after = time.monotonic() - killed_at
    assert gone_after < 10, f"Ray's processes outlived the driver by {gone_after:.1f}s"

    before = mlflow_runs(uri, "kill9")
    client = before["client"]
    finished = {r.info.run_id: _histories(client, r) for r in before["trials"] if r.info.status == "FINISHED"}
    running = {r.info.run_id: _histories(client, r) for r in before["trials"] if r.info.status == "RUNNING"}
    assert len(finished) == 1 and len(running) == 1 and before["parents"][0].info.status == "RUNNING"
    ckpts = list((tmp_path / "ray_results" / "kill9" / "checkpoints").glob("*/checkpoint.pt"))
    assert len(ckpts) == 1, "the interrupted trial's checkpoint is where a later invocation finds it"

    log2 = tmp_path / "run2.log"
    code = procs.run_driver(path, *_common(tmp_path, uri), log=log2)
    out = log2.read_text()
    assert code == 0, out
    assert "closed 2 run(s) left RUNNING" in out and "skipping 1 trial(s) already FINISHED" in out
    assert "running 1 trial(s)" in out and "resumed from its checkpoint at step" in out

    after = mlflow_runs(uri, "kill9")
    client = after["client"]
    assert len(after["trials"]) == 2, "the interrupted trial continued in its run, no new run"
    by_id = {r.info.run_id: r for r in after["trials"]}
    for rid, hist in running.items():  # continued from its checkpoint in the same run
        r = by_id[rid]
        assert r.info.status == "FINISHED", r.data.tags
        assert int(r.data.tags["resumed_from_step"]) >= 250, r.data.tags
        assert r.data.tags["restarts"] == "1" and r.data.tags["restart_reason"].startswith("driver_lost")
        assert "failure" not in r.data.tags and "error" not in r.data.tags
        now = _histories(client, r)
        for key, points in hist.items():  # what the killed driver logged is kept as it was
            assert now[key][:len(points)] == points, key
        assert_clean_curves(client, r)
        assert _val_steps(client, r) == list(range(250, 1501, 250))
        assert history_steps(client, rid, "train/loss") == list(range(50, 1501, 50))
        assert r.data.tags["mlflow.parentRunId"] != before["parents"][0].info.run_id, "nested under the new parent"
    for rid, hist in finished.items():  # finished before the kill: unchanged
        assert by_id[rid].info.status == "FINISHED" and _histories(client, by_id[rid]) == hist
    assert list((tmp_path / "ray_results" / "kill9" / "checkpoints").glob("*/checkpoint.pt")) == [], \
        "a finished trial's checkpoint is removed"
    old_parent = next(r for r in after["parents"] if r.info.run_id == before["parents"][0].info.run_id)
    assert old_parent.info.status == "FAILED" and old_parent.data.tags["failure"] == "driver_lost"
    assert sorted(r.info.status for r in after["parents"]) == ["FAILED", "FINISHED"]


# --------------------------------------------------------------------------------------
# 2. Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM
# --------------------------------------------------------------------------------------


def test_ctrl_c_and_sigterm_mark_running_trials_killed(tmp_path, procs):
    """Two sweeps at once, each with one trial running and one pending: one gets SIGINT on its
    whole process group (a terminal's Ctrl-C), the other SIGTERM on the driver alone."""
    drivers = {}
    for how in ("ctrl_c", "sigterm"):
        d = tmp_path / how
        d.mkdir()
        uri = f"sqlite:///{d / 'mlflow.db'}"
        path = write_yaml(d / "s.yaml", _sweep(how, 2500, grid={"train.lr": [1e-3, 2e-3]}))
        ray_tmp = Path(procs.ray_tmp) / how  # each driver has its own local Ray instance
        ray_tmp.mkdir()
        p = procs.driver(path, *_common(d, uri), "--max-concurrent", "1", log=d / "run.log", RAY_TMPDIR=str(ray_tmp))
        drivers[how] = (p, uri, d / "run.log")
    for how, (p, uri, log) in drivers.items():
        _wait_until_running(log, p)

        def reporting():
            return [r for r in mlflow_runs(uri, how)["trials"] if r.data.tags.get("worker")]

        wait_for(reporting, 180, "a trial to report")
        if how == "ctrl_c":
            signal_group(p, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGTERM)
    for how, (p, uri, log) in drivers.items():
        code = p.wait(timeout=90)
        out = log.read_text()
        assert code == 130, out
        assert f"interrupted ({'SIGINT' if how == 'ctrl_c' else 'SIGTERM'})" in out, out
        got = mlflow_runs(uri, how)
        assert [r.info.status for r in got["parents"]] == ["KILLED"]
        assert len(got["trials"]) == 1, "the pending trial was never started"
        t = got["trials"][0]
        assert t.info.status == "KILLED" and t.data.tags["failure"] == "interrupted", t.data.tags
    _no_leftovers(procs)


# --------------------------------------------------------------------------------------
# 3. Trial faults: exception, non-finite loss, worker killed (retried from its checkpoint)
# --------------------------------------------------------------------------------------


def _kill_workers(uri: str, name: str, plan: Dict[str, int], stop: threading.Event, killed: Dict[str, List[int]]):
    """Kill the worker process of trial ``arm`` ``plan[arm]`` times: first once a result after
    its first evaluation was logged (so Tune has registered that evaluation's checkpoint,
    which it does between the two results), then as soon as each retry reports from a new
    process."""
    while not stop.is_set():
        try:
            got = mlflow_runs(uri, name)
        except Exception:
            time.sleep(0.3)
            continue
        for r in got["trials"]:
            arm = r.data.tags["arm"]
            done = killed.setdefault(arm, [])
            worker = r.data.tags.get("worker")
            if arm not in plan or len(done) >= plan[arm] or r.info.status != "RUNNING" or not worker:
                continue
            pid = int(worker.rsplit(":", 1)[1])
            if pid in done:
                continue
            if not done:
                val = _val_steps(got["client"], r)
                if not val or max(history_steps(got["client"], r.info.run_id, "train/loss")) <= val[0]:
                    continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            done.append(pid)
        time.sleep(0.3)


def test_trial_faults_are_recorded_and_a_killed_worker_resumes_from_its_checkpoint(tmp_path, procs):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to learn from. " * 200)
    data = _sweep("faults", 2000, grid={"train.lr": [1e-3, 2e-3]})
    data["baselines"] = {
        "plain": {"train": {"steps": 300}},
        "diverges": {"train": {"lr": 1.0e30, "warmup_steps": 0, "steps": 300}},
        "raises": {"task": {"name": "charlm", "corpus": str(corpus), "val_tokens": 256, "seq_len": 16,
                            "cache_dir": str(corpus / "cache")}, "train": {"steps": 300}},  # under a file
    }
    path = write_yaml(tmp_path / "faults.yaml", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "run.log"
    p = procs.driver(path, *_common(tmp_path, uri), "--retries", "1", log=log)
    _wait_until_running(log, p)
    stop, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_workers, args=(uri, "faults", {"lr=0.001": 1, "lr=0.002": 2}, stop, killed))
    killer.start()
    try:
        code = p.wait(timeout=300)
    finally:
        stop.set()
        killer.join()
    out = log.read_text()
    assert code == 1, out
    assert len(killed["lr=0.001"]) == 1 and len(killed["lr=0.002"]) == 2, killed

    got = mlflow_runs(uri, "faults")
    client = got["client"]
    arms = _by_arm(got["trials"])
    assert {a: len(rs) for a, rs in arms.items()} == {a: 1 for a in ("lr=0.001", "lr=0.002", "plain", "diverges", "raises")}
    run = {a: rs[0] for a, rs in arms.items()}

    resumed = run["lr=0.001"]  # killed once, retried from its checkpoint in the same run
    assert resumed.info.status == "FINISHED", resumed.data.tags
    assert resumed.data.tags["restarts"] == "1" and "worker_died" in resumed.data.tags["restart_reason"]
    assert int(resumed.data.tags["resumed_from_step"]) >= 250, "the retry resumed from a checkpoint"
    assert_clean_curves(client, resumed)
    assert history_steps(client, resumed.info.run_id, "train/loss") == list(range(50, 2001, 50))
    assert _val_steps(client, resumed) == list(range(250, 2001, 250))
    assert history_steps(client, resumed.info.run_id, "model/params") == [0]
    assert int(resumed.data.tags["worker"].rsplit(":", 1)[1]) not in killed["lr=0.001"]

    dead = run["lr=0.002"]  # killed on its first try and on its retry
    assert dead.info.status == "FAILED" and dead.data.tags["failure"] == "worker_died", dead.data.tags
    assert dead.data.tags["restarts"] == "1" and "died" in dead.data.tags["error"]
    assert_clean_curves(client, dead)

    nan = run["diverges"]  # deterministic: not retried
    assert nan.info.status == "FAILED" and nan.data.tags["failure"] == "nonfinite" and "restarts" not in nan.data.tags
    assert "non-finite training loss" in nan.data.tags["error"]

    raised = run["raises"]  # retried once, then recorded with its error
    assert raised.info.status == "FAILED" and raised.data.tags["failure"] == "exception"
    assert "NotADirectoryError" in raised.data.tags["error"] and raised.data.tags["restarts"] == "1"

    assert run["plain"].info.status == "FINISHED"
    assert [r.info.status for r in got["parents"]] == ["FAILED"]
    assert "3 trial(s) failed" in out


# --------------------------------------------------------------------------------------
# 4. Bad input: exit 2, one line on stderr, nothing created, fast
# --------------------------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "base": {"task": dict(MQAR), "model": {"dim": 16, "depth": 1},
             "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "warmup_steps": 2}},
    "grid": {"model.sgu_split": [True, False]},
    "seeds": [0],
    "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 2}}},
}

# (override, the key the error must name): every value check of the schema and the tasks.
# The full table of out-of-range values lives at unit level (tests/test_config.py); a few
# of them go through the CLI here, to show the one-line exit 2 before anything starts.
OUT_OF_RANGE = [("model.dim=0", "model.dim"), ("train.lr=nan", "train.lr"), ("resources.cpu=0", "resources.cpu"),
                ("model.attn_dim=6 model.attn_heads=4", "model.attn_heads"), ("seeds=[0,0]", "seeds")]
TEXT_TASK = [("task.name=charlm task.seq_len=1", "task.seq_len")]


def _bad_cases() -> Dict[str, Dict[str, Any]]:
    cases: Dict[str, Dict[str, Any]] = {}

    def add(cid: str, needle: str, args=(), sweep: Any = None, raw: str = None) -> None:
        cases[cid] = {"args": list(args), "needle": needle, "sweep": sweep, "raw": raw}

    add("malformed-yaml", "malformed YAML (line", raw="name: tiny\ngrid: {model.dim: [8, 16\n")
    add("not-a-mapping", "expected a mapping", raw="- just\n- a list\n")
    add("python-tag", "malformed YAML", raw="name: !!python/object/apply:os.system ['touch pwned']\n")
    add("unknown-top-key", "nmae: unknown key (did you mean 'name'?)", sweep={**TINY, "nmae": "x"})
    add("unknown-base-key", "base.model.dimm: unknown key (did you mean 'base.model.dim'?)",
        sweep={**TINY, "base": {**TINY["base"], "model": {"dimm": 8}}})
    add("unknown-override", "base.model.dimm: unknown key (did you mean 'base.model.dim'?)", ["model.dimm=8"])
    add("unknown-grid-key", "unknown key (did you mean 'model.depth'?)", ["grid.model.detph=[1,2]"])
    add("wrong-type-override", "model.dim: wrong type", ["model.dim=wide"])
    add("wrong-type-yaml", "model.sgu_split", sweep={**TINY, "base": {**TINY["base"], "model": {"sgu_split": "maybe"}}})
    add("empty-grid", "grid: empty", sweep={k: v for k, v in TINY.items() if k != "grid"})
    add("empty-axis", "grid.model.sgu_split: empty", ["grid.model.sgu_split=[]"])
    add("duplicate-arm", "duplicate arm name 'sgu_split=true'",
        sweep={**TINY, "baselines": {"sgu_split=true": {"model": {"dim": 8}}}})
    add("duplicate-values", "grid.model.drop_mode: duplicate values", ["grid.model.drop_mode=[sample, sample]"])
    add("same-config-twice", "resolve to the same trial config", ["grid.train.device=[cpu, auto]"])
    add("unknown-task", "task.name: Invalid value 'imagenet', expected one of ['charlm'", ["task.name=imagenet"])
    add("unknown-arch", "model.arch: Invalid value 'gmpl', expected one of ['gmlp'", ["model.arch=gmpl"])
    add("missing-corpus", "/no/such/corpus", ["task.name=charlm", "task.corpus=/no/such/corpus"])
    add("missing-sweep-file", "nope.yaml: no such file", sweep="missing")
    add("bad-flag-value", "--retries", ["--retries", "many"])
    add("negative-retries", "--retries: must be >= 0", ["--retries", "-1"])
    add("zero-concurrency", "--max-concurrent: must be >= 1", ["--max-concurrent", "0"])
    add("address-closed-port", "--address: no Ray cluster answers at 127.0.0.1:1", ["--address", "127.0.0.1:1"])
    add("address-garbage", "--address: expected HOST:PORT", ["--address", "nowhere"])
    add("address-ray-client", "--address: Ray Client (ray://)", ["--address", "ray://127.0.0.1:10001"])
    add("uri-closed-port", "is not reachable: no MLflow server answers at 127.0.0.1:1",
        ["--tracking-uri", "http://127.0.0.1:1"])
    add("uri-unknown-scheme", "unknown scheme 'foo'", ["--tracking-uri", "foo://bar"])
    add("uri-scheme-typo", "unknown scheme 'sqlit' (did you mean 'sqlite'?)", ["--tracking-uri", "sqlit:////tmp/x.db"])
    add("uri-not-mlflow", "does not answer as an MLflow store", ["--tracking-uri", "http://127.0.0.1:{http_port}"])
    add("uri-missing-folder", "folder /no/such/dir does not exist", ["--tracking-uri", "sqlite:////no/such/dir/mlflow.db"])
    add("uri-is-a-folder", "is a folder", ["--tracking-uri", "sqlite:////tmp"])
    return cases


BAD = _bad_cases()
RANGE = {f"range:{overrides}": {"args": overrides.split(), "needle": key} for overrides, key in OUT_OF_RANGE + TEXT_TASK}

# The value table runs in one process (torch, which task validation imports, loads once):
# each case calls main() in its own folder, and the process reports whether Ray or MLflow
# were imported by any of them.
_TABLE_LOOP = """
import contextlib, io, json, os, sys
from gmlp_ablate.run import main
out = {}
for cid, d, args in json.load(open(sys.argv[1])):
    os.chdir(d)
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            code = main(["s.yaml", *args])
        except SystemExit as e:
            code = e.code
    out[cid] = {"code": code, "stderr": err.getvalue(), "stdout": std.getvalue()}
heavy = sorted(m for m in ("ray", "mlflow") if m in sys.modules)
print(json.dumps({"cases": out, "heavy": heavy}))
"""


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _case_dir(root: Path, cid: str) -> Path:
    d = root / "".join(c if c.isalnum() or c in "-_." else "_" for c in cid)
    d.mkdir()
    (d / "raytmp").mkdir()
    return d


def _clean_env(d: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["RAY_TMPDIR"] = str(d / "raytmp")  # must stay empty: Ray is never started
    return env


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory):
    """Every named bad-input case as its own ``python -m gmlp_ablate.run`` (4 at a time), and
    the value table in one process; each case in its own folder."""
    root = tmp_path_factory.mktemp("bad")

    def one(cid: str) -> Dict[str, Any]:
        case = BAD[cid]
        d = _case_dir(root, cid)
        if case["raw"] is not None:
            sweep = d / "s.yaml"
            sweep.write_text(case["raw"])
        elif case["sweep"] == "missing":
            sweep = d / "nope.yaml"
        else:
            sweep = Path(write_yaml(d / "s.yaml", case["sweep"] or TINY))
        args = [a.format(http_port=http_port) for a in case["args"]]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.run", str(sweep), *args], cwd=d,
                              env=_clean_env(d), capture_output=True, text=True, timeout=120)
        return {"code": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout,
                "seconds": time.perf_counter() - t0, "dir": d}

    http_port = free_port()  # a web server that is not MLflow
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"], cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(http_port), 30, "a plain web server")
        with cf.ThreadPoolExecutor(4) as pool:
            results = dict(zip(BAD, pool.map(one, BAD)))
    finally:
        web.kill()
        web.wait()
    times = sorted(r["seconds"] for r in results.values())
    print(f"\nbad input: {len(times)} processes, median {times[len(times) // 2]:.2f}s, max {times[-1]:.2f}s per exit")

    table = []
    for cid, case in RANGE.items():
        d = _case_dir(root, cid)
        write_yaml(d / "s.yaml", TINY)
        table.append((cid, str(d), case["args"]))
    (root / "table.json").write_text(json.dumps(table))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TABLE_LOOP, str(root / "table.json")], cwd=root,
                          env=_clean_env(root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"value table: {len(table)} cases in {time.perf_counter() - t0:.1f}s, heavy imports: {report['heavy']}")
    for cid, d, _ in table:
        results[cid] = {**report["cases"][cid], "seconds": 0.0, "dir": Path(d), "heavy": report["heavy"]}
    return results


@pytest.mark.parametrize("cid", list(BAD) + list(RANGE))
def test_bad_input_exits_2_with_one_line_and_creates_nothing(bad_results, cid):
    r = bad_results[cid]
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
    assert r["code"] == 2, (r["code"], r["stderr"][-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"][-2000:]
    assert {**BAD, **RANGE}[cid]["needle"] in lines[0], lines[0]
    assert "Traceback" not in r["stderr"] and r["stdout"] == ""
    made = sorted(p.name for p in r["dir"].iterdir() if p.name not in ("s.yaml", "raytmp"))
    assert made == [], f"created {made}"
    assert list((r["dir"] / "raytmp").iterdir()) == [], "Ray was started"
    assert r.get("heavy", []) == [], "Ray/MLflow imported before the input was checked"
    assert r["seconds"] < 20, f"took {r['seconds']:.1f}s"


# --------------------------------------------------------------------------------------
# 5. A real MLflow server, and 6. a real Ray cluster (with a driver whose environment
#    would break trials if the workers inherited it)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port with its own sqlite store; yields its URL."""
    root = tmp_path_factory.mktemp("server")
    procs = Processes(root)
    port = free_port()
    # No --host: its default (127.0.0.1) is what test_mlflow_ui_binds_loopback_by_default checks.
    procs.start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--default-artifact-root", str(root / "artifacts"), "--port", str(port), "--workers", "1"],
                root / "server.log")
    url = f"http://127.0.0.1:{port}"

    try:
        wait_for_server(url)
        yield {"url": url, "port": port, "mark": procs.mark}
    finally:
        procs.cleanup()
        assert not marked(procs.mark)


def _server_runs(url: str, name: str) -> Dict[str, List[Dict[str, Any]]]:
    """Runs of experiment ``name`` over the server's REST API."""
    r = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=10)
    if r.status_code != 200:
        return {"parents": [], "trials": []}
    eid = r.json()["experiment"]["experiment_id"]
    runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [eid], "max_results": 1000},
                         timeout=10).json().get("runs", [])
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        run["params"] = {t["key"]: t["value"] for t in run["data"].get("params", [])}
    return {"parents": [r for r in runs if r["tags"].get("gmlp_ablate.role") == "parent"],
            "trials": [r for r in runs if r["tags"].get("gmlp_ablate.role") == "trial"]}


def _server_history(url: str, run_id: str, key: str) -> List[int]:
    r = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": key}, timeout=10)
    return [m["step"] for m in r.json().get("metrics", [])]


@pytest.fixture
def ray_cluster(tmp_path, procs):
    """A Ray head node started with ``ray start`` from another folder, with free ports, its
    own temp dir and token authentication (Ray's default); yields its address."""
    port = free_port()
    elsewhere = tmp_path / "cluster_home"
    elsewhere.mkdir()
    ports = {flag: free_port() for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--metrics-export-port", "--runtime-env-agent-port",
                                            "--node-manager-port", "--object-manager-port")}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={procs.ray_tmp}",
           "--include-dashboard=false", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    starter = procs.start(cmd, tmp_path / "ray_start.log", cwd=elsewhere, CLUSTER_ONLY="1")
    assert starter.wait(timeout=120) == 0, (tmp_path / "ray_start.log").read_text()[-3000:]
    yield f"127.0.0.1:{port}"
    procs.cleanup()
    assert not marked(procs.mark), "the cluster's processes are stopped"


def test_sweep_on_a_ray_cluster_logging_to_an_mlflow_server(tmp_path, procs, ray_cluster, mlflow_server):
    """The production setup: a `ray start` cluster, an `mlflow server`, a driver elsewhere with
    --address and an http --tracking-uri. Checked over the server's REST API."""
    server = mlflow_server["url"]
    driver_home = tmp_path / "driver_home"
    driver_home.mkdir()
    (driver_home / "data").mkdir()
    (driver_home / "data" / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    data = {**TINY, "name": "on_cluster", "baselines": {}}
    data["base"] = {**TINY["base"], "task": {"name": "charlm", "corpus": "data/corpus.txt", "seq_len": 16,
                                             "val_tokens": 256, "cache_dir": "cache"}}
    data["base"]["train"] = {**TINY["base"]["train"], "steps": 1200, "eval_every": 400, "log_every": 50}
    path = write_yaml(driver_home / "cluster.yaml", data)
    log = tmp_path / "run.log"
    # Variables that would break a trial if they reached it (MLflow ones hijack runs) and a
    # different working directory: the trials must get everything from the trial config.
    p = procs.driver(path, "--address", ray_cluster, "--tracking-uri", server, "--storage",
                     str(tmp_path / "ray_results"), log=log, cwd=driver_home, RAY_AUTH_MODE="token",
                     MLFLOW_RUN_ID="bogus", MLFLOW_TRACKING_URI="http://127.0.0.1:1", GMLP_ABLATE_CACHE="/nonexistent")

    def a_worker_env():
        assert p.poll() is None, log.read_text()
        for r in _server_runs(server, "on_cluster")["trials"]:
            if r["info"]["status"] == "RUNNING" and r["tags"].get("worker"):
                try:
                    return psutil.Process(int(r["tags"]["worker"].rsplit(":", 1)[1])).environ()
                except psutil.Error:
                    pass
        return None

    env = wait_for(a_worker_env, 180, "a trial to report from its worker", every=0.2)
    assert env.get("CLUSTER_ONLY") == "1", "the trial runs in a cluster worker, with the cluster's environment"
    leaked = sorted(k for k in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "GMLP_ABLATE_CACHE") if k in env)
    assert leaked == [], {k: env[k] for k in leaked}
    code = p.wait(timeout=240)
    assert code == 0, log.read_text()

    got = _server_runs(server, "on_cluster")
    assert [r["info"]["status"] for r in got["parents"]] == ["FINISHED"]
    assert len(got["trials"]) == 2 and {r["info"]["status"] for r in got["trials"]} == {"FINISHED"}
    for r in got["trials"]:
        assert r["params"]["task.corpus"] == str(driver_home / "data" / "corpus.txt")
        assert r["params"]["task.cache_dir"] == str(driver_home / "cache")
        assert r["tags"]["mlflow.parentRunId"] == got["parents"][0]["info"]["run_id"]
        assert _server_history(server, r["info"]["run_id"], "val/loss") == [400, 800, 1200]
        assert _server_history(server, r["info"]["run_id"], "train/loss") == list(range(50, 1201, 50))
    assert (driver_home / "cache").is_dir(), "the relative cache folder resolved against the driver's folder"
    assert not (driver_home / "mlflow.db").exists()


def test_pending_timeout_on_a_cluster_that_cannot_fit_a_trial(tmp_path, procs, ray_cluster):
    """A trial asking for more CPUs than any node has: one warning line, then, after
    --pending-timeout, exit 1 with one error line; nothing is left claimed or running."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_yaml(tmp_path / "big.yaml", {**TINY, "name": "big", "baselines": {}})
    log = tmp_path / "run.log"
    t0 = time.monotonic()
    code = procs.run_driver(path, "resources.cpu=3", "--address", ray_cluster, "--tracking-uri", uri, "--storage",
                            str(tmp_path / "ray_results"), "--pending-timeout", "5", log=log, RAY_AUTH_MODE="token")
    out = log.read_text()
    assert code == 1, out
    assert "warning: a trial needs 3 CPU + 0 GPU on one node; the cluster's largest node has 2 CPU + 0 GPU now; " \
           "giving up after 5 s (--pending-timeout)" in out, out
    assert "error: --pending-timeout: no trial could start in 5 s" in out and "Traceback" not in out, out
    assert time.monotonic() - t0 < 120
    got = mlflow_runs(uri, "big")
    assert [r.info.status for r in got["parents"]] == ["FAILED"] and got["trials"] == []
    assert got["client"].search_registered_models() == [], "its claim was released"


# --------------------------------------------------------------------------------------
# 7. Concurrent writers on one sqlite store
# --------------------------------------------------------------------------------------


def test_store_creation_race_is_serialised(tmp_path):
    """Processes that open a new sqlite store at the same instant all succeed: the schema
    migration runs once, under the store's folder lock (without it, most of them fail with
    "table ... already exists" / "duplicate column")."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    code = ("import os,sys,time\nimport mlflow\nfrom gmlp_ablate.tracking import Tracker\nprint('ready',flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
            "tr=Tracker(sys.argv[1]); tr.check(); print(tr.experiment_id('race'))")
    ps = [subprocess.Popen([sys.executable, "-c", code, uri, str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for _ in range(3)]
    for p in ps:  # every process has imported MLflow: the race is on the store only
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=120) for p in ps]
    assert [p.returncode for p in ps] == [0] * 3, [e[-1500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1, "one experiment, whoever created it"


def test_two_sweeps_at_once_on_one_sqlite_store(tmp_path, procs):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {**TINY, "name": "shared"}
    data["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "steps": 200, "log_every": 5, "eval_every": 50}}
    path = write_yaml(tmp_path / "shared.yaml", data)
    ps = []
    for seed in (0, 1):  # each driver has its own local Ray instance (own temp dir), both write one store
        ray_tmp = Path(procs.ray_tmp) / str(seed)
        ray_tmp.mkdir()
        ps.append(procs.driver(path, f"seeds=[{seed}]", "--tracking-uri", uri, "--storage", str(tmp_path / f"ray{seed}"),
                               "--num-cpus", "1", log=tmp_path / f"run{seed}.log", RAY_TMPDIR=str(ray_tmp)))
    codes = [p.wait(timeout=300) for p in ps]
    assert codes == [0, 0], [(tmp_path / f"run{s}.log").read_text()[-3000:] for s in (0, 1)]
    got = mlflow_runs(uri, "shared")
    assert sorted(r.info.status for r in got["parents"]) == ["FINISHED", "FINISHED"]
    assert len(got["trials"]) == 6 and {r.info.status for r in got["trials"]} == {"FINISHED"}
    assert sorted(r.data.tags["seed"] for r in got["trials"]) == ["0", "0", "0", "1", "1", "1"]
    for r in got["trials"]:
        assert history_steps(got["client"], r.info.run_id, "train/loss") == list(range(5, 201, 5))
        assert r.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in got["parents"]}
    _no_leftovers(procs)


# --------------------------------------------------------------------------------------
# 8. Security basics
# --------------------------------------------------------------------------------------


def test_mlflow_ui_binds_loopback_by_default(tmp_path, mlflow_server):
    """The UI command the runner prints binds 127.0.0.1, and so does `mlflow ui`/`mlflow server`
    with no --host (the module's server is started that way; `ui` is an alias of `server`)."""
    import contextlib
    import io

    import click
    from mlflow.cli import cli

    from gmlp_ablate.run import _print_next_steps

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _print_next_steps(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    assert "mlflow ui --backend-store-uri" in buf.getvalue() and "--host 127.0.0.1" in buf.getvalue()
    assert cli.get_command(click.Context(cli), "ui").name == "server"

    port = mlflow_server["port"]
    addrs = []
    for proc in marked(mlflow_server["mark"]):
        try:
            addrs += [c.laddr for c in proc.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        except psutil.Error:
            continue
    assert addrs and {a.ip for a in addrs} == {"127.0.0.1"}, addrs


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    import pickle

    import torch

    from gmlp_ablate.trial import load_trial
    from gmlp_ablate.train import load_checkpoint

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cfg = load_trial(None, ["task.name=mqar", "task.num_kv_pairs=2", "task.seq_len=16", "model.dim=16", "model.depth=1"])
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "step": 1, "trial_key": "x", "history": "{}", "payload": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(path), cfg)
    assert not marker.exists()


def test_yaml_tags_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\ngrid: {{model.dim: [8]}}\n")
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.run", str(path), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr
    assert not marker.exists()

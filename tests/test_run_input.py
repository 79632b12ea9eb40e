"""What the runner refuses or leaves alone before it starts anything: names that would
escape the results folder, other applications' databases, resources that can never be met,
a storage path that is a file, Ctrl-C while the input is checked. Real processes and files."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil
import pytest

from conftest import marked, wait_for, write_yaml

TINY = {
    "name": "tiny",
    "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
             "model": {"dim": 16, "depth": 1},
             "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "warmup_steps": 2}},
    "grid": {"model.sgu_split": [True]},
    "seeds": [0],
}


def _env(d: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["RAY_TMPDIR"] = str(d / "raytmp")  # stays empty unless Ray is started
    (d / "raytmp").mkdir(exist_ok=True)
    return env


def _run(d: Path, *args: str, env: Dict[str, str] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmlp_ablate.run", *args], cwd=d, env=env or _env(d),
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foreign_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE apps (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO apps (name) VALUES ('payroll')")
    con.commit()
    con.close()


def test_another_applications_database_is_never_written(tmp_path):
    db = tmp_path / "apps.db"
    _foreign_db(db)
    before = _sha(db)
    sweep = write_yaml(tmp_path / "s.yaml", TINY)
    for dry in (["--dry-run"], []):  # a dry run refuses it too: it is bad input either way
        line = _one_error_line(_run(tmp_path, sweep, *dry, "--tracking-uri", f"sqlite:///{db}"))
        assert "is a database that is not an MLflow store (tables: apps)" in line and str(db) in line
    assert _sha(db) == before, "the database is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apps.db", "raytmp", "s.yaml"]
    assert list((tmp_path / "raytmp").iterdir()) == [], "Ray was not started"


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n" * 100)
    before = _sha(notes)
    line = _one_error_line(_run(tmp_path, write_yaml(tmp_path / "s.yaml", TINY), "--tracking-uri", f"sqlite:///{notes}"))
    assert "is not an MLflow store" in line and _sha(notes) == before


@pytest.mark.parametrize("args, needle", [
    (["name=" + "x" * 101], "name: name is 101 characters long"),
    (["name=../.."], "name: name '../..' has no character usable in a path"),
    (["resources.cpu=64", "--num-cpus", "2"], "resources.cpu: 64 CPUs per trial, but the local Ray instance has 2"),
    (["resources.gpu=1"], "resources.gpu: 1 GPU per trial, but this machine has 0 visible GPU(s)"),
    (["--storage", "FILE"], "--storage: {d}/FILE is a file, expected a folder"),
    (["--storage", "FILE/under"], "--storage: {d}/FILE is a file, expected a folder"),
    (["--pending-timeout", "0"], "--pending-timeout: must be >= 1"),
    (["--tracking-uri", "sqlite:////sys/mlflow.db"], "/sys is not writable (Permission denied)"),
    (["--storage", "/sys/results"], "--storage: /sys is not writable"),
])
def test_bad_input_is_one_line_before_anything_starts(tmp_path, args, needle):
    (tmp_path / "FILE").write_text("a file")
    sweep = write_yaml(tmp_path / "s.yaml", TINY)
    env = {**_env(tmp_path), "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    t0 = time.perf_counter()
    line = _one_error_line(_run(tmp_path, sweep, *args, env=env))
    assert needle.format(d=tmp_path) in line, line
    assert time.perf_counter() - t0 < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "raytmp", "s.yaml"], "nothing created"
    assert list((tmp_path / "raytmp").iterdir()) == [], "Ray was not started"


def test_ctrl_c_while_the_input_is_read_exits_130_with_one_line(tmp_path):
    """The sweep file is a FIFO nobody writes to: the runner blocks reading it, and gets SIGINT."""
    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-m", "gmlp_ablate.run", str(fifo)], cwd=tmp_path, env=_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{p.pid}/wchan").read_text() != "wait_for_partner":  # blocked opening the FIFO
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130 and lines == ["interrupted: nothing was run"], err
    assert out == ""


def test_a_sweep_name_never_leaves_the_storage_folder(tmp_path, procs):
    """``name: ../../escape/x`` is the experiment's name; on disk it is one path component."""
    home = tmp_path / "a" / "b"
    home.mkdir(parents=True)
    storage = home / "results"
    sweep = write_yaml(home / "s.yaml", {**TINY, "name": "../../escape/x"})
    log = tmp_path / "run.log"
    p = procs.driver(sweep, "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}", "--storage", str(storage),
                     "--num-cpus", "1", log=log, cwd=home)
    assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert not (tmp_path / "escape").exists() and not (home / "escape").exists()
    made = sorted(p.name for p in storage.iterdir())
    assert made[0] == "escape_x" and made[1].startswith("escape_x-") and len(made) == 2, made
    assert (storage / "escape_x" / "checkpoints").is_dir()
    assert sorted(p.name for p in home.iterdir()) == ["mlflow.db", "results", "s.yaml"]


def _listeners(procs: List[psutil.Process]) -> List[Any]:
    out = []
    for p in procs:
        try:
            out += [(p.pid, c.laddr) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return out


@pytest.mark.integration
def test_a_local_sweep_listens_on_loopback_only(tmp_path, procs):
    """While a local sweep runs, every listening socket of the driver and of everything it
    started (Ray's GCS, raylet, agents, workers) is on 127.0.0.1."""
    data = {**TINY, "name": "loopback"}
    data["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "steps": 3000, "eval_every": 500}}
    path = write_yaml(tmp_path / "s.yaml", data)
    log = tmp_path / "run.log"
    p = procs.driver(path, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage",
                     str(tmp_path / "results"), "--num-cpus", "1", log=log)
    wait_for(lambda: ": started" in log.read_text() or p.poll() is not None, 180, "the trial to start")
    assert p.poll() is None, log.read_text()
    time.sleep(2)  # the worker's own servers are up once it trains
    found = _listeners(marked(procs.mark))
    os.kill(p.pid, signal.SIGINT)
    p.wait(timeout=90)
    assert len(found) >= 4, found  # GCS, raylet, agents, the worker: the check saw them
    ips = {addr.ip for _, addr in found}
    assert ips <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, found

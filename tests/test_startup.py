"""Where a sweep's start-up work happens. The first trials of a local sweep run in the
worker processes Ray starts with the instance, which import the trial's modules while the
driver is still starting (``gmlp_ablate.run._preloaded``,
``gmlp_ablate.executor.trials_in_any_worker``); how many of those workers are worth
preloading (``gmlp_ablate.preflight.local_slots``); and the driver itself never imports
torch (about a second and a hundred MB it has no use for)."""

from __future__ import annotations

import json
import sys
import textwrap
from types import SimpleNamespace

import pytest

from conftest import mlflow_runs, wait_for, write_yaml
from gmlp_ablate import run
from gmlp_ablate.preflight import local_slots
from gmlp_ablate.sweep import ResourcesConfig


def test_local_slots_counts_cpus_gpus_and_the_concurrency_limit(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: gpu=auto asks for none
    assert local_slots(ResourcesConfig(cpu=1), 8, None) == 8
    assert local_slots(ResourcesConfig(cpu=3), 8, None) == 2
    assert local_slots(ResourcesConfig(cpu=0.5), 2, None) == 4
    assert local_slots(ResourcesConfig(cpu=1), 8, 3) == 3
    assert local_slots(ResourcesConfig(cpu=8), 8, None) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # 2 GPUs, 3 trials each (auto), or one whole GPU each
    assert local_slots(ResourcesConfig(cpu=1, gpu="auto", trials_per_gpu=3), 16, None) == 6
    assert local_slots(ResourcesConfig(cpu=1, gpu="1"), 16, None) == 2


def test_workers_preload_the_trial_modules_only_where_most_of_them_run_trials(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = SimpleNamespace(num_cpus=8, max_concurrent=None)
    assert run._preloaded(args, ResourcesConfig(cpu=1)) == list(run.TRIAL_MODULES)
    assert run._preloaded(args, ResourcesConfig(cpu=2)) == list(run.TRIAL_MODULES)  # 4 of 8 workers run trials
    assert run._preloaded(args, ResourcesConfig(cpu=4)) == []  # 2 of 8: six would import torch for nothing
    assert run._preloaded(SimpleNamespace(num_cpus=8, max_concurrent=2), ResourcesConfig(cpu=1)) == []


SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import psutil
    from gmlp_ablate import run
    from gmlp_ablate.sweep import load_sweep

    args = run.parse_args([sys.argv[1], "--num-cpus", "2"])
    sweep = load_sweep(args.sweep, [])
    run._ray_environment(args)
    run._start_ray(args, sweep.config.resources)
    import ray
    from ray._private.node import Node
    system_config = {k: ray._private.state.state.get_system_config().get(k) for k in run.QUICK_RETRIES}
    restored = all(Node.__dict__[name].__name__ == name for name in run.UNUSED_LOCAL_DAEMONS)
    daemons = []
    for p in psutil.Process().children(recursive=True):
        try:
            daemons += [os.path.basename(a) for a in p.cmdline()[1:3] if a.endswith(".py")]
        except psutil.Error:
            pass

    def idle_with_torch():
        out = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.cmdline()[0].startswith("ray::IDLE") and "libtorch" in open(f"/proc/{p.pid}/maps").read():
                    out.append(p.pid)
            except (psutil.Error, OSError, IndexError):
                pass
        return out

    deadline = time.time() + 60
    while len(idle_with_torch()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    idle = idle_with_torch()

    from ray import tune
    from gmlp_ablate.executor import trials_in_any_worker
    trials_in_any_worker()

    def trainable(config):
        tune.report({"pid": os.getpid(), "torch_at_entry": int("torch" in sys.modules)})

    results = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                         tune_config=tune.TuneConfig(num_samples=2, reuse_actors=True),
                         run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
    print("RESULT " + json.dumps({"daemons": sorted(daemons), "restored": restored, "system_config": system_config,
                                  "idle": idle, "pids": [r.metrics["pid"] for r in results],
                                  "torch": [r.metrics["torch_at_entry"] for r in results]}), flush=True)
    os._exit(0)
""")


@pytest.mark.integration
def test_the_first_trials_run_in_the_workers_started_with_the_instance_with_torch_imported(tmp_path, procs):
    """A real local instance started as the runner starts it: without the daemons it has no
    use for, its two idle workers import torch before any trial exists, and Tune's trials
    then run in those processes."""
    sweep = write_yaml(tmp_path / "s.yaml", {"name": "workers", "base": {"task": {"name": "mqar"}},
                                             "grid": {"model.sgu_split": [True]}, "resources": {"cpu": 1}})
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    log = tmp_path / "script.log"
    p = procs.start([sys.executable, str(script), sweep, str(tmp_path / "ray_results")], log)
    assert p.wait(timeout=180) == 0, log.read_text()[-3000:]
    line = wait_for(lambda: [x for x in log.read_text().splitlines() if x.startswith("RESULT ")], 5, "the result")
    out = json.loads(line[0][len("RESULT "):])
    # Ray's own daemons, started as Python scripts: no API server (dashboard.py), autoscaler
    # monitor (monitor.py) or log monitor (log_monitor.py); Ray's Node is itself again after.
    assert not {"dashboard.py", "monitor.py", "log_monitor.py"} & set(out["daemons"]), out
    assert out["restored"], out
    assert out["system_config"] == run.QUICK_RETRIES, out  # the instance retries its local connections quickly
    assert len(out["idle"]) == 2, out  # both workers had torch loaded before Tune started
    # Without trials_in_any_worker no trial runs in them (Ray starts a new process for each);
    # under load Ray may still start one more worker for a trial that asks before they are ready.
    assert set(out["pids"]) & set(out["idle"]), out
    assert out["torch"] == [1, 1], out


DRIVER = textwrap.dedent("""
    import json, os, sys
    from gmlp_ablate.run import main
    code = main(sys.argv[1:])
    print("RESULT " + json.dumps({"code": code, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}),
          flush=True)
    os._exit(0)
""")


@pytest.mark.integration
def test_the_driver_runs_a_sweep_without_importing_torch(tmp_path, procs):
    """A real sweep (local Ray, sqlite store): torch is the trials' business."""
    sweep = write_yaml(tmp_path / "s.yaml", {"name": "no-torch", "base": {"task": {"name": "mqar"},
                                             "model": {"dim": 16, "depth": 1}, "train": {"steps": 4}},
                                             "grid": {"model.sgu_split": [True, False]}})
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    log = tmp_path / "driver.log"
    p = procs.start([sys.executable, str(script), sweep, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                     "--storage", str(tmp_path / "ray"), "--num-cpus", "2"], log)
    assert p.wait(timeout=180) == 0, log.read_text()[-3000:]
    line = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    assert line, log.read_text()[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out == {"code": 0, "torch": []}, (out, log.read_text()[-2000:])
    trials = mlflow_runs(f"sqlite:///{tmp_path / 'm.db'}", "no-torch")["trials"]
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]


# --------------------------------------------------------------------------------------
# A new sqlite store starts as a copy of an empty one (gmlp_ablate.tracking._store_template)
# --------------------------------------------------------------------------------------


def _store_contents(path):
    """What a store holds that does not depend on when it was made: its schema (each table's
    definition as a set of lines: MLflow's migrations write a table's constraints in an order
    that changes from process to process), and its rows but for the default experiment's
    creation times."""
    import sqlite3

    def lines(sql):
        return tuple(sorted(x.strip().rstrip(",") for x in (sql or "").splitlines()))

    with sqlite3.connect(path) as db:
        schema = sorted((t, name, table, lines(sql)) for t, name, table, sql in db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        rows = {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=str)
                for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows["experiments"] = db.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage, workspace "
                                         "FROM experiments").fetchall()
    return schema, rows


@pytest.fixture
def store_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GMLP_ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    return tmp_path / "cache"


def test_a_new_sqlite_store_is_a_copy_of_an_empty_one_and_holds_what_mlflow_makes(tmp_path, store_cache, monkeypatch):
    import mlflow
    import mlflow.store.db.utils
    from mlflow.tracking import MlflowClient

    from gmlp_ablate.tracking import STORE_TEMPLATE, Tracker

    ref = f"sqlite:///{tmp_path / 'mlflow_made.db'}"
    MlflowClient(tracking_uri=ref, registry_uri=ref).search_experiments()  # MLflow's own creation
    Tracker(f"sqlite:///{tmp_path / 'first.db'}").check()  # makes the template, then copies it
    template = store_cache / STORE_TEMPLATE.format(version=mlflow.__version__)
    assert template.is_file()

    def no_migrations(engine):
        raise AssertionError("MLflow created and migrated the store")

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", no_migrations)
    Tracker(f"sqlite:///{tmp_path / 'copied.db'}").check()  # a copy: MLflow only opens it
    monkeypatch.undo()

    made = _store_contents(tmp_path / "mlflow_made.db")
    assert made[1]["experiments"] == [(0, "Default", str(tmp_path / "mlruns" / "0"), "active", "default")]
    for name in ("first.db", "copied.db"):
        assert _store_contents(tmp_path / name) == made, name
        assert (tmp_path / name).stat().st_mode == (tmp_path / "mlflow_made.db").stat().st_mode
    ids = []
    for name in ("mlflow_made.db", "copied.db"):
        tracker = Tracker(f"sqlite:///{tmp_path / name}")
        eid = tracker.experiment_id("sweep")
        ids.append((eid, tracker.client.create_run(eid).info.run_id != ""))
    assert ids[0] == ids[1] == ("1", True)


def test_a_broken_or_foreign_template_is_not_what_a_new_store_becomes(tmp_path, store_cache):
    import sqlite3

    import mlflow

    from gmlp_ablate.tracking import STORE_TEMPLATE, Tracker, _template_revision

    template = store_cache / STORE_TEMPLATE.format(version=mlflow.__version__)
    store_cache.mkdir()
    template.write_bytes(b"not a database")
    Tracker(f"sqlite:///{tmp_path / 'a.db'}").check()  # the template is made again
    assert _template_revision(template) is not None
    with sqlite3.connect(template) as db:  # a store of another schema (another build of MLflow)
        db.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
    tracker = Tracker(f"sqlite:///{tmp_path / 'b.db'}")
    tracker.check()  # the copy does not open: MLflow creates the store itself
    assert tracker.experiment_id("sweep") == "1"
    assert _store_contents(tmp_path / "b.db")[0] == _store_contents(tmp_path / "a.db")[0]


def test_without_a_cache_folder_mlflow_creates_the_store(tmp_path, monkeypatch):
    from gmlp_ablate.tracking import Tracker

    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("GMLP_ABLATE_CACHE", str(tmp_path / "a_file" / "cache"))  # cannot be made
    tracker = Tracker(f"sqlite:///{tmp_path / 's.db'}")
    tracker.check()
    assert tracker.experiment_id("sweep") == "1"

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
    from ray._private.node import Node
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
    print("RESULT " + json.dumps({"daemons": sorted(daemons), "restored": restored,
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

"""The sweep runner end to end: a real local Ray instance and a real sqlite MLflow store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from gmlp_ablate import run
from gmlp_ablate.sweep import load_sweep

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "name": "tiny",
    "description": "two SGU variants and the attention baseline, a few steps",
    "base": {
        "task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
        "model": {"dim": 16, "depth": 1},
        "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "warmup_steps": 2},
    },
    "grid": {"model.sgu_split": [True, False]},
    "seeds": [0, 1],
    "baselines": {"transformer": {"model": {"arch": "transformer", "heads": 2}}},
    "metric": {"name": "val/loss", "mode": "min"},
}


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _runs(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("gmlp_ablate.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("gmlp_ablate.role") == "trial"]
    return client, parents, trials


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Run the tiny sweep once; the tests below read what it left."""
    d = tmp_path_factory.mktemp("sweep")
    path = _write(d / "tiny.yaml", TINY)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    spawns = []  # (command line, its env= argument is None, other threads alive)
    execute_child = subprocess.Popen._execute_child

    def recording(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest):
        spawns.append((" ".join(map(str, args)), env is None, threading.active_count() > 1))
        return execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", recording)
        code = run.main([path, "--tracking-uri", uri, "--storage", str(d / "ray"), "--num-cpus", "2"])
    return {"dir": d, "path": path, "uri": uri, "code": code, "spawns": spawns}


def test_sweep_logs_one_parent_and_all_children(tiny_sweep):
    assert tiny_sweep["code"] == 0
    client, parents, trials = _runs(tiny_sweep["uri"], "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 6 and {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    expected = {(t.arm, str(t.seed), t.key) for t in load_sweep(tiny_sweep["path"]).trials}
    assert {(r.data.tags["arm"], r.data.tags["seed"], r.data.tags["trial_key"]) for r in trials} == expected


def test_every_spawn_beside_other_threads_gets_its_own_environment(tiny_sweep):
    """The driver spawns processes (the reaper, Ray's) while other threads run, and MLflow's
    threads write environment variables; an execve reading the process's own environment
    beside a setenv can fail with "[Errno 14] Bad address", so every spawn passes env=."""
    spawns = tiny_sweep["spawns"]
    assert any("-m gmlp_ablate.reaper" in command for command, _, _ in spawns), "the reaper's spawn was recorded"
    assert any(threaded for _, _, threaded in spawns), "spawns beside other threads were recorded"
    assert [s for s in spawns if s[1] and s[2]] == [], "spawned with the process's own environment"


def test_children_carry_config_tags_and_metrics(tiny_sweep):
    client, _, trials = _runs(tiny_sweep["uri"], "tiny")
    r = next(r for r in trials if r.data.tags["arm"] == "sgu_split=false")
    p = r.data.params
    assert p["model.sgu_split"] == "false" and p["task.name"] == "mqar" and p["train.steps"] == "20"
    assert p["model.attn_dim"] == "null" and p["seed"] == r.data.tags["seed"]
    tags = r.data.tags
    assert tags["sweep"] == "tiny" and tags["baseline"] == "false" and tags["device"] == "cpu"
    assert json.loads(tags["factors"]) == {"model.sgu_split": False}
    assert tags["git_commit"]
    m = r.data.metrics
    for key in ("train/loss", "val/loss", "val/acc", "perf/tokens_per_s", "model/params", "model/flops_per_token"):
        assert key in m, key
    steps = [h.step for h in client.get_metric_history(r.info.run_id, "train/loss")]
    assert steps == [5, 10, 15, 20]
    assert [h.step for h in client.get_metric_history(r.info.run_id, "val/loss")] == [10, 20]


def test_rerun_launches_nothing(tiny_sweep, capsys):
    code = run.main([tiny_sweep["path"], "--tracking-uri", tiny_sweep["uri"], "--storage", str(tiny_sweep["dir"] / "ray")])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipping 6 trial(s) already FINISHED" in out and "nothing to run" in out
    _, parents, trials = _runs(tiny_sweep["uri"], "tiny")
    assert len(parents) == 1 and len(trials) == 6


def test_dry_run_reads_the_store_without_writing_to_it(tiny_sweep, capsys):
    import hashlib

    db = tiny_sweep["dir"] / "mlflow.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    stamp = db.stat().st_mtime_ns
    code = run.main([tiny_sweep["path"], "seeds=[0,1,5]", "--dry-run", "--tracking-uri", tiny_sweep["uri"]])
    out = capsys.readouterr().out
    assert code == 0 and "9 trials: 3 arms x 3 seeds; 6 already finished, 3 to run" in out
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before and db.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tiny_sweep["dir"].iterdir() if p.name.startswith("mlflow.db")) == ["mlflow.db"]


def test_added_seed_runs_only_new_trials(tiny_sweep, tmp_path, capsys):
    # A copy of the module's store: the tests that read the shared one see one parent, in any order.
    shutil.copy(tiny_sweep["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run.main([tiny_sweep["path"], "seeds=[0,1,2]", "--tracking-uri", uri,
                     "--storage", str(tmp_path / "ray"), "--num-cpus", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "skipping 6 trial(s)" in out and "running 3 trial(s)" in out
    _, parents, trials = _runs(uri, "tiny")
    assert len(parents) == 2 and len(trials) == 9
    assert sorted(r.data.tags["seed"] for r in trials).count("2") == 3
    keys = [r.data.tags["trial_key"] for r in trials]
    assert len(set(keys)) == 9


def test_a_sweep_larger_than_one_tune_run_runs_in_several(tiny_sweep, tmp_path, capsys):
    """Tune holds every trial of a run until the run returns: more trials than
    --trials-per-tune-run go through several Tune runs, one after the other, each trial once."""
    from ray.util import debug

    shutil.copy(tiny_sweep["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run.main([tiny_sweep["path"], "seeds=[0,1,2,3]", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
                     "--num-cpus", "2", "--trials-per-tune-run", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "skipping 6 trial(s)" in out
    assert "Tune run 1/2: 4 of the 6 trial(s)" in out and "Tune run 2/2: 2 of the 6 trial(s)" in out
    assert out.count("running 4 trial(s)") == 1 and out.count("running 2 trial(s)") == 1
    _, parents, trials = _runs(uri, "tiny")
    assert len(parents) == 2 and len(trials) == 12 and all(r.info.status == "FINISHED" for r in trials)
    assert len({r.data.tags["trial_key"] for r in trials}) == 12
    assert len([d for d in (tmp_path / "ray").iterdir() if d.name.startswith("tiny-")]) == 2  # two Tune runs
    # Ray's "log once" keys that Tune's JSON encoder adds per trial are dropped after each run.
    assert not [k for k in debug._logged if k.startswith("tune_func_encode")]


def test_nonfinite_trial_fails_with_reason_and_others_finish(tmp_path, capsys):
    data = json.loads(json.dumps(TINY))
    data["name"] = "diverge"
    data["seeds"] = [0]
    data["grid"] = {"train.lr": [1.0e-3, 1.0e30]}
    data["base"]["train"]["warmup_steps"] = 0
    path = _write(tmp_path / "diverge.yaml", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run.main([path, "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--num-cpus", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 trial(s) failed" in out and "lr=1e+30" in out
    _, parents, trials = _runs(uri, "diverge")
    status = {r.data.tags["arm"]: r for r in trials}
    bad = status["lr=1e+30"]
    assert bad.info.status == "FAILED" and bad.data.tags["failure"] == "nonfinite"
    assert "non-finite training loss" in bad.data.tags["error"] and int(bad.data.tags["nonfinite_step"]) >= 1
    assert status["lr=0.001"].info.status == "FINISHED" and status["transformer"].info.status == "FINISHED"
    assert parents[0].info.status == "FAILED"


def test_trial_that_raises_is_failed_with_its_error(tmp_path, capsys):
    """A cache folder under a regular file passes validation (the cache is not touched before
    launch) and raises when the trial builds its task; the other trial finishes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to learn from. " * 200)
    data = json.loads(json.dumps(TINY))
    data.update(name="raises", seeds=[0], grid={"model.sgu_split": [True]})
    data["base"]["task"] = {"name": "charlm", "corpus": str(corpus), "val_tokens": 256, "seq_len": 16,
                            "cache_dir": str(tmp_path / "cache")}
    # Its own val_tokens: data of its own to prepare, so it touches its cache even in a worker
    # that kept the other trial's prepared data (trials of one task reuse a worker's data).
    data["baselines"] = {"badcache": {"task": {"cache_dir": str(corpus / "cache"), "val_tokens": 128},
                                      "model": {"dim": 8}}}
    path = _write(tmp_path / "raises.yaml", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run.main([path, "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--num-cpus", "2", "--retries", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "badcache seed=0" in out
    _, _, trials = _runs(uri, "raises")
    by_arm = {r.data.tags["arm"]: r for r in trials}
    bad = by_arm["badcache"]
    assert bad.info.status == "FAILED" and bad.data.tags["failure"] == "exception"
    assert "NotADirectoryError" in bad.data.tags["error"] and "corpus.txt/cache" in bad.data.tags["error"]
    assert by_arm["sgu_split=true"].info.status == "FINISHED"


def test_dry_run_prints_the_trial_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run.main([str(ROOT / "sweeps" / "sgu_split.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    sweep = load_sweep(str(ROOT / "sweeps" / "sgu_split.yaml"))
    assert code == 0
    assert f"{len(sweep.trials)} trials" in out and "trial_key" in out
    for t in sweep.trials:
        assert t.key in out
    assert not (tmp_path / "mlflow.db").exists(), "a dry run creates nothing"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["model.dimm=8"], "base.model.dimm: unknown key (did you mean 'base.model.dim'?)"),
        (["model.dim=wide"], "model.dim"),
        (["model.prob_survival=0"], "model.prob_survival"),
        (["grid.model.sgu_split=[]"], "grid.model.sgu_split: empty"),
        (["task.name=charlm", "task.corpus=/no/such/corpus"], "/no/such/corpus"),
        (["--address", "127.0.0.1:1"], "--address"),
        (["--tracking-uri", "http://127.0.0.1:1"], "not reachable"),
        (["--trials-per-tune-run", "0"], "--trials-per-tune-run: must be >= 1, got 0"),
        (["--tracking-uri", "sqlite:////no/such/dir/mlflow.db"], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_creates_nothing(tmp_path, args, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "tiny.yaml", TINY)
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.run", path, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_sweep_file_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.run", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nope.yaml: no such file" in proc.stderr


@pytest.mark.parametrize(
    "resources, cluster_gpus, expected",
    [
        ({}, 0.0, 0.0),  # auto on a CPU-only machine
        ({}, 1.0, 0.25),  # auto: 4 trials share each GPU
        ({"trials_per_gpu": 3}, 2.0, 1 / 3),  # a true fraction, not 1 // 3 == 0
        ({"gpu": "1"}, 8.0, 1.0),
        ({"gpu": "0.5"}, 1.0, 0.5),
    ],
)
def test_gpu_per_trial(resources, cluster_gpus, expected):
    from gmlp_ablate.sweep import ResourcesConfig

    from gmlp_ablate.preflight import gpu_per_trial

    assert gpu_per_trial(ResourcesConfig(**resources), cluster_gpus) == pytest.approx(expected)

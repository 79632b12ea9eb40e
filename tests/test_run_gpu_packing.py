"""Packing trials on GPUs (``resources.gpu: auto``), simulated on a machine without one.

Ray treats GPUs as logical resources: a head node started with ``ray start --num-gpus 2``
offers two GPUs whatever the hardware, assigns each trial an id and sets the trial's
``CUDA_VISIBLE_DEVICES`` to it. With ``train.device=cpu`` the trials run; the runner's
packing (``trials_per_gpu: 3``: a third of a GPU per trial) is what Ray schedules. With the
default ``train.device=auto`` a trial that holds a GPU CUDA cannot see fails with one line
instead of training on the CPU. A real ``ray start`` cluster on 127.0.0.1 with its own temp
folder and ports, a real sqlite store; everything started is stopped in teardown (never
``ray stop``, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import VENV_BIN, Processes, free_port, marked, mlflow_runs, write_yaml

pytestmark = pytest.mark.integration

GPUS, PER_GPU = 2, 3
SWEEP = {
    "name": "packed",
    "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
             "model": {"dim": 16, "depth": 1},
             "train": {"steps": 400, "batch_size": 8, "eval_every": 200, "log_every": 50, "warmup_steps": 2,
                       "device": "cpu"}},
    "grid": {"model.sgu_split": [True]},
    "seeds": list(range(9)),
    "resources": {"cpu": 1, "gpu": "auto", "trials_per_gpu": PER_GPU},
}


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A Ray head node with 9 logical CPUs and 2 logical GPUs (``ray start --num-gpus 2``),
    its own temp folder and free ports; yields (address, Processes)."""
    root = tmp_path_factory.mktemp("gpu_cluster")
    procs = Processes(root)
    port = free_port()
    ports = {flag: free_port() for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--metrics-export-port", "--runtime-env-agent-port",
                                            "--node-manager-port", "--object-manager-port")}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=9", f"--num-gpus={GPUS}",
           f"--temp-dir={procs.ray_tmp}", "--include-dashboard=false", "--disable-usage-stats",
           *(f"{k}={v}" for k, v in ports.items())]
    starter = procs.start(cmd, root / "ray_start.log")
    try:
        assert starter.wait(timeout=180) == 0, (root / "ray_start.log").read_text()[-3000:]
        yield f"127.0.0.1:{port}", procs
    finally:
        procs.cleanup()
        assert not marked(procs.mark), "the cluster's processes are stopped"


def _max_overlap(intervals: List[Tuple[int, int]]) -> int:
    """The most intervals open at one instant (an end before a start at the same instant)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def _driver(tmp_path: Path, gpu_cluster: Any, data: Dict[str, Any], *args: str) -> Tuple[int, str, str]:
    address, procs = gpu_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "run.log"
    p = procs.driver(write_yaml(tmp_path / "s.yaml", data), "--address", address, "--tracking-uri", uri,
                     "--storage", str(tmp_path / "results"), *args, log=log, cwd=tmp_path, RAY_AUTH_MODE="token")
    try:
        code = p.wait(timeout=420)
    except Exception:
        p.kill()
        raise AssertionError(f"the driver did not finish:\n{log.read_text()[-3000:]}")
    return code, log.read_text(), uri


def test_trials_per_gpu_packs_three_trials_on_each_gpu(tmp_path, gpu_cluster):
    code, out, uri = _driver(tmp_path, gpu_cluster, SWEEP)
    assert code == 0, out[-3000:]
    assert f"1 CPU + {1 / PER_GPU:g} GPU each" in out, out[-3000:]
    trials = mlflow_runs(uri, "packed")["trials"]
    assert len(trials) == 9 and {r.info.status for r in trials} == {"FINISHED"}
    spans = {r.info.run_id: (r.info.start_time, r.info.end_time) for r in trials}
    by_gpu: Dict[str, List[Tuple[int, int]]] = {}
    for r in trials:
        gpu = r.data.tags.get("gpu_ids")
        assert gpu in {str(i) for i in range(GPUS)}, f"one GPU id per trial, recorded as a tag: {r.data.tags}"
        by_gpu.setdefault(gpu, []).append(spans[r.info.run_id])
        assert r.data.tags["device"] == "cpu"  # train.device=cpu: the trial trains, holding its third of a GPU
    most = _max_overlap(list(spans.values()))
    assert most <= GPUS * PER_GPU, sorted(spans.values())
    for gpu, intervals in by_gpu.items():
        assert _max_overlap(intervals) <= PER_GPU, (gpu, sorted(intervals))
    print(f"\nat most {most} trials at once; per GPU id: "
          + ", ".join(f"{g}: {len(v)} trials, at most {_max_overlap(v)} at once" for g, v in sorted(by_gpu.items())))


def test_a_trial_holding_a_gpu_cuda_cannot_see_fails_in_one_line(tmp_path, gpu_cluster):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU CUDA can see: the trial would use it")
    data = {**SWEEP, "name": "no_cuda", "seeds": [0]}
    data["base"] = {**SWEEP["base"], "train": {k: v for k, v in SWEEP["base"]["train"].items() if k != "device"}}
    code, out, uri = _driver(tmp_path, gpu_cluster, data, "--retries", "0")
    assert code == 1, out[-3000:]
    trials = mlflow_runs(uri, "no_cuda")["trials"]
    assert len(trials) == 1 and trials[0].info.status == "FAILED"
    error = trials[0].data.tags["error"]
    assert "train.device: auto, and GPU(s) 0 were assigned to this trial, but CUDA sees no device" in error, error
    assert "\n" not in error and trials[0].data.tags["failure"] == "exception"
    assert "model/params" not in trials[0].data.metrics, "it never trained on the CPU"
    lines = [ln for ln in out.splitlines() if "FAILED" in ln and "seed=0" in ln]
    assert len(lines) == 1 and "CUDA sees no device" in lines[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]

"""How long ``python -m analysis.report`` takes on a large sweep.

Fills a sqlite MLflow store through the real tracking code (``gmlp_ablate.tracking.Tracker``:
parent run, nested trial runs with the full config as params, metrics with steps, end
status) with a synthetic sweep: a 3 x 6 grid (``model.ff_mult`` x ``model.init_eps``) plus
two Transformer baselines = 20 arms, 50 seeds each = 1,000 finished trials, 50 metric steps
of train/loss, val/loss, val/bpb and perf/tokens_per_s per trial. Then times the report's
phases in-process and the whole CLI as a fresh process, and prints one table.

    python benchmarks/analysis_scale.py                  # fill a temporary store, time, delete
    python benchmarks/analysis_scale.py --store /tmp/s   # keep (and reuse) the store there

Store filling is not part of the timings. By default each trial's metric history goes in
one ``log_batch`` call of the tracker's client; ``--per-step`` logs one call per step
through ``Tracker.log_metrics`` as a live sweep does (same rows, much slower to fill).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gmlp_ablate.models.config import ModelConfig  # noqa: E402
from gmlp_ablate.sweep import MetricConfig, Sweep, SweepConfig, Trial  # noqa: E402
from gmlp_ablate.tasks.config import TaskConfig  # noqa: E402
from gmlp_ablate.trial import TrainConfig, TrialConfig, trial_key  # noqa: E402
from gmlp_ablate.tracking import Tracker  # noqa: E402

NAME = "scale_bench"
FF_MULTS = [2, 4, 6]
INIT_EPS = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BASELINES = {"transformer": {"heads": 4}, "transformer_h8": {"heads": 8}}


def build_sweep(seeds: int, steps: int) -> Sweep:
    """The synthetic sweep: 18 grid arms + 2 baselines, ``seeds`` seeds each."""
    def cfg(seed: int, **model) -> TrialConfig:
        return TrialConfig(task=TaskConfig(name="charlm", seq_len=128),
                           model=ModelConfig(dim=128, depth=4, **model),
                           train=TrainConfig(steps=steps * 25, eval_every=25), seed=seed)

    trials: List[Trial] = []
    for ff, eps in itertools.product(FF_MULTS, INIT_EPS):
        for s in range(seeds):
            c = cfg(s, ff_mult=ff, init_eps=eps)
            trials.append(Trial(arm=f"ff_mult={ff},init_eps={eps}", seed=s, config=c, key=trial_key(c),
                                factors={"model.ff_mult": ff, "model.init_eps": eps}))
    for name, extra in BASELINES.items():
        for s in range(seeds):
            c = cfg(s, arch="transformer", **extra)
            trials.append(Trial(arm=name, seed=s, config=c, key=trial_key(c), factors={}, baseline=True))
    sc = SweepConfig(name=NAME, description="Synthetic 20-arm sweep (analysis benchmark)",
                     grid={"model.ff_mult": FF_MULTS, "model.init_eps": INIT_EPS}, seeds=list(range(seeds)),
                     baselines={n: {"model": {"arch": "transformer", **e}} for n, e in BASELINES.items()},
                     metric=MetricConfig(name="val/loss", mode="min"))
    return Sweep(config=sc, trials=trials, arm_configs={}, family=[], reference_arm="")


def fill(uri: str, seeds: int, steps: int, per_step: bool) -> int:
    """Log the synthetic sweep; returns the number of trials."""
    from mlflow.entities import Metric

    tr = Tracker(uri)
    sweep = build_sweep(seeds, steps)
    eid = tr.experiment_id(NAME)
    pid = tr.start_parent(eid, sweep, command="python -m gmlp_ablate.run sweeps/scale_bench.yaml")
    rng = np.random.default_rng(0)
    arms = sweep.arms
    for t in sweep.trials:
        a = arms.index(t.arm)
        final = 1.6 + 0.02 * a + rng.normal(0, 0.02)
        params = 200_000 + 20_000 * t.config.model.ff_mult + (50_000 if t.baseline else 0)
        rid = tr.start_trial(eid, pid, t, NAME, extra_tags={"git_commit": "0123abc", "device": "cpu"})
        ts = int(time.time() * 1000)
        rows = {0: {"model/params": params, "model/flops_per_token": 6.0 * params}}
        for k in range(steps):
            step = (k + 1) * 25
            loss = final + 3.0 * math.exp(-k / 8) + rng.normal(0, 0.01)
            rows.setdefault(step, {}).update({"train/loss": loss + 0.05, "val/loss": loss,
                                              "val/bpb": loss / math.log(2),
                                              "perf/tokens_per_s": 40_000 + rng.normal(0, 500)})
        if per_step:
            for step, m in rows.items():
                tr.log_metrics(rid, m, step)
        else:
            batch = [Metric(k, float(v), ts, step) for step, m in rows.items() for k, v in m.items()]
            for i in range(0, len(batch), 1000):
                tr.client.log_batch(rid, metrics=batch[i:i + 1000], synchronous=True)
        tr.end_trial(rid, "FINISHED")
    tr.end_run(pid)
    return len(sweep.trials)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="folder of the store (kept and reused); default: a temporary one")
    p.add_argument("--seeds", type=int, default=50, help="seeds per arm (20 arms)")
    p.add_argument("--steps", type=int, default=50, help="metric steps per trial")
    p.add_argument("--per-step", action="store_true", help="fill with one Tracker.log_metrics call per step")
    args = p.parse_args()

    tmp = None if args.store else tempfile.TemporaryDirectory()
    root = Path(args.store or tmp.name).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.chdir(root)  # the store's artifacts (the logged report) go under this folder
    if not (root / "mlflow.db").exists():
        t0 = time.perf_counter()
        n = fill(uri, args.seeds, args.steps, args.per_step)
        print(f"filled {uri}: {n} trials x {args.steps} steps in {time.perf_counter() - t0:.1f} s (not timed below)")
    else:
        print(f"reusing {uri}")

    from analysis import report

    timings: dict = {}
    t0 = time.perf_counter()
    out = report.run(report.parse_args([NAME, "--tracking-uri", uri, "--out", str(root / "report")]), timings)
    timings["total (in-process)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "analysis.report", NAME, "--tracking-uri", uri, "--out",
                          str(root / "report_cli")], cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True)
    timings["CLI end to end (new process, imports included)"] = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"the CLI failed:\n{res.stderr}")

    import analysis.load as load

    runs = load.load_runs(NAME, uri)
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nreport of {len(runs)} trials, {runs['arm'].nunique()} arms, {os.cpu_count()} CPUs "
          f"(load average {load_avg}) -> {out}\n")
    width = max(len(k) for k in timings)
    print(f"| {'phase'.ljust(width)} | seconds |\n|{'-' * (width + 2)}|--------:|")
    for k, v in timings.items():
        print(f"| {k.ljust(width)} | {v:7.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

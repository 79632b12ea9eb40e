"""Orchestration and logging overhead of ``gmlp_ablate.run`` on a small CPU machine.

Runs one sweep of 8 trials (~30 s of training each, 1 CPU each) three ways:

  (a) ``python -m gmlp_ablate.run`` on a fresh local Ray instance with a fresh sqlite store:
      wall time of the whole invocation vs the trials' own time (``time/total_s`` and
      ``perf/train_time_s`` from MLflow): efficiency = sum(trial time) / (cores * wall);
  (b) the same trials one after another in a plain loop calling ``train()`` with 1 thread
      each, no Ray, no MLflow (ideal wall on ``cores`` cores = sum / cores);
  (c) the time the driver spends in ``Tracker`` calls (every MLflow write and lookup, timed
      by wrapping the methods in the driver process), per trial, vs the trial's time.

Usage: python benchmarks/sweep_overhead.py [--steps 1200] [--cores 2] [--out DIR]
Prints one table (markdown); see benchmarks/SWEEP_OVERHEAD.md for recorded results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent

# The driver, run as ``python -c DRIVER out.json ARGS...``: Tracker methods are wrapped with
# timers (per method and per trial run), then the real CLI runs.
DRIVER = r"""
import functools, json, sys, time
T0 = time.monotonic()
from gmlp_ablate import tracking, run
out, argv = sys.argv[1], sys.argv[2:]
stats = {"calls": {}, "per_run": {}, "events": []}
def wrap(name):
    fn = getattr(tracking.Tracker, name)
    @functools.wraps(fn)
    def timed(self, *a, **k):
        t = time.monotonic()
        res = None
        try:
            res = fn(self, *a, **k)
            return res
        finally:
            dt = time.monotonic() - t
            if name == "start_trial":
                a = (res,)
            c = stats["calls"].setdefault(name, [0, 0.0]); c[0] += 1; c[1] += dt
            rid = a[0] if a and isinstance(a[0], str) and len(a[0]) == 32 else None
            if name == "start_trial":
                stats["events"].append(("trial_start", t - T0))
            if name == "end_trial":
                stats["events"].append(("trial_end", t - T0))
            if rid is not None and name in ("start_trial", "log_metrics", "set_tags", "end_trial"):
                stats["per_run"][rid] = stats["per_run"].get(rid, 0.0) + dt
    setattr(tracking.Tracker, name, timed)
for name in ("check", "experiment_id", "close_stale", "finished_keys", "running_elsewhere", "start_parent",
             "start_trial", "log_metrics", "set_tags", "end_trial", "end_run", "heartbeat", "finished_runs_by_key"):
    wrap(name)
code = run.main(argv)
import resource
me = resource.getrusage(resource.RUSAGE_SELF)
stats["cpu_driver"] = me.ru_utime + me.ru_stime
stats["code"], stats["exit_at"] = code, time.monotonic() - T0
json.dump(stats, open(out, "w"))
sys.exit(code)
"""

# The plain loop (b), run as ``python -c PLAIN sweep.yaml out.json``.
PLAIN = r"""
import json, sys, time
t0 = time.monotonic()
from gmlp_ablate.sweep import load_sweep
from gmlp_ablate.train import train
sweep = load_sweep(sys.argv[1])
rows = []
for t in sweep.trials:
    t.config.train.threads = 1
    final = train(t.config)
    rows.append({k: final[k] for k in ("time/total_s", "perf/train_time_s", "perf/tokens_per_s_mean")})
json.dump({"rows": rows, "wall": time.monotonic() - t0}, open(sys.argv[2], "w"))
"""


def sweep_yaml(steps: int, cache: Path) -> Dict[str, Any]:
    return {
        "name": "sweep_overhead",
        "description": "8 trials of ~30 s on one CPU each",
        "base": {
            "task": {"name": "charlm", "seq_len": 128, "val_tokens": 16384, "corpus_bytes": 2_000_000,
                     "cache_dir": str(cache)},
            "model": {"arch": "gmlp", "dim": 64, "depth": 2, "ff_mult": 4},
            "train": {"steps": steps, "batch_size": 16, "lr": 2.0e-3, "eval_every": max(steps // 4, 1),
                      "log_every": 50, "warmup_steps": 50},
        },
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0, 1, 2, 3],
        "resources": {"cpu": 1, "gpu": 0},
    }


def mlflow_trials(uri: str) -> List[Dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep_overhead")
    runs = client.search_runs([exp.experiment_id], "tags.`gmlp_ablate.role` = 'trial'", max_results=100)
    return [{"run_id": r.info.run_id, "status": r.info.status, **r.data.metrics} for r in runs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=900, help="steps per trial (about 30 s on one core here)")
    p.add_argument("--cores", type=int, default=2, help="CPUs given to the local Ray instance")
    p.add_argument("--out", default=None, help="keep the store and logs here (default: a temp folder)")
    p.add_argument("--skip-plain", action="store_true", help="skip (b), the plain sequential loop")
    args = p.parse_args()

    import yaml

    work = Path(args.out or tempfile.mkdtemp(prefix="sweep_overhead_"))
    if work.exists() and args.out:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    sweep_path = work / "sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(sweep_yaml(args.steps, cache)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="so", dir="/tmp")
    # Build the corpus cache once, so no variant pays for tokenising it.
    subprocess.run([sys.executable, "-c", "import sys; from gmlp_ablate.sweep import load_sweep; "
                    "from gmlp_ablate.tasks import build_task; t = load_sweep(sys.argv[1]).trials[0]; "
                    "build_task(t.config.task, 0)", str(sweep_path)], check=True, env=env, cwd=work)

    # (a) the runner
    uri = f"sqlite:///{work / 'mlflow.db'}"
    stats_path = work / "driver_stats.json"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(stats_path), str(sweep_path), "--tracking-uri", uri,
                           "--storage", str(work / "ray_results"), "--num-cpus", str(args.cores)],
                          env=env, cwd=work, capture_output=True, text=True)
    wall_a = time.monotonic() - t0
    (work / "driver.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    stats = json.loads(stats_path.read_text())
    trials = mlflow_trials(uri)
    assert len(trials) == 8 and all(t["status"] == "FINISHED" for t in trials), trials
    sum_total = sum(t["time/total_s"] for t in trials)
    sum_train = sum(t["perf/train_time_s"] for t in trials)
    tps_a = sum(t["perf/tokens_per_s_mean"] for t in trials) / len(trials)
    starts = [t for e, t in stats["events"] if e == "trial_start"]
    ends = [t for e, t in stats["events"] if e == "trial_end"]
    track_total = sum(c[1] for c in stats["calls"].values())
    per_trial_track = [stats["per_run"].get(t["run_id"], 0.0) for t in trials]
    per_trial_share = [s / t["time/total_s"] for s, t in zip(per_trial_track, trials)]

    # (b) the plain loop
    plain = None
    if not args.skip_plain:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", PLAIN, str(sweep_path), str(work / "plain.json")], check=True,
                       env=env, cwd=work)
        wall_b = time.monotonic() - t0
        plain = json.loads((work / "plain.json").read_text())
        plain["wall_process"] = wall_b
    load1 = os.getloadavg()[0]
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)

    c = args.cores
    rows = [
        ("trials x steps", f"8 x {args.steps} (charlm gMLP dim 64 depth 2, 1 CPU each)", ""),
        ("(a) wall of `python -m gmlp_ablate.run`", f"{wall_a:.1f} s", f"{c} cores"),
        ("(a) sum of trial time/total_s", f"{sum_total:.1f} s", f"mean {sum_total / 8:.1f} s"),
        ("(a) sum of trial perf/train_time_s", f"{sum_train:.1f} s", "training steps only"),
        ("(a) efficiency sum(time/total_s) / (cores x wall)", f"{sum_total / (c * wall_a):.1%}", "target >= 85%"),
        ("(a) efficiency sum(train_time_s) / (cores x wall)", f"{sum_train / (c * wall_a):.1%}", ""),
        ("(a) start-up: process start -> first trial starts", f"{min(starts):.1f} s", "imports, MLflow, Ray, Tune"),
        ("(a) shut-down: last trial ends -> process exits", f"{wall_a - max(ends):.1f} s",
         "summary, ray.shutdown, interpreter exit"),
        ("(a) mean tokens/s per trial", f"{tps_a:,.0f}", f"{c} trials at once"),
        ("(a) CPU time: driver process", f"{stats['cpu_driver']:.1f} s", "imports, Tune loop, MLflow writes"),
        ("(c) driver time in Tracker calls, total", f"{track_total:.2f} s",
         ", ".join(f"{k} {v[0]}x {v[1]:.2f}s" for k, v in sorted(stats["calls"].items(), key=lambda kv: -kv[1][1])[:4])),
        ("(c) logging time per trial / trial time", f"{max(per_trial_share):.2%} max, "
         f"{sum(per_trial_share) / len(per_trial_share):.2%} mean", "target < 5%"),
    ]
    if plain is not None:
        sum_b = sum(r["time/total_s"] for r in plain["rows"])
        tps_b = sum(r["perf/tokens_per_s_mean"] for r in plain["rows"]) / len(plain["rows"])
        rows += [
            ("(b) plain loop, sequential, wall", f"{plain['wall_process']:.1f} s", "1 core, no Ray, no MLflow"),
            ("(b) sum of trial time/total_s", f"{sum_b:.1f} s", ""),
            ("(b) ideal wall on the cores: sum / cores", f"{sum_b / c:.1f} s", ""),
            ("(a) wall / (b) ideal wall", f"{wall_a / (sum_b / c):.2f}", "1.00 = no overhead at all"),
            ("(b) mean tokens/s per trial", f"{tps_b:,.0f}", f"(a)/(b) = {tps_a / tps_b:.2f} (2 at once vs alone)"),
        ]
    rows.append(("load average (1 min) before / after", f"{load0:.2f} / {load1:.2f}", f"{os.cpu_count()} CPUs"))
    w = max(len(r[0]) for r in rows)
    print(f"\n| {'measure':<{w}} | value | note |\n|{'-' * (w + 2)}|---|---|")
    for r in rows:
        print(f"| {r[0]:<{w}} | {r[1]} | {r[2]} |")
    if max(load0, load1) > c + 0.5:
        print(f"\nwarning: the load average reached {max(load0, load1):.1f} on {c} cores: other work shared the "
              "machine, so these numbers are pessimistic; rerun when it is quiet")
    print(f"\nfiles: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

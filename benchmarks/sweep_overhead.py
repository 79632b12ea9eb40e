"""Orchestration and logging overhead of ``gmlp_ablate.run``, side by side with a hand-written
Ray Tune grid logging through Ray's own ``MLflowLoggerCallback``, on a small CPU machine.

For each trial length (``--steps``, about 25 s of training on one core here, and
``--short-steps``, about 3 s), one sweep of 8 trials (1 CPU each) runs two ways:

  ours  ``python -m gmlp_ablate.run`` on a fresh local Ray instance (``--num-cpus CORES``)
        and a fresh sqlite store; then once more (unless ``--skip-again``) under another
        sweep name into that store, now existing and current: a user iterating on a sweep;
  hand  the same 8 trial configs as a plain ``tune.grid_search`` over a function trainable
        that calls the same ``train()``, with ``MLflowLoggerCallback`` into a fresh sqlite
        store (:data:`HAND`, about 40 lines: what one would write without this project).

efficiency = sum of the trials' own time (``time/total_s``: from entering ``train()`` to its
return) / (cores x wall of the whole process). For ours the driver's phases are timed by
wrapping its functions in the driver process (nothing in the runner is changed for it):
start-up (imports and validation, the store opened in a thread while Ray starts, the parent
run, Tune until the first trial starts, the worker until the first result) and shut-down
(last trial ends -> Tune returns -> runs closed -> summary -> Ray stopped -> process exit),
with the time spent in ``Tracker`` calls (every MLflow read and write). For both, when the
first trial enters ``train()``: its run's end (ours: the MLflow run's end time, written right
after its last result; hand-written: Tune's ``on_trial_complete``) less its ``time/total_s``.

Memory (default on; ``--no-memory`` skips it): ``benchmarks/driver_memory.py`` on the same
cores, the runner over 10 and 100 tiny trials (mqar, 20 steps): the driver's RSS as trials
end, its per-trial growth, the peak RSS of one worker, and from a run with ``tracemalloc``
which share of the growth is Ray Tune's, MLflow's and ours.

Usage: python benchmarks/sweep_overhead.py [--steps 900] [--short-steps 90] [--cores 2]
           [--skip-hand] [--skip-again] [--skip-long] [--skip-short] [--no-memory] [--plain]
           [--cold-store-template] [--out DIR]
Prints markdown tables; see benchmarks/SWEEP_OVERHEAD.md for recorded results. The machine's
load average is printed with every set of figures: other work on the cores slows the trials
and the driver alike.
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
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent

# Ours, run as ``python -c DRIVER stats.json ARGS...``: phase functions and Tracker methods are
# wrapped with timers, a thread notes when its Ray workers start, then the real CLI runs (the
# driver's memory is measured apart: benchmarks/driver_memory.py).
DRIVER = r"""
import functools, json, os, resource, sys, threading, time
import psutil
ME = psutil.Process()
T0 = float(os.environ["SWEEP_OVERHEAD_T0"])  # when the benchmark launched this process: phases count from here
now = lambda: time.time() - T0
from gmlp_ablate import run, tracking  # (executor and callbacks import Ray: patched once it started)
out, argv = sys.argv[1], sys.argv[2:]
st = {"calls": {}, "per_run": {}, "phases": [], "events": [], "workers": {}}
local = threading.local()

def timed(owner, name, phase=None, track=False):
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t, depth = now(), getattr(local, "depth", 0)
        local.depth = depth + (1 if track else 0)
        res = None
        try:
            res = fn(*a, **k)
            return res
        finally:
            local.depth = depth
            t1 = now()
            if phase:
                st["phases"].append((phase, t, t1))
            if track and depth == 0:
                c = st["calls"].setdefault(name, [0, 0.0]); c[0] += 1; c[1] += t1 - t
                rid = res if name == "start_trial" else (a[1] if len(a) > 1 and isinstance(a[1], str) else None)
                if rid is not None and len(rid) == 32:
                    st["per_run"][rid] = st["per_run"].get(rid, 0.0) + t1 - t
    setattr(owner, name, wrapper)

for name in ("check", "experiment_id", "finished_keys", "finished_runs_by_key", "running", "trial_runs", "start_parent",
             "start_trial", "reopen_trial", "log_metrics", "set_tags", "end_trial", "end_run", "create_unique",
             "unique_tags", "delete_unique", "search", "get_run"):
    timed(tracking.Tracker, name, track=True)
timed(run.StoreOpening, "start", "validated")
timed(run.StoreOpening, "_open", "store: check/create/migrate, experiment, stale runs, finished keys (thread)")
timed(run.StoreOpening, "result", "waiting for the store thread")
timed(tracking.Tracker, "start_parent", "parent run")
timed(run, "_close_runs", "close runs")
timed(run, "print_summary", "summary")
timed(run, "_shutdown_ray", "ray.shutdown (skipped for a local instance: the reaper stops it)")

def patch_tune_side():
    from gmlp_ablate import callbacks, executor
    timed(executor.TuneExecutor, "run", "Tune run (first trial start .. last trial end inside)")
    for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        def hook(orig, ev):
            def f(self, iteration, trials, trial, *a, **k):
                st["events"].append((ev, now()))
                if ev == "on_trial_result" and "first_pid" not in st:
                    st["first_pid"] = str((a[0] if a else k.get("result", {})).get("pid"))
                return orig(self, iteration, trials, trial, *a, **k)
            return f
        setattr(callbacks.MLflowMirror, name, hook(getattr(callbacks.MLflowMirror, name), name))

start_ray = run._start_ray
def start_ray_then_patch(*a, **k):
    try:
        return start_ray(*a, **k)
    finally:
        patch_tune_side()
run._start_ray = start_ray_then_patch
timed(run, "_start_ray", "Ray: import, reaper, ray.init (main thread)")

stop = threading.Event()
def sample():
    while not stop.is_set():
        for p in ME.children(recursive=True):
            try:
                if "ray::" in " ".join(p.cmdline()[:1]):
                    st["workers"].setdefault(str(p.pid), p.create_time() - T0)
            except psutil.Error:
                pass
        stop.wait(0.2)
threading.Thread(target=sample, daemon=True).start()
real_exit = os._exit
def exit_with_stats(code):  # run.cli() ends in os._exit, as `python -m gmlp_ablate.run` does
    stop.set()
    u = resource.getrusage(resource.RUSAGE_SELF)
    st["cpu_driver"] = u.ru_utime + u.ru_stime
    st["code"], st["exit_at"] = code, now()
    json.dump(st, open(out, "w"))
    real_exit(code)
os._exit = exit_with_stats
sys.argv = ["gmlp_ablate.run", *argv]
run.cli()
"""

# The hand-written alternative, run as ``python -c HAND sweep.yaml URI STORAGE CORES stats.json``.
HAND = r"""
import json, os, sys, time
T0 = float(os.environ["SWEEP_OVERHEAD_T0"])  # when the benchmark launched this process
import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from gmlp_ablate.sweep import load_sweep
from gmlp_ablate.trial import merge_trial, to_dict

def trainable(config):
    from gmlp_ablate.train import train
    cfg = merge_trial(config["trial"])
    cfg.train.threads = 1
    def report(metrics, step, checkpoint):
        tune.report({**{k: v for k, v in metrics.items() if not k.startswith("info.")}, "step": step})
    final = train(cfg, report=report)
    tune.report({**final, "step": cfg.train.steps})

class Events(tune.Callback):
    starts, ends, entries = [], [], []
    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts.append(time.time() - T0)
    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ends.append(time.time() - T0)
        self.entries.append(self.ends[-1] - trial.last_result.get("time/total_s", 0.0))

sweep, uri, storage, cores, out = sys.argv[1:6]
trials = load_sweep(sweep).trials
ray.init(num_cpus=int(cores), include_dashboard=False)
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"trial": tune.grid_search([to_dict(t.config) for t in trials])},
    run_config=tune.RunConfig(storage_path=storage, callbacks=[
        MLflowLoggerCallback(tracking_uri=uri, experiment_name="hand", save_artifact=False), Events()]))
results = tuner.fit()
totals = [r.metrics["time/total_s"] for r in results]
json.dump({"totals": totals, "starts": Events.starts, "ends": Events.ends, "entries": Events.entries}, open(out, "w"))
"""

# The plain loop (--plain), run as ``python -c PLAIN sweep.yaml out.json``: no Ray, no MLflow.
PLAIN = r"""
import json, sys, time
t0 = time.monotonic()
from gmlp_ablate.sweep import load_sweep
from gmlp_ablate.train import train
rows = []
for t in load_sweep(sys.argv[1]).trials:
    t.config.train.threads = 1
    rows.append(train(t.config)["time/total_s"])
json.dump({"totals": rows, "wall": time.monotonic() - t0}, open(sys.argv[2], "w"))
"""


def sweep_yaml(name: str, steps: int, cache: Path) -> Dict[str, Any]:
    return {
        "name": name,
        "description": f"8 trials of {steps} steps on one CPU each",
        "base": {
            "task": {"name": "charlm", "seq_len": 128, "val_tokens": 16384, "corpus_bytes": 2_000_000,
                     "cache_dir": str(cache)},
            "model": {"arch": "gmlp", "dim": 64, "depth": 2, "ff_mult": 4},
            "train": {"steps": steps, "batch_size": 16, "lr": 2.0e-3, "eval_every": max(steps // 4, 1),
                      "log_every": max(1, min(50, steps // 4)), "warmup_steps": min(50, steps // 4)},
        },
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0, 1, 2, 3],
        "resources": {"cpu": 1, "gpu": 0},
    }


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def runner_env() -> Dict[str, str]:
    """The environment of the benchmarked processes: no inherited MLflow or Ray address, Ray's
    sockets under a fresh short temp folder (``RAY_TMPDIR``: remove it when done), no usage stats."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="so", dir="/tmp")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def build_cache(sweep_path: Path, env: Dict[str, str], cwd: Path) -> None:
    """Build the sweep's corpus cache once, so that no measured run pays for tokenising it."""
    subprocess.run([sys.executable, "-c", "import sys; from gmlp_ablate.sweep import load_sweep; "
                    "from gmlp_ablate.tasks import build_task; t = load_sweep(sys.argv[1]).trials[0]; "
                    "build_task(t.config.task, 0)", str(sweep_path)], check=True, env=env, cwd=cwd)


def trial_totals(uri: str, name: str, t0: float) -> Tuple[List[float], List[float]]:
    """Each trial's ``time/total_s`` (entering ``train()`` to its return) and when it entered
    ``train()``, in seconds from ``t0`` (the end of its MLflow run, which the driver writes
    right after the trial's last result, less its total: a few tens of ms late)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`gmlp_ablate.role` = 'trial'", max_results=1000)
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    totals = [r.data.metrics.get("time/total_s", 0.0) for r in runs]
    return totals, [r.info.end_time / 1000 - t - t0 for r, t in zip(runs, totals)]


def run_ours(work: Path, sweep_path: Path, name: str, cores: int, env: Dict[str, str],
             store: Optional[str] = None) -> Dict[str, Any]:
    """``python -m gmlp_ablate.run`` on the sweep, into ``store`` (a sqlite file name under
    ``work``; default: a new one named after the sweep)."""
    uri = f"sqlite:///{work / (store or name + '.db')}"
    from gmlp_ablate.tracking import store_template_path

    template_cached = store_template_path(env.get("GMLP_ABLATE_CACHE")).is_file()
    stats_path = work / f"{name}.ours.json"
    before = load()
    launched = time.time()
    env = {**env, "SWEEP_OVERHEAD_T0": repr(launched)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(stats_path), str(sweep_path), "--tracking-uri", uri,
                           "--storage", str(work / "ray_results"), "--num-cpus", str(cores)],
                          env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (work / f"{name}.ours.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"ours failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    st = json.loads(stats_path.read_text())
    totals, entries = trial_totals(uri, name, launched)
    return {"wall": wall, "totals": totals, "entries": entries, "stats": st, "load": f"{before} / {load()}",
            "template_cached": template_cached}


def run_hand(work: Path, sweep_path: Path, name: str, cores: int, env: Dict[str, str]) -> Dict[str, Any]:
    uri = f"sqlite:///{work / (name + '.hand.db')}"
    out = work / f"{name}.hand.json"
    before = load()
    env = {**env, "SWEEP_OVERHEAD_T0": repr(time.time())}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HAND, str(sweep_path), uri, str(work / "ray_results_hand"),
                           str(cores), str(out)], env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (work / f"{name}.hand.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"hand-written failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    st = json.loads(out.read_text())
    return {"wall": wall, "totals": st["totals"], "starts": st["starts"], "ends": st["ends"], "entries": st["entries"],
            "load": f"{before} / {load()}"}


def _events(r: Dict[str, Any], kind: str) -> List[float]:
    """Seconds from process start of each of ours' Tune events of ``kind``."""
    return [t for e, t in r["stats"]["events"] if e == kind]


def phases(r: Dict[str, Any]) -> List[tuple]:
    """(phase, seconds, note) of ours, from the wrapped functions' times."""
    st, wall = r["stats"], r["wall"]
    ph: Dict[str, tuple] = {}
    for name, a, b in st["phases"]:
        ph.setdefault(name, (a, b))  # the first call of each
    starts, results, ends = (_events(r, k) for k in ("on_trial_start", "on_trial_result", "on_trial_complete"))
    tune_run = ph.get("Tune run (first trial start .. last trial end inside)", (0, 0))
    workers = sorted(st["workers"].values())
    first_pid = st.get("first_pid")
    first_worker = st["workers"].get(first_pid) if first_pid else None
    rows = [(name, b - a, f"{a:.2f} -> {b:.2f}") for name, (a, b) in ph.items() if not name.startswith("Tune")]
    rows += [
        ("Tune set-up until the first trial starts", min(starts) - tune_run[0], f"{tune_run[0]:.2f} -> {min(starts):.2f}"),
        ("first trial start -> its first result (worker: torch, task, model)", min(results) - min(starts),
         (f"its worker process started at {first_worker:.2f}" if first_worker is not None else "")
         + (f"; first worker process at {workers[0]:.2f}" if workers else "")),
        ("last trial ends -> Tune returns", tune_run[1] - max(ends), ""),
        ("process exit after the last phase", wall - max(b for _, _, b in st["phases"]), "exit"),
    ]
    order = {n: i for i, n in enumerate(["validated"])}
    rows.sort(key=lambda r: (order.get(r[0], 1), float(r[2].split(" -> ")[0]) if " -> " in r[2] else 1e9))
    return rows


def summarize(label: str, steps: int, cores: int, ours: Dict[str, Any], hand: Optional[Dict[str, Any]],
              again: Optional[Dict[str, Any]] = None) -> List[str]:
    """The table of one trial length: ours into a new store, ours again into that store (a
    user iterating on a sweep: the store exists and is current), and the hand-written grid."""
    st = ours["stats"]
    ends = _events(ours, "on_trial_complete")
    eff = sum(ours["totals"]) / (cores * ours["wall"])
    h_eff = sum(hand["totals"]) / (cores * hand["wall"]) if hand else None
    mine = [ours] + ([again] if again else [])

    def row(name: str, cells: List[str], h: str = "-", ratio: str = "") -> str:
        return f"| {name} | " + " | ".join(cells) + f" | {h} | {ratio} |"

    lines = [f"\n### {label}: 8 trials x {steps} steps (mean trial {sum(ours['totals']) / len(ours['totals']):.1f} s)\n",
             "| | ours, new store" + (" | ours, existing store" if again else "") + " | hand-written | ours (new store) / hand |",
             "|---|---|" + ("---|" if again else "") + "---|---|"]
    lines.append(row(f"efficiency sum(time/total_s) / ({cores} x wall)",
                     [f"**{sum(r['totals']) / (cores * r['wall']):.2f}**" for r in mine],
                     f"{h_eff:.2f}" if hand else "-", f"{eff / h_eff:.2f}" if hand else "-"))
    lines.append(row("wall of the process (s)", [f"{r['wall']:.1f}" for r in mine], f"{hand['wall']:.1f}" if hand else "-"))
    lines.append(row("sum of trial time/total_s (s)", [f"{sum(r['totals']):.1f}" for r in mine],
                     f"{sum(hand['totals']):.1f}" if hand else "-"))
    lines.append(row("process start -> first trial starts (s)",
                     [f"{min(_events(r, 'on_trial_start')):.1f}" for r in mine],
                     f"{min(hand['starts']):.1f}" if hand else "-"))
    lines.append(row("process start -> first trial enters train() (s)", [f"{min(r['entries']):.1f}" for r in mine],
                     f"{min(hand['entries']):.1f}" if hand else "-"))
    lines.append(row("process start -> first result (s)", [f"{min(_events(r, 'on_trial_result')):.1f}" for r in mine]))
    lines.append(row("last trial ends -> process exit (s)",
                     [f"{r['wall'] - max(_events(r, 'on_trial_complete')):.1f}" for r in mine],
                     f"{hand['wall'] - max(hand['ends']):.1f}" if hand else "-"))
    lines.append(row("CPU time of the driver process (s)", [f"{r['stats']['cpu_driver']:.1f}" for r in mine]))
    lines.append(row("load (1, 5, 15 min) before / after", [r["load"] for r in mine], hand["load"] if hand else "-"))
    lines.append(f"\nOurs, new store: the empty store it is copied from was "
                 + ("cached before the run." if ours["template_cached"] else
                    "not cached yet: this run made it (the first new store of an MLflow version does)."))
    for r, which in ((ours, "new store"), (again, "existing store")):
        if r is None:
            continue
        lines += ["", f"Ours ({which}), phase by phase (seconds from process start; the store thread and Ray's start "
                  "overlap):", "", "| phase | s | when |", "|---|---|---|"]
        lines += [f"| {n} | {s:.2f} | {w} |" for n, s, w in phases(r)]
    track = sum(c[1] for c in st["calls"].values())
    top = sorted(st["calls"].items(), key=lambda kv: -kv[1][1])[:5]
    share = [st["per_run"].get(rid, 0.0) for rid in st["per_run"]]
    lines.append(f"\nTracker calls (all MLflow I/O of the driver): {track:.2f} s in all; "
                 + ", ".join(f"{k} {v[0]}x {v[1]:.2f}s" for k, v in top)
                 + (f"; per trial run {max(share):.2f} s max" if share else ""))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=900, help="steps of a long trial (about 25 s on one core here)")
    p.add_argument("--short-steps", type=int, default=90, help="steps of a short trial (about 3 s)")
    p.add_argument("--cores", type=int, default=2, help="CPUs given to each Ray instance")
    p.add_argument("--out", default=None, help="keep stores, logs and stats here (default: a temp folder)")
    p.add_argument("--skip-hand", action="store_true", help="run only ours")
    p.add_argument("--skip-again", action="store_true",
                   help="skip ours' second run into the (then existing) store of its first")
    p.add_argument("--skip-long", action="store_true")
    p.add_argument("--skip-short", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the 10- and 100-trial memory runs")
    p.add_argument("--plain", action="store_true", help="also the 8 trials in a plain loop (no Ray, no MLflow)")
    p.add_argument("--cold-store-template", action="store_true",
                   help="ours' new stores start without the cached empty store (a fresh GMLP_ABLATE_CACHE): "
                        "the first run of each length makes it, as the first new store of an MLflow version does")
    args = p.parse_args()

    import yaml

    work = Path(args.out or tempfile.mkdtemp(prefix="sweep_overhead_"))
    if work.exists() and args.out:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    env = runner_env()
    lengths = [(lbl, s) for lbl, s, skip in (("long", args.steps, args.skip_long), ("short", args.short_steps,
                                                                                      args.skip_short)) if not skip]
    paths = {}
    for lbl, steps in lengths:
        paths[lbl] = work / f"{lbl}.yaml"
        paths[lbl].write_text(yaml.safe_dump(sweep_yaml(f"overhead_{lbl}", steps, cache)))
        paths[lbl + "_again"] = work / f"{lbl}_again.yaml"  # the same trials under another name
        paths[lbl + "_again"].write_text(yaml.safe_dump(sweep_yaml(f"overhead_{lbl}_again", steps, cache)))
    out: List[str] = [f"# sweep overhead ({os.cpu_count()} CPUs on the machine, {args.cores} given to Ray)"]
    if lengths:  # the corpus cache is built once, so no variant pays for tokenising it
        build_cache(paths[lengths[0][0]], env, work)
    try:
        for lbl, steps in lengths:
            if args.cold_store_template:
                env["GMLP_ABLATE_CACHE"] = tempfile.mkdtemp(prefix=f"cache_{lbl}_", dir=work)
            ours = run_ours(work, paths[lbl], f"overhead_{lbl}", args.cores, env)
            again = None if args.skip_again else run_ours(work, paths[lbl + "_again"], f"overhead_{lbl}_again",
                                                          args.cores, env, store=f"overhead_{lbl}.db")
            hand = None if args.skip_hand else run_hand(work, paths[lbl], f"overhead_{lbl}", args.cores, env)
            out += summarize(lbl, steps, args.cores, ours, hand, again)
            print("\n".join(out), flush=True)
            out = []
            if args.plain:
                subprocess.run([sys.executable, "-c", PLAIN, str(paths[lbl]), str(work / f"{lbl}.plain.json")],
                               check=True, env=env, cwd=work)
                pl = json.loads((work / f"{lbl}.plain.json").read_text())
                out.append(f"\nplain loop, one after another, no Ray, no MLflow: wall {pl['wall']:.1f} s, "
                           f"sum of time/total_s {sum(pl['totals']):.1f} s (ideal wall on {args.cores} cores: "
                           f"{sum(pl['totals']) / args.cores:.1f} s; ours / ideal = "
                           f"{ours['wall'] / (sum(pl['totals']) / args.cores):.2f}); {load()}")
                print(out.pop(), flush=True)
        if not args.no_memory:
            from driver_memory import measure

            out += ["", *measure(work / "memory", env, [10, 100], args.cores)]
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    print("\n".join(out))
    print(f"\nfiles: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

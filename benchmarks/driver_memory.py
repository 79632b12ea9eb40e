"""The sweep driver's memory as trials accumulate: ``python -m gmlp_ablate.run`` on tiny trials.

Three runs of the real runner, each on a fresh local Ray instance, sqlite store and Ray
storage folder (tiny mqar trials, 20 steps, 1 CPU each):

  rss 10, rss N   the driver's RSS after each trial ends (sampled in Tune's callback, after
                  the runner's own), when Tune has returned, and its peak (``ru_maxrss``);
  trace N         the same N trials with ``tracemalloc`` on in the driver (its RSS is not
                  used: tracing costs memory), tracing from the end of the first trial on (so
                  start-up is not traced): the Python heap allocated since then and still live
                  after a ``gc.collect()`` when trial 10 ends, when trial N ends (Tune still holds every trial) and when Tune
                  has returned. Each live allocation is charged to the first frame of its
                  stack (most recent first) in one of: ours (``gmlp_ablate``), Ray, MLflow,
                  SQLAlchemy (MLflow's store), torch; else "other". Growth between trial 10 and
                  trial N / (N - 10) is the per-trial share of each; the top growing lines too.

Nothing in the runner changes for this: the driver process imports ``gmlp_ablate.run``,
wraps one callback method and ``_close_runs`` to take its measures, and calls the CLI.

Usage: python benchmarks/driver_memory.py [--trials 10 100] [--num-cpus 1] [--frames 16]
           [--no-trace] [--top 15] [--out DIR] [--trials-per-tune-run N]
Also run by ``benchmarks/sweep_overhead.py`` as its memory section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_overhead import load, runner_env  # noqa: E402


def tiny_yaml(n: int) -> Dict[str, Any]:
    """A sweep of ``n`` tiny trials (one arm, ``n`` seeds): a few seconds each on one core."""
    return {
        "name": f"memory_{n}",
        "base": {"task": {"name": "mqar", "num_kv_pairs": 2, "seq_len": 16, "num_val": 64},
                 "model": {"dim": 16, "depth": 1},
                 "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "warmup_steps": 2}},
        "grid": {"model.sgu_split": [True]},
        "seeds": list(range(n)),
        "resources": {"cpu": 1, "gpu": 0},
    }

# Run as ``python -c DRIVER stats.json MARKS ARGS...`` (MARKS: trial counts, comma separated, at
# which to take a traced snapshot; DRIVER_MEMORY_FRAMES > 0 turns tracing on).
DRIVER = r"""
import gc, json, os, resource, sys, tracemalloc
FRAMES = int(os.environ.get("DRIVER_MEMORY_FRAMES", "0"))
import psutil
from gmlp_ablate import run
ME = psutil.Process()
out, marks, argv = sys.argv[1], {int(x) for x in sys.argv[2].split(",") if x}, sys.argv[3:]
st = {"rss": [], "heap": {}, "worker_rss": 0}
GROUPS = (("/gmlp_ablate/", "ours"), ("/ray/", "Ray"), ("/mlflow/", "MLflow"), ("/sqlalchemy/", "SQLAlchemy"),
          ("/torch/", "torch"))
SELF = ("<string>", tracemalloc.__file__)

def group_of(filename):
    for part, name in GROUPS:
        if part in filename:
            return name
    return None

def heap():
    # Live Python allocations by group and by line, charged to the first frame (most recent
    # first) in a known package; the measuring code itself left out.
    gc.collect()
    snap = tracemalloc.take_snapshot()
    groups, lines, total = {}, {}, 0
    for tr in snap.traces:
        frames = tr.traceback  # oldest first
        if any(f.filename in SELF for f in frames):
            continue
        name, site = "other", f"{frames[-1].filename}:{frames[-1].lineno}"
        for f in reversed(frames):
            g = group_of(f.filename)
            if g:
                name, site = g, f"{f.filename}:{f.lineno}"
                break
        groups[name] = groups.get(name, 0) + tr.size
        key = f"{name}|{site}|{frames[-1].filename}:{frames[-1].lineno}"
        lines[key] = lines.get(key, 0) + tr.size
        total += tr.size
    del snap
    return {"total": total, "groups": groups, "lines": lines}

def patch():
    from gmlp_ablate import callbacks
    orig = callbacks.MLflowMirror.on_trial_complete
    def on_trial_complete(self, *a, **k):
        orig(self, *a, **k)
        st["rss"].append(ME.memory_info().rss)
        for p in ME.children(recursive=True):  # the trials' worker processes
            try:
                if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::"):
                    st["worker_rss"] = max(st["worker_rss"], p.memory_info().rss)
            except psutil.Error:
                pass
        if FRAMES and len(st["rss"]) == 1:  # traced from here on: what later trials add
            tracemalloc.start(FRAMES)
        if FRAMES and len(st["rss"]) in marks:
            st["heap"][str(len(st["rss"]))] = heap()
    callbacks.MLflowMirror.on_trial_complete = on_trial_complete

start_ray = run._start_ray
def start_ray_then_patch(*a, **k):
    try:
        return start_ray(*a, **k)
    finally:
        patch()
run._start_ray = start_ray_then_patch
close_runs = run._close_runs
def close_and_measure(*a, **k):
    st["rss_after_tune"] = ME.memory_info().rss
    if FRAMES:
        st["heap"]["after_tune"] = heap()
    return close_runs(*a, **k)
run._close_runs = close_and_measure
real_exit = os._exit
def exit_with_stats(code):
    st["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st["code"] = code
    json.dump(st, open(out, "w"))
    real_exit(code)
os._exit = exit_with_stats
sys.argv = ["gmlp_ablate.run", *argv]
run.cli()
"""

MB = 2 ** 20


def run_driver(work: Path, n: int, cpus: int, env: Dict[str, str], frames: int = 0,
               marks: Optional[List[int]] = None, per_run: Optional[int] = None) -> Dict[str, Any]:
    """One run of the runner over ``n`` tiny trials; the driver's stats (see :data:`DRIVER`)."""
    import yaml

    name = f"memory_{n}" + ("_traced" if frames else "")
    sweep = work / f"{name}.yaml"
    sweep.write_text(yaml.safe_dump({**tiny_yaml(n), "name": name}))
    stats = work / f"{name}.json"
    before = load()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(stats), ",".join(map(str, marks or [])), str(sweep),
                           "--tracking-uri", f"sqlite:///{work / (name + '.db')}",
                           "--storage", str(work / f"ray_results_{name}"), "--num-cpus", str(cpus),
                           *(["--trials-per-tune-run", str(per_run)] if per_run else [])],
                          env={**env, "DRIVER_MEMORY_FRAMES": str(frames)}, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    st = json.loads(stats.read_text())
    if len(st["rss"]) != n:
        raise SystemExit(f"{name}: {len(st['rss'])} trial ends seen, expected {n}")
    return {**st, "wall": wall, "load": f"{before} / {load()}"}


def slope(ys: List[float], first: int) -> float:
    """Least-squares slope of ys[first-1:] against the trial count (bytes per trial)."""
    pts = [(i + 1, y) for i, y in enumerate(ys) if i + 1 >= first]
    if len(pts) < 2:
        return 0.0
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def rss_lines(small: Dict[str, Any], big: Dict[str, Any], n_small: int, n_big: int) -> List[str]:
    out = ["| trials | driver RSS when trial 10 ended (MB) | when the last ended (MB) | when Tune returned (MB) | "
           "driver peak (MB) | peak RSS of one worker (MB) | wall (s) | load before / after |",
           "|---|---|---|---|---|---|---|---|"]
    for n, r in ((n_small, small), (n_big, big)):
        out.append(f"| {n} | {r['rss'][min(10, n) - 1] / MB:.1f} | {r['rss'][-1] / MB:.1f} | "
                   f"{r['rss_after_tune'] / MB:.1f} | {r['peak_rss'] / MB:.1f} | {r['worker_rss'] / MB:.0f} | "
                   f"{r['wall']:.0f} | {r['load']} |")
    per_runs = (big["rss"][-1] - small["rss"][-1]) / (n_big - n_small)
    per_fit = slope(big["rss"], 10)
    out.append(f"\nper-trial growth of the driver's RSS: {per_runs / 1024:.1f} KB between the runs' last trial ends "
               f"({n_small} vs {n_big} trials); {per_fit / 1024:.1f} KB as the least-squares slope over trial ends "
               f"10..{n_big} of the {n_big}-trial run; peak {(big['peak_rss'] - small['peak_rss']) / MB:+.1f} MB "
               f"from {n_small} to {n_big} trials")
    return out


def heap_lines(tr: Dict[str, Any], n: int, top: int) -> List[str]:
    a, b, c = tr["heap"]["10"], tr["heap"][str(n)], tr["heap"]["after_tune"]
    names = sorted(set(a["groups"]) | set(b["groups"]) | set(c["groups"]),
                   key=lambda g: -(b["groups"].get(g, 0) - a["groups"].get(g, 0)))
    d_total = b["total"] - a["total"] or 1
    out = [f"| Python heap allocated since trial 1 ended and live (after gc) | at trial 10 (MB) | at trial {n} (MB) | "
           "growth per trial (KB) | share of the growth | when Tune returned (MB) |", "|---|---|---|---|---|---|"]
    for g in names:
        x, y, z = a["groups"].get(g, 0), b["groups"].get(g, 0), c["groups"].get(g, 0)
        out.append(f"| {g} | {x / MB:.2f} | {y / MB:.2f} | {(y - x) / (n - 10) / 1024:.2f} | {(y - x) / d_total:.0%} | "
                   f"{z / MB:.2f} |")
    out.append(f"| all | {a['total'] / MB:.2f} | {b['total'] / MB:.2f} | {d_total / (n - 10) / 1024:.2f} | 100% | "
               f"{c['total'] / MB:.2f} |")
    for label, end in ((f"trial 10 -> trial {n}", b), ("trial 10 -> Tune returned", c)):
        diffs = sorted(((end["lines"].get(k, 0) - a["lines"].get(k, 0), k)
                        for k in set(a["lines"]) | set(end["lines"])), reverse=True)[:top]
        out += [f"\nTop growing lines, {label} (charged to | allocated at; bytes per trial over {n - 10}):", ""]
        for d, k in diffs:
            g, site, inner = k.split("|")
            out.append(f"- {g}: {_short(site)}" + (f" (at {_short(inner)})" if inner != site else "")
                       + f": {d / (n - 10):+.0f} B")
    return out


def _short(path: str) -> str:
    for mark in ("site-packages/", "/gmlp_ablate/"):
        if mark in path:
            return ("gmlp_ablate/" if mark == "/gmlp_ablate/" else "") + path.split(mark, 1)[1]
    return path.replace(sys.prefix, "<venv>").replace(sys.base_prefix, "<python>")


def measure(work: Path, env: Dict[str, str], trials: List[int], cpus: int, frames: int = 16,
            top: int = 15, rss: bool = True, per_run: Optional[int] = None) -> List[str]:
    """The markdown lines of the memory section (RSS runs, then the traced run)."""
    n_small, n_big = trials
    work.mkdir(parents=True, exist_ok=True)
    out = [f"### Driver memory: tiny trials (mqar, 20 steps), {cpus} CPU(s) given to Ray, "
           + (f"Tune runs of at most {per_run} trials\n" if per_run else "the runner's default Tune runs\n")]
    if rss:
        small = run_driver(work, n_small, cpus, env, per_run=per_run)
        big = run_driver(work, n_big, cpus, env, per_run=per_run)
        out += rss_lines(small, big, n_small, n_big)
    if frames:
        tr = run_driver(work, n_big, cpus, env, frames=frames, marks=[10, n_big], per_run=per_run)
        out += ["", f"Where it goes ({n_big} trials again, tracemalloc with {frames} frames; its wall "
                f"{tr['wall']:.0f} s, load {tr['load']}):", ""]
        out += heap_lines(tr, n_big, top)
        if rss:
            h = tr["heap"]
            per_heap = (h[str(n_big)]["total"] - h["10"]["total"]) / (n_big - 10)
            per_ray = (h[str(n_big)]["groups"].get("Ray", 0) - h["10"]["groups"].get("Ray", 0)) / (n_big - 10)
            per_ours = (h[str(n_big)]["groups"].get("ours", 0) - h["10"]["groups"].get("ours", 0)) / (n_big - 10)
            per_rss = slope(big["rss"], 10)
            out.append(f"\nOf the driver's RSS growth ({per_rss / 1024:.0f} KB per trial, slope of the untraced run), "
                       f"{per_heap / 1024:.0f} KB is live Python heap: Ray's {per_ray / 1024:.1f} KB "
                       f"({per_ray / per_rss:.0%} of the RSS growth), ours {per_ours / 1024:.2f} KB; the remaining "
                       f"{(per_rss - per_heap) / 1024:.0f} KB is outside the Python heap (native allocations, "
                       "allocator fragmentation).")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs=2, default=[10, 100], metavar=("SMALL", "BIG"))
    p.add_argument("--num-cpus", type=int, default=1, help="CPUs of each local Ray instance")
    p.add_argument("--frames", type=int, default=16, help="tracemalloc frames per allocation")
    p.add_argument("--no-trace", action="store_true", help="only the RSS runs")
    p.add_argument("--no-rss", action="store_true", help="only the traced run")
    p.add_argument("--top", type=int, default=15, help="growing lines to list")
    p.add_argument("--out", default=None, help="keep stores, logs and stats here (default: a temp folder)")
    p.add_argument("--trials-per-tune-run", type=int, default=None,
                   help="the runner's flag of that name (default: the runner's default)")
    args = p.parse_args()
    if args.trials[0] < 10 or args.trials[1] <= args.trials[0]:
        p.error("--trials SMALL BIG: 10 <= SMALL < BIG")
    work = Path(args.out or tempfile.mkdtemp(prefix="driver_memory_"))
    if work.exists() and args.out:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = runner_env()
    try:
        lines = measure(work, env, args.trials, args.num_cpus, 0 if args.no_trace else args.frames, args.top,
                        not args.no_rss, args.trials_per_tune_run)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    print("\n".join(lines))
    print(f"\nfiles: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

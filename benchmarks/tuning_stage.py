"""Cost of a sweep's tuning stage (stage 1), with and without ``tune.scheduler: asha``.

One sweep that is mostly stage 1 (2 arms, ``model.sgu_split`` true/false; a tuning grid of
8 candidates per arm, ``train.lr`` x ``train.warmup_steps`` in the shipped sweeps' style;
short charlm trials of a few seconds on one core; then one final seed per arm) runs twice
through the real runner, ``python -m gmlp_ablate.run``, each time on a fresh local Ray
instance (``--num-cpus CORES``), a fresh sqlite store and Ray storage folder:

  none  ``tune.scheduler: none``: every candidate trains all ``tune.steps``;
  asha  ``tune.scheduler: asha``: one ASHA per arm, rungs at the arm's evaluations.

Reported for each, from the tuning trials' runs in the store (MLflow start and end times:
the driver opens a trial's run when Tune starts it and closes it when it ends):

- stage-1 wall: the first tuning trial's start to the last one's end; and the wall of the
  whole process (start-up, stage 2 and shut-down included);
- the sum of the tuning trials' own durations (end - start of each run; a stopped trial has
  no ``time/total_s``, so the run's span is used for every trial alike);
- orchestration efficiency = that sum / (CORES x stage-1 wall): the share of the cores the
  tuning trials held during stage 1, in the sense of benchmarks/SWEEP_OVERHEAD.md (there the
  trial time is ``time/total_s`` and the wall that of the whole process);
- trials ASHA stopped early (tag ``stopped_at_step``) and the steps trained in all;
- each arm's selected setting, and whether the two variants selected the same one.

The corpus cache is built before, so neither variant pays for tokenising. ASHA's saving
depends on the order in which candidates reach its rungs (the first of an arm's trials at a
rung always continues): the grid is written in ascending order, as the shipped sweeps are.

Usage: python benchmarks/tuning_stage.py [--quick] [--cores 2] [--out DIR]
``--quick``: 4 tiny candidates per arm of 40 steps (checks that the script works; its
figures are dominated by start-up). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_overhead import ROOT, build_cache, load, runner_env  # noqa: E402

sys.path.insert(0, str(ROOT))
from gmlp_ablate.names import (  # noqa: E402
    STAGE_FINAL, STAGE_TUNE, TAG_ARM, TAG_ROLE, TAG_STAGE, TAG_STOPPED_AT, TRIAL,
)

FULL = {
    "task": {"name": "charlm", "seq_len": 128, "val_tokens": 8192, "corpus_bytes": 2_000_000},
    "model": {"arch": "gmlp", "dim": 64, "depth": 2, "ff_mult": 4},
    "train": {"steps": 160, "batch_size": 16, "eval_every": 20, "log_every": 20, "warmup_steps": 10},
    "space": {"train.lr": [1.0e-3, 2.0e-3, 4.0e-3, 8.0e-3], "train.warmup_steps": [10, 40]},
}
QUICK = {
    "task": {"name": "charlm", "seq_len": 32, "val_tokens": 1024, "corpus_bytes": 200_000},
    "model": {"arch": "gmlp", "dim": 16, "depth": 1, "ff_mult": 4},
    "train": {"steps": 40, "batch_size": 8, "eval_every": 5, "log_every": 5, "warmup_steps": 2},
    "space": {"train.lr": [1.0e-6, 1.0e-3, 3.0e-3, 1.0e-2]},
}


def sweep_yaml(name: str, size: Dict[str, Any], scheduler: str, cache: Path) -> Dict[str, Any]:
    budget = 1
    for values in size["space"].values():
        budget *= len(values)
    return {
        "name": name,
        "description": f"tuning-stage cost, scheduler {scheduler}",
        "base": {"task": {**size["task"], "cache_dir": str(cache)}, "model": size["model"], "train": size["train"]},
        "grid": {"model.sgu_split": [True, False]},
        "seeds": [0],
        "metric": {"name": "val/loss", "mode": "min"},
        "resources": {"cpu": 1, "gpu": 0},
        "tune": {"space": size["space"], "budget": budget, "steps": size["train"]["steps"], "seeds": [1000],
                 "select": "val/loss", "mode": "min", "scheduler": scheduler},
    }


def run_variant(work: Path, sweep_path: Path, name: str, cores: int, env: Dict[str, str]) -> Dict[str, Any]:
    """``python -m gmlp_ablate.run`` on its own store and storage folder; the runs it left."""
    uri = f"sqlite:///{work / (name + '.db')}"
    before = load()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.run", str(sweep_path), "--tracking-uri", uri,
                           "--storage", str(work / f"{name}_ray"), "--num-cpus", str(cores)],
                          env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"wall": wall, "load": f"{before} / {load()}", **figures(uri, name)}


def figures(uri: str, name: str) -> Dict[str, Any]:
    """Stage-1 figures and each arm's selected setting, from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = '{TRIAL}'", max_results=10_000)
    bad = [r.info.status for r in runs if r.info.status != "FINISHED"]
    if bad:
        raise SystemExit(f"{name}: trials not FINISHED: {bad}")
    tune = [r for r in runs if r.data.tags.get(TAG_STAGE) == STAGE_TUNE]
    final = [r for r in runs if r.data.tags.get(TAG_STAGE) == STAGE_FINAL]
    starts = [r.info.start_time / 1000 for r in tune]
    ends = [r.info.end_time / 1000 for r in tune]
    stopped = [r for r in tune if TAG_STOPPED_AT in r.data.tags]
    steps = sum(int(r.data.tags[TAG_STOPPED_AT]) if TAG_STOPPED_AT in r.data.tags else int(r.data.params["train.steps"])
                for r in tune)
    return {
        "trials": len(tune),
        "stage1_wall": max(ends) - min(starts),
        "trial_time": sum(e - s for s, e in zip(starts, ends)),
        "stopped": len(stopped),
        "stopped_at": sorted(int(r.data.tags[TAG_STOPPED_AT]) for r in stopped),
        "steps": steps,
        "full_steps": sum(int(r.data.params["train.steps"]) for r in tune),
        "final": {r.data.tags[TAG_ARM]: r.data.params for r in final},
    }


def table(variants: Dict[str, Dict[str, Any]], space_keys: List[str], cores: int) -> List[str]:
    names = list(variants)
    rows = [("tuning trials", lambda v: str(v["trials"])),
            ("stage-1 wall: first tuning trial start -> last end (s)", lambda v: f"{v['stage1_wall']:.1f}"),
            ("whole process wall (s)", lambda v: f"{v['wall']:.1f}"),
            ("sum of the tuning trials' durations (s)", lambda v: f"{v['trial_time']:.1f}"),
            (f"efficiency: sum / ({cores} x stage-1 wall)", lambda v: f"**{v['trial_time'] / (cores * v['stage1_wall']):.2f}**"),
            ("trials stopped early by ASHA (at step)", lambda v: f"{v['stopped']}" + (
                f" ({', '.join(map(str, v['stopped_at']))})" if v["stopped_at"] else "")),
            ("steps trained in stage 1 (of all candidates' full runs)",
             lambda v: f"{v['steps']:,} of {v['full_steps']:,} ({v['steps'] / v['full_steps']:.0%})")]
    out = ["| | " + " | ".join(f"`scheduler: {n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {label} | " + " | ".join(f(variants[n]) for n in names) + " |" for label, f in rows]
    arms = sorted(set().union(*(v["final"] for v in variants.values())))
    for arm in arms:
        picked = [{k: variants[n]["final"].get(arm, {}).get(k) for k in space_keys} for n in names]
        same = "same" if all(p == picked[0] for p in picked) else "**different**"
        out.append(f"| selected for {arm} ({same}) | "
                   + " | ".join(", ".join(f"{k.split('.')[-1]} {v}" for k, v in p.items()) for p in picked) + " |")
    out.append("| load (1, 5, 15 min) before / after | " + " | ".join(variants[n]["load"] for n in names) + " |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a much smaller version (checks that the script works)")
    p.add_argument("--cores", type=int, default=2, help="CPUs given to each Ray instance")
    p.add_argument("--out", default=None, help="keep stores, logs and sweep files here (default: a temp folder)")
    args = p.parse_args()

    import yaml

    size = QUICK if args.quick else FULL
    work = Path(args.out or tempfile.mkdtemp(prefix="tuning_stage_"))
    if work.exists() and args.out:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = runner_env()
    env["PYTHONPATH"] = str(ROOT)  # this checkout's runner, whatever the folder it runs in
    variants: Dict[str, Dict[str, Any]] = {}
    try:
        for scheduler in ("none", "asha"):
            name = f"tuning_{scheduler}"
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(sweep_yaml(name, size, scheduler, work / "cache")))
            if not variants:
                build_cache(path, env, work)
            variants[scheduler] = run_variant(work, path, name, args.cores, env)
            print(f"{scheduler}: done in {variants[scheduler]['wall']:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    n_arms = len(variants["none"]["final"])
    cands = variants["none"]["trials"] // max(n_arms, 1)
    print(f"# tuning stage{' (--quick)' if args.quick else ''}: {n_arms} arms x {cands} candidates x "
          f"{size['train']['steps']} steps (eval every {size['train']['eval_every']}), "
          f"{args.cores} cores given to Ray\n")
    print("\n".join(table(variants, list(size["space"]), args.cores)))
    print(f"\nfiles: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

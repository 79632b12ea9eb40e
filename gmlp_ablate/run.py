"""The sweep runner: ``python -m gmlp_ablate.run SWEEP.yaml [key=value ...]``.

Expands the sweep, skips trials that already have a FINISHED run in MLflow, runs the rest as
Ray Tune trials (one per expanded trial) and logs them from the driver through a Tune
callback: one MLflow writer per sweep, metrics in batches, trial processes free of MLflow.
This is the only module that imports Ray.

Exit codes: 0 every trial finished, 1 some failed (listed), 2 bad input (nothing run or logged).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from gmlp_ablate.config import ConfigError, Sweep, Trial, load_sweep, merge_trial, to_dict

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
HEARTBEAT_EVERY_S = 30.0
STATUS_EVERY_S = 30.0


# --------------------------------------------------------------------------------------
# The trial side (runs in a Ray worker; imports torch, never MLflow)
# --------------------------------------------------------------------------------------


def run_trial(config: Dict[str, Any]) -> None:
    """Tune function trainable: one trial of the sweep, resumed from Tune's checkpoint."""
    from ray import tune

    from gmlp_ablate.train import NonFiniteLossError, train

    cfg = merge_trial(config["trial"]["config"])
    if not cfg.train.threads:
        cfg.train.threads = max(1, int(config["cpu"]))
    resume = None
    ckpt = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="gmlp_ablate_ckpt_") as ckdir:
        if ckpt is not None:
            resume = ckpt.to_directory(os.path.join(ckdir, "resume"))

        def report(metrics: Dict[str, Any], step: int, checkpoint: Optional[str]) -> None:
            payload = {**metrics, "step": step}
            if checkpoint:
                tune.report(payload, checkpoint=tune.Checkpoint.from_directory(os.path.dirname(checkpoint)))
            else:
                tune.report(payload)

        try:
            final = train(cfg, report=report, checkpoint_dir=os.path.join(ckdir, "out"), resume_from=resume)
        except NonFiniteLossError as e:
            # Deterministic: a retry would diverge again, so end the trial with its reason.
            tune.report({"step": e.step, "nonfinite_step": e.step, "error": str(e)})
            return
        tune.report({**final, "step": cfg.train.steps, "final": 1})


# --------------------------------------------------------------------------------------
# The driver side
# --------------------------------------------------------------------------------------


@dataclass
class TrialState:
    trial: Trial
    run_id: Optional[str] = None
    last_step: int = -1
    status: str = "PENDING"
    error: Optional[str] = None
    failure: Optional[str] = None
    final: Dict[str, float] = field(default_factory=dict)


def _metric_items(result: Dict[str, Any]) -> Dict[str, float]:
    """Our metrics in a Tune result: keys with a '/' and a finite-or-not float value."""
    out = {}
    for k, v in result.items():
        if "/" in k and not k.startswith("config") and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _error_of(trial: Any) -> tuple:
    """(one-line message, failure kind) of a Tune trial that errored."""
    text = ""
    try:  # the trial's local error file is written before the callbacks run
        with open(trial.error_file) as f:
            text = f.read()
    except (OSError, TypeError):
        try:
            err = trial.get_error()  # the synced copy in the storage path
            text = str(err) if err is not None else ""
        except Exception:
            text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kind = "exception"
    died = ("ActorDiedError", "RayActorError", "died unexpectedly", "WorkerCrashedError", "SIGKILL",
            "OutOfMemoryError", "NodeDiedError")
    if any(s in text for s in died):
        kind = "worker_died"
    msg = ""
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln) and not ln.startswith("File "):
            msg = ln
            break
    return (msg or (lines[-1] if lines else "trial failed (no error recorded)")), kind


def make_callback(tracker: Any, experiment_id: str, parent_id: str, sweep: Sweep, states: Dict[str, TrialState]) -> Any:
    """A Tune Callback that mirrors every trial into MLflow and prints live progress."""
    from ray.tune import Callback

    from gmlp_ablate.tracking import TAG_COMMIT, git_commit

    metric, mode = sweep.config.metric.name, sweep.config.metric.mode
    total = len(states)
    run_tags = {TAG_COMMIT: git_commit()}

    class MLflowTrials(Callback):
        def __init__(self) -> None:
            self.last_beat = time.monotonic()
            self.last_status = time.monotonic()
            self.best: Optional[tuple] = None

        def _state(self, trial: Any) -> TrialState:
            return states[trial.config["trial"]["key"]]

        def _counts(self) -> str:
            c = {s: 0 for s in ("FINISHED", "FAILED", "RUNNING")}
            for st in states.values():
                c[st.status] = c.get(st.status, 0) + 1
            best = f"  best {metric} {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
            return f"[{c['FINISHED']}/{total} done, {c['RUNNING']} running, {c['FAILED']} failed]{best}"

        def _say(self, text: str) -> None:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

        def on_trial_start(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            if st.run_id is None:  # a retried trial keeps its run
                st.run_id = tracker.start_trial(experiment_id, parent_id, st.trial, sweep.name, run_tags)
            st.status = "RUNNING"

        def on_trial_result(self, iteration: int, trials: List[Any], trial: Any, result: Dict[str, Any], **info: Any) -> None:
            st = self._state(trial)
            step = int(result.get("step", 0))
            tags = {k[len("info."):]: v for k, v in result.items() if k.startswith("info.")}
            if tags:
                tracker.set_tags(st.run_id, {("device" if k == "device" else k): v for k, v in tags.items()})
            if "nonfinite_step" in result:
                st.error, st.failure = str(result.get("error")), "nonfinite"
                tracker.set_tags(st.run_id, {"nonfinite_step": str(result["nonfinite_step"])})
                return
            metrics = _metric_items(result)
            if result.get("final"):
                st.final = metrics
                return
            # After a retry resumed from a checkpoint, steps already logged are not logged twice.
            if step > st.last_step or (step == 0 and st.last_step < 0):
                if metrics:
                    tracker.log_metrics(st.run_id, metrics, step)
                st.last_step = step

        def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            if st.failure == "nonfinite":
                st.status = "FAILED"
                tracker.end_trial(st.run_id, "FAILED", error=st.error, failure="nonfinite")
                self._say(f"{st.trial.arm} seed={st.trial.seed}: FAILED ({st.error})  {self._counts()}")
                return
            st.status = "FINISHED"
            if st.final:
                tracker.log_metrics(st.run_id, {k: v for k, v in st.final.items() if k.startswith(("perf/", "time/"))},
                                    st.trial.config.train.steps)
            tracker.end_trial(st.run_id, "FINISHED")
            value = st.final.get(metric)
            if value is not None and math.isfinite(value):
                better = self.best is None or (value < self.best[0] if mode == "min" else value > self.best[0])
                if better:
                    self.best = (value, f"{st.trial.arm} seed={st.trial.seed}")
            shown = f"{metric} {value:.4g}" if value is not None else ""
            self._say(f"{st.trial.arm} seed={st.trial.seed}: done {shown}  {self._counts()}")

        def on_trial_recover(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            msg, _ = _error_of(trial)
            self._say(f"{st.trial.arm} seed={st.trial.seed}: error, retrying from its last checkpoint ({msg})")

        def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            st.error, st.failure = _error_of(trial)
            st.status = "FAILED"
            if st.run_id is None:
                st.run_id = tracker.start_trial(experiment_id, parent_id, st.trial, sweep.name, run_tags)
            tracker.end_trial(st.run_id, "FAILED", error=st.error, failure=st.failure)
            self._say(f"{st.trial.arm} seed={st.trial.seed}: FAILED ({st.error})  {self._counts()}")

        def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
            now = time.monotonic()
            if now - self.last_beat > HEARTBEAT_EVERY_S:
                tracker.heartbeat(parent_id)
                self.last_beat = now
            if now - self.last_status > STATUS_EVERY_S:
                self._say(self._counts())
                self.last_status = now

    return MLflowTrials()


def gpu_per_trial(resources: Any, cluster_gpus: float) -> float:
    """``auto``: 1/trials_per_gpu of a GPU when the cluster has GPUs, else 0."""
    if resources.gpu == "auto":
        return 1.0 / resources.trials_per_gpu if cluster_gpus > 0 else 0.0
    return float(resources.gpu)


def _check_address(address: Optional[str]) -> None:
    """Fail fast (ConfigError) on a cluster address nobody answers at."""
    if not address or address in ("local", "auto"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", f"expected HOST:PORT, ray://HOST:PORT, 'auto' or 'local', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise ConfigError("--address", f"no Ray cluster answers at {address} ({e.strerror or e})") from None


def print_trial_table(sweep: Sweep, gpu: Optional[float], done: Dict[str, str], out: Any = None) -> None:
    """The expanded trial table (arm, seed, key, resources, state) and counts."""
    out = out or sys.stdout
    res = sweep.config.resources
    gpu_txt = "auto" if gpu is None else f"{gpu:g}"
    rows = [(t.arm + (" (baseline)" if t.baseline else ""), str(t.seed), t.key, f"{res.cpu:g}", gpu_txt,
             "finished" if t.key in done else "to run") for t in sweep.trials]
    head = ("arm", "seed", "trial_key", "cpu", "gpu", "state")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head), file=out)
    print(fmt.format(*("-" * w for w in widths)), file=out)
    for r in rows:
        print(fmt.format(*r), file=out)
    n_done = sum(1 for t in sweep.trials if t.key in done)
    print(f"\n{len(sweep.trials)} trials: {len(sweep.arms)} arms x {len(sweep.config.seeds)} seeds; "
          f"{n_done} already finished, {len(sweep.trials) - n_done} to run", file=out)


def print_summary(tracker: Any, experiment_id: str, sweep: Sweep, out: Any = None) -> None:
    """Per arm: the sweep metric's mean over the seeds with a FINISHED run."""
    out = out or sys.stdout
    metric = sweep.config.metric.name
    runs = tracker.finished_runs_by_key(experiment_id)
    print(f"\n{'arm':<32} {'n':>3} {metric + ' (mean)':>18}", file=out)
    for arm in sweep.arms:
        vals = [runs[t.key].data.metrics.get(metric) for t in sweep.trials if t.arm == arm and t.key in runs]
        vals = [v for v in vals if v is not None]
        mean = f"{sum(vals) / len(vals):.4g}" if vals else "-"
        print(f"{arm:<32} {len(vals):>3} {mean:>18}", file=out)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gmlp_ablate.run",
                                description="Run a sweep file on Ray Tune, logging every trial to MLflow.")
    p.add_argument("sweep", help="sweep YAML file (see sweeps/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value for `base` (task.*, model.*, train.*), "
                   "grid.KEY=[...] to replace an axis, seeds=[...], metric.name=..., resources.cpu=...")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trial table and counts; run nothing")
    p.add_argument("--address", default=None, help="an existing Ray cluster (HOST:PORT, ray://HOST:PORT, auto); "
                   "default: a fresh local Ray instance")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    p.add_argument("--rerun", action="store_true", help="run every trial again, even those already finished")
    p.add_argument("--retries", type=int, default=1, help="retries per failed trial, resumed from its checkpoint")
    p.add_argument("--storage", default=None, help="Ray Tune storage folder (default: ~/ray_results)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    return p.parse_intermixed_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = "python -m gmlp_ablate.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise ConfigError("--max-concurrent", f"must be >= 1, got {args.max_concurrent}")
        if args.retries < 0:
            raise ConfigError("--retries", f"must be >= 0, got {args.retries}")
        _check_address(args.address)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from gmlp_ablate.tracking import Tracker, TrackingError

    try:
        tracker = Tracker(args.tracking_uri)
        if args.dry_run:
            done = _finished_if_store_exists(tracker, sweep)
            print_trial_table(sweep, None, done)
            return EXIT_OK
        tracker.check()
        experiment_id = tracker.experiment_id(sweep.name)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    closed = tracker.close_stale(experiment_id)
    if closed:
        print(f"closed {len(closed)} run(s) left RUNNING by a sweep driver that stopped")
    done = {} if args.rerun else tracker.finished_keys(experiment_id)
    elsewhere = tracker.running_elsewhere(experiment_id)
    todo = [t for t in sweep.trials if t.key not in done and t.key not in elsewhere]
    n_skip = len(sweep.trials) - len(todo)
    print(f"sweep '{sweep.name}': {len(sweep.trials)} trials ({len(sweep.arms)} arms x {len(sweep.config.seeds)} seeds)")
    if done:
        print(f"skipping {sum(1 for t in sweep.trials if t.key in done)} trial(s) already FINISHED in {tracker.uri}")
    if elsewhere:
        print(f"skipping {sum(1 for t in sweep.trials if t.key in elsewhere)} trial(s) running under another live driver")
    if not todo:
        print("nothing to run: every trial has a finished run (use --rerun to run them again)")
        print_summary(tracker, experiment_id, sweep)
        _print_next_steps(tracker.uri, sweep.name)
        return EXIT_OK

    states = {t.key: TrialState(trial=t) for t in todo}
    parent_id = tracker.start_parent(experiment_id, sweep, command)
    status = "FAILED"
    try:
        _run_on_ray(args, sweep, todo, states, tracker, experiment_id, parent_id)
        status = "FINISHED" if all(s.status == "FINISHED" for s in states.values()) else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted", file=sys.stderr)
    finally:
        for st in states.values():
            if st.run_id is not None and st.status == "RUNNING":
                tracker.end_trial(st.run_id, "KILLED", error="the sweep was interrupted", failure="interrupted")
                st.status = "FAILED"
        tracker.set_tags(parent_id, {"trials.run": str(len(todo)), "trials.skipped": str(n_skip),
                                     "trials.failed": str(sum(s.status != "FINISHED" for s in states.values()))})
        tracker.end_run(parent_id, status)

    failed = [s for s in states.values() if s.status != "FINISHED"]
    print_summary(tracker, experiment_id, sweep)
    if failed:
        print(f"\n{len(failed)} trial(s) failed:")
        for s in failed:
            print(f"  {s.trial.arm} seed={s.trial.seed} ({s.trial.key}): {s.failure or 'not run'}: {s.error or ''}")
    _print_next_steps(tracker.uri, sweep.name)
    return EXIT_FAILED if failed else EXIT_OK


def _finished_if_store_exists(tracker: Any, sweep: Sweep) -> Dict[str, str]:
    """Finished trial keys, read only when the store already exists (a dry run creates nothing)."""
    if not tracker.store_exists():
        return {}
    try:
        eid = tracker.experiment_id(sweep.name, create=False)
        return tracker.finished_keys(eid) if eid else {}
    except Exception:
        return {}


def _run_on_ray(args: argparse.Namespace, sweep: Sweep, todo: List[Trial], states: Dict[str, TrialState],
                tracker: Any, experiment_id: str, parent_id: str) -> None:
    import logging

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    address = args.address or "local"
    init_kwargs: Dict[str, Any] = dict(address=address, logging_level=logging.WARNING, log_to_driver=False,
                                       configure_logging=True)
    if address == "local":
        init_kwargs.update(include_dashboard=False, num_cpus=args.num_cpus)
    ray.init(**init_kwargs)
    # Trial failures are reported by our callback (one line each, and in MLflow); Tune's own
    # tracebacks and its complaints about the result files we do not write are noise here.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        gpu = gpu_per_trial(sweep.config.resources, ray.cluster_resources().get("GPU", 0.0))
        cpu = sweep.config.resources.cpu
        trials = [{"key": t.key, "arm": t.arm, "config": to_dict(t.config)} for t in todo]
        trainable = tune.with_resources(run_trial, {"cpu": cpu, "gpu": gpu})
        storage = os.path.abspath(os.path.expanduser(args.storage or "~/ray_results"))
        index = {t.key: i for i, t in enumerate(todo)}
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials), "cpu": cpu},
            tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=lambda tr: f"t{index[tr.config['trial']['key']]:04d}_{tr.config['trial']['key'][:8]}",
                                        trial_name_creator=lambda tr: f"{tr.config['trial']['arm']}#{tr.config['trial']['key'][:6]}"),
            run_config=tune.RunConfig(
                name=f"{sweep.name}-{parent_id[:8]}", storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=args.retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[make_callback(tracker, experiment_id, parent_id, sweep, states)],
            ),
        )
        print(f"running {len(todo)} trial(s) on Ray ({address}): {cpu:g} CPU + {gpu:g} GPU each; "
              f"MLflow run {parent_id} in {tracker.uri}", flush=True)
        tuner.fit()
    finally:
        ray.shutdown()


def _print_next_steps(uri: str, name: str) -> None:
    if uri.startswith("http"):
        print(f"\nbrowse:  {uri}")
    else:
        print(f"\nbrowse:  mlflow ui --backend-store-uri {uri}   (binds 127.0.0.1:5000)")
    print(f"report:  python -m analysis.report {shlex.quote(name)}"
          + ("" if uri.endswith(f"{os.getcwd()}/mlflow.db") else f" --tracking-uri {uri}"))


if __name__ == "__main__":
    sys.exit(main())

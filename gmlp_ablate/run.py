"""The sweep runner: ``python -m gmlp_ablate.run SWEEP.yaml [key=value ...]``.

Expands the sweep, skips trials that already have a FINISHED run in MLflow, runs the rest as
Ray Tune trials (one per expanded trial) and logs them from the driver through a Tune
callback: one MLflow writer per sweep, metrics in batches, trial processes free of MLflow.
This is the only module that imports Ray.

Reliability (docs/RELIABILITY.md): bad input fails before Ray or MLflow is imported; a
trial that raises, diverges or loses its process is a FAILED run with ``failure`` and
``error`` tags while the others go on; a retried trial resumes from its last checkpoint in
the same MLflow run without logging a step twice; SIGINT/SIGTERM stop the sweep and mark
its running trials KILLED; runs left RUNNING by a driver that was killed are closed as
``driver_lost`` by the next invocation, which runs only the trials still missing.

Exit codes: 0 every trial finished, 1 some failed (listed), 2 bad input (nothing run or
logged), 130 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from gmlp_ablate.config import ConfigError, Sweep, Trial, load_sweep, merge_trial, to_dict

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SCRATCH_PREFIX = "gmlp_ablate_ckpt_"
HEARTBEAT_EVERY_S = 30.0
STATUS_EVERY_S = 30.0


# --------------------------------------------------------------------------------------
# The trial side (runs in a Ray worker; imports torch, never MLflow)
# --------------------------------------------------------------------------------------


def run_trial(config: Dict[str, Any]) -> None:
    """Tune function trainable: one trial of the sweep, resumed from Tune's checkpoint.

    The trainer writes a checkpoint at each evaluation; each is handed to Tune with the
    result of that step, so a retry (``--retries``) continues from the last one Tune saw.
    """
    from ray import tune

    from gmlp_ablate.train import NonFiniteLossError, train

    cfg = merge_trial(config["trial"]["config"])
    if not cfg.train.threads:
        cfg.train.threads = max(1, int(config["cpu"]))
    resume = None
    ckpt = tune.get_checkpoint()
    remove_orphan_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}_") as ckdir:
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


def remove_orphan_scratch(wait_for: Iterable[int] = (), wait_s: float = 5.0) -> List[str]:
    """Remove the checkpoint scratch folders of trial processes that died.

    A trial writes its checkpoints to ``$TMPDIR/gmlp_ablate_ckpt_<pid>_*`` before Tune copies
    them to its storage; a killed process (retries, Ctrl-C, ``ray.shutdown``) cannot remove
    its folder, so each trial start (on its node) and the driver at its end remove those
    whose process is gone (the driver first waits up to ``wait_s`` for its own dying
    workers, ``wait_for``).
    """
    import glob
    import shutil

    import psutil

    owners: Dict[str, int] = {}
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}*_*")):
        pid = os.path.basename(path)[len(SCRATCH_PREFIX):].split("_", 1)[0]
        try:
            mine = os.stat(path).st_uid == os.getuid()
        except OSError:  # removed meanwhile by another trial
            continue
        if pid.isdigit() and int(pid) != os.getpid() and mine:
            owners[path] = int(pid)
    dying = []
    for pid in set(wait_for) & set(owners.values()):
        try:
            dying.append(psutil.Process(pid))
        except psutil.Error:
            pass
    psutil.wait_procs(dying, timeout=wait_s)
    removed = [path for path, pid in owners.items() if not psutil.pid_exists(pid)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def absolute_paths(sweep: Sweep) -> None:
    """Make each trial's relative ``task.corpus``/``task.cache_dir`` absolute, in place.

    Trials run in their Tune trial folder and, on a cluster, with the cluster's environment
    and working directory: a relative path is resolved here against the driver's working
    directory, so workers (and the MLflow params) get the file the user meant. Trial keys,
    computed from the config as written, are unchanged.
    """
    for t in sweep.trials:
        for name in ("corpus", "cache_dir"):
            value = getattr(t.config.task, name)
            if value:
                setattr(t.config.task, name, os.path.abspath(os.path.expanduser(value)))


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
    worker: Optional[str] = None
    restarts: int = 0
    final: Dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.trial.arm} seed={self.trial.seed}"


class SweepInterrupted(Exception):
    """Raised inside Tune's loop by the callback once SIGINT/SIGTERM was received."""


class StopFlag:
    """SIGINT/SIGTERM handling: the first signal asks the sweep to stop (the callback raises
    :class:`SweepInterrupted` at Tune's next loop step, Tune stops the trials and the driver
    marks their runs KILLED); a second one raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._saved: Dict[int, Any] = {}

    def install(self) -> None:
        """(Re)install the handlers; ``ray.init`` replaces SIGTERM's, so call it again after."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)

    def restore(self) -> None:
        """Put back the handlers found by the first :meth:`install` (main() may run in-process)."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._saved.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
            print(f"\n{name}: stopping the sweep; running trials will be marked KILLED "
                  "(send it again to quit at once)", file=sys.stderr, flush=True)
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt


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
    died = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
            "worker process has died", "died unexpectedly", "ray.exceptions.OutOfMemoryError")
    if any(s in text for s in died):
        kind = "worker_died"
    msg = ""
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln) and not ln.startswith("File "):
            msg = ln
            break
    msg = (msg or (lines[-1] if lines else "trial failed (no error recorded)")).split(" Some common causes")[0]
    return msg, kind


def _short(text: Optional[str], n: int = 200) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 3] + "..."


def make_callback(tracker: Any, experiment_id: str, parent_id: str, sweep: Sweep, states: Dict[str, TrialState],
                  stop: StopFlag) -> Any:
    """A Tune Callback that mirrors every trial into MLflow and prints live progress."""
    from ray.tune import Callback

    from gmlp_ablate.tracking import TAG_COMMIT, TAG_RESTART_REASON, TAG_RESTARTS, TAG_WORKER, git_commit

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
            self._say(f"{st.label}: started" + (f" (retry {st.restarts})" if st.restarts else "")
                      + f", run {st.run_id[:8]}")

        def on_trial_result(self, iteration: int, trials: List[Any], trial: Any, result: Dict[str, Any], **info: Any) -> None:
            st = self._state(trial)
            step = int(result.get("step", 0))
            tags = {k[len("info."):]: v for k, v in result.items() if k.startswith("info.")}
            worker = f"{result.get('node_ip', '?')}:{result.get('pid', '?')}"
            if worker != st.worker:  # first result of a (re)started trial: where it runs
                st.worker = tags[TAG_WORKER] = worker
            if tags:
                tracker.set_tags(st.run_id, tags)
            if "nonfinite_step" in result:
                st.error, st.failure = str(result.get("error")), "nonfinite"
                tracker.set_tags(st.run_id, {"nonfinite_step": str(result["nonfinite_step"])})
                return
            metrics = _metric_items(result)
            if result.get("final"):
                st.final = metrics
                return
            # A retry resumes from the last checkpoint Tune saw, at or before the last step
            # logged here: the steps it repeats are not logged again (same data, same values).
            if step > st.last_step:
                if metrics:
                    tracker.log_metrics(st.run_id, metrics, step)
                st.last_step = step

        def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            if st.failure == "nonfinite":
                st.status = "FAILED"
                tracker.end_trial(st.run_id, "FAILED", error=st.error, failure="nonfinite")
                self._say(f"{st.label}: FAILED ({st.error})  {self._counts()}")
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
                    self.best = (value, st.label)
            shown = f"{metric} {value:.4g}" if value is not None else ""
            self._say(f"{st.label}: done {shown}  {self._counts()}")

        def on_trial_recover(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            msg, kind = _error_of(trial)
            st.restarts += 1
            if st.run_id is not None:
                tracker.set_tags(st.run_id, {TAG_RESTARTS: str(st.restarts), TAG_RESTART_REASON: f"{kind}: {msg}"[:4900]})
            self._say(f"{st.label}: {kind}, retrying from its last checkpoint ({_short(msg)})")

        def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
            st = self._state(trial)
            st.error, st.failure = _error_of(trial)
            st.status = "FAILED"
            if st.run_id is None:
                st.run_id = tracker.start_trial(experiment_id, parent_id, st.trial, sweep.name, run_tags)
            if stop.signal is not None:  # a terminal's Ctrl-C also reaches the workers
                st.status, st.failure = "KILLED", "interrupted"
            tracker.end_trial(st.run_id, st.status, error=st.error, failure=st.failure)
            self._say(f"{st.label}: {st.status}, {st.failure} ({_short(st.error)})  {self._counts()}")

        def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
            if stop.signal is not None:
                raise SweepInterrupted(stop.signal)
            now = time.monotonic()
            if now - self.last_beat > HEARTBEAT_EVERY_S:
                tracker.heartbeat(parent_id)
                self.last_beat = now
            if now - self.last_status > STATUS_EVERY_S:
                running = [f"{s.label} @{max(s.last_step, 0)}/{s.trial.config.train.steps}"
                           for s in states.values() if s.status == "RUNNING"]
                self._say(self._counts() + (f"  running: {', '.join(running)}" if running else ""))
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
    if address.startswith("ray://"):
        raise ConfigError("--address", "Ray Client (ray://) would run Tune away from this driver's MLflow "
                          "callback: run the driver on a cluster node with --address HOST:PORT or auto "
                          "(e.g. through `ray job submit`)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", f"expected HOST:PORT of a Ray head node, 'auto' or 'local', got {address!r}")
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = _Parser(prog="python -m gmlp_ablate.run",
                description="Run a sweep file on Ray Tune, logging every trial to MLflow.")
    p.add_argument("sweep", help="sweep YAML file (see sweeps/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value for `base` (task.*, model.*, train.*), "
                   "grid.KEY=[...] to replace an axis, seeds=[...], metric.name=..., resources.cpu=...")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trial table and counts; run nothing")
    p.add_argument("--address", default=None, help="an existing Ray cluster (HOST:PORT of its head, or auto); "
                   "default: a fresh local Ray instance (its files under $RAY_TMPDIR or /tmp)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    p.add_argument("--rerun", action="store_true", help="run every trial again, even those already finished")
    p.add_argument("--retries", type=int, default=1, help="retries per failed trial, resumed from its checkpoint")
    p.add_argument("--storage", default=None, help="Ray Tune storage folder for checkpoints (default: "
                   "~/ray_results; on a multi-node cluster: a folder every node shares)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    return p.parse_intermixed_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = "python -m gmlp_ablate.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from gmlp_ablate.tracking import Tracker, TrackingError, check_uri  # light: MLflow is imported on first use

    try:  # every check that needs neither Ray nor MLflow, so bad input fails fast and creates nothing
        for name, value, low in (("--max-concurrent", args.max_concurrent, 1), ("--retries", args.retries, 0),
                                 ("--num-cpus", args.num_cpus, 1)):
            if value is not None and value < low:
                raise ConfigError(name, f"must be >= {low}, got {value}")
        _check_address(args.address)
        uri = check_uri(args.tracking_uri)
        sweep = load_sweep(args.sweep, args.overrides)
    except (ConfigError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    absolute_paths(sweep)

    tracker = Tracker(uri)
    if args.dry_run:
        print_trial_table(sweep, None, _finished_if_store_exists(tracker, sweep))
        return EXIT_OK
    try:
        tracker.check()
        experiment_id = tracker.experiment_id(sweep.name)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    closed = tracker.close_stale(experiment_id)
    if closed:
        print(f"closed {len(closed)} run(s) left RUNNING by a sweep driver that stopped (failure=driver_lost)")
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

    stop = StopFlag()
    stop.install()
    try:
        return _run_sweep(args, sweep, todo, n_skip, tracker, experiment_id, command, stop)
    finally:
        stop.restore()


def _run_sweep(args: argparse.Namespace, sweep: Sweep, todo: List[Trial], n_skip: int, tracker: Any,
               experiment_id: str, command: str, stop: StopFlag) -> int:
    """Start Ray, open the parent run, run the trials, close every run; returns the exit code."""
    states = {t.key: TrialState(trial=t) for t in todo}
    try:
        _start_ray(args)
        stop.install()  # ray.init replaced the SIGTERM handler
    except Exception as e:
        print(f"error: {_ray_error(args.address, e)}", file=sys.stderr)
        return EXIT_FAILED
    parent_id = tracker.start_parent(experiment_id, sweep, command)
    status, driver_ok = "FAILED", False
    try:
        _run_on_ray(args, sweep, todo, states, tracker, experiment_id, parent_id, stop)
        status = "FINISHED" if all(s.status == "FINISHED" for s in states.values()) else "FAILED"
        driver_ok = True
    except (SweepInterrupted, KeyboardInterrupt):
        status = "KILLED"
        print(f"interrupted ({stop.signal or 'SIGINT'}): the trials that were running are KILLED in MLflow; "
              "run the same command again to run what is missing", file=sys.stderr)
    except Exception as e:  # the driver itself failed (e.g. the tracking server went away)
        print(f"error: the sweep driver failed: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        _close_runs(tracker, parent_id, states, status, len(todo), n_skip)
    if not driver_ok:
        return EXIT_INTERRUPTED if status == "KILLED" else EXIT_FAILED

    failed = [s for s in states.values() if s.status != "FINISHED"]
    print_summary(tracker, experiment_id, sweep)
    if failed:
        print(f"\n{len(failed)} trial(s) failed:")
        for s in failed:
            print(f"  {s.label} ({s.trial.key}): {s.failure or 'not run'}: {_short(s.error)}")
    _print_next_steps(tracker.uri, sweep.name)
    return EXIT_FAILED if failed else EXIT_OK


def _close_runs(tracker: Any, parent_id: str, states: Dict[str, TrialState], status: str, n_run: int,
                n_skip: int) -> None:
    """Mark trials still RUNNING as KILLED (interrupted) and close the parent run.

    Best effort: if the store is gone too, the next invocation closes them (driver_lost).
    """
    try:
        for st in states.values():
            if st.run_id is not None and st.status == "RUNNING":
                failure = "interrupted" if status == "KILLED" else "driver_error"
                tracker.end_trial(st.run_id, "KILLED", error="the sweep was stopped before this trial ended",
                                  failure=failure)
                st.status, st.failure, st.error = "KILLED", failure, "stopped"
        tracker.set_tags(parent_id, {"trials.run": str(n_run), "trials.skipped": str(n_skip),
                                     "trials.failed": str(sum(s.status != "FINISHED" for s in states.values()))})
        tracker.end_run(parent_id, status)
    except Exception as e:
        print(f"warning: could not close the MLflow runs ({type(e).__name__}: {e}); "
              "the next run of this sweep closes them", file=sys.stderr)


def _finished_if_store_exists(tracker: Any, sweep: Sweep) -> Dict[str, str]:
    """Finished trial keys, read only when the store already exists (a dry run creates nothing)."""
    if not tracker.store_exists():
        return {}
    try:
        eid = tracker.experiment_id(sweep.name, create=False)
        return tracker.finished_keys(eid) if eid else {}
    except Exception:
        return {}


def _start_ray(args: argparse.Namespace) -> None:
    """A fresh local Ray instance, or a connection to the cluster at ``--address``."""
    import logging

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # StopFlag handles SIGINT
    import ray

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


def _ray_error(address: Optional[str], e: Exception) -> str:
    msg = f"could not {'connect to the Ray cluster at ' + address if address else 'start a local Ray instance'}: " \
          f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if address and not os.environ.get("RAY_AUTH_MODE"):
        msg += " (a cluster with token authentication, Ray's default, needs RAY_AUTH_MODE=token here)"
    return msg


def _run_on_ray(args: argparse.Namespace, sweep: Sweep, todo: List[Trial], states: Dict[str, TrialState],
                tracker: Any, experiment_id: str, parent_id: str, stop: StopFlag) -> None:
    """Run the trials with Ray Tune (Ray already started); always shuts Ray down."""
    import ray
    from ray import tune

    address = args.address or "local"
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
                callbacks=[make_callback(tracker, experiment_id, parent_id, sweep, states, stop)],
            ),
        )
        print(f"running {len(todo)} trial(s) on Ray ({address}): {cpu:g} CPU + {gpu:g} GPU each; "
              f"MLflow run {parent_id} in {tracker.uri}", flush=True)
        tuner.fit()
    finally:
        ray.shutdown()
        if address == "local":  # the workers were on this machine
            pids = [int(st.worker.rsplit(":", 1)[1]) for st in states.values() if st.worker and st.worker[-1].isdigit()]
            remove_orphan_scratch(wait_for=pids)


def _print_next_steps(uri: str, name: str) -> None:
    if uri.startswith("http"):
        print(f"\nbrowse:  {uri}")
    else:
        print(f"\nbrowse:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"report:  python -m analysis.report {shlex.quote(name)}"
          + ("" if uri.endswith(f"{os.getcwd()}/mlflow.db") else f" --tracking-uri {uri}"))


if __name__ == "__main__":
    sys.exit(main())

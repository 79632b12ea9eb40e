"""The sweep runner: ``python -m gmlp_ablate.run SWEEP.yaml [key=value ...]``.

Expands the sweep, skips trials that already have a FINISHED run in MLflow, and runs the
rest as Ray Tune trials (:mod:`gmlp_ablate.executor`; a sweep with a tuning stage or
sequential seeds through :mod:`gmlp_ablate.stages`), each once this driver has claimed its
key in the store (several drivers on one sweep split it). Trials report to Tune; the driver mirrors them to MLflow
(:mod:`gmlp_ablate.callbacks`). Trials checkpoint to
``<storage>/<sweep>/checkpoints/<trial key>/``, where a retry or a later invocation resumes.

Reliability (docs/RELIABILITY.md): bad input fails before Ray or MLflow is imported; a
trial that raises, diverges or loses its process is a FAILED run with ``failure`` and
``error`` tags while the others go on; SIGINT/SIGTERM stop the sweep and mark its running
trials KILLED; runs and claims left by a killed driver are closed or taken over by the next
invocation, which continues the interrupted trials from their checkpoints.

Exit codes: 0 every trial finished, 1 some failed (listed), 2 bad input (nothing run or
logged), 130 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
from typing import Any, Dict, Iterator, List, Optional

from gmlp_ablate.ledger import pack_metrics
from gmlp_ablate.names import (CHECKPOINT_FILE, INFO_PREFIX, RESULT_ERROR, RESULT_FINAL, RESULT_NONFINITE_STEP, RESULT_STEP,
                               path_component)
from gmlp_ablate.preflight import check_address, check_local_resources, check_storage
from gmlp_ablate.schema import ConfigError
from gmlp_ablate.sweep import MAX_TRIALS, Sweep, Trial, load_sweep
from gmlp_ablate.trial import merge_trial

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------------------
# The trial side (runs in a Ray worker; imports torch, never MLflow)
# --------------------------------------------------------------------------------------


TRIAL_MODULES = ("torch", "ray.tune", "gmlp_ablate.train")
"""What :func:`run_trial` imports. The worker processes a local Ray instance starts with it
(one per CPU) import them as they start, while the driver is still starting, so the first
trials start training sooner (:func:`_preloaded`). A module that fails to import there is
imported again by the trial, which then reports the error."""

INFO_GPU_IDS = "gpu_ids"
"""Trial tag (an ``info.`` key of its first report): the GPU ids Ray assigned the trial."""


def trial_result(metrics: Dict[str, Any], step: int, scheduled: Optional[str] = None) -> Dict[str, Any]:
    """What a trial sends through Tune for one report of the trainer: its metrics packed in one
    string (:func:`gmlp_ablate.ledger.pack_metrics`; ``scheduled`` also as a number), its
    ``info.*`` tags as plain ``str`` (the driver unpickles the result, and a ``str`` subclass of
    torch's, its version, would import torch there), and ``step``."""
    tags = {k: str(v) for k, v in metrics.items() if k.startswith(INFO_PREFIX)}
    values = {k: v for k, v in metrics.items() if not k.startswith(INFO_PREFIX)}
    return {**pack_metrics(values, scheduled), **tags, RESULT_STEP: step}


def run_trial(config: Dict[str, Any]) -> None:
    """Tune function trainable: one trial, resumed from the checkpoint in its key's folder.

    The trainer writes its checkpoint (atomically) to ``checkpoint_dir`` at each evaluation;
    a retry, or a later invocation after the driver died, continues from it. The GPU ids Ray
    assigned the trial are checked against what CUDA sees (a trial holding a GPU never trains
    on the CPU by accident) and recorded as the ``gpu_ids`` tag. Each report carries the
    trainer's metrics packed in one string (:func:`gmlp_ablate.ledger.pack_metrics`), its
    ``info.*`` tags and ``step`` as they are.
    """
    import ray
    from ray import tune

    from gmlp_ablate.train import NonFiniteLossError, check_assigned_gpus, train

    cfg = merge_trial(json.loads(config["trial"]["config"]))  # a JSON string (TuneExecutor._config)
    if not cfg.train.threads:
        cfg.train.threads = max(1, int(config["cpu"]))
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    check_assigned_gpus(cfg.train.device, gpu_ids)
    ckdir = config["trial"]["checkpoint_dir"]
    resume = ckdir if os.path.exists(os.path.join(ckdir, CHECKPOINT_FILE)) else None
    first = {f"{INFO_PREFIX}{INFO_GPU_IDS}": ",".join(gpu_ids)} if gpu_ids else {}
    scheduled = config["trial"].get("scheduled")  # the metric the stage's scheduler compares, if any

    def report(metrics: Dict[str, Any], step: int, checkpoint: Optional[str]) -> None:
        tune.report({**trial_result(metrics, step, scheduled), **first})
        first.clear()

    try:
        final = train(cfg, report=report, checkpoint_dir=ckdir, resume_from=resume)
    except NonFiniteLossError as e:
        # Deterministic: a retry would diverge again, so end the trial with its reason.
        tune.report({RESULT_STEP: e.step, RESULT_NONFINITE_STEP: e.step, RESULT_ERROR: str(e)})
        return
    tune.report({**pack_metrics(final), RESULT_STEP: cfg.train.steps, RESULT_FINAL: 1})


def absolute_paths(sweep: Sweep) -> None:
    """Make each trial's relative ``task.corpus``/``task.cache_dir`` absolute, in place.

    Trials run in their Tune trial folder and, on a cluster, with the cluster's environment
    and working directory: a relative path is resolved here against the driver's working
    directory. Trial keys, computed from the config as written, are unchanged.
    """
    for t in sweep.trials:
        for name in ("corpus", "cache_dir"):
            value = getattr(t.config.task, name)
            if value:
                setattr(t.config.task, name, os.path.abspath(os.path.expanduser(value)))


def checkpoint_root(storage: str, sweep_name: str) -> str:
    """``<storage>/<sweep name as a path component>/checkpoints``: one folder per trial key."""
    return os.path.join(storage, path_component(sweep_name), "checkpoints")


# --------------------------------------------------------------------------------------
# Input checks (no Ray, no MLflow)
# --------------------------------------------------------------------------------------


class StopFlag:
    """SIGINT/SIGTERM: the first signal asks the sweep to stop (Tune's loop ends at its next
    step, the trials are stopped and their runs marked KILLED); a second one raises
    KeyboardInterrupt at once."""

    def __init__(self, ledger: Any = None) -> None:
        self.signal: Optional[str] = None
        self.ledger = ledger
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
            if self.ledger is not None:
                self.ledger.interrupted = True
            print(f"\n{name}: stopping the sweep; running trials will be marked KILLED "
                  "(send it again to quit at once)", file=sys.stderr, flush=True)
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def print_trial_table(sweep: Sweep, done: Optional[Dict[str, str]], out: Any = None) -> None:
    """The expanded trial table (arm, seed, key, resources, state) and counts."""
    out = out or sys.stdout
    res = sweep.config.resources
    known = done is not None
    done = done or {}
    rows = [(t.arm + (" (baseline)" if t.baseline else ""), str(t.seed), t.key, f"{res.cpu:g}", str(res.gpu),
             "finished" if t.key in done else "to run" if known else "?") for t in sweep.trials]
    head = ("arm", "seed", "trial_key", "cpu", "gpu", "state")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head), file=out)
    print(fmt.format(*("-" * w for w in widths)), file=out)
    for r in rows:
        print(fmt.format(*r), file=out)
    n_done = sum(1 for t in sweep.trials if t.key in done)
    state = (f"{n_done} already finished, {len(sweep.trials) - n_done} to run" if known
             else "which are finished cannot be read without writing to this store")
    print(f"\n{len(sweep.trials)} trials: {len(sweep.arms)} arms x {_n_seeds(sweep)} seeds; {state}", file=out)


def _print_plan(sweep: Sweep, out: Any = None) -> None:
    """How the comparison is made (sizes, family) and, for a staged sweep, what each stage runs."""
    from gmlp_ablate.stages import plan

    p = plan(sweep)
    for arm, m in sweep.matches.items():
        print(f"{arm}: sized to '{m.spec.to}' by {m.spec.by}: {m.spec.vary}={m.value} gives {m.achieved:,.0f} "
              f"({m.rel_diff:+.1%} of {m.target:,.0f}; tolerance {m.spec.tolerance:.0%})", file=out)
    print(f"comparisons (the family, alpha {sweep.config.alpha:g}): "
          + "; ".join(f"{a} vs {b}" for a, b in sweep.family), file=out)
    if p.tune_trials:
        t = sweep.config.tune
        print(f"stage 1 (tune): {len(p.tune_trials)} trials ({t.budget} candidate(s) x {len(t.seeds)} seed(s) "
              f"per arm); the final trials above use each arm's base settings until it is tuned", file=out)
    if sweep.sequential is not None:
        print(f"final seeds in rounds: {len(p.final_trials)} trials first, at most {p.max_final} "
              "(a comparison stops getting seeds once it is decided)", file=out)


def _staged(sweep: Sweep) -> bool:
    """A sweep with a tuning stage or sequential seeds (run through :mod:`gmlp_ablate.stages`)."""
    return sweep.config.tune is not None or sweep.sequential is not None


def _n_seeds(sweep: Sweep) -> int:
    return len({t.seed for t in sweep.trials})


def print_summary(tracker: Any, experiment_id: str, sweep: Sweep, trials: Optional[List[Trial]] = None,
                  out: Any = None) -> None:
    """Per arm: the sweep metric's mean over the (final) trials with a FINISHED run."""
    out = out or sys.stdout
    metric = sweep.config.metric.name
    runs = tracker.finished_runs_by_key(experiment_id)
    trials = trials if trials is not None else sweep.trials
    print(f"\n{'arm':<32} {'n':>3} {metric + ' (mean)':>18}", file=out)
    for arm in sweep.arms:
        vals = [runs[t.key].data.metrics.get(metric) for t in trials if t.arm == arm and t.key in runs]
        vals = [v for v in vals if v is not None]
        mean = f"{sum(vals) / len(vals):.4g}" if vals else "-"
        print(f"{arm:<32} {len(vals):>3} {mean:>18}", file=out)


def _print_next_steps(uri: str, name: str) -> None:
    if uri.startswith("http"):
        print(f"\nbrowse:  {uri}")
    else:
        print(f"\nbrowse:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"report:  python -m analysis.report {shlex.quote(name)}"
          + ("" if uri.endswith(f"{os.getcwd()}/mlflow.db") else f" --tracking-uri {uri}"))


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


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
    p.add_argument("--dry-run", action="store_true", help="print the expanded trial table and counts; run nothing, "
                   "write nothing")
    p.add_argument("--address", default=None, help="an existing Ray cluster (HOST:PORT of its head, or auto); "
                   "default: a fresh local Ray instance bound to 127.0.0.1 (its files under $RAY_TMPDIR or /tmp)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    p.add_argument("--rerun", action="store_true", help="run every trial again, even those already finished")
    p.add_argument("--retries", type=int, default=1, help="retries per failed trial, resumed from its checkpoint")
    p.add_argument("--storage", default=None, help="folder for Tune's files and the trials' checkpoints (default: "
                   "~/ray_results; on a multi-node cluster: a folder every node shares)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--max-trials", type=int, default=MAX_TRIALS, help="refuse a sweep expanding to more trials "
                   f"than this (default {MAX_TRIALS}; counted before anything is built)")
    p.add_argument("--trials-per-tune-run", type=int, default=None, help="run the trials in Ray Tune runs of at "
                   "most this many, one after the other (default 1000; Tune holds every trial of a run in the "
                   "driver's memory until the run ends); a stage with a scheduler is always one run")
    p.add_argument("--pending-timeout", type=float, default=None, help="with --address: give up (exit 1) when no "
                   "trial could start for this many seconds (resources the cluster does not have); default: wait")
    return p.parse_intermixed_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the sweep's own handler is installed (e.g. during validation)
        print("interrupted: nothing was run", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Optional[List[str]]) -> int:
    args = parse_args(argv)
    command = "python -m gmlp_ablate.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from gmlp_ablate.tracking import (Tracker, TrackingError, check_uri, check_writable,  # MLflow: on first use
                                      finished_keys_readonly, one_line, sqlite_path, store_failure)

    try:  # every check that needs neither Ray nor MLflow, so bad input fails fast and creates nothing
        for name, value, low in (("--max-concurrent", args.max_concurrent, 1), ("--retries", args.retries, 0),
                                 ("--num-cpus", args.num_cpus, 1), ("--pending-timeout", args.pending_timeout, 1),
                                 ("--max-trials", args.max_trials, 1),
                                 ("--trials-per-tune-run", args.trials_per_tune_run, 1)):
            if value is not None and value < low:
                raise ConfigError(name, f"must be >= {low}, got {value}")
        check_address(args.address)
        uri = check_uri(args.tracking_uri)
        sweep = load_sweep(args.sweep, args.overrides, max_trials=args.max_trials)  # refuses a name unusable as a path component
        args.storage = os.path.abspath(os.path.expanduser(args.storage or "~/ray_results"))
        check_storage(args.storage)
        if not args.address:
            check_local_resources(sweep.config.resources, args.num_cpus)
    except (ConfigError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    absolute_paths(sweep)

    if args.dry_run:
        try:
            done = finished_keys_readonly(uri, sweep.name)
        except Exception:
            done = None
        print_trial_table(sweep, done)
        _print_plan(sweep)
        return EXIT_OK
    tracker = Tracker(uri)
    try:  # a server answers (or not) in a moment: known before anything starts; a sqlite
        check_writable(uri)  # store is opened (created, migrated) while Ray starts, below
        if sqlite_path(uri) is None:
            tracker.check()
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    _ray_environment(args)  # before the store's thread starts
    opening = StoreOpening(tracker, sweep.name, args.rerun, check=sqlite_path(uri) is not None)
    opening.start()
    reaper, ray_failure, ray_started = None, None, False
    if sqlite_path(uri) is not None and _may_run(sweep, uri, args.rerun):
        try:  # concurrently with the store's opening
            reaper, ray_started = _start_ray(args, sweep.config.resources), True
        except Exception as e:
            ray_failure = e
    try:
        experiment_id, closed, done = opening.result()
    except Exception as e:
        if ray_started:
            _shutdown_ray(reaper)
        if isinstance(e, TrackingError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"error: {store_failure(e, uri) or f'{type(e).__name__}: {one_line(e)}'}", file=sys.stderr)
        return EXIT_FAILED
    if closed:
        print(f"closed {len(closed)} run(s) left RUNNING by a sweep driver that stopped (failure=driver_lost)")
    todo = [t for t in sweep.trials if t.key not in done]
    if _staged(sweep):  # which trials run is decided stage by stage
        print(f"sweep '{sweep.name}': {len(sweep.arms)} arms, in stages")
    else:
        print(f"sweep '{sweep.name}': {len(sweep.trials)} trials ({len(sweep.arms)} arms x {_n_seeds(sweep)} seeds)")
        if done:
            print(f"skipping {len(sweep.trials) - len(todo)} trial(s) already FINISHED in {tracker.uri}")
    if not todo and not _staged(sweep):
        if ray_started:
            _shutdown_ray(reaper)
        print("nothing to run: every trial has a finished run (use --rerun to run them again)")
        print_summary(tracker, experiment_id, sweep)
        _print_next_steps(tracker.uri, sweep.name)
        return EXIT_OK
    if not ray_started and ray_failure is None:
        try:  # not started above (a server's store, or a store that looked done)
            reaper, ray_started = _start_ray(args, sweep.config.resources), True
        except Exception as e:
            ray_failure = e
    if ray_failure is not None:
        print(f"error: {_ray_error(args.address, ray_failure)}", file=sys.stderr)
        return EXIT_FAILED

    from gmlp_ablate.ledger import Ledger

    ledger = Ledger(sweep.config.metric.name, sweep.config.metric.mode)
    stop = StopFlag(ledger)
    stop.install()  # after ray.init, which replaces the SIGTERM handler
    try:
        return _run_sweep(args, sweep, todo, len(sweep.trials) - len(todo), tracker, experiment_id, command, stop,
                          ledger, reaper)
    finally:
        stop.restore()


class StoreOpening:
    """The store's side of a sweep's start, in a thread (Ray starts meanwhile): check (and,
    for a new sqlite file, create and migrate) the store, find or create the experiment,
    close the runs dead drivers left RUNNING, read which trial keys are FINISHED.

    Processes are spawned meanwhile (the reaper, Ray's), while MLflow in this thread writes
    environment variables: each spawn passes a copy of the environment (``env=``), since an
    ``execve`` reading the process's own environment beside a ``setenv`` can be handed a freed
    pointer (``OSError: [Errno 14] Bad address``)."""

    def __init__(self, tracker: Any, name: str, rerun: bool, check: bool = True) -> None:
        import threading

        self.tracker, self.name, self.rerun, self.check = tracker, name, rerun, check
        self._out: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._open, name="gmlp_ablate-store", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _open(self) -> None:
        try:
            from gmlp_ablate.claims import close_stale

            if self.check:  # a server's store was checked before, in the main thread
                self.tracker.check()
            experiment_id = self.tracker.experiment_id(self.name)
            closed = close_stale(self.tracker, experiment_id)
            done = {} if self.rerun else self.tracker.finished_keys(experiment_id)
            self._out = (experiment_id, closed, done)
        except BaseException as e:
            self._error = e

    def result(self) -> Any:
        """(experiment id, runs closed, finished keys); raises what the thread raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


def _may_run(sweep: Sweep, uri: str, rerun: bool) -> bool:
    """Whether the sweep may have trials to run, from a read-only look at a sqlite store (no
    MLflow): when every trial is already FINISHED there, Ray is not started."""
    if rerun or _staged(sweep):
        return True
    from gmlp_ablate.tracking import finished_keys_readonly

    try:
        done = finished_keys_readonly(uri, sweep.name)
    except Exception:
        return True
    return done is None or any(t.key not in done for t in sweep.trials)


def _run_sweep(args: argparse.Namespace, sweep: Sweep, todo: List[Trial], n_skip: int, tracker: Any,
               experiment_id: str, command: str, stop: StopFlag, ledger: Any, reaper: Any) -> int:
    """Open the parent run, run the trials on the started Ray, close every run, print the
    summary, then stop Ray; returns the exit code."""
    from gmlp_ablate import liveness
    from gmlp_ablate.callbacks import PendingTimeout, SweepInterrupted  # imports Ray: after its set-up
    from gmlp_ablate.claims import Claims
    from gmlp_ablate.executor import TuneExecutor
    from gmlp_ablate.tracking import one_line, store_failure

    status, driver_ok, executor, parent_id, claims, store_down = "FAILED", False, None, None, None, None
    try:
        try:
            parent_id = tracker.start_parent(experiment_id, sweep, command, liveness.identity())
            claims = Claims(tracker, experiment_id, parent_id)
            executor = TuneExecutor(args, sweep, tracker, experiment_id, parent_id, claims, ledger, stop, run_trial,
                                    checkpoint_root(args.storage, sweep.name))
            if _staged(sweep):
                from gmlp_ablate.stages import run_stages

                run_stages(sweep, executor)
            else:
                executor.run(todo)
            status = "FINISHED" if not ledger.failed() else "FAILED"
            driver_ok = True
        except (SweepInterrupted, KeyboardInterrupt):
            status = "KILLED"
            print(f"interrupted ({stop.signal or 'SIGINT'}): the trials that were running are KILLED in MLflow; "
                  "run the same command again to run what is missing", file=sys.stderr)
        except PendingTimeout as e:
            print(f"error: {e}", file=sys.stderr)
        except Exception as e:  # the driver itself failed (e.g. the tracking server went away)
            store_down = store_failure(e, tracker.uri)
            print(f"error: {store_down}; the next run of this sweep closes the runs left open" if store_down else
                  f"error: the sweep driver failed: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        finally:
            # Tune has stopped every trial by now: the runs are closed first (what the user
            # reads), Ray is stopped last.
            if parent_id is not None and not store_down:  # a store known to be gone is not waited on
                _close_runs(tracker, parent_id, ledger, claims, status, n_skip)
        if not driver_ok:
            return EXIT_INTERRUPTED if status == "KILLED" else EXIT_FAILED

        failed = ledger.failed()
        print_summary(tracker, experiment_id, sweep,
                      executor.final if executor is not None and executor.final else None)
        if executor is not None and executor.elsewhere:
            print(f"\n{len(executor.elsewhere)} trial(s) left to another live driver of this sweep: "
                  + ", ".join(f"{t.arm} seed={t.seed}" for t in executor.elsewhere))
        if failed:
            print(f"\n{len(failed)} trial(s) failed:")
            for e in failed:
                print(f"  {e.label} ({e.key}): {e.failure or 'not run'}: {e.error or ''}"[:300])
        _print_next_steps(tracker.uri, sweep.name)
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        sys.stdout.flush()
        _shutdown_ray(reaper)


def _close_runs(tracker: Any, parent_id: str, ledger: Any, claims: Any, status: str, n_skip: int) -> None:
    """Mark trials still RUNNING as KILLED, release the claims and close the parent run.

    Best effort, one line if it fails: the next invocation closes what is left (driver_lost).
    """
    from gmlp_ablate.tracking import one_line, store_failure

    try:
        for e in ledger.stop_running(interrupted=status == "KILLED"):
            tracker.end_trial(e.run_id, "KILLED", error=e.error, failure=e.failure)
        claims.release_all()
        ran = [e for e in ledger.entries.values() if e.run_id is not None]
        tracker.set_tags(parent_id, {"trials.run": str(len(ran)), "trials.skipped": str(n_skip),
                                     "trials.failed": str(len(ledger.failed()))})
        tracker.end_run(parent_id, status)
    except Exception as e:
        why = store_failure(e, tracker.uri) or f"{type(e).__name__}: {one_line(e)}"
        print(f"warning: could not close the MLflow runs ({why}); the next run of this sweep closes them",
              file=sys.stderr)


def _ray_environment(args: argparse.Namespace) -> None:
    """The environment variables Ray and Tune read, set in this process (and so inherited by
    Ray's processes); called in the main thread before any other thread starts."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # StopFlag handles SIGINT
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # val/* come at evaluations only
    if not args.address:
        # Ray would turn 127.0.0.1 into this machine's external address (and its servers bind
        # all interfaces); with "no cluster" it keeps the loopback address and binds only it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def _preloaded(args: argparse.Namespace, resources: Any) -> List[str]:
    """The modules a local instance's workers import as they start: :data:`TRIAL_MODULES` when
    at least half of those workers (one per CPU) run trials at once, else none.

    Ray starts one idle worker per CPU with the instance, and Tune's trials run in them
    (:func:`gmlp_ablate.executor.trials_in_any_worker`). A worker with torch and Ray Tune
    imported holds about 0.3 GB more and has spent about 2 s of CPU; that is worth it for the
    workers that will run trials, not for many that never will (trials of several CPUs or
    GPU-bound on a large machine). CUDA is not initialised by the imports, so a worker still
    sees the GPUs Ray assigns its trial later."""
    from gmlp_ablate.preflight import local_cpus, local_slots

    slots = local_slots(resources, args.num_cpus, args.max_concurrent)
    return list(TRIAL_MODULES) if 2 * slots >= local_cpus(args.num_cpus) else []


QUICK_RETRIES = {"raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}
"""Ray system settings of a local instance: retry a local socket connection every 0.1 s, 100
times, instead of every second, 10 times (the same 10 s of patience). As a raylet starts, it
connects to the object store it has just started in another thread; in about one start in
four here the store was not listening yet, and the raylet, so the whole instance, waited a
full second before its second try (benchmarks/SWEEP_OVERHEAD.md, "Without Ray's idle
daemons")."""

UNUSED_LOCAL_DAEMONS = ("start_api_server", "start_monitor", "start_log_monitor")
"""The methods of Ray's ``Node`` that start the three Python daemons a local instance of a
sweep has no use for (:func:`_without_unused_daemons`)."""


@contextlib.contextmanager
def _without_unused_daemons() -> Iterator[None]:
    """While a local instance starts: without the API server, the autoscaler's monitor and the
    log monitor.

    With the dashboard off (``include_dashboard=False``) Ray still starts its API server with
    only the usage-statistics module, and waits for it before it starts the raylet; the
    autoscaler's monitor has nothing to scale on one fixed node; the log monitor streams
    worker output to a driver that does not ask for it (``log_to_driver=False``). Each is a
    Python process that imports for 0.3-0.5 s of CPU on the cores the driver, Ray's own
    start and the preloading workers share, and the API server's wait alone is 0.5-1.5 s of
    ``ray.init`` here (benchmarks/SWEEP_OVERHEAD.md, "Without Ray's idle daemons"). Ray itself
    goes on without an API server that failed to start. Only ``ray.init`` in this process
    is affected, only for as long as it runs; a Ray without these methods is left as it is
    (``tests/test_startup.py`` checks the daemons are absent)."""
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    saved = {name: Node.__dict__[name] for name in UNUSED_LOCAL_DAEMONS if name in Node.__dict__}
    if len(saved) != len(UNUSED_LOCAL_DAEMONS):
        yield
        return
    for name in saved:
        setattr(Node, name, lambda self, *a, **k: None)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(Node, name, fn)


def _start_ray(args: argparse.Namespace, resources: Any) -> Any:
    """A fresh local Ray instance on 127.0.0.1 (with a reaper that takes it down if this
    process is killed), or a connection to the cluster at ``--address``; returns the reaper.
    The environment it needs is set before, by :func:`_ray_environment`."""
    import logging

    import ray
    from ray._private import ray_constants

    if not args.address:  # read by ray.init in this process (the variable above: by Ray's own processes)
        ray_constants.ENABLE_RAY_CLUSTER = False

    reaper = None
    init_kwargs: Dict[str, Any] = dict(address=args.address or "local", logging_level=logging.WARNING,
                                       log_to_driver=False, configure_logging=True)
    if not args.address:
        from gmlp_ablate import reaper as reaper_mod

        reaper = reaper_mod.start()
        init_kwargs.update(include_dashboard=False, num_cpus=args.num_cpus, _node_ip_address="127.0.0.1",
                           _system_config={"preload_python_modules": _preloaded(args, resources), **QUICK_RETRIES})
        with _without_unused_daemons():
            ray.init(**init_kwargs)
    else:
        ray.init(**init_kwargs)
    # Trial failures are reported by our callbacks (one line each, and in MLflow); Tune's own
    # tracebacks and its complaints about the result files we do not write are noise here.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return reaper


_EXIT_AT_ONCE = False
"""Set by :func:`cli`: the process exits as soon as the sweep is done (see there)."""


def _shutdown_ray(reaper: Any) -> None:
    if _EXIT_AT_ONCE and reaper is not None:
        return  # a local instance: the process exits next and its reaper takes the instance down
    import ray

    ray.shutdown()
    if reaper is not None:
        reaper.terminate()
        reaper.wait(timeout=10)


def _ray_error(address: Optional[str], e: Exception) -> str:
    msg = f"could not {'connect to the Ray cluster at ' + address if address else 'start a local Ray instance'}: " \
          f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if address and not os.environ.get("RAY_AUTH_MODE"):
        msg += " (a cluster with token authentication, Ray's default, needs RAY_AUTH_MODE=token here)"
    return msg


def cli() -> None:
    """``python -m gmlp_ablate.run``: :func:`main`, then exit at once. By then every run is
    closed and the summary printed; what an orderly interpreter exit would still wait for
    (stopping a local Ray instance, which the reaper does when this process is gone, and the
    exit handlers of Ray, MLflow and their threads) is of use to nobody."""
    global _EXIT_AT_ONCE
    _EXIT_AT_ONCE = True
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()

"""Runs lists of trials on Ray Tune for one driver: the runner's side of the stages.

:class:`TuneExecutor` is the :class:`gmlp_ablate.stages.Executor` of a sweep invocation: it
holds the driver's Ray instance (already started), its parent run, its claims and its ledger,
and each :meth:`~TuneExecutor.run` runs the trials whose keys have no FINISHED run yet in
Tune runs of at most ``--trials-per-tune-run`` trials, each trial claimed before it starts
(:class:`~gmlp_ablate.callbacks.ClaimingSearcher`) and mirrored to MLflow. A sweep without stages is one call.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.util.debug import reset_log_once

from gmlp_ablate.callbacks import ClaimingSearcher, ConsoleProgress, MLflowMirror, PendingWatch, StopOnSignal
from gmlp_ablate.names import STAGE_FINAL, STAGE_TUNE, TAG_STOPPED_AT, path_component
from gmlp_ablate.preflight import gpu_per_trial
from gmlp_ablate.trial import to_dict


def trials_in_any_worker() -> None:
    """Let Tune's trial actors run in the worker processes Ray already has.

    Tune gives every trainable actor a runtime environment setting ``PL_DISABLE_FORK=1`` (for
    PyTorch Lightning, which this project does not use). An actor whose runtime environment
    differs from the job's cannot use the workers Ray started with the instance (idle, and
    with :data:`gmlp_ablate.run.TRIAL_MODULES` already imported on a local instance): Ray
    starts a new process for it and the idle ones are wasted. Without that variable, Tune's
    runtime environment is empty (unless the driver has one of the variables Tune passes on,
    such as ``AWS_ACCESS_KEY_ID``) and the first trials start in the waiting workers. A Ray
    without that setting (or that moved it) is left as it is: trials then start as before,
    and ``tests/test_startup.py`` says so.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return
    env_vars = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(env_vars, dict):
        env_vars.pop("PL_DISABLE_FORK", None)


class TuneExecutor:
    """Trials -> Tune runs, for one driver (``args`` are the runner's parsed flags)."""

    def __init__(self, args: Any, sweep: Any, tracker: Any, experiment_id: str, parent_id: str, claims: Any,
                 ledger: Any, stop: Any, trainable: Any, checkpoint_root: str) -> None:
        self.args, self.sweep, self.tracker, self.experiment_id = args, sweep, tracker, experiment_id
        self.parent_id, self.claims, self.ledger, self.stop = parent_id, claims, ledger, stop
        self.trainable, self.checkpoint_root = trainable, checkpoint_root
        self.elsewhere: List[Any] = []
        self.final: List[Any] = []
        """The final-stage trials asked for so far (the summary's rows)."""
        self.calls = 0
        self.started = time.time()
        self.index: Dict[str, int] = {}
        """trial_key -> its number in the current Tune run (its folder's name, :func:`trial_dirname`)."""
        self.scheduled: Optional[str] = None
        """The metric the current Tune run's scheduler compares (the trials report it as a number)."""
        trials_in_any_worker()

    def checkpoint_dir(self, key: str) -> str:
        return os.path.join(self.checkpoint_root, key)

    def results(self) -> Dict[str, Dict[str, float]]:
        """trial_key -> last metric values of its latest FINISHED run, with ``stopped_at_step``
        (a number) for a run the stage's scheduler stopped early."""
        out = {}
        for k, r in self.tracker.finished_runs_by_key(self.experiment_id).items():
            out[k] = dict(r.data.metrics)
            if TAG_STOPPED_AT in r.data.tags:
                out[k][TAG_STOPPED_AT] = float(r.data.tags[TAG_STOPPED_AT])
        return out

    def _finished_since(self, key: str) -> bool:
        runs = [r for r in self.tracker.trial_runs(self.experiment_id, key) if r.info.status == "FINISHED"]
        return any(not self.args.rerun or (r.info.start_time or 0) / 1000 >= self.started for r in runs)

    def _prepare(self, t: Any) -> None:
        if self.args.rerun and t.key in self.tracker.finished_keys(self.experiment_id):
            shutil.rmtree(self.checkpoint_dir(t.key), ignore_errors=True)  # a rerun trains again from step 0

    def _config(self, t: Any) -> Dict[str, Any]:
        """The trial's Tune config, its trial config as one JSON string (read by the trainable).

        Tune keeps several copies of every trial's config until the run ends (the config, its
        unresolved and flattened forms, the last result, their cached JSON); with a string, the
        copies are references to one object instead of nested dicts of a few dozen entries.
        """
        return {"trial": {"key": t.key, "arm": t.arm, "index": self.index[t.key], "scheduled": self.scheduled,
                          "config": json.dumps(to_dict(t.config)), "checkpoint_dir": self.checkpoint_dir(t.key)}}

    def _tune_config(self, searcher: Any, todo: List[Any], scheduler: Any) -> Any:
        """Tune's settings for a run of ``todo``: one trial each, from ``searcher``."""
        return tune.TuneConfig(search_alg=searcher, num_samples=len(todo), max_concurrent_trials=self.args.max_concurrent,
                               reuse_actors=True, scheduler=scheduler, trial_dirname_creator=trial_dirname,
                               trial_name_creator=trial_name)

    def run(self, trials: List[Any], stage: str = STAGE_FINAL, scheduler: Optional[Dict[str, Any]] = None) -> None:
        """Run every trial of ``trials`` whose key has no FINISHED run yet (all with --rerun).

        The trials run in Tune runs of at most ``--trials-per-tune-run`` trials, one after the
        other, so the driver's memory does not grow with the size of the sweep: Tune keeps the
        state of every trial of a run until the run returns (see :data:`TRIALS_PER_TUNE_RUN`).
        A stage with a scheduler is one Tune run whatever its size: its scheduler compares the
        stage's trials with each other.
        """
        if stage == STAGE_FINAL:
            self.final += trials
        done = set() if self.args.rerun else set(self.tracker.finished_keys(self.experiment_id))
        todo = [t for t in trials if t.key not in done and t.key not in self.ledger.entries]
        if len(todo) < len(trials):
            print(f"skipping {len(trials) - len(todo)} trial(s) already FINISHED or run in this invocation")
        if not todo:
            return
        self.ledger.best = None  # the progress lines' best is per stage, on what that stage reads
        tuning, metric = self.sweep.config.tune, self.sweep.config.metric
        self.ledger.metric, self.ledger.mode = ((tuning.select, tuning.mode) if stage == STAGE_TUNE and tuning
                                                else (metric.name, metric.mode))
        for t in todo:
            self.ledger.add(t.key, f"{t.arm} seed={t.seed}", t.config.train.steps)
        tune_scheduler = _scheduler(scheduler, trials)
        size = len(todo) if tune_scheduler is not None else self.args.trials_per_tune_run or TRIALS_PER_TUNE_RUN
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        for n, chunk in enumerate(chunks, 1):
            if self.stop is not None and self.stop.signal is not None:
                break  # stopping: the trials of the later runs stay pending (not run)
            if len(chunks) > 1:
                print(f"Tune run {n}/{len(chunks)}: {len(chunk)} of the {len(todo)} trial(s)", flush=True)
            self._tune_run(chunk, stage, tune_scheduler)

    def _tune_run(self, todo: List[Any], stage: str, scheduler: Any) -> None:
        """One Tune run over ``todo`` (already in the ledger), each trial claimed as it starts."""
        self.calls += 1
        gpu = gpu_per_trial(self.sweep.config.resources, ray.cluster_resources().get("GPU", 0.0))
        cpu = self.sweep.config.resources.cpu
        self.index = {t.key: i for i, t in enumerate(todo)}
        self.scheduled = scheduler.metric if scheduler is not None else None
        searcher = ClaimingSearcher(todo, self.claims, self._finished_since, self._config, self._prepare)
        callbacks = [MLflowMirror(self.tracker, self.experiment_id, self.parent_id, self.sweep.name,
                                  {t.key: t for t in todo}, self.ledger, self.claims, self.checkpoint_dir),
                     ConsoleProgress(self.ledger), StopOnSignal(self.stop)]
        if self.args.address:
            _warn_unmet(cpu, gpu, self.args.pending_timeout)
            if self.args.pending_timeout:
                callbacks.append(PendingWatch(self.args.pending_timeout, cpu, gpu))
        tuner = tune.Tuner(
            tune.with_resources(self.trainable, {"cpu": cpu, "gpu": gpu}),
            param_space={"cpu": cpu},
            tune_config=self._tune_config(searcher, todo, scheduler),
            run_config=tune.RunConfig(
                name=f"{path_component(self.sweep.name)}-{self.parent_id[:8]}" + (f"-{stage}{self.calls}"
                                                                                   if self.calls > 1 else ""),
                storage_path=self.args.storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.args.retries), callbacks=callbacks),
        )
        print(f"running {len(todo)} trial(s) on Ray ({self.args.address or 'local'}): {cpu:g} CPU + {gpu:g} GPU each; "
              f"MLflow run {self.parent_id} in {self.tracker.uri}", flush=True)
        try:
            tuner.fit()
        finally:
            # Ray's "log once" keys outlive the run; Tune's JSON encoder adds one for every
            # distinct value it cannot encode (its running statistics, per trial and snapshot).
            reset_log_once()
        self.elsewhere += searcher.elsewhere


TRIALS_PER_TUNE_RUN = 1000
"""Default of ``--trials-per-tune-run``. Tune keeps every trial of a run (its config, results,
running statistics and their cached JSON: about 0.1 MB each in the driver) until the run
returns; a sweep of more trials is run in several Tune runs, one after the other, so the
driver holds at most this many trials' state. Between two runs the trials of the first must
all end before the next starts (at most one trial's length with slots idle) and the workers
start again (their imports, about 3 s): small beside 1000 trials."""


def trial_dirname(trial: Any) -> str:
    """Tune's folder name of a trial: ``t<its number in the run>_<key prefix>``.

    Module-level (pickled by reference), like :func:`trial_name`: Tune keeps each trial's state
    as JSON with these functions cloudpickled into it, so a closure over the run's trials would
    make every trial's saved state grow with the number of trials in the run.
    """
    t = trial.config["trial"]
    return f"t{t['index']:04d}_{t['key'][:8]}"


def trial_name(trial: Any) -> str:
    """Tune's name of a trial: ``<arm>#<key prefix>``."""
    t = trial.config["trial"]
    return f"{t['arm']}#{t['key'][:6]}"


ASHA_REDUCTION_FACTOR = 4
"""ASHA's reduction factor (Ray Tune's default): a trial continues past a rung when it is in
the best quarter of the trials its arm recorded there so far."""


def asha_rungs(steps: int, eval_every: int) -> List[int]:
    """The steps at which ASHA compares an arm's tuning trials: its evaluations at
    ``eval_every x 4^k``, strictly before the last step (empty when the trial is evaluated
    only at its last step: nothing to compare before the end)."""
    out, rung = [], eval_every
    while rung < steps:
        out.append(rung)
        rung *= ASHA_REDUCTION_FACTOR
    return out


def _scheduler(spec: Optional[Dict[str, Any]], trials: List[Any]) -> Any:
    """Tune's trial scheduler for a stage: ``asha`` stops an arm's weak tuning trials early.

    One ASHA per arm (:class:`PerArmScheduler`): an arm's trials are compared only with each
    other. Its rungs are :func:`asha_rungs` of the arm's steps and evaluation interval: the
    first at the first evaluation (``grace_period``), each one an evaluation step, none at the
    last step (ASHA's ``max_t`` is set below it and ``stop_last_trials`` is off, so a trial that
    reaches its last step ends on its own, with its final report). An arm evaluated only at its
    last step gets no scheduler (the sweep's check refuses that for ``tune.scheduler: asha``).
    """
    if not spec or spec.get("name", "none") == "none":
        return None
    by_arm: Dict[str, Any] = {}
    for arm in dict.fromkeys(t.arm for t in trials):
        cfgs = [t.config.train for t in trials if t.arm == arm]
        rungs = asha_rungs(max(c.steps for c in cfgs), min(c.eval_every for c in cfgs))
        if rungs:
            # ASHA puts its rungs at grace_period x 4^k up to max_t: max_t halfway to the rung after
            # the last one gives exactly these (and it stops nothing at max_t: stop_last_trials off).
            by_arm[arm] = ASHAScheduler(time_attr="step", metric=spec["metric"], mode=spec["mode"],
                                        max_t=rungs[-1] * ASHA_REDUCTION_FACTOR // 2, grace_period=rungs[0],
                                        reduction_factor=ASHA_REDUCTION_FACTOR, stop_last_trials=False)
    return PerArmScheduler(by_arm, spec["metric"], spec["mode"])


class PerArmScheduler(FIFOScheduler):
    """Routes each trial's events to its arm's scheduler (an arm without one runs FIFO).

    An arm's tuning is its own search: one scheduler over every arm would compare a weaker
    arm's candidates with a stronger arm's and could stop all of them at the first rung.
    """

    def __init__(self, by_arm: Dict[str, Any], metric: str, mode: str) -> None:
        super().__init__()
        self.by_arm = by_arm
        self._metric, self._mode = metric, mode

    def _forward(self, event: str, tune_controller: Any, trial: Any, *args: Any) -> Any:
        """Call ``event`` on the trial's arm's scheduler; None when its arm has none."""
        s = self.by_arm.get(trial.config["trial"]["arm"])
        return None if s is None else getattr(s, event)(tune_controller, trial, *args)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._forward("on_trial_add", tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._forward("on_trial_error", tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: Dict[str, Any]) -> str:
        decision = self._forward("on_trial_result", tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision is None else decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: Dict[str, Any]) -> None:
        self._forward("on_trial_complete", tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._forward("on_trial_remove", tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{arm}: {s.debug_string()}" for arm, s in self.by_arm.items()) or "FIFO"


def _warn_unmet(cpu: float, gpu: float, timeout: Optional[float]) -> None:
    """One line when no node of the cluster has a trial's resources now."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        most = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
        wait = f"giving up after {timeout:g} s (--pending-timeout)" if timeout else \
            "waiting until it has (an autoscaler may add nodes; --pending-timeout S to give up)"
        print(f"warning: a trial needs {cpu:g} CPU + {gpu:g} GPU on one node; the cluster's largest node has "
              f"{most[0]:g} CPU + {most[1]:g} GPU now; {wait}", file=sys.stderr, flush=True)

"""The Ray Tune side of the driver: which trial runs next, and what Tune's events mean.

- :class:`ClaimingSearcher` hands Tune one trial at a time, each only once this driver has
  claimed its key (:mod:`gmlp_ablate.claims`), so drivers sharing a sweep split its trials.
- :class:`MLflowMirror` feeds Tune's trial events to the :class:`~gmlp_ablate.ledger.Ledger`
  and writes what they mean to MLflow (one writer per driver); it keeps the heartbeat.
- :class:`ConsoleProgress` prints one line per event and a status line every 30 s.
- :class:`StopOnSignal` ends Tune's loop once SIGINT/SIGTERM was received;
  :class:`PendingWatch` once trials waited ``--pending-timeout`` seconds for resources.

Tune calls callbacks in list order: the mirror first, so the others read an updated ledger.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ray.tune import Callback
from ray.tune.search import Searcher

from gmlp_ablate import liveness
from gmlp_ablate.ledger import FAILED, FINISHED, Ledger
from gmlp_ablate.names import (
    CHECKPOINT_FILE,
    FAILURE_DRIVER_LOST,
    INFO_RESUMED_FROM_STEP,
    TAG_COMMIT,
    TAG_RESTART_REASON,
    TAG_RESTARTS,
    TAG_STOPPED_AT,
)

STATUS_EVERY_S = 30.0


def _short(text: Optional[str], n: int = 200) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 3] + "..."


def _key(trial: Any) -> str:
    return trial.config["trial"]["key"]


def error_text(trial: Any) -> str:
    """The error Tune recorded for a trial (its local error file, else the synced copy)."""
    try:  # the local error file is written before the callbacks run
        with open(trial.error_file) as f:
            return f.read()
    except (OSError, TypeError):
        try:
            err = trial.get_error()
            return str(err) if err is not None else ""
        except Exception:
            return ""


class ClaimingSearcher(Searcher):
    """Suggests the sweep's trials in order, each after this driver claimed its key.

    A key a live driver holds is skipped (``elsewhere``); one that got a FINISHED run since
    the driver's first look (``finished_since``) too. ``prepare(trial)`` runs for each
    claimed trial before Tune sees it.
    """

    def __init__(self, trials: List[Any], claims: Any, finished_since: Callable[[str], bool],
                 make_config: Callable[[Any], Dict[str, Any]], prepare: Callable[[Any], None]) -> None:
        super().__init__()
        self.queue = list(trials)
        self.claims, self.finished_since = claims, finished_since
        self.make_config, self.prepare = make_config, prepare
        self.elsewhere: List[Any] = []
        self.done_meanwhile: List[Any] = []

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: Dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> Optional[Any]:
        while self.queue:
            t = self.queue.pop(0)
            if not self.claims.claim(t.key):
                self.elsewhere.append(t)
                continue
            if self.finished_since(t.key):
                self.claims.release(t.key)
                self.done_meanwhile.append(t)
                continue
            self.prepare(t)
            return self.make_config(t)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        pass


class MLflowMirror(Callback):
    """Tune events -> ledger -> MLflow runs (and claims released when a trial ends)."""

    def __init__(self, tracker: Any, experiment_id: str, parent_id: str, sweep_name: str, trials: Dict[str, Any],
                 ledger: Ledger, claims: Any, checkpoint_dir: Callable[[str], str]) -> None:
        from gmlp_ablate.tracking import git_commit

        self.tracker, self.experiment_id, self.parent_id = tracker, experiment_id, parent_id
        self.sweep_name, self.trials = sweep_name, trials
        self.ledger, self.claims, self.checkpoint_dir = ledger, claims, checkpoint_dir
        self.run_tags = {TAG_COMMIT: git_commit()}
        self.last_beat = time.monotonic()
        self.continued: Dict[str, int] = {}  # key -> last step of an earlier run it continues

    def _open_run(self, key: str) -> str:
        """A new run, or the unfinished run of an earlier invocation whose checkpoint the
        trial resumes from (so its curve stays in one run)."""
        if os.path.exists(os.path.join(self.checkpoint_dir(key), CHECKPOINT_FILE)):
            earlier = [r for r in self.tracker.trial_runs(self.experiment_id, key) if r.info.status != FINISHED]
            if earlier:
                old = earlier[-1]
                restarts = int(old.data.tags.get(TAG_RESTARTS, "0")) + 1
                reason = f"{old.data.tags.get('failure', FAILURE_DRIVER_LOST)}: continued by a later invocation"
                last = self.tracker.reopen_trial(old.info.run_id, self.parent_id,
                                                 {**self.run_tags, TAG_RESTARTS: str(restarts), TAG_RESTART_REASON: reason})
                self.ledger[key].last_step = last
                self.continued[key] = last
                return old.info.run_id
        return self.tracker.start_trial(self.experiment_id, self.parent_id, self.trials[key], self.sweep_name,
                                        self.run_tags)

    def on_trial_start(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger.start(_key(trial))
        if e.run_id is None:  # a retried trial keeps its run
            e.run_id = self._open_run(e.key)

    def on_trial_result(self, iteration: int, trials: List[Any], trial: Any, result: Dict[str, Any], **info: Any) -> None:
        e = self.ledger[_key(trial)]
        up = self.ledger.result(e.key, result)
        if up.tags or up.metrics:  # one write per result
            self.tracker.log_metrics(e.run_id, up.metrics, up.step, tags=up.tags)

    def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        status, final = self.ledger.complete(e.key)
        stopped = {TAG_STOPPED_AT: str(max(e.last_step, 0))} if e.stopped_early and status == FINISHED else None
        # ``stopped``: ended by the stage's scheduler before its last step. One write, then the status.
        self.tracker.end_trial(e.run_id, status, error=e.error if status == FAILED else None,
                               failure=e.failure if status == FAILED else None, metrics=final, step=e.steps,
                               tags=stopped)
        if status == FINISHED:  # its checkpoint is of no further use; a --rerun starts afresh
            shutil.rmtree(self.checkpoint_dir(e.key), ignore_errors=True)
        self.claims.release(e.key)

    def on_trial_recover(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        msg, kind = self.ledger.retry(e.key, error_text(trial))
        if e.run_id is not None:
            self.tracker.set_tags(e.run_id, {TAG_RESTARTS: str(e.restarts), TAG_RESTART_REASON: f"{kind}: {msg}"[:4900]})

    def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger.error(_key(trial), error_text(trial))
        if e.run_id is None:
            e.run_id = self._open_run(e.key)
        self.tracker.end_trial(e.run_id, e.status, error=e.error, failure=e.failure)
        self.claims.release(e.key)

    def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_beat > liveness.HEARTBEAT_EVERY_S:
            self.tracker.set_tags(self.parent_id, liveness.heartbeat())
            self.last_beat = now


class ConsoleProgress(Callback):
    """One line per trial event, and every 30 s the counts and the running trials' steps."""

    def __init__(self, ledger: Ledger, out: Any = None) -> None:
        self.ledger, self.out = ledger, out
        self.last_status = time.monotonic()
        self.total = len(ledger.entries)

    def _say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.out or sys.stdout, flush=True)

    def _counts(self) -> str:
        c = self.ledger.counts()
        best = self.ledger.best
        shown = f"  best {self.ledger.metric} {best[0]:.4g} ({best[1]})" if best else ""
        return (f"[{c[FINISHED]}/{self.total} done, {c['RUNNING']} running, {c[FAILED] + c['KILLED']} failed]{shown}")

    def on_trial_start(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        self._say(f"{e.label}: started" + (f" (retry {e.restarts})" if e.restarts else "")
                  + f", run {(e.run_id or '?')[:8]}")

    def on_trial_result(self, iteration: int, trials: List[Any], trial: Any, result: Dict[str, Any], **info: Any) -> None:
        resumed = result.get(f"info.{INFO_RESUMED_FROM_STEP}")
        if resumed not in (None, "0", 0):
            self._say(f"{self.ledger[_key(trial)].label}: resumed from its checkpoint at step {resumed}")

    def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        if e.status == FAILED:
            self._say(f"{e.label}: FAILED ({e.error})  {self._counts()}")
            return
        if e.stopped_early:
            self._say(f"{e.label}: stopped early by the scheduler at step {max(e.last_step, 0)}/{e.steps}  "
                      f"{self._counts()}")
            return
        shown = f"{self.ledger.metric} {e.value:.4g}" if e.value is not None else ""
        self._say(f"{e.label}: done {shown}  {self._counts()}")

    def on_trial_recover(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        self._say(f"{e.label}: {_short(e.restart_reason)}; retrying from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        e = self.ledger[_key(trial)]
        self._say(f"{e.label}: {e.status}, {e.failure} ({_short(e.error)})  {self._counts()}")

    def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_status > STATUS_EVERY_S:
            running = [f"{e.label} @{max(e.last_step, 0)}/{e.steps}" for e in self.ledger.running()]
            self._say(self._counts() + (f"  running: {', '.join(running)}" if running else ""))
            self.last_status = now


class PendingTimeout(Exception):
    """No trial could start within ``--pending-timeout`` seconds."""


class PendingWatch(Callback):
    """Raises :class:`PendingTimeout` once trials have waited ``timeout`` s with none running
    (a cluster without a node that has a trial's resources)."""

    def __init__(self, timeout: float, cpu: float, gpu: float) -> None:
        self.timeout, self.cpu, self.gpu = timeout, cpu, gpu
        self.since = time.monotonic()

    def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
        busy = any(t.status == "RUNNING" for t in trials)
        waiting = any(t.status == "PENDING" for t in trials)
        if busy or not waiting:
            self.since = time.monotonic()
        elif time.monotonic() - self.since > self.timeout:
            raise PendingTimeout(f"--pending-timeout: no trial could start in {self.timeout:g} s: a trial needs "
                                 f"{self.cpu:g} CPU + {self.gpu:g} GPU on one node of the cluster")


class SweepInterrupted(Exception):
    """Raised inside Tune's loop once SIGINT/SIGTERM was received."""


class StopOnSignal(Callback):
    """Ends Tune's loop (Tune then stops the trials) once ``stop.signal`` is set."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
        if self.stop.signal is not None:
            raise SweepInterrupted(self.stop.signal)

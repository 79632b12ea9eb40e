"""The driver's book of the trials it runs: state, step deduplication, failure kinds.

Plain Python (no Ray, no MLflow): the Tune callbacks feed it what Tune tells them and do
with its answers what their side needs (the MLflow mirror logs, the console prints), so the
rules live here once and are tested without starting anything.

States: PENDING -> RUNNING -> FINISHED | FAILED | KILLED. A retried trial goes back to
RUNNING in the same run; a result at a step already logged yields no metrics (a retry or a
later invocation resumes from the last checkpoint and first sends again every report up to
it, of which only those the run lacks, when a driver died before logging them, are logged).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from gmlp_ablate.names import (
    FAILURE_DRIVER_ERROR,
    FAILURE_EXCEPTION,
    FAILURE_INTERRUPTED,
    FAILURE_NONFINITE,
    FAILURE_WORKER_DIED,
    INFO_PREFIX,
    RESULT_ERROR,
    RESULT_FINAL,
    RESULT_METRICS,
    RESULT_NONFINITE_STEP,
    RESULT_STEP,
    TAG_NONFINITE_STEP,
    TAG_WORKER,
)

PENDING, RUNNING, FINISHED, FAILED, KILLED = "PENDING", "RUNNING", "FINISHED", "FAILED", "KILLED"

_DIED = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
         "worker process has died", "died unexpectedly", "ray.exceptions.OutOfMemoryError")


def classify_error(text: str) -> Tuple[str, str]:
    """(one-line message, failure kind) from a trial's error text (a traceback or a message).

    ``worker_died`` when the text says the process or node died, else ``exception``; the
    message is the last line naming an error, without Ray's advice paragraph.
    """
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    kind = FAILURE_WORKER_DIED if any(s in (text or "") for s in _DIED) else FAILURE_EXCEPTION
    msg = ""
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln) and not ln.startswith("File "):
            msg = ln
            break
    msg = (msg or (lines[-1] if lines else "trial failed (no error recorded)")).split(" Some common causes")[0]
    return msg, kind


def pack_metrics(metrics: Mapping[str, float], numeric: Optional[str] = None) -> Dict[str, Any]:
    """The result keys that carry ``metrics``: all of them as one string under
    :data:`RESULT_METRICS`, and ``numeric`` (the metric a scheduler compares) also as a number."""
    out: Dict[str, Any] = {RESULT_METRICS: json.dumps(dict(metrics))}
    if numeric is not None and numeric in metrics:
        out[numeric] = metrics[numeric]
    return out


def metric_items(result: Mapping[str, Any]) -> Dict[str, float]:
    """Our metrics in a result (:func:`pack_metrics`): numeric, not bool."""
    packed = json.loads(result.get(RESULT_METRICS) or "{}")
    return {k: float(v) for k, v in packed.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Entry:
    """One trial of this invocation."""

    key: str
    label: str
    steps: int
    run_id: Optional[str] = None
    status: str = PENDING
    last_step: int = -1
    error: Optional[str] = None
    failure: Optional[str] = None
    worker: Optional[str] = None
    restarts: int = 0
    restart_reason: Optional[str] = None
    final: Dict[str, float] = field(default_factory=dict)
    """The metrics of the trial's final report, until :meth:`Ledger.complete` (then released)."""
    value: Optional[float] = None
    """The ledger's metric in the final report, kept once the trial completed."""
    stopped_early: bool = False
    """Completed without its final report before its last step: a stage's scheduler stopped it."""


@dataclass
class Update:
    """What one result means for the run: metrics to log at ``step`` (may be empty), tags."""

    step: int
    metrics: Dict[str, float]
    tags: Dict[str, str]


class Ledger:
    """The trials of one invocation, by trial key."""

    def __init__(self, metric: str = "val/loss", mode: str = "min") -> None:
        self.entries: Dict[str, Entry] = {}
        self.metric, self.mode = metric, mode
        self.best: Optional[Tuple[float, str]] = None
        self.interrupted = False

    def add(self, key: str, label: str, steps: int) -> Entry:
        self.entries[key] = Entry(key=key, label=label, steps=steps)
        return self.entries[key]

    def __getitem__(self, key: str) -> Entry:
        return self.entries[key]

    # ------------------------------------------------------------------ events
    def start(self, key: str) -> Entry:
        e = self.entries[key]
        e.status = RUNNING
        return e

    def result(self, key: str, result: Mapping[str, Any]) -> Update:
        """Digest one result; metrics only for a step after the last one logged."""
        e = self.entries[key]
        step = int(result.get(RESULT_STEP, 0))
        tags = {k[len(INFO_PREFIX):]: str(v) for k, v in result.items() if k.startswith(INFO_PREFIX)}
        worker = f"{result.get('node_ip', '?')}:{result.get('pid', '?')}"
        if worker != e.worker:  # the first result of a (re)started trial: where it runs
            e.worker = tags[TAG_WORKER] = worker
        if RESULT_NONFINITE_STEP in result:
            e.error, e.failure = str(result.get(RESULT_ERROR)), FAILURE_NONFINITE
            tags[TAG_NONFINITE_STEP] = str(result[RESULT_NONFINITE_STEP])
            return Update(step, {}, tags)
        metrics = metric_items(result)
        if result.get(RESULT_FINAL):
            e.final = metrics
            return Update(step, {}, tags)
        if step <= e.last_step:
            return Update(step, {}, tags)
        e.last_step = step
        return Update(step, metrics, tags)

    def complete(self, key: str) -> Tuple[str, Dict[str, float]]:
        """The trial's function returned: FINISHED (with the final metrics to log at its last
        step) or FAILED when it ended on a non-finite loss.

        What the entry keeps afterwards is what is read after a trial's end (its status,
        ``value``, ``stopped_early``); its final metrics and worker are released, so a long
        sweep's ledger does not grow with the results of the trials it ran."""
        e = self.entries[key]
        final, e.final, e.worker = e.final, {}, None
        e.stopped_early = not final and e.last_step < e.steps
        if e.failure == FAILURE_NONFINITE:
            e.status = FAILED
            return e.status, {}
        e.status = FINISHED
        e.value = value = final.get(self.metric)
        if value is not None and math.isfinite(value):
            if self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0]):
                self.best = (value, e.label)
        return e.status, {k: v for k, v in final.items() if k.startswith(("perf/", "time/"))}

    def retry(self, key: str, error_text: str) -> Tuple[str, str]:
        """Tune retries the trial: (message, kind) of what made it fail."""
        e = self.entries[key]
        e.restarts += 1
        msg, kind = classify_error(error_text)
        e.restart_reason = f"{kind}: {msg}"
        return msg, kind

    def error(self, key: str, error_text: str) -> Entry:
        """Tune gave up on the trial: FAILED with its kind, or KILLED if the sweep is stopping
        (a terminal's Ctrl-C reaches the workers too)."""
        e = self.entries[key]
        e.error, e.failure = classify_error(error_text)
        e.status = FAILED
        if self.interrupted:
            e.status, e.failure = KILLED, FAILURE_INTERRUPTED
        return e

    def stop_running(self, interrupted: bool) -> List[Entry]:
        """The sweep ends with trials still running: they become KILLED; returns them."""
        out = []
        for e in self.entries.values():
            if e.run_id is not None and e.status == RUNNING:
                e.status = KILLED
                e.failure = FAILURE_INTERRUPTED if interrupted else FAILURE_DRIVER_ERROR
                e.error = "the sweep was stopped before this trial ended"
                out.append(e)
        return out

    # ----------------------------------------------------------------- reading
    def counts(self) -> Dict[str, int]:
        c = {s: 0 for s in (PENDING, RUNNING, FINISHED, FAILED, KILLED)}
        for e in self.entries.values():
            c[e.status] += 1
        return c

    def failed(self) -> List[Entry]:
        """Trials that ran (or were claimed) and did not finish."""
        return [e for e in self.entries.values() if e.status in (FAILED, KILLED)]

    def running(self) -> List[Entry]:
        return [e for e in self.entries.values() if e.status == RUNNING]

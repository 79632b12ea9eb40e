"""Names that cross module boundaries, defined once and imported by every side.

The trainer emits result keys, the runner turns them into MLflow tags and metrics, the
analysis reads those tags back, and the screenshot script looks for them in the MLflow UI.
Each of those sides imports the names from here; none spells them on its own.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# --------------------------------------------------------------------------------------
# What train() reports (keys of the dict passed to its ``report`` callback)
# --------------------------------------------------------------------------------------

INFO_PREFIX = "info."
"""Result keys with this prefix carry strings (device, corpus hash); they become tags."""
RESULT_STEP = "step"
RESULT_METRICS = "metrics"
"""The result's metrics (``train/loss``, ``val/bpb``, ...) as one JSON object in a string.

Ray Tune keeps running statistics of every numeric key a trial reports (in the driver, for
every trial of a Tune run, until the run returns): the metrics travel as one string, and a
number only where Tune reads one (``step``, and the metric a stage's scheduler compares)."""
RESULT_FINAL = "final"
"""Set (to 1) on the last result of a trial that ran to its end."""
RESULT_NONFINITE_STEP = "nonfinite_step"
"""Set on the result that ends a trial whose loss went NaN/inf: the first bad step."""
RESULT_ERROR = "error"
INFO_RESUMED_FROM_STEP = "resumed_from_step"
"""Tag (after the ``info.`` prefix is removed): the step a trial was resumed from (0 = fresh)."""
INFO_DEVICE = "device"
"""Tag (after the ``info.`` prefix is removed): the device the trial trained on."""
INFO_COMPILE = "compile"
"""Tag (after the ``info.`` prefix is removed), with ``train.compile``: whether the trial
trained compiled or declined it, and the compile probe's speed ratio."""

CHECKPOINT_FILE = "checkpoint.pt"
"""A trial's checkpoint, in its key's folder: written by the trainer, looked for by the
driver (which never imports torch) to tell a trial that continues from one."""

# Metric name prefixes: val/* selects (tuning, early decisions), test/* reports.
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = "train", "val", "test"


def split_metric(split: str, name: str) -> str:
    """The key of a held-out metric: ``split_metric(SPLIT_TEST, "loss") == "test/loss"``."""
    return f"{split}/{name}"


def curve_metric(metric: str) -> str:
    """The metric whose history shows a final-only metric's course: ``test/acc`` is scored
    once at the end, so its curve is ``val/acc``; any other metric is its own curve."""
    split, _, name = metric.partition("/")
    return split_metric(SPLIT_VAL, name) if split == SPLIT_TEST and name else metric


# --------------------------------------------------------------------------------------
# MLflow tags written by gmlp_ablate.tracking and read by analysis.load
# --------------------------------------------------------------------------------------

TAG_ROLE = "gmlp_ablate.role"  # PARENT | TRIAL
PARENT, TRIAL = "parent", "trial"
TAG_SWEEP = "sweep"
TAG_KEY = "trial_key"
TAG_ARM = "arm"
TAG_SEED = "seed"
TAG_BASELINE = "baseline"  # "true" | "false"
TAG_FACTORS = "factors"  # trial: JSON {grid key: value}; parent: JSON [grid keys]
TAG_BASELINES = "baselines"  # parent: JSON [baseline arm names]
TAG_METRIC = "metric"  # parent: the sweep's metric name
TAG_METRIC_MODE = "metric_mode"  # parent: min | max
TAG_ERROR = "error"  # failed trial: the error message (one line, truncated)
TAG_FAILURE = "failure"  # a FAILURE_* value
TAG_NONFINITE_STEP = RESULT_NONFINITE_STEP  # failed trial: the first non-finite step
TAG_WORKER = "worker"  # trial: "<node ip>:<pid>" of the process running it (updated on a retry)
TAG_RESTARTS = "restarts"  # trial: times it was retried from its checkpoint after a failure
TAG_RESTART_REASON = "restart_reason"  # trial: the error that caused the last retry
TAG_COMMIT = "git_commit"
TAG_DEVICE = INFO_DEVICE
TAG_STAGE = "stage"  # trial: STAGE_TUNE | STAGE_FINAL
STAGE_TUNE, STAGE_FINAL = "tune", "final"
TAG_STOPPED_AT = "stopped_at_step"  # tuning trial: the step at which the stage's scheduler (ASHA) stopped it early
TAG_HOST = "gmlp_ablate.driver_host"
TAG_PID = "gmlp_ablate.driver_pid"
TAG_PID_START = "gmlp_ablate.driver_start"
TAG_HEARTBEAT = "gmlp_ablate.heartbeat"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_COMMAND = "command"

# Values of TAG_FAILURE: FAILED runs ...
FAILURE_EXCEPTION = "exception"
FAILURE_NONFINITE = "nonfinite"
FAILURE_WORKER_DIED = "worker_died"
FAILURE_DRIVER_LOST = "driver_lost"
# ... and KILLED runs.
FAILURE_INTERRUPTED = "interrupted"
FAILURE_DRIVER_ERROR = "driver_error"

# Params of the parent run: the sweep's declared design (written by gmlp_ablate.sweep, read by
# analysis.design). JSON values where not a plain string.
P_FAMILY = "sweep.family"
"""JSON list of ``[arm, vs_arm]`` pairs: the Holm family, exactly."""
P_ALPHA = "sweep.alpha"
"""Family-wise type I error."""
P_REFERENCE = "sweep.reference"
"""JSON dict of the reference level, e.g. ``{"model.sgu_split": true}``."""
P_REFERENCE_ARM = "sweep.reference_arm"
P_SEEDS = "sweep.seeds"
"""JSON list of seeds (fixed design) or ``{"initial", "max", "step", "first", "boundary"}``."""
P_SOLVED = "sweep.solved"
"""JSON ``null`` or ``{"metric", "threshold"}``."""
P_DIVERGED = "sweep.diverged"
"""``drop`` or ``worst``."""
P_TUNE = "sweep.tune"
"""JSON ``null`` or the tuning stage's declaration."""
P_MATCHES = "sweep.matches"
"""JSON ``{arm: {to, by, vary, tolerance, target, achieved, value}}``."""
P_METRIC = "sweep.metric"
P_METRIC_MODE = "sweep.metric_mode"
P_GRID = "sweep.grid"
"""JSON ``{dotted key: [levels]}``."""
P_BASELINES = "sweep.baselines"
"""JSON ``{name: partial trial config}``."""

REPORT_ARTIFACT_PATH = "report"
"""Where the report is attached on the sweep's parent run."""

# --------------------------------------------------------------------------------------
# Metrics and params logged on trial runs that other sides look up by name
# --------------------------------------------------------------------------------------

METRIC_PARAMS = "model/params"
"""Metric: the model's parameter count (logged at step 0)."""
METRIC_FLOPS = "model/flops_per_token"
"""Metric: the model's analytic forward FLOPs per token (logged at step 0)."""
METRIC_TRAIN_LOSS = "train/loss"
"""Metric: mean training loss over the steps since the last report."""
METRIC_TRAIN_LR = "train/lr"
"""Metric: the learning rate of the last step reported."""
METRIC_TOKENS_PER_S = "perf/tokens_per_s"
"""Metric: training throughput over the steps since the last report."""
METRIC_TOKENS_PER_S_MEAN = "perf/tokens_per_s_mean"
"""Final result: training throughput over the whole run."""
METRIC_TRAIN_TIME_S = "perf/train_time_s"
"""Final result: seconds spent in training steps (evaluations excluded)."""
METRIC_TOTAL_TIME_S = "time/total_s"
"""Final result: seconds of the whole ``train()`` call (building the task and model included)."""
PARAM_SEED = "seed"
"""Param: the trial's seed (the trial config's top-level ``seed`` key, logged as a dotted param)."""

# --------------------------------------------------------------------------------------
# Names that become paths
# --------------------------------------------------------------------------------------

MAX_NAME_LEN = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")


def path_component(name: str) -> str:
    """A sweep (or arm) name made safe to use as one path component.

    The one place where a user-given name becomes part of a path: separators, ``..``, control
    and shell characters are replaced, so the result never leaves the folder it is joined to.
    Raises ValueError for a name with nothing usable left, or longer than ``MAX_NAME_LEN``.
    """
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"name is {len(name)} characters long; at most {MAX_NAME_LEN} are allowed")
    safe = _UNSAFE.sub("_", name).strip("._")
    if not safe:
        raise ValueError(f"name {name!r} has no character usable in a path (letters, digits, . _ = + , -)")
    return safe


# --------------------------------------------------------------------------------------
# Where this project keeps what it can rebuild (tokenised corpora, the empty MLflow store)
# --------------------------------------------------------------------------------------


def default_cache_dir(cache_dir: Optional[str] = None) -> str:
    """``cache_dir`` if given, else ``$GMLP_ABLATE_CACHE``, else ``~/.cache/gmlp_ablate``."""
    return cache_dir or os.environ.get("GMLP_ABLATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gmlp_ablate"
    )

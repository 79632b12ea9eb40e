"""The trial config ``{task, model, train, seed}``: its schema, loading and key.

A trial config is what ``python -m gmlp_ablate.train [trial.yaml] [key=value ...]`` runs
alone and what each sweep cell resolves to. The ``task`` and ``model`` groups are owned by
the tasks and the models; the trainer's group (``TrainConfig``) is defined here because the
trainer imports torch and a config must load and validate without it.

``trial_key`` hashes the semantic fields (everything but device, threads, logging, cache),
so two invocations that compute the same thing share a key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from gmlp_ablate.models.config import ModelConfig
from gmlp_ablate.schema import MAX_INT, check, knob, leaf_keys, nonsemantic_keys, semantic_dict
from gmlp_ablate.tasks.config import TaskConfig

# Bump when a change to the trainer or models makes old results incomparable with new ones:
# it is part of every trial key, so a bump makes reruns train everything again.
KEY_VERSION = 1

Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainConfig:
    """Optimisation and evaluation of one trial."""

    steps: int = knob(1000, ge=1, max_value=10**9)
    """Optimiser steps."""
    batch_size: int = knob(32, ge=1, max_value=1 << 20)
    """Examples per step."""
    lr: float = knob(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = knob(0.1, ge=0, le=1)
    """Final learning rate of the cosine schedule, as a fraction of ``lr``."""
    warmup_steps: int = knob(100, ge=0)
    """Linear warmup steps (capped at ``steps``)."""
    weight_decay: float = knob(0.1, ge=0)
    """AdamW decoupled weight decay, applied to matrices only (not biases, norms, gates)."""
    beta1: float = knob(0.9, ge=0, lt=1)
    """AdamW beta1."""
    beta2: float = knob(0.99, ge=0, lt=1)
    """AdamW beta2."""
    grad_clip: float = knob(1.0, ge=0)
    """Clip the global gradient norm to this; 0 = no clipping."""
    eval_every: int = knob(250, ge=1)
    """Evaluate on the held-out set every this many steps (and at the last step)."""
    log_every: int = knob(25, ge=1, semantic=False)
    """Report train/loss and throughput every this many steps."""
    checkpoint_every: int = knob(0, ge=0, semantic=False)
    """With a checkpoint directory: also checkpoint at logging steps that are multiples of
    this (0 = only at evaluations)."""
    device: Device = knob("auto", semantic=False)
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``."""
    precision: Precision = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``."""
    compile: bool = knob(False, semantic=False)
    """Wrap the model in ``torch.compile``, unless a probe at the start finds the compiled
    step slower than eager on this device: then the trial trains eager, and says so
    (``info.compile``, and one line on stderr)."""
    threads: Optional[int] = knob(None, ge=1, max_value=4096, semantic=False)
    """torch intra-op threads; null = the trial's CPU share (or torch's default alone)."""


@dataclass
class TrialConfig:
    """One training run: what a sweep cell resolves to."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = knob(0, ge=0, le=MAX_INT)
    """Seeds model init, data order and masking (and the mqar data)."""


TRIAL_KEYS = tuple(leaf_keys(TrialConfig))
"""Every dotted key of a trial config."""
NONSEMANTIC_KEYS = tuple(nonsemantic_keys(TrialConfig))
"""Dotted keys that do not change what a trial computes (device, threads, logging, cache)."""


def validate_trial(cfg: TrialConfig, prefix: str = "") -> None:
    """Check every value of a trial config: declared bounds and choices, cross-field rules,
    and the task's own checks (corpus path, seq_len), without loading any data. Raises
    ConfigError naming the dotted key under ``prefix``."""
    from gmlp_ablate.tasks import validate_task

    check(cfg, prefix)
    validate_task(cfg.task, prefix=f"{prefix}task.")


def merge_trial(*parts: Any, prefix: str = "") -> TrialConfig:
    """Merge partial trial configs (nested dicts) over the schema defaults (no value checks)."""
    from gmlp_ablate.config import merge_structured

    return merge_structured(TrialConfig, parts, prefix)


def load_trial(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrialConfig:
    """A trial config from an optional YAML file plus ``key=value`` overrides, validated."""
    from gmlp_ablate.config import load_yaml, nest, parse_overrides

    parts: List[Any] = [load_yaml(path)] if path is not None else []
    parts += [nest(key, value) for key, value in parse_overrides(overrides or [])]
    cfg = merge_trial(*parts)
    validate_trial(cfg)
    return cfg


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A dataclass config as plain nested dicts."""
    return dataclasses.asdict(cfg)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dict -> dotted keys."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trial_key(cfg: TrialConfig, code: Optional[str] = None) -> str:
    """Stable 16-hex-digit hash of the resolved semantic trial config (and, when given, of
    the code version: a sweep with ``key_code_version: true`` reruns everything on a new commit)."""
    payload: Dict[str, Any] = {"v": KEY_VERSION, "cfg": semantic_dict(cfg)}
    if code is not None:
        payload["code"] = code
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    """The commit of the installed source tree (``-dirty`` if modified), or ``unknown``."""
    import os
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = dict(os.environ)  # a copy: the driver's other threads may write the environment meanwhile
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, env=env)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, env=env)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"

"""The schema: every config the toolkit reads is defined, loaded and validated here.

A *trial config* is ``{task, model, train, seed}``: what ``python -m gmlp_ablate.train`` runs
alone and what each sweep cell resolves to. A *sweep config* adds ``name``, ``grid``,
``seeds``, ``baselines``, ``metric`` and ``resources`` around a partial trial config
(``base``). Dataclasses are OmegaConf structured configs: merging YAML into them rejects
unknown keys and wrong types; :func:`validate_trial` then checks values. Choices are stored
as strings (serialisable), resolved by the modules that use them.

Nothing else in the project parses YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Bump when a change to the trainer or models makes old results incomparable with new ones:
# it is part of every trial key, so a bump makes reruns train everything again.
KEY_VERSION = 1

TASKS = ("charlm", "mlm", "mqar", "digits")
ARCHS = ("gmlp", "transformer")
SGU_ACTS = ("identity", "tanh", "sigmoid", "gelu")
DROP_MODES = ("sample", "layer")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
METRIC_MODES = ("min", "max")


class ConfigError(ValueError):
    """A config is invalid. ``key`` is the dotted key at fault (or None for the whole file)."""

    def __init__(self, key: Optional[str], message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def __reduce__(self):  # picklable across processes (Ray workers)
        return (type(self), (self.key, self.message))


def _nonsemantic(default: Any) -> Any:
    """A field that does not change what a trial computes (excluded from the trial key)."""
    return field(default=default, metadata={"semantic": False})


# --------------------------------------------------------------------------------------
# Trial config groups
# --------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """What the model learns; one of ``TASKS``. See ``gmlp_ablate/tasks/``."""

    name: str = "charlm"
    """Task: ``charlm`` (causal byte LM), ``mlm`` (masked byte LM, bidirectional), ``mqar``
    (multi-query associative recall), ``digits`` (8x8 digit images, vision gMLP)."""
    seq_len: Optional[int] = None
    """Tokens per example. null = the task's default (charlm/mlm 128, mqar 64, digits: the
    number of patches, fixed by ``patch_size``)."""
    corpus: Optional[str] = None
    """charlm/mlm: a text file, or a folder of .txt/.md/.py files. null = a deterministic
    sample of the installed Python standard library's .py sources."""
    corpus_bytes: int = 4_000_000
    """charlm/mlm: byte budget of the corpus (folders: files in sorted order up to it; the
    stdlib default: files in an order fixed by a hash of their path, so the budget samples
    the whole library rather than its first packages)."""
    val_fraction: float = 0.1
    """charlm/mlm/digits: share held out for validation (charlm/mlm split by file)."""
    val_tokens: int = 131_072
    """charlm/mlm: validation tokens scored at each evaluation (a fixed set of windows)."""
    mask_prob: float = 0.15
    """mlm: share of positions predicted; of those 80% [MASK], 10% random, 10% kept."""
    num_kv_pairs: int = 8
    """mqar: key-value pairs per example (each key is queried once)."""
    vocab_size: int = 256
    """mqar: vocabulary size (keys from the lower half, values from the upper half)."""
    num_val: int = 1000
    """mqar: validation examples (a fixed set per seed)."""
    patch_size: int = 2
    """digits: side of a square patch in pixels (8 must be divisible by it)."""
    cache_dir: Optional[str] = _nonsemantic(None)
    """Where tokenised corpora are cached. null = ``$GMLP_ABLATE_CACHE`` or
    ``~/.cache/gmlp_ablate``."""


@dataclass
class ModelConfig:
    """The ablation knobs (DESIGN.md section 2). ``causal`` is not a knob: the task sets it."""

    arch: str = "gmlp"
    """``gmlp`` (gMLP; aMLP when ``attn_dim`` is set) or ``transformer`` (the baseline)."""
    dim: int = 128
    """Model width d."""
    depth: int = 4
    """Number of blocks L."""
    ff_mult: int = 4
    """d_ffn = dim * ff_mult (the paper uses 6, g-mlp-pytorch defaults to 4)."""
    heads: int = 1
    """transformer: attention heads. gmlp: heads of the spatial gating unit (the channels
    are split into this many groups, each with its own n x n spatial weight)."""
    sgu_split: bool = True
    """true: s(Z) = Z1 * f(LN(Z2)) on halves of Z. false: s(Z) = Z * f(LN(Z)) (the paper's
    unsplit "multiplicative" variant; proj_out then reads d_ffn channels)."""
    init_eps: float = 1e-3
    """f(Z) = W Z + b with W ~ U(-init_eps/n, init_eps/n), b = 1: a near-identity gate at
    init. 0 gives W = 0 exactly."""
    sgu_act: str = "identity"
    """Activation on the gate f(...): identity, tanh, sigmoid, gelu."""
    attn_dim: Optional[int] = None
    """Tiny attention width (aMLP); its output is added to f(...) before gating. null = off."""
    attn_heads: int = 1
    """Heads of the tiny attention (attn_dim must be divisible by it)."""
    prob_survival: float = 1.0
    """Stochastic depth: probability that a block's residual branch is kept, in (0, 1]."""
    drop_mode: str = "sample"
    """``sample``: per-sample DropPath scaled by 1/p (timm, the paper). ``layer``: whole
    blocks dropped per batch without scaling (g-mlp-pytorch)."""


@dataclass
class TrainConfig:
    """Optimisation and evaluation of one trial."""

    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of ``lr``."""
    warmup_steps: int = 100
    """Linear warmup steps (capped at ``steps``)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not biases, norms, gates)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""
    eval_every: int = 250
    """Evaluate on the held-out set every this many steps (and at the last step)."""
    log_every: int = _nonsemantic(25)
    """Report train/loss and throughput every this many steps."""
    checkpoint_every: int = _nonsemantic(0)
    """With a checkpoint directory: also checkpoint at logging steps that are multiples of
    this (0 = only at evaluations)."""
    device: str = _nonsemantic("auto")
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``."""
    compile: bool = _nonsemantic(False)
    """Wrap the model in ``torch.compile``."""
    threads: Optional[int] = _nonsemantic(None)
    """torch intra-op threads; null = the trial's CPU share (or torch's default alone)."""


@dataclass
class TrialConfig:
    """One training run: what a sweep cell resolves to."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    """Seeds model init, data order and masking (and the mqar data)."""


# --------------------------------------------------------------------------------------
# Sweep config
# --------------------------------------------------------------------------------------


@dataclass
class MetricConfig:
    """The metric a sweep is judged by."""

    name: str = "val/loss"
    """A metric the trials log, e.g. val/loss, val/bpb, val/ppl, val/acc."""
    mode: str = "min"
    """``min`` or ``max``: which direction is better."""


@dataclass
class ResourcesConfig:
    """Per-trial resources on Ray."""

    cpu: float = 1.0
    """CPUs per trial (also the trial's torch thread count, rounded down, at least 1)."""
    gpu: str = "auto"
    """GPUs per trial: ``auto`` = a fraction that packs ``trials_per_gpu`` trials on each
    visible GPU (0 where there is none), or a number such as 0, 0.25, 1."""
    trials_per_gpu: int = 4
    """With ``gpu: auto``: how many trials share one GPU."""


@dataclass
class SweepConfig:
    """A sweep file: a grid of trial configs, seeds and baselines."""

    name: str = MISSING
    """MLflow experiment name and report title."""
    description: str = ""
    """One line shown in the report."""
    base: TrialConfig = field(default_factory=TrialConfig)
    """Partial trial config merged over the schema defaults."""
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    """Full factorial over dotted trial keys, e.g. ``model.sgu_split: [true, false]``."""
    seeds: List[int] = field(default_factory=lambda: [0])
    """Every arm runs once per seed."""
    baselines: Dict[str, Any] = field(default_factory=dict)
    """Named arms: partial trial configs merged over ``base`` (no grid), run per seed."""
    metric: MetricConfig = field(default_factory=MetricConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


# --------------------------------------------------------------------------------------
# Loading, errors, overrides
# --------------------------------------------------------------------------------------


def _keys_of(schema: Any, prefix: str = "") -> List[str]:
    """All dotted leaf keys of a dataclass schema."""
    out = []
    for f in dataclasses.fields(schema):
        sub = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += _keys_of(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
        del sub
    return out


TRIAL_KEYS = tuple(_keys_of(TrialConfig))


def _nonsemantic_keys(schema: Any, prefix: str = "") -> List[str]:
    out = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += _nonsemantic_keys(type(default), f"{prefix}{f.name}.")
        elif not f.metadata.get("semantic", True):
            out.append(f"{prefix}{f.name}")
    return out


NONSEMANTIC_KEYS = tuple(_nonsemantic_keys(TrialConfig))
"""Dotted keys that do not change what a trial computes (device, threads, logging, cache)."""


def field_docs() -> Dict[str, str]:
    """Dotted key -> the docstring written under the field in this module (for ``--help``)."""
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    per_class: Dict[str, Dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            docs: Dict[str, str] = {}
            body = node.body
            for a, b in zip(body, body[1:]):
                if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                        and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                        and isinstance(b.value.value, str)):
                    docs[a.target.id] = b.value.value
            per_class[node.name] = docs
    out: Dict[str, str] = {}
    groups = {"task": "TaskConfig", "model": "ModelConfig", "train": "TrainConfig"}
    for key in TRIAL_KEYS:
        head, _, rest = key.partition(".")
        cls = groups.get(head, "TrialConfig")
        out[key] = per_class.get(cls, {}).get(rest or head, "")
    return out


def did_you_mean(key: str, choices: List[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ''."""
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if not close:
        by_last = {c.rsplit(".", 1)[-1]: c for c in choices}
        hit = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
        close = [by_last[hit[0]]] if hit else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _omegaconf_error(e: OmegaConfBaseException, prefix: str = "", schema_keys=()) -> ConfigError:
    """Turn an OmegaConf merge/validation error into a ConfigError naming the key."""
    key = getattr(e, "full_key", None) or ""
    key = f"{prefix}{key}" if key else prefix.rstrip(".") or None
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        hint = did_you_mean(key or "", [f"{prefix}{k}" for k in schema_keys])
        return ConfigError(key, f"unknown key{hint}")
    value = getattr(e, "value", None)
    if "Value '" in msg and "could not be converted" in msg or "Invalid type" in msg:
        return ConfigError(key, f"wrong type: {msg}")
    return ConfigError(key, msg if value is None else f"{msg}")


def _safe_yaml(path: Path) -> Any:
    """Parse a YAML file with the safe loader only (no code execution)."""
    if not path.exists():
        raise ConfigError(None, f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(None, f"{path}: is a directory, expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(None, f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(None, f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A command-line value as YAML scalar or flow list: ``1e-3``, ``true``, ``[0,1]``, ``null``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_dotlist(items: List[str]) -> List[tuple]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]``; malformed items raise ConfigError."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(item, "expected KEY=VALUE")
        key, value = item.split("=", 1)
        if not key:
            raise ConfigError(item, "empty key")
        out.append((key.strip(), parse_value(value)))
    return out


def _nest(key: str, value: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _check_keys(data: Dict[str, Any], allowed: List[str], prefix: str = "") -> None:
    """Reject keys that are not in the schema, naming them, with a did-you-mean."""
    groups = {k.split(".")[0] for k in allowed}
    for k, v in data.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and k in groups:
            _check_keys(v, [a.split(".", 1)[1] for a in allowed if a.startswith(k + ".")], f"{full}.")
        elif k not in allowed:
            raise ConfigError(full, "unknown key" + did_you_mean(full, [f"{prefix}{a}" for a in allowed]))


def merge_trial(*parts: Any, prefix: str = "") -> TrialConfig:
    """Merge partial trial configs (dicts / DictConfigs) over the schema defaults."""
    cfg = OmegaConf.structured(TrialConfig)
    for part in parts:
        if part is None:
            continue
        data = OmegaConf.to_container(part) if isinstance(part, DictConfig) else part
        if not isinstance(data, dict):
            raise ConfigError(prefix.rstrip(".") or None, f"expected a mapping, got {data!r}")
        _check_keys(data, list(TRIAL_KEYS), prefix)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, prefix, TRIAL_KEYS) from None
    trial = OmegaConf.to_object(cfg)
    assert isinstance(trial, TrialConfig)
    return trial


def _in_choices(key: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}" + did_you_mean(str(value), list(choices)).replace("'", "'"))


def _positive(key: str, value: Optional[float], zero_ok: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(key, f"must be {'>= 0' if zero_ok else '> 0'}, got {value}")


def validate_model(m: ModelConfig, prefix: str = "model.") -> None:
    """Check the model knobs' values; raise ConfigError naming the field."""
    _in_choices(f"{prefix}arch", m.arch, ARCHS)
    _in_choices(f"{prefix}sgu_act", m.sgu_act, SGU_ACTS)
    _in_choices(f"{prefix}drop_mode", m.drop_mode, DROP_MODES)
    for name in ("dim", "depth", "ff_mult", "heads", "attn_heads"):
        _positive(f"{prefix}{name}", getattr(m, name))
    _positive(f"{prefix}init_eps", m.init_eps, zero_ok=True)
    if not 0.0 < m.prob_survival <= 1.0:
        raise ConfigError(f"{prefix}prob_survival", f"must be in (0, 1], got {m.prob_survival}")
    if m.attn_dim is not None:
        _positive(f"{prefix}attn_dim", m.attn_dim)
        if m.attn_dim % m.attn_heads:
            raise ConfigError(f"{prefix}attn_heads", f"attn_dim={m.attn_dim} is not divisible by attn_heads={m.attn_heads}")
    if m.arch == "transformer":
        if m.dim % m.heads:
            raise ConfigError(f"{prefix}heads", f"dim={m.dim} is not divisible by heads={m.heads}")
    else:
        gate_ch = m.dim * m.ff_mult // (2 if m.sgu_split else 1)
        if m.sgu_split and (m.dim * m.ff_mult) % 2:
            raise ConfigError(f"{prefix}ff_mult", f"dim * ff_mult = {m.dim * m.ff_mult} must be even to split")
        if gate_ch % m.heads:
            raise ConfigError(f"{prefix}heads", f"the gate's {gate_ch} channels are not divisible by heads={m.heads}")


def validate_train(t: TrainConfig, prefix: str = "train.") -> None:
    """Check trainer values; raise ConfigError naming the field."""
    for name in ("steps", "batch_size", "eval_every", "log_every"):
        _positive(f"{prefix}{name}", getattr(t, name))
    for name in ("lr",):
        _positive(f"{prefix}{name}", getattr(t, name))
    for name in ("warmup_steps", "weight_decay", "grad_clip", "checkpoint_every", "min_lr_ratio"):
        _positive(f"{prefix}{name}", getattr(t, name), zero_ok=True)
    if t.min_lr_ratio > 1:
        raise ConfigError(f"{prefix}min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(t, name) < 1.0:
            raise ConfigError(f"{prefix}{name}", f"must be in [0, 1), got {getattr(t, name)}")
    _in_choices(f"{prefix}device", t.device, DEVICES)
    _in_choices(f"{prefix}precision", t.precision, PRECISIONS)
    if t.threads is not None:
        _positive(f"{prefix}threads", t.threads)


def validate_trial(cfg: TrialConfig, prefix: str = "") -> None:
    """Check every value of a trial config, including task/model compatibility.

    Raises ConfigError naming the dotted key. The task's own checks (corpus path exists,
    seq_len fits the task) run here too, without loading any data.
    """
    from gmlp_ablate.tasks import validate_task  # tasks know their own constraints

    validate_model(cfg.model, f"{prefix}model.")
    validate_train(cfg.train, f"{prefix}train.")
    _in_choices(f"{prefix}task.name", cfg.task.name, TASKS)
    validate_task(cfg.task, cfg.model, prefix=f"{prefix}task.")
    if cfg.seed < 0:
        raise ConfigError(f"{prefix}seed", f"must be >= 0, got {cfg.seed}")


def load_trial(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrialConfig:
    """A trial config from an optional YAML file plus ``key=value`` overrides, validated."""
    parts: List[Any] = []
    if path is not None:
        parts.append(_safe_yaml(Path(path)))
    for key, value in parse_dotlist(overrides or []):
        parts.append(_nest(key, value))
    cfg = merge_trial(*parts)
    validate_trial(cfg)
    return cfg


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A (structured) config as plain nested dicts."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dict -> dotted keys."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def semantic_dict(cfg: TrialConfig) -> Dict[str, Any]:
    """The fields that define what a trial computes (non-semantic ones removed)."""

    def strip(obj: Any) -> Any:
        if not dataclasses.is_dataclass(obj):
            return obj
        return {
            f.name: strip(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("semantic", True)
        }

    return strip(cfg)


def trial_key(cfg: TrialConfig) -> str:
    """Stable 16-hex-digit hash of the resolved semantic trial config."""
    payload = json.dumps({"v": KEY_VERSION, "cfg": semantic_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------

SWEEP_TOP_KEYS = tuple(f.name for f in dataclasses.fields(SweepConfig))


@dataclass
class Trial:
    """One expanded sweep cell."""

    arm: str
    """Grid cell (``sgu_split=false``) or baseline name."""
    seed: int
    config: TrialConfig
    key: str
    """trial_key(config)."""
    factors: Dict[str, Any]
    """The grid values of this cell ({} for a baseline)."""
    baseline: bool = False


@dataclass
class Sweep:
    """A loaded, validated sweep and its expanded trials."""

    config: SweepConfig
    trials: List[Trial]
    path: Optional[str] = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def arms(self) -> List[str]:
        return list(dict.fromkeys(t.arm for t in self.trials))

    @property
    def factor_keys(self) -> List[str]:
        return list(self.config.grid.keys())


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def arm_name(cell: Dict[str, Any]) -> str:
    """``{"model.sgu_split": False, "model.ff_mult": 4}`` -> ``sgu_split=false,ff_mult=4``.

    Uses the last key component unless two grid keys share it.
    """
    lasts = [k.rsplit(".", 1)[-1] for k in cell]
    names = [k.rsplit(".", 1)[-1] if lasts.count(k.rsplit(".", 1)[-1]) == 1 else k for k in cell]
    return ",".join(f"{n}={_fmt_value(v)}" for n, v in zip(names, cell.values()))


def apply_sweep_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply command-line ``key=value`` items to a raw sweep dict.

    ``task.* / model.* / train.* / seed`` go to ``base``; ``grid.KEY=[...]`` replaces (or adds)
    a grid axis; ``seeds=[...]``, ``name=...``, ``metric.name=...``, ``resources.cpu=...``,
    ``base.KEY=...`` and ``baselines.NAME.KEY=...`` address the sweep itself.
    """
    data = json.loads(json.dumps(data))  # deep copy of plain data
    groups = {k.split(".")[0] for k in TRIAL_KEYS}
    for key, value in parse_dotlist(overrides):
        head = key.split(".")[0]
        if key.startswith("grid."):
            axis = key[len("grid."):]
            data.setdefault("grid", {})
            if data["grid"] is None:
                data["grid"] = {}
            data["grid"][axis] = value
        elif key == "seed":
            raise ConfigError("seed", f"a sweep runs every arm once per seed: use seeds=[{value}] (or seeds=[0,1,2])")
        elif head in groups:
            merge_trial(_nest(key, value))  # check the key and type as the user typed them
            base = data.setdefault("base", {}) or {}
            data["base"] = _deep_merge(base, _nest(key, value))
        elif head in SWEEP_TOP_KEYS:
            data = _deep_merge(data, _nest(key, value))
        else:
            allowed = list(TRIAL_KEYS) + [k for k in SWEEP_TOP_KEYS if k != "base"] + ["grid.KEY"]
            raise ConfigError(key, "unknown key" + did_you_mean(key, allowed))
    return data


def _deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_sweep(path: str, overrides: Optional[List[str]] = None) -> Sweep:
    """Load a sweep file, apply overrides, validate everything and expand the trials.

    Every trial config is validated here, so a bad value anywhere fails before any work.
    """
    data = _safe_yaml(Path(path))
    return build_sweep(data, overrides, path=path)


def build_sweep(data: Dict[str, Any], overrides: Optional[List[str]] = None, path: Optional[str] = None) -> Sweep:
    """Validate a raw sweep dict (as read from YAML) and expand it into trials."""
    data = apply_sweep_overrides(data, overrides or [])
    for k in data:
        if k not in SWEEP_TOP_KEYS:
            raise ConfigError(k, "unknown key" + did_you_mean(k, list(SWEEP_TOP_KEYS)))
    if not data.get("name"):
        raise ConfigError("name", "missing: a sweep needs a name (the MLflow experiment)")
    if not isinstance(data["name"], str):
        raise ConfigError("name", f"must be a string, got {data['name']!r}")
    base_raw = data.get("base") or {}
    if isinstance(base_raw, dict) and "seed" in base_raw:
        raise ConfigError("base.seed", "a sweep runs every arm once per seed: list them in `seeds: [...]`")
    grid_raw = data.get("grid")
    baselines_raw = data.get("baselines") or {}
    # The trial-config parts are checked by merge_trial (did-you-mean on the full keys).
    base = merge_trial(base_raw, prefix="base.")
    grid = _check_grid(grid_raw)
    if not isinstance(baselines_raw, dict):
        raise ConfigError("baselines", f"expected a mapping of name -> partial config, got {baselines_raw!r}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError("seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"duplicate seeds in {seeds}")
    rest = {k: data[k] for k in ("name", "description", "metric", "resources") if k in data}
    try:
        sc = OmegaConf.merge(OmegaConf.structured(SweepConfig), rest)
        sc.seeds = seeds
        sweep_cfg: SweepConfig = OmegaConf.to_object(sc)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, "", [k for k in _keys_of(SweepConfig) if not k.startswith("base.")]) from None
    sweep_cfg.base = base
    sweep_cfg.grid = grid
    sweep_cfg.baselines = baselines_raw
    _in_choices("metric.mode", sweep_cfg.metric.mode, METRIC_MODES)
    _check_resources(sweep_cfg.resources)

    base_dict = to_dict(base)
    trials: List[Trial] = []
    arms_seen: Dict[str, str] = {}
    axes = list(grid.items())
    for values in itertools.product(*[v for _, v in axes]):
        cell = {k: v for (k, _), v in zip(axes, values)}
        arm = arm_name(cell)
        _add_arm(trials, arms_seen, arm, base_dict, [_nest(k, v) for k, v in cell.items()], cell, seeds, f"grid[{arm}].", False)
    for bname, bpart in baselines_raw.items():
        if not isinstance(bpart, dict):
            raise ConfigError(f"baselines.{bname}", f"expected a partial trial config (mapping), got {bpart!r}")
        if "seed" in bpart:
            raise ConfigError(f"baselines.{bname}.seed", "baselines run once per sweep seed: list them in `seeds: [...]`")
        _add_arm(trials, arms_seen, str(bname), base_dict, [bpart], {}, seeds, f"baselines.{bname}.", True)
    keys = {}
    for t in trials:
        if t.key in keys:
            other = keys[t.key]
            raise ConfigError("grid", f"arms '{other.arm}' and '{t.arm}' (seed {t.seed}) resolve to the same trial config")
        keys[t.key] = t
    return Sweep(config=sweep_cfg, trials=trials, path=path)


def _check_grid(grid_raw: Any) -> Dict[str, List[Any]]:
    if grid_raw is None or grid_raw == {}:
        raise ConfigError("grid", "empty: give at least one axis, e.g. model.sgu_split: [true, false]")
    if not isinstance(grid_raw, dict):
        raise ConfigError("grid", f"expected a mapping of dotted key -> list of values, got {grid_raw!r}")
    grid: Dict[str, List[Any]] = {}
    for k, v in grid_raw.items():
        if k not in TRIAL_KEYS:
            raise ConfigError(f"grid.{k}", "unknown key" + did_you_mean(k, list(TRIAL_KEYS)))
        if k == "seed":
            raise ConfigError("grid.seed", "seeds are a sweep axis of their own: use `seeds: [...]`")
        if not isinstance(v, list):
            v = [v]
        if not v:
            raise ConfigError(f"grid.{k}", "empty list of values")
        if len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            raise ConfigError(f"grid.{k}", f"duplicate values in {v}")
        grid[k] = v
    return grid


def _add_arm(trials, arms_seen, arm, base_dict, parts, cell, seeds, where, baseline) -> None:
    if arm in arms_seen:
        raise ConfigError(where.rstrip("."), f"duplicate arm name '{arm}' (also {arms_seen[arm]})")
    arms_seen[arm] = where.rstrip(".")
    for seed in seeds:
        cfg = merge_trial(base_dict, *parts, {"seed": seed}, prefix=where)
        validate_trial(cfg, prefix=where)
        trials.append(Trial(arm=arm, seed=seed, config=cfg, key=trial_key(cfg), factors=dict(cell), baseline=baseline))


def _check_resources(r: ResourcesConfig) -> None:
    _positive("resources.cpu", r.cpu)
    _positive("resources.trials_per_gpu", r.trials_per_gpu)
    if r.gpu != "auto":
        try:
            g = float(r.gpu)
        except ValueError:
            raise ConfigError("resources.gpu", f"expected 'auto' or a number, got {r.gpu!r}") from None
        _positive("resources.gpu", g, zero_ok=True)

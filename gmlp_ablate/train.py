"""One trial: ``train(cfg, report=callback) -> final metrics``.

AdamW with decoupled weight decay on matrices only, linear warmup + cosine decay, global
gradient clipping, bf16 autocast on CUDA, optional ``torch.compile`` (declined where a probe
finds it slower than eager). The task's val set is
scored every ``eval_every`` steps and at the last step (``val/*``: what selection reads);
its test set once, at the last step (``test/*``: what reports compare), never before. Data
batches are a pure function of (seed, step), so a checkpoint (model, optimizer, step, RNG
states) resumes the exact curve.

This module imports neither Ray nor MLflow: progress goes to ``report(metrics, step,
checkpoint)``. Metric values are floats; ``info.*`` keys carry strings (device, corpus hash).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Tuple

try:
    import torch
    import torch.nn.functional as F

    from gmlp_ablate.names import (CHECKPOINT_FILE, INFO_COMPILE, INFO_DEVICE, INFO_PREFIX, INFO_RESUMED_FROM_STEP,
                                   METRIC_FLOPS, METRIC_PARAMS, METRIC_TOKENS_PER_S, METRIC_TOKENS_PER_S_MEAN,
                                   METRIC_TOTAL_TIME_S, METRIC_TRAIN_LOSS, METRIC_TRAIN_LR, METRIC_TRAIN_TIME_S, SPLIT_TEST,
                                   SPLIT_VAL)
    from gmlp_ablate.schema import ConfigError, semantic_dict
    from gmlp_ablate.tasks.rules import IGNORE_INDEX
    from gmlp_ablate.trial import TrialConfig, to_dict, trial_key
except KeyboardInterrupt:  # Ctrl-C while the command line starts: as quiet as the rest of it
    if __name__ != "__main__":
        raise
    print("interrupted", file=sys.stderr)
    sys.exit(130)

Report = Callable[[Dict[str, Any], int, Optional[str]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``step`` is the first step where it did."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"non-finite training loss ({value}) at step {step}")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. ConfigError (``train.device``) for a device that
    is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda, but no CUDA device is visible on this machine (use auto or cpu)")
    if name == "mps" and not _mps_available():
        raise ConfigError("train.device", "mps, but MPS is not available on this machine (use auto or cpu)")
    return torch.device(name)


def check_assigned_gpus(name: str, gpu_ids: Any) -> None:
    """ConfigError (``train.device``) when a scheduler assigned GPUs ``gpu_ids`` to this trial
    and ``name`` (``auto`` or ``cuda``) would use CUDA, but CUDA sees no device: the trial
    would otherwise train on the CPU while holding a GPU."""
    if not gpu_ids or name not in ("auto", "cuda") or torch.cuda.is_available():
        return
    ids = ",".join(str(i) for i in gpu_ids)
    raise ConfigError("train.device", f"{name}, and GPU(s) {ids} were assigned to this trial, but CUDA sees no "
                      f"device here (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, torch "
                      f"{torch.__version__}); install a CUDA build of torch, or set train.device=cpu")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast on CUDA under ``auto``; none (fp32) elsewhere unless ``bf16`` is asked."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def lr_at(step: int, cfg: TrialConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warmup, then cosine."""
    t = cfg.train
    warm = min(t.warmup_steps, t.steps)
    if step < warm:
        return t.lr * (step + 1) / warm
    span = max(t.steps - warm, 1)
    progress = min((step - warm) / span, 1.0)
    floor = t.lr * t.min_lr_ratio
    return floor + (t.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _loss_and_correct(logits: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, number of correct argmaxes and number of scored targets."""
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (B*N, V)
    y = y.reshape(-1)
    scored = y != IGNORE_INDEX
    loss_sum = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == y) & scored).sum()
    return loss_sum, correct, scored.sum()


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Any, device: torch.device, amp: Optional[torch.dtype],
             batch_size: int, split: str = SPLIT_VAL) -> Dict[str, float]:
    """Mean loss and accuracy over one of the task's whole fixed held-out sets (``val`` or
    ``test``) -> its metrics (``<split>/loss``, ...)."""
    was_training = model.training
    model.eval()
    x_all, y_all = task.held_out(split)
    tot_loss = torch.zeros((), device=device, dtype=torch.float64)
    tot_correct = torch.zeros((), device=device, dtype=torch.int64)
    tot_n = torch.zeros((), device=device, dtype=torch.int64)
    for i in range(0, x_all.shape[0], batch_size):
        x = x_all[i:i + batch_size].to(device, non_blocking=True)
        y = y_all[i:i + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            logits = model(x)
        loss_sum, correct, n = _loss_and_correct(logits, y)
        tot_loss += loss_sum
        tot_correct += correct
        tot_n += n
    model.train(was_training)
    n = max(int(tot_n.item()), 1)
    return task.derived_metrics(float(tot_loss.item()) / n, int(tot_correct.item()) / n, split)


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`_rng_state` returned (its CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _train_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training objective: mean cross-entropy over the scored targets, in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE_INDEX)


def save_checkpoint(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                    cfg: TrialConfig, device: torch.device, history: Dict[str, Any]) -> None:
    """Atomically write everything needed to continue the same curve from ``step``."""
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "rng": _rng_state(device),
        "trial_key": trial_key(cfg),
        "history": json.dumps(history),
    }
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


class CheckpointMismatchError(ValueError):
    """A checkpoint given to resume from was written by another trial."""


def checkpoint_file(resume_from: str) -> str:
    """The checkpoint file to resume from: ``resume_from`` itself, or the one in that folder."""
    return os.path.join(resume_from, CHECKPOINT_FILE) if os.path.isdir(resume_from) else resume_from


def load_checkpoint(path: str, cfg: TrialConfig) -> Dict[str, Any]:
    """Load a checkpoint (tensors only: ``weights_only=True``) and check it is this trial's."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("trial_key") != trial_key(cfg):
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to trial {payload.get('trial_key')}, not {trial_key(cfg)}")
    payload["history"] = json.loads(payload["history"])
    return payload


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


COMPILE_PROBE_STEPS = 5
"""Timed forward+backward passes of each variant in the compile probe (after warm-up)."""


def compile_speedup(eager_s: list, compiled_s: list) -> float:
    """The compiled step's speed relative to eager: the median of the paired ratios
    eager time / compiled time (> 1: compiled is faster)."""
    return statistics.median(e / max(c, 1e-12) for e, c in zip(eager_s, compiled_s))


def compile_or_decline(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                       amp: Optional[torch.dtype]) -> Tuple[torch.nn.Module, str]:
    """``torch.compile(model)`` if its training step (forward + loss + backward on the batch
    ``x, y``) is not slower than eager here, else ``model`` itself; with the verdict for
    ``info.compile``.

    The probe compiles (the cost ``train.compile`` pays anyway), then alternates timed eager
    and compiled passes and compares the median of their paired ratios. It changes nothing
    the training sees: the gradients are dropped, the RNG states restored, no optimizer step.
    """
    rng = _rng_state(device)
    model.train()
    compiled = torch.compile(model)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed(f: Any) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            logits = f(x)
        _train_loss(logits, y).backward()
        sync()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    timed(model), timed(compiled), timed(compiled)  # warm-up; the compiled graphs are built here
    eager_s, compiled_s = [], []
    for _ in range(COMPILE_PROBE_STEPS):
        eager_s.append(timed(model))
        compiled_s.append(timed(compiled))
    _set_rng_state(rng, device)
    speedup = compile_speedup(eager_s, compiled_s)
    if speedup < 1.0:
        return model, f"declined: the compiled step ran at {speedup:.2f}x eager speed on {device.type}; trained eager"
    return compiled, f"compiled: {speedup:.2f}x eager speed on {device.type}"


def train(cfg: TrialConfig, report: Optional[Report] = None, checkpoint_dir: Optional[str] = None,
          resume_from: Optional[str] = None) -> Dict[str, Any]:
    """Train one trial and return its final metrics.

    Args:
        cfg: the resolved, validated trial config.
        report: called as ``report(metrics, step, checkpoint_path_or_None)`` at step 0 (model
            size, ``info.*``), every ``log_every`` steps (train metrics) and at every
            evaluation (``val/*``, with the checkpoint path when one was just written); the
            last step's also carries ``test/*``. Resumed, the trial reports step 0's again,
            then every report up to its checkpoint's step as it was first sent (the
            checkpoint keeps them), then goes on.
        checkpoint_dir: where to write ``checkpoint.pt`` at each evaluation (and every
            ``checkpoint_every`` steps); None = no checkpoints.
        resume_from: a checkpoint file (or a folder holding one) to continue from.

    Returns:
        The last ``val/*`` and the ``test/*`` metrics, model size and throughput.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the first such step is in the error).
        ConfigError: the device is not there, or the task cannot be built from its data.
    """
    from gmlp_ablate.models import build_model
    from gmlp_ablate.tasks import build_task

    t_start = time.perf_counter()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    amp = autocast_dtype(t.precision, device)
    emit = report or (lambda metrics, step, checkpoint: None)

    task = build_task(cfg.task, cfg.seed)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    model = build_model(cfg.model, task.shape).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.param_groups(t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2),
                            **({"fused": True} if fused else {}))
    step = 0
    history: Dict[str, Any] = {"val": {}, "train_time_s": 0.0, "train_tokens": 0, "reports": []}
    if resume_from:
        ck = load_checkpoint(checkpoint_file(resume_from), cfg)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        _set_rng_state(ck["rng"], device)
        history = ck["history"]
        history.setdefault("reports", [])  # a checkpoint written before reports were kept in it
    fwd, compile_verdict = model, None
    if t.compile:
        x0, y0 = task.train_batch(step, t.batch_size)
        fwd, compile_verdict = compile_or_decline(model, x0.to(device), y0.to(device), device, amp)
        if fwd is model:
            print(f"train.compile: {compile_verdict}", file=sys.stderr, flush=True)
    tokens_per_step = t.batch_size * task.shape.seq_len
    eval_bs = max(t.batch_size, 64)

    info = {
        INFO_DEVICE: device.type if device.type != "cuda" else f"cuda:{torch.cuda.get_device_name(device)}",
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        INFO_RESUMED_FROM_STEP: str(step),
        **({INFO_COMPILE: compile_verdict} if compile_verdict else {}),
        **{f"task.{k}": str(v) for k, v in task.info.items()},
    }
    info = {f"{INFO_PREFIX}{k}": v for k, v in info.items()}
    size = {METRIC_PARAMS: float(_unwrap(model).num_params()),
            METRIC_FLOPS: float(_unwrap(model).flops_per_token())}
    emit({**size, **info}, 0, None)
    # A resumed trial first reports again what it reported up to its checkpoint: a driver that
    # died after the checkpoint was written may not have logged the last of those reports (the
    # checkpoint is written before its own step is reported, and a worker outlives its driver by
    # up to a second). The driver keeps only the first report it gets for a step
    # (gmlp_ablate.ledger), so the others cost only their sending.
    for logged_step, logged in history["reports"]:
        emit(logged, logged_step, None)

    model.train()
    window_losses: list = []
    window_t0 = time.perf_counter()
    window_tokens = 0
    while step < t.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = task.train_batch(step, t.batch_size)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            logits = fwd(x)
        loss = _train_loss(logits, y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window_losses.append(loss.detach())
        window_tokens += tokens_per_step
        step += 1

        is_eval = step % t.eval_every == 0 or step == t.steps
        if step % t.log_every == 0 or is_eval:
            losses = torch.stack(window_losses).float().cpu()  # one sync per window
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                first = int(bad[0])
                raise NonFiniteLossError(step - len(losses) + first + 1, float(losses[first]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - window_t0
            history["train_time_s"] += dt
            history["train_tokens"] += window_tokens
            metrics: Dict[str, Any] = {
                METRIC_TRAIN_LOSS: float(losses.mean()),
                METRIC_TRAIN_LR: lr_at(step - 1, cfg),
                METRIC_TOKENS_PER_S: window_tokens / max(dt, 1e-9),
            }
            window_losses, window_tokens = [], 0
            checkpoint = None
            if is_eval:
                history["val"] = evaluate(model, task, device, amp, eval_bs, SPLIT_VAL)
                metrics.update(history["val"])
            if step == t.steps:  # the end of training: the only place the test split is scored
                history["test"] = evaluate(model, task, device, amp, eval_bs, SPLIT_TEST)
                metrics.update(history["test"])
            history["reports"].append([step, metrics])
            if checkpoint_dir and (is_eval or (t.checkpoint_every and step % t.checkpoint_every == 0)):
                os.makedirs(checkpoint_dir, exist_ok=True)
                checkpoint = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
                save_checkpoint(checkpoint, _unwrap(model), opt, step, cfg, device, history)
            emit(metrics, step, checkpoint)
            window_t0 = time.perf_counter()

    # Resumed from the final checkpoint, the loop did not run: the scores come from its history.
    final: Dict[str, Any] = dict(history["val"]) or evaluate(model, task, device, amp, eval_bs, SPLIT_VAL)
    final.update(history.get("test") or evaluate(model, task, device, amp, eval_bs, SPLIT_TEST))
    final.update(size)
    final[METRIC_TOKENS_PER_S_MEAN] = history["train_tokens"] / max(history["train_time_s"], 1e-9)
    final[METRIC_TRAIN_TIME_S] = history["train_time_s"]
    final[METRIC_TOTAL_TIME_S] = time.perf_counter() - t_start
    return final


# --------------------------------------------------------------------------------------
# CLI: python -m gmlp_ablate.train [trial.yaml] [dotted.key=value ...]
# --------------------------------------------------------------------------------------


def _help_keys() -> str:
    from gmlp_ablate.schema import field_docs
    from gmlp_ablate.trial import TRIAL_KEYS

    defaults = to_dict(TrialConfig())
    flat = {}
    for key in TRIAL_KEYS:
        v: Any = defaults
        for part in key.split("."):
            v = v[part]
        flat[key] = v
    docs = field_docs(TrialConfig)
    lines = ["keys (dotted.key=value):"]
    for key in TRIAL_KEYS:
        doc = " ".join(docs.get(key, "").split())
        lines.append(f"  {key}={json.dumps(flat[key])}\n      {doc}")
    return "\n".join(lines)


def _error(message: Any) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[list] = None) -> int:
    """The command line; exit codes: 0 done, 1 the loss went non-finite, 2 bad input
    (nothing trained), 130 interrupted (Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def _main(argv: Optional[list]) -> int:
    import argparse

    from gmlp_ablate.trial import load_trial

    parser = argparse.ArgumentParser(
        prog="python -m gmlp_ablate.train",
        description="Train one trial: a trial YAML and/or dotted key=value overrides.",
        epilog=_help_keys(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", help="[trial.yaml] [dotted.key=value ...]")
    parser.add_argument("--checkpoint-dir", help="write a resumable checkpoint here at each evaluation")
    parser.add_argument("--resume", help="continue from this checkpoint file or folder")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    args = parser.parse_args(argv)
    path = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    try:
        cfg = load_trial(path, overrides)
        pick_device(cfg.train.device)
    except ConfigError as e:
        _error(e)
        return 2
    if args.resume is not None and not os.path.isfile(checkpoint_file(args.resume)):
        missing = "no such file or folder" if not os.path.exists(args.resume) else f"no {CHECKPOINT_FILE} in that folder"
        _error(f"--resume {args.resume}: {missing}")
        return 2
    print(f"trial {trial_key(cfg)}: {json.dumps(semantic_dict(cfg)['model'])}", flush=True)

    shown_through = [-1]  # resumed: the checkpoint's step, up to which the reports are not news

    def progress(metrics: Dict[str, Any], step: int, checkpoint: Optional[str]) -> None:
        resumed = int(metrics.get(f"{INFO_PREFIX}{INFO_RESUMED_FROM_STEP}", 0))
        if resumed:
            shown_through[0] = resumed
            print(f"step {resumed:>6}/{cfg.train.steps}  resumed from the checkpoint", flush=True)
            return
        if step <= shown_through[0]:
            return
        shown = {k: v for k, v in metrics.items() if not k.startswith(INFO_PREFIX)}
        parts = [f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, float)]
        print(f"step {step:>6}/{cfg.train.steps}  " + "  ".join(parts), flush=True)

    try:
        final = train(cfg, report=progress, checkpoint_dir=args.checkpoint_dir, resume_from=args.resume)
    except NonFiniteLossError as e:
        _error(e)
        return 1
    except (ConfigError, CheckpointMismatchError) as e:
        _error(e)
        return 2
    if args.json:
        print(json.dumps(final, sort_keys=True))
    else:
        print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

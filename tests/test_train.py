"""The trainer: determinism, resume, learning on every task, bad configs, the CLI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gmlp_ablate.schema import ConfigError
from gmlp_ablate.train import (NonFiniteLossError, autocast_dtype, compile_or_decline, compile_speedup, load_checkpoint,
                               lr_at, train)
from gmlp_ablate.trial import load_trial

TINY = ["model.dim=16", "model.depth=2", "train.batch_size=8", "train.log_every=5", "train.warmup_steps=5"]
MQAR = ["task.name=mqar", "task.num_kv_pairs=2", "task.seq_len=16", "task.num_val=64"]


def _cfg(*extra: str):
    return load_trial(None, [*TINY, *MQAR, "train.steps=20", "train.eval_every=10", *extra])


def _curve(cfg, **kw):
    rows = []
    final = train(cfg, report=lambda m, step, ck: rows.append((step, {k: v for k, v in m.items()
                                                                       if not k.startswith(("info.", "perf/"))})), **kw)
    return rows, final


def test_same_seed_gives_identical_curves():
    a, fa = _curve(_cfg())
    b, fb = _curve(_cfg())
    assert a == b and fa["val/loss"] == fb["val/loss"]


def test_different_seed_gives_different_curves():
    a, _ = _curve(_cfg("seed=0"))
    b, _ = _curve(_cfg("seed=1"))
    assert a[1][1]["train/loss"] != b[1][1]["train/loss"]


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    cfg = _cfg("model.prob_survival=0.8")  # stochastic depth: the RNG state must be restored too
    full, f_full = _curve(cfg)

    class Stop(Exception):
        pass

    def stop_after_first_eval(m, step, ck):
        if ck:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, report=stop_after_first_eval, checkpoint_dir=str(tmp_path))
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"), cfg)["step"] == 10
    rest, f_rest = _curve(cfg, resume_from=str(tmp_path))
    # step 0's report again, the reports up to the checkpoint as they were first sent, then on
    assert [s for s, _ in rest] == [0, 5, 10, 15, 20]
    assert rest[1:] == full[1:]
    assert f_rest["val/loss"] == f_full["val/loss"] and f_rest["val/acc"] == f_full["val/acc"]


def test_a_resumed_trial_fills_in_what_a_dead_driver_did_not_log(tmp_path):
    """The driver died after the trial wrote its checkpoint but before it logged that step's
    report (the checkpoint is written first, and a worker outlives its driver by up to a
    second). The next driver's ledger logs exactly the steps the first one missed: each step
    once, none missing."""
    from gmlp_ablate.ledger import Ledger
    from gmlp_ablate.run import trial_result

    cfg = _cfg()
    full = []
    train(cfg, report=lambda m, step, ck: full.extend((step, k) for k in m if not k.startswith("info.")))

    class Killed(Exception):
        pass

    sent = []

    def first_run(m, step, ck):
        sent.append(trial_result(m, step))
        if ck:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, report=first_run, checkpoint_dir=str(tmp_path))
    logged = []
    first_driver = Ledger()
    first_driver.add("k", "k", 20)
    first_driver.start("k")
    for result in sent[:-1]:  # the checkpoint's own report was on its way when the driver died
        update = first_driver.result("k", result)
        logged += [(update.step, k) for k in update.metrics]
    n_first = len(logged)
    next_driver = Ledger()
    next_driver.add("k", "k", 20).last_step = max(step for step, _ in logged)  # the reopened run's last step
    next_driver.start("k")

    def resumed(m, step, ck):
        update = next_driver.result("k", trial_result(m, step))
        logged.extend((update.step, k) for k in update.metrics)

    train(cfg, report=resumed, resume_from=str(tmp_path))
    assert (10, "val/loss") in logged[n_first:] and all(step < 10 for step, _ in logged[:n_first])
    assert sorted(logged) == sorted(full), "each step's metrics logged once, none missing"


def test_checkpoint_of_another_trial_is_refused(tmp_path):
    def stop(m, step, ck):
        if ck:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), report=stop, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="belongs to trial"):
        train(_cfg("train.lr=0.01"), resume_from=str(tmp_path))


@pytest.mark.parametrize(
    "task",
    [
        ["task.name=charlm", "task.seq_len=32", "task.corpus_bytes=200000", "task.val_tokens=4096"],
        ["task.name=mlm", "task.seq_len=32", "task.corpus_bytes=200000", "task.val_tokens=4096"],
        MQAR,
        ["task.name=digits", "train.batch_size=32", "train.steps=100"],
    ],
    ids=["charlm", "mlm", "mqar", "digits"],
)
@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_every_task_trains_and_loss_goes_down(task, arch, tmp_path):
    cfg = load_trial(None, [*TINY, "train.steps=40", "train.eval_every=1000", "train.lr=3e-3", *task,
                            f"model.arch={arch}", "model.heads=2", f"task.cache_dir={tmp_path}"])
    rows, final = _curve(cfg)
    losses = [m["train/loss"] for _, m in rows if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(math.isfinite(v) for v in final.values())
    assert final["model/params"] > 0 and final["perf/tokens_per_s_mean"] > 0


def test_metrics_reported_per_task():
    rows, final = _curve(_cfg())
    assert rows[0][0] == 0 and "model/params" in rows[0][1] and "model/flops_per_token" in rows[0][1]
    evals = [step for step, m in rows if "val/loss" in m]
    assert evals == [10, 20]
    assert set(final) >= {"val/loss", "val/acc", "test/loss", "test/acc", "perf/tokens_per_s_mean", "model/params"}


def test_final_metrics_hold_every_metric_the_task_declares():
    from gmlp_ablate.tasks import task_metrics

    cfg = _cfg()
    _, final = _curve(cfg)
    assert set(task_metrics(cfg.task)) <= set(final)


def test_test_split_is_scored_once_at_the_end(tmp_path):
    rows, final = _curve(_cfg(), checkpoint_dir=str(tmp_path))
    assert [step for step, m in rows if any(k.startswith("test/") for k in m)] == [20]
    last = rows[-1][1]
    assert {k: last[k] for k in ("test/loss", "test/acc")} == {k: final[k] for k in ("test/loss", "test/acc")}
    assert final["test/loss"] != final["val/loss"]  # another set of examples


def test_selection_checkpoints_carry_no_test_scores(tmp_path):
    cfg = _cfg()

    def stop_after_first_eval(m, step, ck):
        if ck:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop_after_first_eval, checkpoint_dir=str(tmp_path))
    history = load_checkpoint(str(tmp_path / "checkpoint.pt"), cfg)["history"]
    assert history["val"] and "test" not in history


def test_resumed_from_the_final_checkpoint_returns_its_scores(tmp_path):
    cfg = _cfg()
    _, first = _curve(cfg, checkpoint_dir=str(tmp_path))
    rows, again = _curve(cfg, resume_from=str(tmp_path))
    assert [step for step, _ in rows] == [0, 5, 10, 15, 20]  # step 0's report and the checkpoint's: nothing trained
    for key in ("val/loss", "val/acc", "test/loss", "test/acc"):
        assert again[key] == first[key]


def test_nonfinite_loss_stops_with_the_step():
    cfg = _cfg("train.lr=1e30", "train.warmup_steps=0")
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    assert 1 <= e.value.step <= 5 and not math.isfinite(e.value.value)


def test_compile_speedup_is_the_median_of_paired_ratios():
    assert compile_speedup([2.0, 2.0, 2.0], [1.0, 4.0, 2.0]) == 1.0  # ratios 2, 0.5, 1
    assert compile_speedup([1.0, 3.0], [2.0, 1.0]) == pytest.approx((0.5 + 3.0) / 2)
    assert compile_speedup([1.0, 1.0, 1.0], [1.1, 1.2, 1.3]) < 1.0  # compiled slower on every pair


@pytest.mark.integration
def test_compile_probe_compiles_for_real_and_leaves_the_training_state_alone():
    """The probe really compiles and times both steps; the model's weights, gradients and the
    RNG (dropout, drop-path) are as before it, so a declined compile trains exactly as eager."""
    from gmlp_ablate.models import build_model
    from gmlp_ablate.tasks import build_task

    cfg = _cfg("model.dropout=0.1", "model.prob_survival=0.5")
    task = build_task(cfg.task, cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, task.shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x, y = task.train_batch(0, 8)
    fwd, verdict = compile_or_decline(model, x, y, torch.device("cpu"), None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    if fwd is model:
        assert verdict.startswith("declined: the compiled step ran at ") and verdict.endswith("x eager speed on cpu; trained eager")
    else:
        assert fwd._orig_mod is model and verdict.startswith("compiled: ") and verdict.endswith("x eager speed on cpu")
        with torch.no_grad():  # the compiled module computes what the model computes
            model.eval()
            assert torch.allclose(fwd(x), model(x), atol=1e-5)


@pytest.mark.integration
def test_train_with_compile_reports_the_verdict_and_matches_eager():
    info = {}
    final = train(_cfg("train.compile=true"), report=lambda m, step, ck: info.update(
        {k: v for k, v in m.items() if k.startswith("info.")}))
    assert info["info.compile"].startswith(("compiled: ", "declined: "))
    _, eager = _curve(_cfg())
    assert final["val/loss"] == pytest.approx(eager["val/loss"], abs=1e-4)


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = _cfg("train.steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1")
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_bf16_autocast_only_on_cuda_under_auto():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_bf16_on_cpu_trains():
    rows, final = _curve(_cfg("train.precision=bf16"))
    assert math.isfinite(final["val/loss"])


def test_weight_decay_groups_exclude_gates_and_norms():
    from gmlp_ablate.models import build_model
    from gmlp_ablate.tasks import task_shape

    cfg = _cfg()
    model = build_model(cfg.model, task_shape(cfg.task))
    groups = model.param_groups(0.1)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert names and all(p.ndim >= 2 for n, p in model.named_parameters() if id(p) in decay)
    assert not any("norm" in n or n.endswith(".bias") for n in names)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "override, key",
    [
        ("task.name=imagenet", "task.name"),
        ("task.seq_len=4", "task.seq_len"),  # mqar with 2 pairs needs >= 8
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_bad_trial_configs_fail_before_training(override, key):
    with pytest.raises(ConfigError) as e:
        load_trial(None, [*MQAR, override])
    assert e.value.key == key


def test_missing_corpus_fails_naming_the_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_trial(None, ["task.name=charlm", f"task.corpus={tmp_path / 'nope.txt'}"])
    assert e.value.key == "task.corpus" and "nope.txt" in str(e.value)


def test_cli_trains_and_prints_final_metrics():
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.train", *TINY, *MQAR, "train.steps=10",
                           "train.eval_every=10"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "step     10/10" in proc.stdout and "final: val/loss" in proc.stdout


def test_cli_help_lists_every_key():
    from gmlp_ablate.trial import TRIAL_KEYS

    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.train", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert all(k in proc.stdout for k in TRIAL_KEYS)


def test_cli_bad_key_exits_2():
    proc = subprocess.run([sys.executable, "-m", "gmlp_ablate.train", "model.dimm=3"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "did you mean 'model.dim'" in proc.stderr and "Traceback" not in proc.stderr


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmlp_ablate.train", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_cli_non_finite_value_exits_2_in_one_line():
    proc = _cli(*MQAR, "train.lr=nan")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "train.lr" in _one_line_error(proc) and "finite" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_cli_cuda_without_a_gpu_exits_2_before_building_anything():
    proc = _cli(*MQAR, "train.device=cuda")
    assert proc.returncode == 2 and proc.stdout == ""  # not even the trial line
    assert "train.device" in _one_line_error(proc)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_cli_resume_without_a_checkpoint_exits_2(kind, tmp_path):
    target = tmp_path / "nope.pt" if kind == "file" else tmp_path
    proc = _cli(*MQAR, "--resume", str(target))
    assert proc.returncode == 2 and proc.stdout == ""
    assert str(target) in _one_line_error(proc)


def test_cli_ctrl_c_during_training_exits_130():
    p = subprocess.Popen([sys.executable, "-m", "gmlp_ablate.train", *TINY, *MQAR, "train.steps=100000",
                          "train.eval_every=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:  # a train/loss line: the loop is running
            line = p.stdout.readline()
            assert line, p.stderr.read()
            if "train/loss" in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert err.strip().splitlines() == ["interrupted"]


def test_cli_ctrl_c_during_validation_exits_130(tmp_path):
    """The trial file is a pipe nobody writes to: loading it blocks inside validation."""
    fifo = tmp_path / "trial.yaml"
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-m", "gmlp_ablate.train", str(fifo)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None:  # opening the write end succeeds once the CLI has opened the file
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() else "timeout"
                time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and out == ""
    assert err.strip().splitlines() == ["interrupted"]

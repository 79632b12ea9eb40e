"""The driver's trial ledger and the liveness policy: plain Python, no Ray, no MLflow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from gmlp_ablate import liveness
from gmlp_ablate.ledger import FAILED, FINISHED, KILLED, RUNNING, Ledger, classify_error, metric_items, pack_metrics
from gmlp_ablate.names import TAG_HEARTBEAT, TAG_HOST, TAG_PID, TAG_PID_START


def _res(step: int, metrics: dict = None, **keys) -> dict:
    """A result as the trainable reports it: metrics packed, other keys as given."""
    return {"step": step, **pack_metrics(metrics or {}), **keys}


def _ledger() -> Ledger:
    led = Ledger("val/loss", "min")
    led.add("k1", "a seed=0", 100)
    led.add("k2", "b seed=0", 100)
    return led


def test_result_logs_each_step_once_and_collects_tags():
    led = _ledger()
    led.start("k1")
    first = led.result("k1", _res(0, {"model/params": 10.0}, **{"info.device": "cpu"}, node_ip="1.2.3.4", pid=7))
    assert first.metrics == {"model/params": 10.0}
    assert first.tags == {"device": "cpu", "worker": "1.2.3.4:7"}
    assert led.result("k1", _res(50, {"train/loss": 2.0}, node_ip="1.2.3.4", pid=7)).metrics == {"train/loss": 2.0}
    # a retry in a new process resumes from a checkpoint at step 50: the step is not logged twice
    again = led.result("k1", _res(50, {"train/loss": 2.0}, **{"info.resumed_from_step": "50"}, node_ip="1.2.3.4",
                              pid=9))
    assert again.metrics == {} and again.tags == {"resumed_from_step": "50", "worker": "1.2.3.4:9"}
    assert led.result("k1", _res(100, {"val/loss": 1.5}, node_ip="1.2.3.4", pid=9)).metrics == {"val/loss": 1.5}
    assert led["k1"].last_step == 100


def test_complete_finishes_tracks_the_best_and_returns_the_final_perf_metrics():
    led = _ledger()
    for key, value in (("k1", 2.0), ("k2", 1.0)):
        led.start(key)
        led.result(key, _res(100, {"val/loss": value, "perf/tokens_per_s_mean": 5.0}, final=1, node_ip="x",
                         pid=1))
        status, final = led.complete(key)
        assert status == FINISHED and final == {"perf/tokens_per_s_mean": 5.0}
    assert led.best == (1.0, "b seed=0")
    assert led.counts()[FINISHED] == 2 and led.failed() == []


def test_a_completed_trial_keeps_only_what_is_read_after_its_end():
    led = _ledger()
    led.start("k1")
    led.result("k1", _res(100, {"val/loss": 1.5}, node_ip="x", pid=1))
    led.result("k1", _res(100, {"val/loss": 1.5, "train/loss": 1.4, "perf/tokens_per_s_mean": 5.0,
                            "time/total_s": 2.0}, final=1, node_ip="x", pid=1))
    assert led["k1"].final and led["k1"].worker == "x:1"
    status, final = led.complete("k1")
    assert (status, final) == (FINISHED, {"perf/tokens_per_s_mean": 5.0, "time/total_s": 2.0})
    e = led["k1"]
    assert e.final == {} and e.worker is None  # released: the run has them
    assert (e.value, e.stopped_early, e.last_step, led.best) == (1.5, False, 100, (1.5, "a seed=0"))
    # stopped by a scheduler: no final report, before its last step
    led.start("k2")
    led.result("k2", _res(20, {"val/loss": 3.0}, node_ip="x", pid=1))
    assert led.complete("k2") == (FINISHED, {})
    assert led["k2"].stopped_early and led["k2"].value is None and led.best == (1.5, "a seed=0")


def test_nonfinite_result_fails_the_trial_with_its_step():
    led = _ledger()
    led.start("k1")
    up = led.result("k1", {"step": 3, "nonfinite_step": 3, "error": "non-finite training loss (nan) at step 3",
                           "node_ip": "x", "pid": 1})
    assert up.metrics == {} and up.tags["nonfinite_step"] == "3"
    status, final = led.complete("k1")
    assert status == FAILED and final == {} and led["k1"].failure == "nonfinite"
    assert [e.key for e in led.failed()] == ["k1"]


def test_errors_are_classified_and_an_interrupted_sweep_kills_instead():
    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nray.exceptions.ActorDiedError: The actor "
             "died unexpectedly before finishing this task. Some common causes include: OOM")
    assert classify_error(trace) == ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing "
                                     "this task.", "worker_died")
    assert classify_error("Traceback\nValueError: task.seq_len too long") == ("ValueError: task.seq_len too long",
                                                                               "exception")
    assert classify_error("") == ("trial failed (no error recorded)", "exception")
    led = _ledger()
    led.start("k1")
    msg, kind = led.retry("k1", trace)
    assert kind == "worker_died" and led["k1"].restarts == 1 and led["k1"].restart_reason.startswith("worker_died")
    assert led.error("k1", "ValueError: boom").status == FAILED
    led.start("k2")
    led.interrupted = True
    e = led.error("k2", "KeyboardInterrupt")
    assert (e.status, e.failure) == (KILLED, "interrupted")


def test_stop_running_kills_only_trials_with_a_run():
    led = _ledger()
    led.start("k1").run_id = "r1"
    led.start("k2")  # started in Tune but no run yet
    stopped = led.stop_running(interrupted=False)
    assert [e.key for e in stopped] == ["k1"] and led["k1"].status == KILLED and led["k1"].failure == "driver_error"
    assert led["k2"].status == RUNNING


def test_metrics_travel_as_one_string_and_a_number_only_where_a_scheduler_reads_one():
    packed = pack_metrics({"val/loss": 1.5, "train/loss": 2, "flag/b": True, "x/nan": float("nan")}, numeric="val/loss")
    # Tune keeps running statistics of each numeric key: only the scheduled metric is one
    assert [k for k, v in packed.items() if isinstance(v, (int, float))] == ["val/loss"]
    assert packed["val/loss"] == 1.5 and isinstance(packed["metrics"], str)
    assert pack_metrics({"train/loss": 2.0}, numeric="val/loss").keys() == {"metrics"}  # not at this step
    items = metric_items({**packed, "step": 3, "info.x": "a", "pid": 7})
    assert items.keys() == {"val/loss", "train/loss", "x/nan"} and items["train/loss"] == 2.0
    assert items["x/nan"] != items["x/nan"]  # NaN survives the round trip
    assert metric_items({"step": 3, "val/loss": 1.0}) == {}  # a bare number is Tune's, not a metric to log


def test_liveness_of_a_driver_from_its_tags():
    me = liveness.identity()
    assert not liveness.is_dead(me)
    assert liveness.is_dead({**me, TAG_HEARTBEAT: str(time.time() - liveness.HEARTBEAT_STALE_S - 1)})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert liveness.is_dead({**me, TAG_PID: str(gone.pid), TAG_PID_START: ""})
    assert liveness.is_dead({**me, TAG_PID_START: str(float(me[TAG_PID_START]) - 100)}), "pid reused"
    other_host = {**me, TAG_HOST: socket.gethostname() + ".elsewhere", TAG_PID: "1"}
    assert not liveness.is_dead(other_host), "another host with a fresh heartbeat is alive"
    assert int(me[TAG_PID]) == os.getpid()

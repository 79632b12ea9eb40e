"""Take a local Ray instance down with the driver that started it, however the driver ends.

``python -m gmlp_ablate.reaper`` is started by the sweep driver as its child. Once a second
it notes the driver's descendants (Ray's daemons and workers, with their start times); when
its parent changes (the driver is gone, even by SIGKILL) it kills those still alive and
exits. Without it Ray's agents outlive a killed driver by about a minute.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import subprocess
from typing import Dict

POLL_S = 1.0


def descendants(pid: int) -> Dict[int, float]:
    """pid -> start time of every Ray process descending from ``pid`` (its command line
    names Ray: raylet, gcs_server, agents, ``ray::`` workers)."""
    import psutil

    out: Dict[int, float] = {}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if p.pid != os.getpid() and "ray" in " ".join(p.cmdline()).lower():
                    out[p.pid] = p.create_time()
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def kill_all(procs: Dict[int, float]) -> int:
    """SIGKILL each process still alive with the recorded start time; returns how many."""
    import psutil

    n = 0
    for pid, started in procs.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3:
                p.send_signal(signal.SIGKILL)
                n += 1
        except psutil.Error:
            continue
    return n


def watch(driver: int) -> None:
    seen: Dict[int, float] = {}
    while os.getppid() == driver:
        seen.update(descendants(driver))
        seen = {pid: t for pid, t in seen.items() if _alive(pid, t)}
        time.sleep(POLL_S)
    kill_all(seen)


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1e-3
    except psutil.Error:
        return False


def start() -> subprocess.Popen:
    """Start the reaper for this process (the driver); terminate it after a normal shutdown.

    It is started while the store opens in another thread, where MLflow writes environment
    variables; the child gets a copy of the environment (``env=``), since an ``execve`` that
    reads the process's own environment beside a ``setenv`` can fail ("[Errno 14] Bad address")."""
    return subprocess.Popen([sys.executable, "-m", "gmlp_ablate.reaper", str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the driver
    watch(int(sys.argv[1]))

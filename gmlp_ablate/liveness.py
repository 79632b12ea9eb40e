"""Is the driver that owns a run still alive? The policy, apart from any MLflow I/O.

A sweep driver records who it is on its parent run (host, pid, the pid's start time) and
refreshes a heartbeat tag while it runs. Another driver judges it from those tags alone:

- a heartbeat older than :data:`HEARTBEAT_STALE_S`: dead (any host);
- on this host: dead when the recorded pid is gone or now belongs to another process
  (its start time differs);
- on another host with a fresh heartbeat: alive (nothing else can be known from here).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Dict, Mapping, Optional

from gmlp_ablate.names import TAG_HEARTBEAT, TAG_HOST, TAG_PID, TAG_PID_START

HEARTBEAT_EVERY_S = 30.0
"""How often a running driver refreshes its heartbeat."""
HEARTBEAT_STALE_S = 600.0
"""A driver whose heartbeat is older than this is dead, whatever host it ran on."""


def process_start(pid: int) -> Optional[float]:
    """The start time of process ``pid``, or None when there is no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def identity() -> Dict[str, str]:
    """The tags that let another driver tell whether this process is alive."""
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_PID_START: str(process_start(os.getpid()) or ""),
        TAG_HEARTBEAT: str(time.time()),
    }


def heartbeat() -> Dict[str, str]:
    """The tag a driver refreshes while it runs."""
    return {TAG_HEARTBEAT: str(time.time())}


def is_dead(tags: Mapping[str, str], now: Optional[float] = None) -> bool:
    """True when the driver described by a parent run's tags is gone (see the module doc)."""
    try:
        beat = float(tags.get(TAG_HEARTBEAT, "0"))
    except ValueError:
        beat = 0.0
    if (now if now is not None else time.time()) - beat > HEARTBEAT_STALE_S:
        return True
    if tags.get(TAG_HOST) != socket.gethostname():
        return False  # another machine: only the heartbeat can tell
    try:
        pid = int(tags.get(TAG_PID, "-1"))
    except ValueError:
        return True
    start = process_start(pid)
    if start is None:
        return True
    recorded = tags.get(TAG_PID_START, "")
    try:
        return bool(recorded) and abs(float(recorded) - start) > 1.0  # pid reused by another process
    except ValueError:
        return True

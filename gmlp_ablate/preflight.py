"""Checks of a sweep's command line that need neither Ray nor MLflow (nothing is created).

Each raises :class:`~gmlp_ablate.schema.ConfigError` naming the flag or key, so the runner
exits 2 with one line before it starts Ray or opens a store.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from typing import Any, Optional

from gmlp_ablate.schema import ConfigError


def gpu_per_trial(resources: Any, cluster_gpus: float) -> float:
    """``auto``: 1/trials_per_gpu of a GPU when the cluster has GPUs, else 0."""
    if resources.gpu == "auto":
        return 1.0 / resources.trials_per_gpu if cluster_gpus > 0 else 0.0
    return float(resources.gpu)


def local_gpus() -> int:
    """GPUs a local Ray instance would see: ``CUDA_VISIBLE_DEVICES``, else NVIDIA device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def local_cpus(num_cpus: Optional[int]) -> int:
    """CPUs of a local Ray instance: ``--num-cpus``, else the machine's."""
    return num_cpus or os.cpu_count() or 1


def local_slots(resources: Any, num_cpus: Optional[int], max_concurrent: Optional[int]) -> int:
    """How many trials a local Ray instance runs at once: its CPUs (:func:`local_cpus`) over
    ``resources.cpu``, its GPUs over the GPU share of a trial, and ``--max-concurrent``; at
    least 1."""
    cpus = local_cpus(num_cpus)
    slots = int(cpus // resources.cpu) if resources.cpu > 0 else cpus
    gpus = local_gpus()
    share = gpu_per_trial(resources, gpus)
    if share > 0:
        slots = min(slots, int(gpus / share + 1e-9))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)


def check_local_resources(resources: Any, num_cpus: Optional[int]) -> None:
    """ConfigError for a per-trial request the local instance can never meet (Tune would wait forever)."""
    cpus = local_cpus(num_cpus)
    if resources.cpu > cpus:
        where = "--num-cpus" if num_cpus else "this machine"
        raise ConfigError("resources.cpu", f"{resources.cpu:g} CPUs per trial, but the local Ray instance has "
                                           f"{cpus} ({where}); lower it or run on a cluster with --address")
    if resources.gpu != "auto" and float(resources.gpu) > 0 and float(resources.gpu) > local_gpus():
        raise ConfigError("resources.gpu", f"{resources.gpu} GPU per trial, but this machine has {local_gpus()} "
                                           "visible GPU(s); use resources.gpu=auto or 0, or run on a cluster with --address")


def check_storage(storage: str) -> None:
    """ConfigError unless ``--storage`` is (or can become) a writable folder."""
    if os.path.exists(storage) and not os.path.isdir(storage):
        raise ConfigError("--storage", f"{storage} is a file, expected a folder")
    parent = storage
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError("--storage", f"{parent} is a file, expected a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".gmlp_ablate_probe_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError("--storage", f"{parent} is not writable ({e.strerror or e})") from None


def check_address(address: Optional[str]) -> None:
    """Fail fast (ConfigError) on a cluster address nobody answers at."""
    if not address or address in ("local", "auto"):
        return
    if address.startswith("ray://"):
        raise ConfigError("--address", "Ray Client (ray://) would run Tune away from this driver's MLflow "
                          "callback: run the driver on a cluster node with --address HOST:PORT or auto "
                          "(e.g. through `ray job submit`)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", f"expected HOST:PORT of a Ray head node, 'auto' or 'local', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise ConfigError("--address", f"no Ray cluster answers at {address} ({e.strerror or e})") from None

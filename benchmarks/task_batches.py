"""Cost of data: building each task (cold, from the disk cache, reused in the process) and
one ``train_batch`` of 32.

    python benchmarks/task_batches.py
"""

from __future__ import annotations

import tempfile
import time

import torch

from gmlp_ablate.tasks import build_task, clear_task_cache
from gmlp_ablate.tasks.config import TaskConfig


def _timed(cfg: TaskConfig, seed: int):
    t0 = time.perf_counter()
    task = build_task(cfg, seed)
    return task, time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    print("| task | first build (s) | disk-cached build (s) | reused in process (s) | train_batch(32) (ms) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for name in ("charlm", "mlm", "mqar", "digits"):
            cfg = TaskConfig(name=name, cache_dir=cache)
            clear_task_cache()
            _, cold = _timed(cfg, 0)
            clear_task_cache()
            _, disk = _timed(cfg, 0)
            task, reused = _timed(cfg, 1)
            task.train_batch(0, 32)
            t0 = time.perf_counter()
            for step in range(200):
                task.train_batch(step, 32)
            per = (time.perf_counter() - t0) / 200 * 1000
            print(f"| {name} | {cold:.3f} | {disk:.3f} | {reused:.3f} | {per:.3f} |")


if __name__ == "__main__":
    main()

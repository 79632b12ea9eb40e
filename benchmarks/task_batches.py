"""Cost of data: building each task (cold and cached) and one ``train_batch`` of 32.

    python benchmarks/task_batches.py
"""

from __future__ import annotations

import tempfile
import time

import torch

from gmlp_ablate.config import TaskConfig
from gmlp_ablate.tasks import build_task


def main() -> None:
    torch.set_num_threads(1)
    print("| task | first build (s) | cached build (s) | train_batch(32) (ms) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for name in ("charlm", "mlm", "mqar", "digits"):
            cfg = TaskConfig(name=name, cache_dir=cache)
            t0 = time.perf_counter()
            build_task(cfg, 0)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            task = build_task(cfg, 0)
            warm = time.perf_counter() - t0
            task.train_batch(0, 32)
            t0 = time.perf_counter()
            for step in range(200):
                task.train_batch(step, 32)
            per = (time.perf_counter() - t0) / 200 * 1000
            print(f"| {name} | {cold:.3f} | {warm:.3f} | {per:.3f} |")


if __name__ == "__main__":
    main()

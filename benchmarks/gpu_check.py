"""The GPU path of one trial: device auto -> CUDA, bf16 autocast, fused AdamW, optional
torch.compile, for gMLP, aMLP and the Transformer on a token and an image task; plus the
per-trial GPU fraction the runner asks Ray for. Prints one line per run.

    python benchmarks/gpu_check.py [--steps 150] [--compile]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gmlp_ablate.sweep import ResourcesConfig
from gmlp_ablate.trial import load_trial
from gmlp_ablate.preflight import gpu_per_trial
from gmlp_ablate.train import train

RUNS = {
    "gmlp charlm": ["task.name=charlm", "task.corpus_bytes=1000000"],
    "amlp charlm": ["task.name=charlm", "task.corpus_bytes=1000000", "model.attn_dim=64"],
    "transformer charlm": ["task.name=charlm", "task.corpus_bytes=1000000", "model.arch=transformer", "model.heads=4"],
    "gmlp mlm unsplit": ["task.name=mlm", "task.corpus_bytes=1000000", "model.sgu_split=false"],
    "gmlp digits p=0.8": ["task.name=digits", "model.prob_survival=0.8"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    n_gpu = torch.cuda.device_count()
    print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}, {n_gpu} GPU(s)"
          + (f": {torch.cuda.get_device_name(0)}" if n_gpu else ""))
    print(f"gpu per trial (resources.gpu=auto, trials_per_gpu=4): {gpu_per_trial(ResourcesConfig(), float(n_gpu))}")
    for name, extra in RUNS.items():
        for compile_ in ([False, True] if args.compile else [False]):
            cfg = load_trial(None, [*extra, f"train.steps={args.steps}", "train.eval_every=1000000",
                                    f"train.compile={str(compile_).lower()}"])
            info = {}
            t0 = time.perf_counter()
            final = train(cfg, report=lambda m, s, c: info.update({k: v for k, v in m.items() if k.startswith("info.")}))
            ok = all(math.isfinite(v) for v in final.values() if isinstance(v, float))
            print(f"{name:<20} compile={compile_!s:<5} device={info.get('info.device')} "
                  f"precision={info.get('info.precision')} val/loss={final['val/loss']:.3f} finite={ok} "
                  f"tok/s={final['perf/tokens_per_s_mean']:,.0f} wall={time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()

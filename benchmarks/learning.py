"""Does learning actually happen? One table of final metrics on CPU (the test split, with
the last validation score beside it).

- charlm: the default small gMLP on the default corpus must reach clearly below the corpus's
  unigram entropy (bits per byte) within a few minutes.
- mqar (seq 64, 4 and 8 key-value pairs): the Transformer baseline should reach >= 90%
  accuracy; gMLP and aMLP are trained on the same budget (steps, batch, width, depth).

    python benchmarks/learning.py                 # everything (about 20-30 min on 2 cores)
    python benchmarks/learning.py --only charlm   # or: --only mqar
"""

from __future__ import annotations

import argparse
import time

import torch

from gmlp_ablate.tasks import build_task
from gmlp_ablate.tasks.charlm import unigram_entropy_bits, unigram_val_bits
from gmlp_ablate.train import train
from gmlp_ablate.trial import load_trial

MQAR_MODELS = {
    "transformer": ["model.arch=transformer", "model.heads=2"],
    "gmlp": ["model.arch=gmlp"],
    "amlp (attn 32)": ["model.arch=gmlp", "model.attn_dim=32"],
}


def run(overrides: list, threads: int) -> dict:
    cfg = load_trial(None, [*overrides, f"train.threads={threads}"])
    t0 = time.perf_counter()
    final = train(cfg)
    final["wall_s"] = time.perf_counter() - t0
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["charlm", "mqar"], default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--charlm-steps", type=int, default=800)
    p.add_argument("--mqar-steps", type=int, default=4000)
    p.add_argument("--mqar-pairs", type=int, nargs="+", default=[4, 8])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.only in (None, "charlm"):
        base = ["task.name=charlm", f"train.steps={args.charlm_steps}", "train.eval_every=200", "train.lr=2e-3"]
        task = build_task(load_trial(None, base).task, 0)
        h_unigram = unigram_entropy_bits(task)
        h_val = unigram_val_bits(task)
        final = run(base, args.threads)
        rows.append(("charlm", "gmlp (defaults: d128 L4 ff4)", args.charlm_steps,
                     f"test/bpb {final['test/bpb']:.3f}, val/bpb {final['val/bpb']:.3f} "
                     f"(unigram: entropy {h_unigram:.3f}, on val {h_val:.3f})",
                     final["wall_s"]))
    if args.only in (None, "mqar"):
        for pairs in args.mqar_pairs:
            base = ["task.name=mqar", "task.seq_len=64", f"task.num_kv_pairs={pairs}", "task.vocab_size=32",
                    "model.dim=64", "model.depth=2", f"train.steps={args.mqar_steps}", "train.batch_size=64",
                    "train.lr=1e-3", "train.weight_decay=0", "train.min_lr_ratio=0.5", "train.eval_every=500"]
            for name, extra in MQAR_MODELS.items():
                final = run(base + extra, args.threads)
                rows.append((f"mqar {pairs} pairs", name, args.mqar_steps,
                             f"test/acc {final['test/acc']:.3f}, val/acc {final['val/acc']:.3f}", final["wall_s"]))
                print(rows[-1], flush=True)
    print(f"\n| task | model | steps | result | wall (s, {args.threads} threads) |")
    print("|---|---|---|---|---|")
    for task, model, steps, result, wall in rows:
        print(f"| {task} | {model} | {steps} | {result} | {wall:.0f} |")


if __name__ == "__main__":
    main()

"""Training-step throughput of our gMLP against the reference ``g_mlp_pytorch.gMLP``.

One train step = forward + cross-entropy + backward + AdamW step on a batch of random
tokens. Both models get the same configuration and the same batches; measurements of the
two alternate (ours, reference, ours, ...) and the median of the repeats is reported.

    .venv/bin/python benchmarks/model_speed.py [--compile] [--profile] [--dim 128 --depth 4 ...]

On a shared machine, ``--threads 1 --clock cpu`` times the process's CPU time instead of the
wall clock: other processes' load then barely moves the figures (with more threads, idle
worker threads spinning would count too).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.models import build_model


def make_step(model: nn.Module, vocab: int, lr: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure running one training step of ``model`` on (x, y)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_steps(step, batches, n: int, device: torch.device, clock: str = "wall") -> float:
    """Seconds (of ``CLOCKS[clock]``) for ``n`` steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    now = CLOCKS[clock]
    sync()
    t0 = now()
    for i in range(n):
        step(*batches[i % len(batches)])
    sync()
    return now() - t0


def build_pair(args, causal: bool, attn_dim: Optional[int]) -> tuple:
    """(ours, reference) with the same configuration, in train mode on ``args.device``."""
    from g_mlp_pytorch import gMLP

    torch.manual_seed(0)
    shape = TaskShape(kind="tokens", seq_len=args.seq, causal=causal, vocab_size=args.vocab)
    cfg = ModelConfig(dim=args.dim, depth=args.depth, ff_mult=args.ff_mult, attn_dim=attn_dim)
    device = torch.device(args.device)
    ours = build_model(cfg, shape).to(device).train()
    ref = gMLP(
        num_tokens=args.vocab, dim=args.dim, depth=args.depth, seq_len=args.seq,
        ff_mult=args.ff_mult, attn_dim=attn_dim, causal=causal,
    ).to(device).train()
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())
    return ours, ref


def random_batch(args, g: torch.Generator) -> tuple:
    """(x, y): random tokens of the benchmark's batch shape, on its device."""
    return tuple(torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(args.device) for _ in range(2))


def paired(args, steps: dict) -> tuple:
    """Alternate timed measurements of the two steps in ``steps`` ({a: step, b: step});
    return (a tok/s, b tok/s, median of the paired ratios b_time / a_time)."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(args, g) for _ in range(4)]
    a, b = steps
    for name in (a, b):
        time_steps(steps[name], batches, args.warmup, device)
    times = {a: [], b: []}
    for r in range(args.repeats):
        for name in ((a, b) if r % 2 == 0 else (b, a)):
            times[name].append(time_steps(steps[name], batches, args.steps, device, args.clock))
    tokens = args.batch * args.seq * args.steps
    # paired: each measurement of a against the adjacent one of b
    ratio = statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))
    return tokens / statistics.median(times[a]), tokens / statistics.median(times[b]), ratio


def bench_row(args, causal: bool, attn_dim: Optional[int], compile_: bool) -> tuple:
    """Ours against the reference, both eager or both compiled: (ours tok/s, ref tok/s, ours/ref)."""
    ours, ref = build_pair(args, causal, attn_dim)
    if compile_:
        ours, ref = torch.compile(ours), torch.compile(ref)
    return paired(args, {"ours": make_step(ours, args.vocab), "ref": make_step(ref, args.vocab)})


def compile_row(args, causal: bool, attn_dim: Optional[int]) -> tuple:
    """Ours compiled against ours eager (two copies of the same model): (compile tok/s,
    eager tok/s, compile/eager speed ratio, the trainer's verdict on ``train.compile``: its
    probe, :func:`gmlp_ablate.train.compile_or_decline`, on a third copy)."""
    from gmlp_ablate.train import compile_or_decline

    ours, _ = build_pair(args, causal, attn_dim)
    eager, _ = build_pair(args, causal, attn_dim)
    steps = {"compile": make_step(torch.compile(ours), args.vocab), "eager": make_step(eager, args.vocab)}
    comp, eag, ratio = paired(args, steps)
    probed, _ = build_pair(args, causal, attn_dim)
    x, y = random_batch(args, torch.Generator().manual_seed(1))
    _, verdict = compile_or_decline(probed, x, y, torch.device(args.device), None)
    return comp, eag, ratio, verdict.split(":")[0]


GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_row(args, causal: bool, attn_dim: Optional[int], steps: int = 5, rounds: int = 5) -> dict:
    """CPU time per eager training step of each model split into matrix products (GEMMs) and
    everything else, from ``torch.profiler`` (self time of each op): {model: (step ms, GEMM
    ms)}, from the fastest of ``rounds`` alternating profiles of ``steps`` steps (the op times
    are elapsed time: other load only adds to them). What the ours/ref ratio can reach when
    only the non-GEMM time of ours shrinks is bounded by ref step / ours GEMM time."""
    from torch.profiler import ProfilerActivity, profile

    ours, ref = build_pair(args, causal, attn_dim)
    x, y = random_batch(args, torch.Generator().manual_seed(0))
    out: dict = {}
    fns = {name: make_step(model, args.vocab) for name, model in (("ours", ours), ("ref", ref))}
    for step in fns.values():
        for _ in range(args.warmup):
            step(x, y)
    for _ in range(rounds):
        for name, step in fns.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step(x, y)
            ops = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in ops) / 1e3 / steps
            gemm = sum(e.self_cpu_time_total for e in ops if e.key in GEMMS) / 1e3 / steps
            out[name] = min(out.get(name, (total, gemm)), (total, gemm))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ff-mult", type=int, default=4)
    p.add_argument("--attn-dim", type=int, default=64, help="tiny attention width of the aMLP rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model and row")
    p.add_argument("--steps", type=int, default=1, help="steps per timed measurement")
    p.add_argument("--repeats", type=int, default=21, help="alternating measurements per model")
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--profile", action="store_true",
                   help="also split each eager step's CPU time into GEMMs and the rest (torch.profiler)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, {args.clock} clock; vocab {args.vocab}, dim {args.dim}, "
        f"depth {args.depth}, seq {args.seq}, batch {args.batch}, ff_mult {args.ff_mult}\n"
        f"tok/s: median of {args.repeats} alternating measurements of {args.steps} train steps "
        f"(fwd + bwd + AdamW) after {args.warmup} warm-up steps; ours/ref: median of the "
        f"paired ratios (each measurement of ours against the adjacent one of the reference)"
    )
    modes = [False] + ([True] if args.compile else [])
    header = f"| {'mode':7} | {'row':24} | {'ours tok/s':>10} | {'ref tok/s':>10} | {'ours/ref':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for compile_ in modes:
        for causal in (True, False):
            for attn_dim in (None, args.attn_dim):
                row = f"{'causal' if causal else 'bidirectional'}, " + (f"attn {attn_dim}" if attn_dim else "no attn")
                mode = "compile" if compile_ else "eager"
                try:
                    ours, ref, ratio = bench_row(args, causal, attn_dim, compile_)
                except Exception as e:  # torch.compile needs a working C++ toolchain
                    print(f"| {mode:7} | {row:24} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                    continue
                print(f"| {mode:7} | {row:24} | {ours:10.0f} | {ref:10.0f} | {ratio:8.2f} |", flush=True)
    if args.profile:
        header = (f"| {'row':24} | {'ours ms':>8} | {'GEMM':>8} | {'ref ms':>8} | {'GEMM':>8} | "
                  f"{'ref/ours':>8} | {'bound':>8} |")
        print("\nCPU time per eager step (torch.profiler, self time of each op; the fastest of 5 alternating profiles of"
              " 5 steps), GEMMs = mm, addmm, bmm, baddbmm;"
              "\nbound = ref step / ours' GEMM time: ours/ref if everything of ours but its GEMMs took no time\n"
              + header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for causal in (True, False):
            for attn_dim in (None, args.attn_dim):
                row = f"{'causal' if causal else 'bidirectional'}, " + (f"attn {attn_dim}" if attn_dim else "no attn")
                r = profile_row(args, causal, attn_dim)
                (o, og), (f, fg) = r["ours"], r["ref"]
                print(f"| {row:24} | {o:8.1f} | {og:8.1f} | {f:8.1f} | {fg:8.1f} | {f / o:8.2f} | {f / og:8.2f} |",
                      flush=True)
    if not args.compile:
        return
    header = f"| {'ours':7} | {'row':24} | {'compile':>10} | {'eager':>10} | {'c/e':>8} | {'trainer':>8} |"
    print("\nours compiled vs ours eager (c/e: median of the paired speed ratios; trainer: what train.compile=true "
          "does after its own probe)\n" + header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for causal in (True, False):
        for attn_dim in (None, args.attn_dim):
            row = f"{'causal' if causal else 'bidirectional'}, " + (f"attn {attn_dim}" if attn_dim else "no attn")
            try:
                comp, eager, ratio, verdict = compile_row(args, causal, attn_dim)
            except Exception as e:  # torch.compile needs a working C++ toolchain
                print(f"| {'':7} | {row:24} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                continue
            print(f"| {'':7} | {row:24} | {comp:10.0f} | {eager:10.0f} | {ratio:8.2f} | {verdict:>8} |", flush=True)


if __name__ == "__main__":
    main()

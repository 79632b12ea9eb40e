"""``python -m analysis.family A B C``: one family of comparisons across several sweeps.

When a claim rests on comparisons from several sweeps (e.g. "each gMLP variant beats the
Transformer", tested in ``sgu_split``, ``tiny_attn`` and ``ff_mult``), they must be corrected
together. This command reads each sweep's declared family (the same comparisons, tests and
p-values its report shows), applies Holm's correction over their union, and prints one
table (Markdown); ``--csv PATH`` also writes it (a new file; an existing one is refused).
For a sequential sweep the union uses its comparisons' fixed-design p-values.

Exit status: 0 written, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from analysis import tables
from analysis.analyse import analyse
from analysis.labels import decimals_for, num, pvalue
from analysis.load import AnalysisError, load_sweep
from analysis.report import choose_metric
from analysis.stats import holm


def union_family(names: Sequence[str], tracking_uri: Optional[str] = None, metric: Optional[str] = None,
                 alpha: Optional[float] = None) -> pd.DataFrame:
    """One row per declared comparison of every sweep: sweep, metric, a, b, test, delta,
    delta_lo, delta_hi, p, p_holm (Holm over the union), alpha, resolved."""
    parts: List[pd.DataFrame] = []
    alphas = []
    for name in names:
        data = load_sweep(name, tracking_uri)
        m = choose_metric(data.runs, metric, data.meta.metric)
        an = analyse(data, m)
        alphas.append(an.design.alpha)
        parts.append(an.family.assign(sweep=name, metric=m, family=an.design.label))
    level = alpha if alpha is not None else min(alphas)
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    out["alpha"] = level
    out["resolved"] = out["p_holm"] < level
    return out[["sweep", "metric", "family", "a", "b", "test", "n_a", "n_b", "delta", "delta_lo", "delta_hi", "p",
                "p_holm", "alpha", "resolved", "note"]]


def table(df: pd.DataFrame) -> tables.Table:
    rows = []
    for _, r in df.iterrows():
        d = decimals_for(abs(r["delta_hi"] - r["delta"]) if pd.notna(r["delta_hi"]) else None, r["delta"])
        rows.append([r["sweep"], f"{r['a']} − {r['b']}", r["metric"], tables.delta_ci(r["delta"], r["delta_lo"], r["delta_hi"], d),
                     r["test"] or "—", pvalue(r["p"]), pvalue(r["p_holm"]), "yes" if r["resolved"] else "no"])
    alpha = num(float(df["alpha"].iloc[0]), 3) if len(df) else "—"
    return tables.Table(header=["sweep", "comparison (a − b)", "metric", "Δ [95% CI]", "test", "p", "p (Holm, union)",
                                "resolved?"], rows=rows, align="llllrrrc",
                        caption=f"The declared comparisons of {df['sweep'].nunique()} sweep(s), {len(df)} in all, "
                                f"Holm-corrected together at alpha {alpha}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.family",
                                description="Holm's correction over the declared comparisons of several sweeps.")
    p.add_argument("names", nargs="+", help="sweep names (MLflow experiments)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db in the working directory)")
    p.add_argument("--metric", default=None, help="metric to compare in every sweep (default: each sweep's own)")
    p.add_argument("--alpha", type=float, default=None, help="family-wise alpha (default: the smallest the sweeps declared)")
    p.add_argument("--csv", default=None, help="also write the table to this new CSV file")
    args = p.parse_args(argv)
    try:
        if len(set(args.names)) != len(args.names):
            raise AnalysisError("a sweep is named twice")
        if args.alpha is not None and not 0 < args.alpha < 1:
            raise AnalysisError(f"--alpha {args.alpha} must be in (0, 1)")
        if args.csv and Path(args.csv).exists():
            raise AnalysisError(f"--csv {args.csv} exists; refusing to overwrite it")
        df = union_family(args.names, args.tracking_uri, args.metric, args.alpha)
    except AnalysisError as e:
        print(f"analysis.family: error: {e}", file=sys.stderr)
        return 2
    t = table(df)
    print(f"*{t.caption}*\n\n{t.to_markdown()}")
    if args.csv:
        df.to_csv(args.csv, index=False, float_format="%.10g")
    return 0


if __name__ == "__main__":
    sys.exit(main())

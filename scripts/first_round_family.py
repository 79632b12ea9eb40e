"""The first round's within-factor claims, corrected as one family.

The first round's ablation reports compared every arm with the Transformer, and the
within-factor numbers quoted in results/README.md came from separate exploratory runs, each
corrected as its own family. This recomputes the 11 within-factor comparisons (each arm vs
its factor's default level) from the committed first-round summaries
(``results/first_round/*.csv``: n, mean, std per arm), with Welch's test (the per-seed values
that a paired test needs are not in the summaries) and Holm's correction over all 11 at once:

    python scripts/first_round_family.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parents[1] / "results" / "first_round"
FAMILY = {  # sweep -> (reference arm, the arms compared with it)
    "sgu_split": ("sgu_split=true", ["sgu_split=false"]),
    "init_eps": ("init_eps=0.001", ["init_eps=0.0", "init_eps=1.0", "init_eps=64.0"]),
    "tiny_attn": ("attn_dim=null", ["attn_dim=16", "attn_dim=64"]),
    "survival_prob": ("prob_survival=1.0", ["prob_survival=0.9", "prob_survival=0.7", "prob_survival=0.5"]),
    "ff_mult": ("ff_mult=4", ["ff_mult=2", "ff_mult=6"]),
}


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values."""
    order = p.sort_values().index
    m, running, out = len(p), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return pd.Series(out)[p.index]


def main() -> None:
    rows = []
    for sweep, (ref, arms) in FAMILY.items():
        s = pd.read_csv(HERE / f"{sweep}.csv", index_col="arm")
        r = s.loc[ref]
        for arm in arms:
            a = s.loc[arm]
            t = stats.ttest_ind_from_stats(a["mean"], a["std"], a["n"], r["mean"], r["std"], r["n"], equal_var=False)
            rows.append({"sweep": sweep, "comparison": f"{arm} vs {ref}", "metric": a["metric"],
                         "delta": a["mean"] - r["mean"], "n": f"{int(a['n'])}/{int(r['n'])}", "p": t.pvalue})
    df = pd.DataFrame(rows)
    df["p_holm_11"] = holm(df["p"])
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()

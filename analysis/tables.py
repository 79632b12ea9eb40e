"""Comparison tables: built once as :class:`Table` (strings + bold cells), rendered to
Markdown, LaTeX (booktabs), HTML; the numeric per-arm frame goes to CSV.

Pure functions over the frames of :mod:`analysis.stats` and :mod:`analysis.paper`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from analysis.labels import decimals_for, direction, metric_label, num, pvalue, si


@dataclass
class Table:
    """A rendered-agnostic table: header and rows of plain strings, bold cells, alignment."""

    header: List[str]
    rows: List[List[str]]
    align: str
    """One of ``l``/``r``/``c`` per column."""
    bold: Set[Tuple[int, int]] = field(default_factory=set)
    """(row, column) cells shown bold."""
    caption: str = ""

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown (``|`` escaped, bold as ``**``)."""
        def cell(i: int, j: int, s: str) -> str:
            s = s.replace("|", "\\|").replace("*", "\\*")
            return f"**{s}**" if (i, j) in self.bold and s else s

        sep = {"l": ":---", "r": "---:", "c": ":---:"}
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in self.header) + " |",
                 "|" + "|".join(sep[a] for a in self.align) + "|"]
        for i, row in enumerate(self.rows):
            lines.append("| " + " | ".join(cell(i, j, s) for j, s in enumerate(row)) + " |")
        return "\n".join(lines)

    def to_latex(self, label: str = "", comment: str = "") -> str:
        """A booktabs ``table`` float (needs ``\\usepackage{booktabs}``)."""
        def cell(i: int, j: int, s: str) -> str:
            t = latex_escape(s)
            return f"\\textbf{{{t}}}" if (i, j) in self.bold and s else t

        out = []
        if comment:
            out += [f"% {line}" for line in comment.splitlines()]
        out += ["\\begin{table}[t]", "\\centering", "\\small"]
        if self.caption:
            out.append(f"\\caption{{{latex_escape(self.caption)}}}")
        if label:
            out.append(f"\\label{{{label}}}")
        out += [f"\\begin{{tabular}}{{{''.join(self.align)}}}", "\\toprule",
                " & ".join(latex_escape(h) for h in self.header) + " \\\\", "\\midrule"]
        for i, row in enumerate(self.rows):
            out.append(" & ".join(cell(i, j, s) for j, s in enumerate(row)) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(out)

    def to_html(self, css_class: str = "results") -> str:
        """An HTML ``<table>`` (cells escaped, bold as ``<strong>``)."""
        style = {"l": "left", "r": "right", "c": "center"}

        def cell(i: int, j: int, s: str) -> str:
            t = html.escape(s)
            t = f"<strong>{t}</strong>" if (i, j) in self.bold and s else t
            return f'<td class="{style[self.align[j]]}">{t}</td>'

        head = "".join(f'<th class="{style[a]}">{html.escape(h)}</th>' for h, a in zip(self.header, self.align))
        body = "\n".join("<tr>" + "".join(cell(i, j, s) for j, s in enumerate(row)) + "</tr>"
                         for i, row in enumerate(self.rows))
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="{css_class}">{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "≈": r"$\approx$", "<": r"$<$", ">": r"$>$",
                  "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$", "→": r"$\rightarrow$", "−": "-"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (``_`` -> ``\\_``, ...) and map the few unicode signs we use."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def fmt_value(v: Any) -> str:
    """A factor value as in the sweep file: true/false/null, numbers, strings."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v)


def factor_header(factor: str, factors: Sequence[str]) -> str:
    """Last component of a dotted key unless two factors share it."""
    last = factor.rsplit(".", 1)[-1]
    return last if sum(f.rsplit(".", 1)[-1] == last for f in factors) == 1 else factor


def mean_ci(mean: float, ci: float, n: int, decimals: int) -> str:
    """``1.234 ± 0.012 (n=3)``; one seed: ``1.234 (n=1, no CI)``."""
    if n == 0 or not math.isfinite(mean):
        return "— (n=0)"
    if n < 2 or not math.isfinite(ci):
        return f"{num(mean, decimals)} (n={n}, no CI)"
    return f"{num(mean, decimals)} ± {num(ci, decimals)} (n={n})"


def delta_ci(delta: float, lo: float, hi: float, decimals: int) -> str:
    """``-0.012 [-0.020, -0.004]``; without an interval just the difference."""
    if not math.isfinite(delta):
        return "—"
    sign = "+" if delta > 0 else ""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{sign}{num(delta, decimals)} (no CI)"
    return f"{sign}{num(delta, decimals)} [{num(lo, decimals)}, {num(hi, decimals)}]"


def column_decimals(summary: pd.DataFrame) -> int:
    """One number of decimals for a metric column, from the typical CI width."""
    cis = ((summary["ci_hi"] - summary["ci_lo"]) / 2).replace([np.inf, -np.inf], np.nan).dropna()
    cis = cis[cis > 0]
    return decimals_for(float(cis.median()) if len(cis) else None, float(summary["mean"].abs().median()))


def mean_text(s: pd.Series, decimals: int) -> str:
    """An arm's mean and interval: ``1.234 ± 0.012 (n=3)`` for a t-interval,
    ``0.679 [0.500, 0.893] bootstrap (n=3)`` otherwise; one seed: ``1.234 (n=1, no CI)``."""
    n = int(s["n"])
    if s.get("interval") in (None, "t") or n < 2:
        return mean_ci(s["mean"], s["ci"], n, decimals)
    return f"{num(s['mean'], decimals)} [{num(s['ci_lo'], decimals)}, {num(s['ci_hi'], decimals)}] {s['interval']} (n={n})"


def _lost(s: pd.Series) -> str:
    parts = [f"{int(s['n_failed'])} failed" if s["n_failed"] else "", f"{int(s['n_diverged'])} diverged" if s["n_diverged"] else ""]
    return ", ".join(p for p in parts if p) or "0"


def comparison_table(summary: pd.DataFrame, arm_info: pd.DataFrame, factors: Sequence[str], metric: str,
                     mode: str, diverged: str = "drop") -> Table:
    """The per-arm table: arm, factor values, mean with its interval (n), seeds lost (failed,
    diverged), the solved fraction (when declared), params, FLOPs/token, tokens/s; the best
    arm (``summary["best"]``) bold."""
    d = column_decimals(summary)
    solved = "solved_k" in summary.columns
    header = ["arm"] + [factor_header(f, factors) for f in factors] + [
        f"{metric}: mean, 95% interval (n)", "seeds lost"] + (["solved [95% exact CI]"] if solved else []) + [
        "params", "FLOPs/token", "tokens/s"]
    align = "l" + "c" * len(factors) + "rr" + ("r" if solved else "") + "rrr"
    rows, bold = [], set()
    for i, (arm, s) in enumerate(summary.iterrows()):
        is_base = bool(arm_info.loc[arm, "baseline"])
        name = f"{arm} (baseline)" if is_base else arm
        facs = ["—" if is_base else fmt_value(arm_info.loc[arm, f]) for f in factors]
        extra = []
        if solved:
            extra = [f"{int(s['solved_k'])}/{int(s['solved_n'])} [{num(s['solved_lo'], 2)}, {num(s['solved_hi'], 2)}]"
                     if s["solved_n"] else "—"]
        rows.append([name, *facs, mean_text(s, d), _lost(s), *extra,
                     si(s["params"]), si(s["flops_per_token"]), si(s["tokens_per_s"])])
        if bool(s["best"]):
            bold |= {(i, 0), (i, len(factors) + 1)}
    methods = sorted(set(summary.loc[summary["n"] > 1, "interval"]) - {"t"})
    how = "mean over seeds ± 95% t-interval"
    if methods:
        how += f"; where that interval would leave the metric's range: a {', '.join(methods)} interval"
    lost = "diverged seeds count as the worst value" if diverged == "worst" else "diverged seeds are left out of the mean"
    cap = (f"{metric_label(metric)} per arm ({direction(mode)}): {how}. Seeds lost: failed runs without a finished "
           f"rerun and diverged runs; {lost}.")
    return Table(header=header, rows=rows, align=align, bold=bold, caption=cap)


def family_comparison_table(fam: pd.DataFrame, metric: str, alpha: float, caption: str) -> Optional[Table]:
    """One row per comparison: Δ = a − b [95% CI] (interval method), the test, p, Holm p,
    resolved?, seeds per arm for 80% power (unresolved ones), notes."""
    if fam.empty:
        return None
    fin = fam["delta_hi"].replace([np.inf, -np.inf], np.nan) - fam["delta"]
    d = decimals_for(float(np.nanmedian(np.abs(fin))) if fin.notna().any() else None,
                     float(np.nanmedian(np.abs(fam["delta"]))) if fam["delta"].notna().any() else None)
    solved = "p_solved" in fam.columns
    header = ["comparison (a − b)", f"Δ {metric} [95% CI]", "test (seeds)", "p", "p (Holm)", "resolved?",
              "seeds for 80% power"] + (["solved a vs b (exact p)"] if solved else []) + ["note"]
    rows = []
    for _, r in fam.iterrows():
        ci = delta_ci(r["delta"], r["delta_lo"], r["delta_hi"], d)
        if r["interval"] not in ("t", "none", "exact") and math.isfinite(r["delta"]):
            ci += f" {r['interval']}"
        seeds = f"{r['n_a']} vs {r['n_b']}" if r["test"] != "paired t" else f"{r['n_a']} pairs"
        if r["resolved"]:
            need = "—"
        elif pd.notna(r["seeds_needed"]):
            need = f"{int(r['seeds_needed'])}"
        else:
            need = "> 1000" if pd.notna(r["effect"]) and r["effect"] != 0 else "n/a"
        extra = []
        if solved:
            extra = [f"{r['solved_a']} vs {r['solved_b']} ({pvalue(r['p_solved'])}, {r['solved_test'] or '—'})"]
        rows.append([f"{r['a']} − {r['b']}", ci, f"{r['test'] or '—'} ({seeds})", pvalue(r["p"]), pvalue(r["p_holm"]),
                     ("yes" if r["resolved"] else "no") + ("" if r["decision"].startswith("Holm") else f" ({r['decision']})"),
                     need, *extra, r["note"] or ""])
    return Table(header=header, rows=rows, align="lrlrrlr" + ("l" if solved else "") + "l", caption=caption)


def paper_table(summary: pd.DataFrame, paper: pd.DataFrame, metric: str, mode: str, task: str) -> Optional[Table]:
    """Arms with a paper row: the paper's value (its setting) beside ours, in separate columns."""
    arms = [a for a in summary.index if a in paper.index and pd.notna(paper.loc[a, "paper_value"])]
    if not arms:
        return None
    d = column_decimals(summary)
    header = ["arm", "paper row (table: model, variant)", "paper value (paper's setting)",
              "paper rank", f"ours ({task}, laptop scale): {metric_label(metric)}", "our rank"]
    pvals = pd.Series({a: float(paper.loc[a, "paper_value"]) for a in arms})
    pmode = "max" if paper.loc[arms[0], "paper_metric"] in {"top1", "mnli_m", "sst2"} else "min"
    prank = pvals.rank(ascending=(pmode == "min"), method="min")
    orank = summary.loc[arms, "mean"].rank(ascending=(mode == "min"), method="min")
    rows = []
    for a in arms:
        p = paper.loc[a]
        variant = f"{p['paper_table']}: {p['paper_model']}" + (f", {p['paper_variant']}" if p["paper_variant"] else "")
        mark = "≈" if bool(p["paper_approx"]) else ""
        rows.append([a, variant, f"{mark}{p['paper_value']:g} {p['paper_metric']}", f"{int(prank[a])}",
                     mean_text(summary.loc[a], d),
                     f"{int(orank[a])}"])
    settings = "; ".join(dict.fromkeys(f"{paper.loc[a, 'paper_table']}: {paper.loc[a, 'paper_setting']}" for a in arms))
    cap = (f"The paper's reported numbers next to ours. Paper setting: {settings}. Ours: {task} at laptop scale. "
           "Different settings: only the ordering is comparable. "
           "≈ = approximate (the reference value is not verified against a second source).")
    return Table(header=header, rows=rows, align="llrrrr", caption=cap)


def ordering_table(order: pd.DataFrame, metric: str, mode: str, alpha: float) -> Optional[Table]:
    """Per pair of arms: the paper's ordering, ours (with Δ, CI and the unadjusted p of the
    same test as elsewhere), and whether they agree: only when the paper orders the two (not a
    tie) and our difference is resolved (p < alpha)."""
    if order.empty:
        return None
    d = decimals_for(float(np.nanmedian(np.abs(order["delta_hi"] - order["delta"]))) if order["delta_hi"].notna().any() else None,
                     float(np.nanmedian(np.abs(order[["ours_a", "ours_b"]].to_numpy()))))
    header = ["pair (a vs b)", "paper ordering", "our ordering", f"Δ = a − b [95% CI] ({metric})", "p", "same ordering?"]
    rows = []
    for _, r in order.iterrows():
        ma, mb = ("≈" if r["paper_approx_a"] else ""), ("≈" if r["paper_approx_b"] else "")
        psign = "<" if r["paper_a"] < r["paper_b"] else ">" if r["paper_a"] > r["paper_b"] else "="
        osign = "<" if r["ours_a"] < r["ours_b"] else ">" if r["ours_a"] > r["ours_b"] else "="
        pb = r["paper_better"] if isinstance(r["paper_better"], str) else None
        ob = r["ours_better"] if isinstance(r["ours_better"], str) else None
        pbest = f" → {pb} better" if pb else " → tie (within 1%)"
        obest = f" → {ob} better" if ob else " → tie"
        if pb is None:
            agree = "— (a tie in the paper)"
        elif not r["resolved"]:
            agree = f"— (ours not resolved: p ≥ {alpha:g})"
        else:
            agree = "yes" if bool(r["agree"]) else "no"
        rows.append([f"{r['a']} vs {r['b']}",
                     f"{r['paper_table']}: {ma}{r['paper_a']:g} {psign} {mb}{r['paper_b']:g} {r['paper_metric']}{pbest}",
                     f"{num(r['ours_a'], d)} {osign} {num(r['ours_b'], d)}{obest}",
                     delta_ci(r["delta"], r["delta_lo"], r["delta_hi"], d), f"{pvalue(r['p'])} ({r['test']})", agree])
    cap = (f"Ordering of variants: paper (its metric and setting) vs ours ({metric}, {direction(mode)}). "
           "≈ = approximate paper value. Agreement is claimed only where the paper's values differ by more than "
           f"1% and our difference is resolved (p < {alpha:g}, not adjusted).")
    return Table(header=header, rows=rows, align="lllrrc", caption=cap)


def failures_table(failures: pd.DataFrame, max_rows: int = 50) -> Optional[Table]:
    """FAILED trial runs: arm, seed, failure kind, error, whether a later run finished."""
    if failures.empty:
        return None
    rows = []
    for _, f in failures.head(max_rows).iterrows():
        seed = "—" if pd.isna(f["seed"]) else str(int(f["seed"]))
        err = f["error"] if len(f["error"]) <= 160 else f["error"][:157] + "..."
        rows.append([str(f["arm"]), seed, f["failure"] or "—", err or "—",
                     "yes" if f["resolved"] else "no", str(f["run_id"])[:12]])
    return Table(header=["arm", "seed", "failure", "error", "finished later?", "run"], rows=rows,
                 align="lrllcl", caption="Failed trial runs")


def summary_frame(summary: pd.DataFrame, arm_info: pd.DataFrame, paper: pd.DataFrame, factors: Sequence[str],
                  metric: str, mode: str) -> pd.DataFrame:
    """The numeric per-arm table written to ``summary.csv`` (full precision, paper columns
    prefixed ``paper_``)."""
    out = summary.copy()
    out.insert(0, "baseline", arm_info["baseline"].reindex(out.index))
    for k, f in enumerate(factors):
        out.insert(1 + k, f, [None if arm_info.loc[a, "baseline"] else arm_info.loc[a, f] for a in out.index])
    out.insert(1 + len(factors), "metric", metric)
    out.insert(2 + len(factors), "mode", mode)
    out = out.join(paper.drop(columns=[c for c in paper.columns if c in out.columns], errors="ignore"))
    out.index.name = "arm"
    return out

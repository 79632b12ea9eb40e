"""The paper's reported numbers next to ours: which paper row an arm corresponds to.

The reference numbers (``analysis/data/gmlp_paper.csv``, with the task of each row) come
from "Pay Attention to MLPs" (Liu et al. 2021), trained on C4 / ImageNet at scale. Our sweeps run the same ablations at laptop scale, so only the *ordering* of variants
can carry over. Rows whose ``verified`` is not ``yes`` are approximate (secondary
transcriptions) and are marked wherever shown.

The mapping from a sweep's arms to paper rows is the explicit table :data:`FACTOR_ROWS`:
a grid factor value -> one row. A baseline arm maps through its own config (a Transformer
baseline -> the BERT_base row of the same paper table). Factors without a row get no
paper number; :data:`FACTOR_NOTES` explains the ones the paper only discusses.

Each paper row says which task it is from (:attr:`PaperRow.task`); an arm maps to a row only
when the sweep runs the same task (:data:`OUR_TASKS`): the paper's masked-LM perplexities say
nothing about recall accuracy on MQAR or about causal byte LM. Our ordering "agrees with the
paper" only when the paper's two values differ by more than :data:`PAPER_TIE` (relative) and
our difference is resolved (its test's p < alpha).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.compare import compare
from analysis.stats import better

SET = "<set>"
"""Matches any non-null factor value (e.g. ``model.attn_dim`` set = aMLP)."""


@dataclass(frozen=True)
class PaperRow:
    """A row of the reference file: (table, model, variant, metric)."""

    table: str
    model: str
    variant: str
    metric: str = "perplexity"
    task: str = "mlm"
    """The paper's task, in our task names: ``mlm`` (masked LM on C4)."""


T3_SPLIT = PaperRow("T3", "gMLP (L36 d512)", "split multiplicative s(Z)=Z1*f(Z2)")
T3_UNSPLIT = PaperRow("T3", "gMLP (L36 d512)", "multiplicative s(Z)=Z*f(Z) (unsplit)")
T3_BERT = PaperRow("T3", "BERT_base", "absolute positions")
T6_GMLP = PaperRow("T6", "gMLP_base", "L48 d512 dffn3072")
T6_AMLP = PaperRow("T6", "aMLP_base", "L36 d512 dffn3072 tiny attention dim 64")
T6_BERT = PaperRow("T6", "BERT_base", "")

FACTOR_ROWS = (
    # (grid factor, value, paper row)
    ("model.sgu_split", True, T3_SPLIT),
    ("model.sgu_split", False, T3_UNSPLIT),
    ("model.attn_dim", None, T6_GMLP),
    ("model.attn_dim", SET, T6_AMLP),
)
"""Grid factor value -> the paper row of the same variant."""

BASELINE_ROWS = {"T3": T3_BERT, "T6": T6_BERT}

OUR_TASKS = {"mlm": "mlm"}
"""Our task name -> the paper task it matches. ``charlm`` (causal byte LM), ``mqar`` (recall)
and ``digits`` have no matching paper row."""
PAPER_TIE = 0.01
"""Paper values closer than this (relative to the smaller) are a tie: no ordering to agree with."""
"""The attention baseline's row in each paper table (a ``model.arch=transformer`` arm)."""

FACTOR_NOTES = {
    "model.prob_survival": (
        "The paper's Table 1 (vision model specifications) sets the survival probability together "
        "with the model size (gMLP-Ti 1.00, gMLP-S 0.95, gMLP-B 0.80; their ImageNet top-1 is in "
        "Table 2), so it reports no ordering for the survival probability alone; no paper number "
        "is shown for these arms."),
    "model.init_eps": "The paper initialises the spatial weights near zero and the biases to one; it reports no ablation of the scale.",
    "model.ff_mult": "The paper uses d_ffn = 6 d and reports no ablation of the ratio.",
    "model.sgu_act": "The paper reports no ablation of the gate activation.",
}
"""Factors the paper discusses without a comparable number."""

HIGHER_IS_BETTER = {"top1", "mnli_m", "sst2"}


def load_reference(path: Optional[str] = None) -> pd.DataFrame:
    """The reference table (package data unless ``path``); adds ``approx`` (verified != yes)."""
    if path is None:
        text = resources.files("analysis").joinpath("data/gmlp_paper.csv").read_text()
        ref = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    else:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    ref["value"] = pd.to_numeric(ref["value"], errors="coerce")
    ref["approx"] = ref["verified"].str.strip().str.lower() != "yes"
    return ref


def _lookup(ref: pd.DataFrame, row: PaperRow) -> Optional[pd.Series]:
    hit = ref[(ref["table"] == row.table) & (ref["model"] == row.model)
              & (ref["variant"] == row.variant) & (ref["metric"] == row.metric)]
    return None if hit.empty else hit.iloc[0]


def _match(value: Any, want: Any) -> bool:
    if want is SET:
        return value is not None and not (isinstance(value, float) and np.isnan(value))
    if want is None:
        return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
    return type(value) is type(want) and value == want


def mapped_factor(factors: Sequence[str]) -> Optional[str]:
    """The first grid factor with paper rows (it decides which paper table a sweep maps to)."""
    keyed = {f for f, _, _ in FACTOR_ROWS}
    return next((f for f in factors if f in keyed), None)


def arm_rows(runs: pd.DataFrame, arms: Sequence[str], factors: Sequence[str], task: Optional[str]) -> Dict[str, PaperRow]:
    """Arm -> paper row, for the arms that have one (none unless ``task``, our task name,
    matches the paper row's task).

    Grid arms map by their value of the sweep's mapped factor; a baseline arm maps by its
    config: ``model.arch=transformer`` -> BERT_base of the same table, a gMLP baseline by its
    own value of the mapped factor.
    """
    factor = mapped_factor(factors)
    if factor is None:
        return {}
    table = next(r.table for f, _, r in FACTOR_ROWS if f == factor)
    if OUR_TASKS.get(task or "") != BASELINE_ROWS[table].task:
        return {}
    first = runs.drop_duplicates("arm").set_index("arm")
    out: Dict[str, PaperRow] = {}
    for arm in arms:
        if arm not in first.index:
            continue
        rec = first.loc[arm]
        if bool(rec["baseline"]):
            if rec.get("model.arch") == "transformer":
                out[arm] = BASELINE_ROWS[table]
                continue
            value = rec.get(factor)
            value = None if value is pd.NA else value
            value = bool(value) if isinstance(value, (bool, np.bool_)) else value
        else:
            cell = rec["factors"] if isinstance(rec["factors"], dict) else {}
            value = cell.get(factor)
        for f, want, row in FACTOR_ROWS:
            if f == factor and _match(value, want):
                out[arm] = row
                break
    return out


def paper_columns(ref: pd.DataFrame, rows: Dict[str, PaperRow], arms: Sequence[str]) -> pd.DataFrame:
    """Per arm: paper_table, paper_model, paper_variant, paper_metric, paper_value, paper_task,
    paper_verified, paper_approx, paper_setting (empty where the arm has no paper row)."""
    recs = []
    for arm in arms:
        row = rows.get(arm)
        hit = _lookup(ref, row) if row else None
        if hit is None:
            recs.append({"arm": arm})
            continue
        recs.append({"arm": arm, "paper_table": row.table, "paper_model": row.model,
                     "paper_variant": row.variant, "paper_metric": row.metric,
                     "paper_value": float(hit["value"]), "paper_task": hit["task"], "paper_verified": hit["verified"],
                     "paper_approx": bool(hit["approx"]), "paper_setting": hit["setting"]})
    cols = ["arm", "paper_table", "paper_model", "paper_variant", "paper_metric", "paper_value", "paper_task",
            "paper_verified", "paper_approx", "paper_setting"]
    return pd.DataFrame(recs).reindex(columns=cols).set_index("arm")


def paper_tie(va: float, vb: float) -> bool:
    """Whether two paper values are a tie (closer than :data:`PAPER_TIE`, relative)."""
    return abs(va - vb) <= PAPER_TIE * min(abs(va), abs(vb))


def orderings(runs: pd.DataFrame, values: pd.DataFrame, summary: pd.DataFrame, paper: pd.DataFrame, mode: str,
              factors: Sequence[str], alpha: float, bounds=(None, None)) -> pd.DataFrame:
    """Pairs of arms with different paper rows: the paper's ordering and ours.

    Two grid arms are paired only when all their other factor values are equal. Columns:
    a, b, paper_table, paper_a, paper_b, paper_metric, paper_approx_a/b (value not verified),
    paper_better (None for a tie), ours_a, ours_b, ours_better, delta (a - b), delta_lo,
    delta_hi, test, p (unadjusted), resolved (p < alpha), agree (None unless the paper has an
    ordering and ours is resolved).
    """
    mapped = [a for a in summary.index if pd.notna(paper.loc[a, "paper_value"])] if len(paper) else []
    first = runs.drop_duplicates("arm").set_index("arm")
    factor = mapped_factor(factors)
    rows: List[Dict[str, Any]] = []
    for a, b in combinations(mapped, 2):
        pa, pb = paper.loc[a], paper.loc[b]
        if (pa["paper_table"], pa["paper_variant"], pa["paper_model"]) == (pb["paper_table"], pb["paper_variant"], pb["paper_model"]):
            continue
        if pa["paper_table"] != pb["paper_table"]:
            continue
        ca, cb = first.loc[a, "factors"], first.loc[b, "factors"]
        if not first.loc[a, "baseline"] and not first.loc[b, "baseline"]:
            if any(ca.get(f) != cb.get(f) for f in factors if f != factor):
                continue
        pmode = "max" if pa["paper_metric"] in HIGHER_IS_BETTER else "min"
        va, vb = float(pa["paper_value"]), float(pb["paper_value"])
        paper_better = None if paper_tie(va, vb) else a if better(va, vb, pmode) else b if better(vb, va, pmode) else None
        ma, mb = float(summary.loc[a, "mean"]), float(summary.loc[b, "mean"])
        ours_better = a if better(ma, mb, mode) else b if better(mb, ma, mode) else None
        w = compare(values, a, b, bounds)
        resolved = bool(w["p"] < alpha) and w["n_a"] > 1 and w["n_b"] > 1
        agree = None if paper_better is None or ours_better is None or not resolved else paper_better == ours_better
        rows.append({"a": a, "b": b, "paper_a": va, "paper_b": vb, "paper_metric": pa["paper_metric"],
                     "paper_table": pa["paper_table"],
                     "paper_approx_a": bool(pa["paper_approx"]), "paper_approx_b": bool(pb["paper_approx"]),
                     "paper_better": paper_better, "ours_a": ma, "ours_b": mb, "ours_better": ours_better,
                     "delta": w["delta"], "delta_lo": w["delta_lo"], "delta_hi": w["delta_hi"], "test": w["test"],
                     "p": w["p"], "resolved": resolved, "agree": agree})
    cols = ["a", "b", "paper_table", "paper_a", "paper_b", "paper_metric", "paper_approx_a", "paper_approx_b", "paper_better",
            "ours_a", "ours_b", "ours_better", "delta", "delta_lo", "delta_hi", "test", "p", "resolved", "agree"]
    out = pd.DataFrame(rows, columns=cols)
    for col in ("paper_better", "ours_better", "agree"):  # None stays None (not NaN): "no ordering"
        out[col] = pd.Series([r[col] for r in rows], index=out.index, dtype=object)
    return out


def notes_for(factors: Sequence[str]) -> List[str]:
    """Explanations for grid factors the paper has no comparable number for."""
    return [f"`{f}`: {FACTOR_NOTES[f]}" for f in factors if f in FACTOR_NOTES]

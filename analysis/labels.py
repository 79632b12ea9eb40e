"""Human-readable names for metrics (with units) and number formatting shared by tables and plots."""

from __future__ import annotations

import math
from typing import Optional

SPLITS = ("train/", "val/", "test/")
"""Prefixes of per-split metrics: val/* selects, test/* reports; the unit is the same."""
SPLIT_UNITS = {
    "loss": "cross-entropy, nats",
    "bpb": "bits per byte",
    "ppl": "perplexity",
    "acc": "accuracy",
}
METRIC_UNITS = {
    "train/lr": "learning rate",
    "perf/tokens_per_s": "tokens/s",
    "perf/train_time_s": "s",
    "model/params": "parameters",
    "model/flops_per_token": "FLOPs/token",
}


def metric_range(key: str):
    """``(low, high)`` bounds of a metric's values, None where it is unbounded or unknown.
    A t-interval over a few seeds can reach past them when seeds disagree (some solve a
    task, some do not); plots clip their bands to them."""
    if key.endswith(("/acc", "_acc")):
        return (0.0, 1.0)
    if key.endswith(("/loss", "/bpb")):
        return (0.0, None)
    if key.endswith("/ppl"):
        return (1.0, None)
    return (None, None)


def metric_unit(key: str) -> Optional[str]:
    """The unit of a metric key (``test/bpb`` and ``val/bpb``: bits per byte); None if unknown."""
    if key in METRIC_UNITS:
        return METRIC_UNITS[key]
    if key.startswith(SPLITS):
        return SPLIT_UNITS.get(key.split("/", 1)[1])
    return None


def metric_mode(key: str) -> Optional[str]:
    """Whether lower (``min``) or higher (``max``) is better for a metric key, where the name
    says so: accuracy and throughput up; losses, perplexity, bits per byte and times down."""
    if key.endswith(("/acc", "_acc", "tokens_per_s")):
        return "max"
    if "loss" in key or key.endswith(("/bpb", "/ppl", "_time_s", "/time_s")) or "time" in key.rsplit("/", 1)[-1]:
        return "min"
    return None


def metric_label(key: str) -> str:
    """``val/bpb`` -> ``val/bpb (bits per byte)``; unknown keys unchanged."""
    unit = metric_unit(key)
    return f"{key} ({unit})" if unit else key


def direction(mode: str) -> str:
    """``min`` -> ``lower is better``."""
    return "lower is better" if mode == "min" else "higher is better"


def si(x: Optional[float], digits: int = 3) -> str:
    """Compact number: 1234567 -> 1.23M, 0.5 -> 0.5; NaN/None -> an em dash."""
    if x is None or not math.isfinite(x):
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def decimals_for(ci: Optional[float], value: Optional[float] = None) -> int:
    """Decimals that show a CI half-width to two significant digits (2..6)."""
    if ci is not None and math.isfinite(ci) and ci > 0:
        return int(min(6, max(2, 1 - math.floor(math.log10(ci)))))
    if value is not None and math.isfinite(value) and value != 0:
        return int(min(6, max(2, 3 - math.floor(math.log10(abs(value))))))
    return 3


def num(x: Optional[float], decimals: int) -> str:
    """Fixed decimals; NaN/None -> an em dash."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.{decimals}f}"


def pvalue(p: Optional[float]) -> str:
    """p-value for a table: ``0.012``, ``<0.001``; NaN -> an em dash."""
    if p is None or not math.isfinite(p):
        return "—"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"

"""Human-readable names for metrics (with units) and number formatting shared by tables and plots."""

from __future__ import annotations

import math
from typing import Optional

METRIC_UNITS = {
    "val/loss": "cross-entropy, nats",
    "train/loss": "cross-entropy, nats",
    "val/bpb": "bits per byte",
    "val/ppl": "perplexity",
    "val/acc": "accuracy",
    "perf/tokens_per_s": "tokens/s",
    "perf/train_time_s": "s",
    "train/lr": "learning rate",
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


def metric_label(key: str) -> str:
    """``val/bpb`` -> ``val/bpb (bits per byte)``; unknown keys unchanged."""
    unit = METRIC_UNITS.get(key)
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

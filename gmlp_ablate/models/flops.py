"""Analytic model size without torch: parameters, forward FLOPs per token, and sizing a
config to a target (matched baselines).

Importing this module imports neither torch nor any model: a sweep loader can size arms
before anything is built (``gmlp_ablate.models`` imports its torch modules lazily).

FLOPs convention (as ``torch.utils.flop_counter.FlopCounterMode``): a multiply-add is 2 FLOPs
and only matrix products count (linear layers, the SGU's n x n spatial mix, attention QK^T
and AV, the output head); norms, activations, softmax, rotary/relative position terms and
gathers are free. Counts are at the full ``seq_len`` n: causal masking does not reduce them
(the masked products are computed).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Dict, Literal, NamedTuple, Tuple

from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.schema import ConfigError, check

if TYPE_CHECKING:  # only for annotations: this module never imports torch at run time
    from torch import Tensor, nn


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def _is_causal(shape: TaskShape) -> bool:
    """Causal masking applies to token tasks only (as the models build it)."""
    return shape.causal and shape.kind == "tokens"


def _io_params(cfg: ModelConfig, shape: TaskShape) -> int:
    """Input embedding (token table or patch projection), final LayerNorm and head."""
    d = cfg.dim
    if shape.kind == "tokens":
        embed, out = shape.vocab_size * d, shape.vocab_size
    else:
        embed, out = (shape.channels * shape.patch_size**2 + 1) * d, shape.num_classes
    return embed + 2 * d + (d + 1) * out


def _io_flops(cfg: ModelConfig, shape: TaskShape) -> float:
    """Input embedding + output head, per token (per patch for images)."""
    d = cfg.dim
    if shape.kind == "tokens":
        return 2.0 * d * shape.vocab_size  # the embedding is a gather: free
    patch_in = shape.channels * shape.patch_size**2
    return 2.0 * patch_in * d + 2.0 * d * shape.num_classes / shape.seq_len


def attention_flops(n: int, dim_in: int, attn_dim: int, dim_out: int) -> float:
    """Self-attention per token: qkv projection, QK^T, AV, output projection."""
    return 2.0 * dim_in * 3 * attn_dim + 2.0 * n * attn_dim * 2 + 2.0 * attn_dim * dim_out


# --------------------------------------------------------------------------------------
# gMLP / aMLP
# --------------------------------------------------------------------------------------


def _gate_dim(cfg: ModelConfig) -> int:
    d_ff = cfg.dim * cfg.ff_mult
    return d_ff // 2 if cfg.sgu_split else d_ff


def gmlp_param_count(cfg: ModelConfig, shape: TaskShape) -> int:
    """gMLP / aMLP: per block LN, proj_in, SGU (LN, (heads, n, n) weight, (heads, n) bias),
    tiny attention (qkv without bias, proj), proj_out."""
    n, d, d_ff, g = shape.seq_len, cfg.dim, cfg.dim * cfg.ff_mult, _gate_dim(cfg)
    block = 2 * d + (d + 1) * d_ff + 2 * g + cfg.heads * (n * n + n) + (g + 1) * d
    if cfg.attn_dim is not None:
        block += d * 3 * cfg.attn_dim + (cfg.attn_dim + 1) * g
    return cfg.depth * block + _io_params(cfg, shape)


def gmlp_flops_per_token(cfg: ModelConfig, shape: TaskShape) -> float:
    """gMLP / aMLP: per block proj_in, spatial mix, proj_out (+ tiny attention)."""
    n, d, g = shape.seq_len, cfg.dim, _gate_dim(cfg)
    block = 2.0 * d * cfg.dim * cfg.ff_mult + 2.0 * n * g + 2.0 * g * d
    if cfg.attn_dim is not None:
        block += attention_flops(n, d, cfg.attn_dim, g)
    return cfg.depth * block + _io_flops(cfg, shape)


# --------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------


def transformer_param_count(cfg: ModelConfig, shape: TaskShape) -> int:
    """Pre-LN Transformer: per block two LNs, qkv and output projections (with biases), the
    GELU FFN, and (``pos=relative``) a bias per head and offset; learned positions once."""
    n, d, d_ff = shape.seq_len, cfg.dim, cfg.dim * cfg.ff_mult
    block = 4 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * d_ff + (d_ff + 1) * d
    if cfg.pos == "relative":
        block += cfg.heads * (n if _is_causal(shape) else 2 * n - 1)
    pos = n * d if cfg.pos == "learned" else 0
    return cfg.depth * block + pos + _io_params(cfg, shape)


def transformer_flops_per_token(cfg: ModelConfig, shape: TaskShape) -> float:
    """Pre-LN Transformer: per block attention (width d) and the GELU FFN."""
    n, d = shape.seq_len, cfg.dim
    block = attention_flops(n, d, d, d) + 2.0 * 2 * d * d * cfg.ff_mult
    return cfg.depth * block + _io_flops(cfg, shape)


# --------------------------------------------------------------------------------------
# Per architecture
# --------------------------------------------------------------------------------------


class ArchCounts(NamedTuple):
    """An architecture's analytic counters."""

    params: Callable[[ModelConfig, TaskShape], int]
    flops_per_token: Callable[[ModelConfig, TaskShape], float]


COUNTS: Dict[str, ArchCounts] = {
    "gmlp": ArchCounts(gmlp_param_count, gmlp_flops_per_token),
    "transformer": ArchCounts(transformer_param_count, transformer_flops_per_token),
}
"""Architecture name (``ModelConfig.arch``) -> its counters."""


def param_count(cfg: ModelConfig, shape: TaskShape) -> int:
    """Trainable parameters of the model ``cfg`` builds for ``shape`` (equal to
    ``sum(p.numel() for p in build_model(cfg, shape).parameters())``)."""
    return COUNTS[cfg.arch].params(cfg, shape)


def flops_per_token(cfg: ModelConfig, shape: TaskShape) -> float:
    """Forward FLOPs per token (patch) at the full ``seq_len`` of the model ``cfg`` builds."""
    return COUNTS[cfg.arch].flops_per_token(cfg, shape)


# --------------------------------------------------------------------------------------
# Sizing to a target
# --------------------------------------------------------------------------------------

SizeBy = Literal["params", "flops"]
SizeKnob = Literal["depth", "dim", "ff_mult"]


def _knob_range(name: str) -> range:
    """The integer values ``ModelConfig.<name>`` accepts (its declared ``ge`` .. ``max``)."""
    meta = next(f.metadata for f in dataclasses.fields(ModelConfig) if f.name == name)
    return range(int(meta.get("ge", 1)), int(meta["max"]) + 1)


def match_size(cfg: ModelConfig, shape: TaskShape, target: float, by: SizeBy = "params",
               vary: SizeKnob = "depth") -> Tuple[ModelConfig, float]:
    """The copy of ``cfg`` whose ``vary`` (``depth``, ``dim`` or ``ff_mult``) brings its
    ``by`` count (``params`` or ``flops`` per token) closest to ``target``, and that count.

    Only values for which the config is valid are tried (e.g. ``dim`` stays divisible by
    ``heads``, the gate's channels by the SGU's heads, the rotary head width even); every
    count grows with each of these knobs, so the scan stops at the first value at or above
    the target. Ties go to the smaller value. Raises ``ConfigError`` (key ``vary`` or ``by``)
    for an unknown knob or count, or when no value gives a valid config.
    """
    counts = {"params": param_count, "flops": flops_per_token}
    if by not in counts:
        raise ConfigError("by", f"{by!r} is not one of params, flops")
    if vary not in ("depth", "dim", "ff_mult"):
        raise ConfigError("vary", f"{vary!r} is not one of depth, dim, ff_mult")
    count = counts[by]
    best: Tuple[ModelConfig, float] | None = None
    for value in _knob_range(vary):
        candidate = dataclasses.replace(cfg, **{vary: value})
        try:
            check(candidate)
        except ConfigError:
            continue
        achieved = float(count(candidate, shape))
        if best is None or abs(achieved - target) < abs(best[1] - target):
            best = (candidate, achieved)
        if achieved >= target:
            break
    if best is None:
        raise ConfigError(vary, f"no value of {vary} gives a valid config")
    return best


# --------------------------------------------------------------------------------------
# Measurement (imports torch when called)
# --------------------------------------------------------------------------------------


def measured_flops_per_token(model: "nn.Module", x: "Tensor") -> float:
    """FLOPs of one forward pass of ``model(x)`` counted by ``FlopCounterMode``, divided by
    the number of tokens (patches) in ``x``.

    SDPA is run on its math backend here: the fused CPU kernel is not counted by
    ``FlopCounterMode``, the math one decomposes into counted matmuls (the same FLOPs).
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # tokens: (B, N) ids; images: (B, C, H, W) with model.shape.seq_len patches each
    tokens = x.numel() if x.ndim == 2 else x.shape[0] * model.shape.seq_len
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / tokens

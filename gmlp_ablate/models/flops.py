"""Forward FLOPs per token: analytic counts, and a measurement to check them against.

Convention (as ``torch.utils.flop_counter.FlopCounterMode``): a multiply-add is 2 FLOPs and
only matrix products count (linear layers, the SGU's n x n spatial mix, attention QK^T and
AV, the output head); norms, activations, softmax and gathers are free. Counts are at the
full ``seq_len`` n: causal masking does not reduce them (the masked products are computed).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmlp_ablate.config import ModelConfig
from gmlp_ablate.tasks.base import TaskShape


def _embed_and_head(cfg: ModelConfig, shape: TaskShape) -> float:
    """Input embedding + output head, per token (per patch for images)."""
    d = cfg.dim
    if shape.kind == "tokens":
        return 2.0 * d * shape.vocab_size  # the embedding is a gather: free
    patch_in = shape.channels * shape.patch_size**2
    return 2.0 * patch_in * d + 2.0 * d * shape.num_classes / shape.seq_len


def attention_flops(n: int, dim_in: int, attn_dim: int, dim_out: int) -> float:
    """Self-attention per token: qkv projection, QK^T, AV, output projection."""
    return 2.0 * dim_in * 3 * attn_dim + 2.0 * n * attn_dim * 2 + 2.0 * attn_dim * dim_out


def gmlp_flops_per_token(cfg: ModelConfig, shape: TaskShape) -> float:
    """gMLP / aMLP: per block proj_in, spatial mix, proj_out (+ tiny attention)."""
    n, d = shape.seq_len, cfg.dim
    d_ff = d * cfg.ff_mult
    gate = d_ff // 2 if cfg.sgu_split else d_ff
    block = 2.0 * d * d_ff + 2.0 * n * gate + 2.0 * gate * d
    if cfg.attn_dim is not None:
        block += attention_flops(n, d, cfg.attn_dim, gate)
    return cfg.depth * block + _embed_and_head(cfg, shape)


def transformer_flops_per_token(cfg: ModelConfig, shape: TaskShape) -> float:
    """Pre-LN Transformer: per block attention (width d) and the GELU FFN."""
    n, d = shape.seq_len, cfg.dim
    d_ff = d * cfg.ff_mult
    block = attention_flops(n, d, d, d) + 2.0 * 2 * d * d_ff
    return cfg.depth * block + _embed_and_head(cfg, shape)


def measured_flops_per_token(model: nn.Module, x: Tensor) -> float:
    """FLOPs of one forward pass of ``model(x)`` counted by ``FlopCounterMode``, divided by
    the number of tokens (patches) in ``x``.

    SDPA is run on its math backend here: the fused CPU kernel is not counted by
    ``FlopCounterMode``, the math one decomposes into counted matmuls (the same FLOPs).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # tokens: (B, N) ids; images: (B, C, H, W) with model.shape.seq_len patches each
    tokens = x.numel() if x.ndim == 2 else x.shape[0] * model.shape.seq_len
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / tokens

"""gMLP and aMLP ("Pay Attention to MLPs", Liu et al. 2021) for token and image tasks.

Hidden states are sequence-first, (N, B, D), inside the model (see ``layers``); inputs and
outputs are batch-first like every model of the zoo.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.models.layers import (
    LayerDropBlocks,
    SpatialGatingUnit,
    TinyAttention,
    ZooModel,
    make_drop_path,
    make_dropout,
)
from gmlp_ablate.models.registry import register_arch


class GMLPBlock(nn.Module):
    """gMLP block, eq. (1) of Liu et al. 2021: x + proj_out(s(GELU(proj_in(LN(x))))), with
    aMLP's tiny attention on LN(x) added to the gate when ``attn_dim`` is set."""

    def __init__(
        self,
        *,
        dim: int,
        dim_ff: int,
        seq_len: int,
        split: bool = True,
        heads: int = 1,
        causal: bool = False,
        act: str = "identity",
        init_eps: float = 1e-3,
        attn_dim: Optional[int] = None,
        attn_heads: int = 1,
        prob_survival: float = 1.0,
        dropout: float = 0.0,
    ):
        """
        Args:
            dim: model width d.
            dim_ff: width of proj_in's output (d * ff_mult).
            seq_len: maximum sequence length n (size of the SGU's spatial weight).
            split, heads, causal, act, init_eps: the ``SpatialGatingUnit``'s arguments.
            attn_dim: tiny attention width (aMLP); None = no attention.
            attn_heads: heads of the tiny attention.
            prob_survival: survival probability of the per-sample DropPath on the residual
                branch (1 = none).
            dropout: dropout rate on proj_out's output, before the residual add.
        """
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, dim_ff)
        self.sgu = SpatialGatingUnit(
            dim=dim_ff, seq_len=seq_len, split=split, heads=heads, causal=causal, act=act, init_eps=init_eps
        )
        gate_dim = self.sgu.gate_dim
        self.attn = (
            TinyAttention(
                dim_in=dim, dim_out=gate_dim, attn_dim=attn_dim, seq_len=seq_len, heads=attn_heads, causal=causal
            )
            if attn_dim is not None
            else None
        )
        self.proj_out = nn.Linear(gate_dim, dim)
        self.dropout = make_dropout(dropout)
        self.drop_path = make_drop_path(prob_survival, batch_dim=1)

    @classmethod
    def from_config(cls, cfg: ModelConfig, shape: TaskShape) -> "GMLPBlock":
        """The block ``cfg`` asks for, for a task of ``shape``."""
        return cls(
            dim=cfg.dim,
            dim_ff=cfg.dim * cfg.ff_mult,
            seq_len=shape.seq_len,
            split=cfg.sgu_split,
            heads=cfg.heads,
            causal=shape.causal and shape.kind == "tokens",
            act=cfg.sgu_act,
            init_eps=cfg.init_eps,
            attn_dim=cfg.attn_dim,
            attn_heads=cfg.attn_heads,
            prob_survival=cfg.sample_survival,
            dropout=cfg.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)  # (N, B, D)
        gate_res = self.attn(h) if self.attn is not None else None  # (N, B, C)
        if self.sgu.split:
            # proj_in as two GEMMs on its weight's halves: Z1, Z2 come out contiguous
            c, w, b = self.sgu.gate_dim, self.proj_in.weight, self.proj_in.bias
            res = F.gelu(F.linear(h, w[:c], b[:c]))  # (N, B, C) = Z1
            gate = F.gelu(F.linear(h, w[c:], b[c:]))  # (N, B, C) = Z2
            z = self.sgu.gating(res, gate, gate_res)  # (N, B, C)
        else:
            z = F.gelu(self.proj_in(h))  # (N, B, F)
            z = self.sgu.gating(z, z, gate_res)  # (N, B, F)
        return x + self.drop_path(self.dropout(self.proj_out(z)))  # (N, B, D)


@register_arch("gmlp")
class GMLP(ZooModel):
    """gMLP / aMLP model: token embedding (no positions: the SGU is position-aware) or
    patch embedding, ``depth`` gMLP blocks, final LayerNorm, linear head."""

    def __init__(self, cfg: ModelConfig, shape: TaskShape):
        """
        Args:
            cfg: the model knobs (``arch`` must be ``gmlp``).
            shape: the task's input/output shape; ``shape.causal`` makes the model causal.
        """
        super().__init__()
        out_dim = self._build_io(cfg, shape)
        self.blocks = LayerDropBlocks(
            (GMLPBlock.from_config(cfg, shape) for _ in range(cfg.depth)), prob_survival=cfg.layer_survival
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)
        self.init_weights()

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (n, B, C * p * p), patches row-major, features (c, p1, p2)."""
        p = self.shape.patch_size
        return rearrange(x, "b c (h p1) (w p2) -> (h w) b (c p1 p2)", p1=p, p2=p)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, N) -> logits (B, N, vocab); images (B, C, H, W) -> logits (B, classes)."""
        if self.shape.kind == "tokens":
            self._check_len(x.shape[1])
            h = self.tok_emb(x.t())  # (N, B, D)
        else:
            h = self.patch_embed(self.patchify(x))  # (n, B, D)
        h = self.blocks(h)
        if self.shape.kind == "tokens":
            return self.head(self.ln_f(h.transpose(0, 1)))  # (B, N, V)
        return self.head(self.ln_f(h).mean(dim=0))  # (B, classes)

"""gMLP and aMLP ("Pay Attention to MLPs", Liu et al. 2021) for token and image tasks.

Hidden states are sequence-first, (N, B, D), inside the model (see ``layers``); inputs and
outputs are batch-first like every model of the zoo.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from gmlp_ablate.config import ModelConfig
from gmlp_ablate.models.flops import gmlp_flops_per_token
from gmlp_ablate.models.layers import (
    SpatialGatingUnit,
    TinyAttention,
    ZooModel,
    make_drop_path,
)
from gmlp_ablate.tasks.base import TaskShape


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
        drop_mode: str = "sample",
    ):
        """
        Args:
            dim: model width d.
            dim_ff: width of proj_in's output (d * ff_mult).
            seq_len: maximum sequence length n (size of the SGU's spatial weight).
            split, heads, causal, act, init_eps: the ``SpatialGatingUnit``'s arguments.
            attn_dim: tiny attention width (aMLP); None = no attention.
            attn_heads: heads of the tiny attention.
            prob_survival: stochastic depth survival probability of the residual branch.
            drop_mode: ``sample`` puts a per-sample DropPath on the branch; ``layer`` is
                handled by the model (whole blocks skipped), so the block has none.
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
        self.drop_path = make_drop_path(prob_survival, drop_mode, batch_dim=1)

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
        return x + self.drop_path(self.proj_out(z))  # (N, B, D)


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
        causal = shape.causal and shape.kind == "tokens"
        self.blocks = nn.ModuleList(
            GMLPBlock(
                dim=cfg.dim,
                dim_ff=cfg.dim * cfg.ff_mult,
                seq_len=shape.seq_len,
                split=cfg.sgu_split,
                heads=cfg.heads,
                causal=causal,
                act=cfg.sgu_act,
                init_eps=cfg.init_eps,
                attn_dim=cfg.attn_dim,
                attn_heads=cfg.attn_heads,
                prob_survival=cfg.prob_survival,
                drop_mode=cfg.drop_mode,
            )
            for _ in range(cfg.depth)
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)
        self.init_weights()

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (n, B, C * p * p), patches row-major, features (c, p1, p2)."""
        b, c, hh, ww = x.shape
        p = self.shape.patch_size
        x = x.view(b, c, hh // p, p, ww // p, p).permute(2, 4, 0, 1, 3, 5)  # (h, w, B, C, p, p)
        return x.reshape((hh // p) * (ww // p), b, c * p * p)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, N) -> logits (B, N, vocab); images (B, C, H, W) -> logits (B, classes)."""
        if self.shape.kind == "tokens":
            self._check_len(x.shape[1])
            h = self.tok_emb(x.t())  # (N, B, D)
        else:
            h = self.patch_embed(self.patchify(x))  # (n, B, D)
        h = self._run_blocks(h)
        if self.shape.kind == "tokens":
            return self.head(self.ln_f(h.transpose(0, 1)))  # (B, N, V)
        return self.head(self.ln_f(h).mean(dim=0))  # (B, classes)

    def flops_per_token(self) -> float:
        """Analytic forward FLOPs per token (patch) at full seq_len (see ``flops``)."""
        return gmlp_flops_per_token(self.cfg, self.shape)

"""The attention baseline: a pre-LN Transformer (GPT-2 / ViT style) with learned absolute
positions, for token and image tasks. Batch-first (B, N, D) throughout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmlp_ablate.config import ModelConfig
from gmlp_ablate.models.flops import transformer_flops_per_token
from gmlp_ablate.models.layers import ZooModel, make_drop_path
from gmlp_ablate.tasks.base import TaskShape


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(QK^T / sqrt(d_h)) V (Vaswani et al. 2017), via SDPA."""

    def __init__(self, *, dim: int, heads: int = 1, causal: bool = False):
        """
        Args:
            dim: model width (also the attention width).
            heads: attention heads (dim must be divisible by it).
            causal: position t attends to positions <= t only.
        """
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} not divisible by heads={heads}")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, N, D)
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, dh)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, h, N, dh)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class FeedForward(nn.Module):
    """Position-wise GELU MLP: Linear(d, d_ff) -> GELU -> Linear(d_ff, d)."""

    def __init__(self, *, dim: int, dim_ff: int):
        """
        Args:
            dim: model width d.
            dim_ff: hidden width (d * ff_mult).
        """
        super().__init__()
        self.fc = nn.Linear(dim, dim_ff)
        self.proj = nn.Linear(dim_ff, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(
        self,
        *,
        dim: int,
        dim_ff: int,
        heads: int = 1,
        causal: bool = False,
        prob_survival: float = 1.0,
        drop_mode: str = "sample",
    ):
        """
        Args:
            dim: model width d.
            dim_ff: FFN hidden width.
            heads: attention heads.
            causal: causal self-attention.
            prob_survival: stochastic depth survival probability of each residual branch.
            drop_mode: ``sample`` (per-sample DropPath on each branch) or ``layer`` (handled
                by the model, the block has no DropPath).
        """
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim=dim, heads=heads, causal=causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, dim_ff=dim_ff)
        self.drop_path1 = make_drop_path(prob_survival, drop_mode, batch_dim=0)
        self.drop_path2 = make_drop_path(prob_survival, drop_mode, batch_dim=0)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.ln1(x)))  # (B, N, D)
        return x + self.drop_path2(self.mlp(self.ln2(x)))  # (B, N, D)


class Transformer(ZooModel):
    """Transformer baseline: token (or patch) embedding + learned absolute positions,
    ``depth`` pre-LN blocks, final LayerNorm, linear head (mean-pooled for images)."""

    def __init__(self, cfg: ModelConfig, shape: TaskShape):
        """
        Args:
            cfg: the model knobs (``arch`` must be ``transformer``; ``heads`` are attention heads).
            shape: the task's input/output shape; ``shape.causal`` makes the model causal.
        """
        super().__init__()
        out_dim = self._build_io(cfg, shape)
        causal = shape.causal and shape.kind == "tokens"
        self.pos_emb = nn.Embedding(shape.seq_len, cfg.dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim=cfg.dim,
                dim_ff=cfg.dim * cfg.ff_mult,
                heads=cfg.heads,
                causal=causal,
                prob_survival=cfg.prob_survival,
                drop_mode=cfg.drop_mode,
            )
            for _ in range(cfg.depth)
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)
        self.init_weights()

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, n, C * p * p), patches row-major, features (c, p1, p2)."""
        b, c, hh, ww = x.shape
        p = self.shape.patch_size
        x = x.view(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        return x.reshape(b, (hh // p) * (ww // p), c * p * p)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, N) -> logits (B, N, vocab); images (B, C, H, W) -> logits (B, classes)."""
        if self.shape.kind == "tokens":
            n = x.shape[1]
            self._check_len(n)
            h = self.tok_emb(x)  # (B, N, D)
        else:
            h = self.patch_embed(self.patchify(x))  # (B, n, D)
            n = h.shape[1]
        h = self._run_blocks(h + self.pos_emb(torch.arange(n, device=h.device)))
        h = self.ln_f(h)
        if self.shape.kind == "tokens":
            return self.head(h)  # (B, N, V)
        return self.head(h.mean(dim=1))  # (B, classes)

    def flops_per_token(self) -> float:
        """Analytic forward FLOPs per token (patch) at full seq_len (see ``flops``)."""
        return transformer_flops_per_token(self.cfg, self.shape)

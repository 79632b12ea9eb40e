"""The attention baseline: a pre-LN Transformer (GPT-2 / ViT style) for token and image tasks,
with learned absolute, rotary or learned relative positions. Batch-first (B, N, D) throughout."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmlp_ablate.models.config import ModelConfig, Pos, TaskShape
from gmlp_ablate.models.layers import LayerDropBlocks, ZooModel, make_drop_path, make_dropout
from gmlp_ablate.models.registry import register_arch


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021, eq. (34)): rotates each pair of
    channels (i, i + d/2) of a query or key at position t by the angle t * 10000^(-2i/d)."""

    def __init__(self, *, head_dim: int, seq_len: int, base: float = 10000.0):
        """
        Args:
            head_dim: channels per head d (even).
            seq_len: maximum sequence length (size of the precomputed tables).
            base: wavelength base of the rotation frequencies.
        """
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head width, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (d/2,)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (n, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, d)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, h, N, d) -> the same, rotated by position."""
        n = x.shape[-2]
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)  # (B, h, N, d)
        return x * self.cos[:n] + rotated * self.sin[:n]


class RelativePositionBias(nn.Module):
    """Learned relative position bias (Shaw et al. 2018; Raffel et al. 2020, sec. 2.1): a
    scalar b_h(i - j) per head h and offset, added to the attention logits. Causal: offsets
    0..n-1, and -inf above the diagonal; else offsets -(n-1)..n-1."""

    def __init__(self, *, heads: int, seq_len: int, causal: bool = False):
        """
        Args:
            heads: attention heads (one bias table each).
            seq_len: maximum sequence length n.
            causal: position i attends to positions j <= i only.
        """
        super().__init__()
        self.causal = causal
        self.seq_len = seq_len
        offsets = torch.arange(seq_len)[:, None] - torch.arange(seq_len)[None, :]  # (n, n): i - j
        index = offsets.clamp(min=0) if causal else offsets + seq_len - 1
        self.register_buffer("index", index, persistent=False)
        self.weight = nn.Parameter(torch.zeros(heads, seq_len if causal else 2 * seq_len - 1))
        if causal:
            future = torch.full((seq_len, seq_len), float("-inf")).triu(1)
            self.register_buffer("future", future, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Zero bias: no position preference at init."""
        self.weight.zero_()

    def forward(self, n: int) -> Tensor:
        """The additive attention bias for n positions, (h, n, n)."""
        bias = self.weight[:, self.index[:n, :n]]  # (h, n, n)
        return bias + self.future[:n, :n] if self.causal else bias


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(QK^T / sqrt(d_h) + B) V (Vaswani et al. 2017,
    eq. (1)), via SDPA; B is the relative position bias (``pos=relative``) or the causal mask."""

    def __init__(self, *, dim: int, heads: int = 1, causal: bool = False, seq_len: int = 0,
                 pos: Pos = "learned"):
        """
        Args:
            dim: model width (also the attention width).
            heads: attention heads (dim must be divisible by it).
            causal: position t attends to positions <= t only.
            seq_len: maximum sequence length (needed for ``rotary`` and ``relative``).
            pos: ``rotary`` rotates queries and keys, ``relative`` adds a learned bias per
                head and offset; ``learned`` adds nothing here (the model adds embeddings).
        """
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} not divisible by heads={heads}")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rotary = Rotary(head_dim=dim // heads, seq_len=seq_len) if pos == "rotary" else None
        self.rel_bias = (
            RelativePositionBias(heads=heads, seq_len=seq_len, causal=causal) if pos == "relative" else None
        )

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, N, D)
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, dh)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.rel_bias is not None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_bias(n))  # (B, h, N, dh)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, h, N, dh)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class FeedForward(nn.Module):
    """Position-wise GELU MLP, eq. (2) of Vaswani et al. 2017 with GELU: Linear -> GELU -> Linear."""

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
    """Pre-LN Transformer block (Xiong et al. 2020): x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(
        self,
        *,
        dim: int,
        dim_ff: int,
        heads: int = 1,
        causal: bool = False,
        seq_len: int = 0,
        pos: Pos = "learned",
        prob_survival: float = 1.0,
        dropout: float = 0.0,
    ):
        """
        Args:
            dim: model width d.
            dim_ff: FFN hidden width.
            heads: attention heads.
            causal: causal self-attention.
            seq_len, pos: the attention's position scheme (see ``SelfAttention``).
            prob_survival: survival probability of the per-sample DropPath on each residual
                branch (1 = none).
            dropout: dropout rate on the attention and FFN outputs, before the residual adds.
        """
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim=dim, heads=heads, causal=causal, seq_len=seq_len, pos=pos)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, dim_ff=dim_ff)
        self.dropout = make_dropout(dropout)
        self.drop_path1 = make_drop_path(prob_survival, batch_dim=0)
        self.drop_path2 = make_drop_path(prob_survival, batch_dim=0)

    @classmethod
    def from_config(cls, cfg: ModelConfig, shape: TaskShape) -> "TransformerBlock":
        """The block ``cfg`` asks for, for a task of ``shape``."""
        return cls(
            dim=cfg.dim,
            dim_ff=cfg.dim * cfg.ff_mult,
            heads=cfg.heads,
            causal=shape.causal and shape.kind == "tokens",
            seq_len=shape.seq_len,
            pos=cfg.pos,
            prob_survival=cfg.sample_survival,
            dropout=cfg.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.dropout(self.attn(self.ln1(x))))  # (B, N, D)
        return x + self.drop_path2(self.dropout(self.mlp(self.ln2(x))))  # (B, N, D)


@register_arch("transformer")
class Transformer(ZooModel):
    """Transformer baseline: token (or patch) embedding (+ learned absolute positions with
    ``pos=learned``), ``depth`` pre-LN blocks, final LayerNorm, linear head (mean-pooled for
    images)."""

    def __init__(self, cfg: ModelConfig, shape: TaskShape):
        """
        Args:
            cfg: the model knobs (``arch`` must be ``transformer``; ``heads`` are attention heads).
            shape: the task's input/output shape; ``shape.causal`` makes the model causal.
        """
        super().__init__()
        out_dim = self._build_io(cfg, shape)
        self.pos_emb: Optional[nn.Embedding] = nn.Embedding(shape.seq_len, cfg.dim) if cfg.pos == "learned" else None
        self.blocks = LayerDropBlocks(
            (TransformerBlock.from_config(cfg, shape) for _ in range(cfg.depth)), prob_survival=cfg.layer_survival
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)
        self.init_weights()

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, n, C * p * p), patches row-major, features (c, p1, p2)."""
        p = self.shape.patch_size
        return rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, N) -> logits (B, N, vocab); images (B, C, H, W) -> logits (B, classes)."""
        if self.shape.kind == "tokens":
            n = x.shape[1]
            self._check_len(n)
            h = self.tok_emb(x)  # (B, N, D)
        else:
            h = self.patch_embed(self.patchify(x))  # (B, n, D)
            n = h.shape[1]
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(n, device=h.device))  # (B, N, D)
        h = self.ln_f(self.blocks(h))
        if self.shape.kind == "tokens":
            return self.head(h)  # (B, N, V)
        return self.head(h.mean(dim=1))  # (B, classes)

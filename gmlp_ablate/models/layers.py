"""Building blocks shared by the model zoo: initialisation, stochastic depth, dropout, the
spatial gating unit, tiny attention, and the ``ZooModel`` base (init walk, parameter count,
weight-decay groups).

Layout: the gMLP layers here work *sequence-first*, on ``(N, B, C)`` tensors. The spatial
mix ``W @ Z`` is then one plain GEMM of the (n, n) weight with a contiguous ``(n, B * C)``
view, with no transposes or copies around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmlp_ablate.models import flops

if TYPE_CHECKING:
    from gmlp_ablate.models.config import ModelConfig, TaskShape

SGU_ACTIVATIONS: Dict[str, Optional[Callable[[Tensor], Tensor]]] = {
    "identity": None,  # None: no call at all
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
}


# --------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------


def named_apply(fn: Callable[[nn.Module, str], None], module: nn.Module, name: str = "",
                include_root: bool = False) -> nn.Module:
    """Call ``fn(module, name)`` on every submodule depth-first, children before their parent
    (as timm's ``named_apply``)."""
    for child_name, child in module.named_children():
        named_apply(fn, child, f"{name}.{child_name}" if name else child_name, include_root=True)
    if include_root:
        fn(module, name)
    return module


@torch.no_grad()
def init_dense(module: nn.Module) -> None:
    """nanoGPT init of torch's own layers: N(0, 0.02) for Linear/Conv/Embedding weights, zero
    biases, LayerNorm ones/zeros. Other modules are left alone."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------
# Stochastic depth and dropout
# --------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016; timm's ``DropPath``): in training,
    each sample's branch is kept with probability p and scaled by 1/p, so E[out] = x."""

    def __init__(self, *, prob_survival: float, batch_dim: int = 0):
        """
        Args:
            prob_survival: probability p in (0, 1] that a sample's branch is kept.
            batch_dim: the batch dimension of the input (0 for (B, N, D), 1 for (N, B, D)).
        """
        super().__init__()
        if not 0.0 < prob_survival <= 1.0:
            raise ValueError(f"prob_survival must be in (0, 1], got {prob_survival}")
        self.prob_survival = prob_survival
        self.batch_dim = batch_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.prob_survival == 1.0:
            return x
        shape = [1] * x.ndim
        shape[self.batch_dim] = x.shape[self.batch_dim]
        mask = x.new_empty(shape).bernoulli_(self.prob_survival)  # (.., B, ..) of 0/1
        return x * mask.div_(self.prob_survival)

    def extra_repr(self) -> str:
        return f"prob_survival={self.prob_survival}, batch_dim={self.batch_dim}"


def make_drop_path(prob_survival: float, batch_dim: int) -> nn.Module:
    """A ``DropPath`` for p < 1, else ``nn.Identity`` (free)."""
    if prob_survival < 1.0:
        return DropPath(prob_survival=prob_survival, batch_dim=batch_dim)
    return nn.Identity()


def make_dropout(rate: float) -> nn.Module:
    """``nn.Dropout(rate)`` (Srivastava et al. 2014) for rate > 0, else ``nn.Identity`` (free)."""
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


def layer_keep_mask(depth: int, prob_survival: float) -> List[bool]:
    """Which layers run this step under layer-wise stochastic depth (g-mlp-pytorch's
    ``dropout_layers``): each is kept with probability p, and at least one always is.

    The draw is ``torch.zeros(depth).uniform_()`` on the CPU default generator, the same
    draw as g-mlp-pytorch, so seeded runs drop the same layers (it falls back to
    ``random.randrange`` when all are dropped; this uses torch's generator instead).
    """
    drop = (torch.zeros(depth).uniform_(0.0, 1.0) > prob_survival).tolist()
    if all(drop):
        drop[int(torch.randint(depth, ()).item())] = False
    return [not d for d in drop]


class LayerDropBlocks(nn.ModuleList):
    """Blocks applied in order; in training, layer-wise stochastic depth (Huang et al. 2016,
    as g-mlp-pytorch): each block runs with probability p, at least one always does."""

    def __init__(self, blocks: Iterable[nn.Module], *, prob_survival: float = 1.0):
        """
        Args:
            blocks: the blocks, each mapping a hidden state to one of the same shape.
            prob_survival: probability p in (0, 1] that a block runs in a training step.
        """
        super().__init__(blocks)
        if not 0.0 < prob_survival <= 1.0:
            raise ValueError(f"prob_survival must be in (0, 1], got {prob_survival}")
        self.prob_survival = prob_survival

    def forward(self, h: Tensor) -> Tensor:
        if self.training and self.prob_survival < 1.0:
            keep = layer_keep_mask(len(self), self.prob_survival)
            for block, k in zip(self, keep):
                if k:
                    h = block(h)
            return h
        for block in self:
            h = block(h)
        return h

    def extra_repr(self) -> str:
        return f"prob_survival={self.prob_survival}"


# --------------------------------------------------------------------------------------
# gMLP layers (sequence-first)
# --------------------------------------------------------------------------------------


class SpatialGatingUnit(nn.Module):
    """Spatial Gating Unit, eq. (2)-(3) of Liu et al. 2021: s(Z) = Z1 * f_{W,b}(Z2) with
    f(Z) = W Z + b mixing along the sequence (or s(Z) = Z * f(Z) unsplit)."""

    init_after_dense = True
    """``ZooModel.init_weights`` draws W after every dense layer's weights (see there)."""

    def __init__(
        self,
        *,
        dim: int,
        seq_len: int,
        split: bool = True,
        heads: int = 1,
        causal: bool = False,
        act: str = "identity",
        init_eps: float = 1e-3,
    ):
        """
        Args:
            dim: channels of the input Z (d_ffn).
            seq_len: maximum sequence length n; W is (heads, n, n), b is (heads, n).
            split: true: gate half of Z with the other half (output dim/2 channels);
                false: gate all of Z with itself (output dim channels).
            heads: the gate's channels are split into this many groups, each with its own
                spatial weight and bias.
            causal: W is lower-triangular (position t reads positions <= t only).
            act: activation on the gate: identity, tanh, sigmoid or gelu.
            init_eps: W ~ U(-init_eps/n, init_eps/n) at init; b = 1.
        """
        super().__init__()
        self.split = split
        self.gate_dim = dim // 2 if split else dim
        if self.gate_dim % heads:
            raise ValueError(f"gate channels {self.gate_dim} not divisible by heads={heads}")
        self.seq_len = seq_len
        self.heads = heads
        self.causal = causal
        self.init_eps = init_eps
        self.act_name = act
        self.act = SGU_ACTIVATIONS[act]
        self.norm = nn.LayerNorm(self.gate_dim)
        self.weight = nn.Parameter(torch.empty(heads, seq_len, seq_len))
        self.bias = nn.Parameter(torch.empty(heads, seq_len))
        if causal:  # lower-triangular 0/1 mask, computed once
            self.register_buffer("causal_mask", torch.ones(seq_len, seq_len).tril(), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Near-identity gate of eq. (3): W ~ U(-eps/n, eps/n) (W = 0 for eps = 0), b = 1."""
        bound = self.init_eps / self.seq_len
        if bound > 0:
            self.weight.uniform_(-bound, bound)
        else:
            self.weight.zero_()
        self.bias.fill_(1.0)

    def spatial(self, gate: Tensor) -> Tensor:
        """f_{W,b}(gate) = W gate + b along the sequence, per head. (N, B, C) -> (N, B, C)."""
        n, b, c = gate.shape
        w, bias = self.weight[:, :n, :n], self.bias[:, :n]  # (h, n, n), (h, n)
        if self.causal:
            w = w * self.causal_mask[:n, :n]  # masked entries are 0 and get zero gradient
        if self.heads == 1:
            out = torch.addmm(bias[0].unsqueeze(1), w[0], gate.reshape(n, b * c))  # (n, B*C)
            return out.view(n, b, c)
        h, d = self.heads, c // self.heads
        g = gate.reshape(n, b, h, d).permute(2, 0, 1, 3).reshape(h, n, b * d)  # (h, n, B*d)
        out = torch.baddbmm(bias.unsqueeze(-1), w, g)  # (h, n, B*d)
        return out.view(h, n, b, d).permute(1, 2, 0, 3).reshape(n, b, c)

    def forward(self, z: Tensor, gate_res: Optional[Tensor] = None) -> Tensor:
        """z: (N, B, dim); gate_res: optional (N, B, gate_dim) added to f(...) before the
        activation (tiny attention). Returns (N, B, gate_dim)."""
        if self.split:
            res, gate = z.chunk(2, dim=-1)  # Z1 ("res"), Z2 ("gate"), as g-mlp-pytorch
        else:
            res = gate = z
        return self.gating(res, gate, gate_res)

    def gating(self, res: Tensor, gate: Tensor, gate_res: Optional[Tensor] = None) -> Tensor:
        """act(f(LN(gate)) + gate_res) * res on the already separated halves Z1 = ``res``,
        Z2 = ``gate`` (the same tensor when unsplit), each (N, B, gate_dim)."""
        gate = self.spatial(self.norm(gate))  # (N, B, C)
        if gate_res is not None:
            gate = gate + gate_res
        if self.act is not None:
            gate = self.act(gate)
        return gate * res

    def extra_repr(self) -> str:
        return (
            f"split={self.split}, seq_len={self.seq_len}, heads={self.heads}, "
            f"causal={self.causal}, act={self.act_name}, init_eps={self.init_eps}"
        )


class TinyAttention(nn.Module):
    """Tiny self-attention of aMLP (Liu et al. 2021, sec. 4.3, fig. 6): softmax(QK^T/sqrt(d))V
    of width ``attn_dim``, projected to the gate's channels. Sequence-first (N, B, D)."""

    def __init__(
        self,
        *,
        dim_in: int,
        dim_out: int,
        attn_dim: int,
        seq_len: int,
        heads: int = 1,
        causal: bool = False,
        fused: Optional[bool] = None,
    ):
        """
        Args:
            dim_in: input channels (the block's width d).
            dim_out: output channels (the SGU gate's channels).
            attn_dim: total width of queries, keys and values.
            seq_len: maximum sequence length (size of the precomputed causal mask).
            heads: attention heads (attn_dim must be divisible by it).
            causal: position t attends to positions <= t only.
            fused: use ``F.scaled_dot_product_attention``; None = on accelerators only (on
                CPU, explicit batched matmuls on strided views are faster at these widths).
        """
        super().__init__()
        if attn_dim % heads:
            raise ValueError(f"attn_dim={attn_dim} not divisible by heads={heads}")
        self.heads = heads
        self.attn_dim = attn_dim
        self.causal = causal
        self.fused = fused
        self.scale = (attn_dim // heads) ** -0.5
        self.qkv = nn.Linear(dim_in, 3 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim_out)
        if causal:  # additive mask for the unfused path: 0 on and below the diagonal, -inf above
            bias = torch.full((seq_len, seq_len), float("-inf")).triu(1)
            self.register_buffer("causal_bias", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        fused = self.fused if self.fused is not None else x.device.type != "cpu"
        o = self._sdpa(x) if fused else self._bmm(x)  # (N, B, a)
        return self.proj(o)  # (N, B, dim_out)

    def _sdpa(self, x: Tensor) -> Tensor:
        n, b, _ = x.shape  # (N, B, D)
        h = self.heads
        qkv = self.qkv(x).view(n, b, 3, h, self.attn_dim // h)  # (N, B, 3, h, dh)
        q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # each (B, h, N, dh)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, h, N, dh)
        return o.permute(2, 0, 1, 3).reshape(n, b, self.attn_dim)  # (N, B, a)

    def _bmm(self, x: Tensor) -> Tensor:
        n, b, _ = x.shape  # (N, B, D)
        h, a = self.heads, self.attn_dim
        qkv = self.qkv(x).transpose(0, 1)  # (B, N, 3a), a view
        if h == 1:
            q, k, v = qkv.split(a, dim=-1)  # (B, N, a) strided views, no copies
        else:
            qkv = qkv.reshape(b, n, 3, h, a // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, dh)
            q, k, v = qkv.reshape(3, b * h, n, a // h).unbind(0)  # (B*h, N, dh)
        if self.causal:  # scale and mask folded into the GEMM
            s = torch.baddbmm(self.causal_bias[:n, :n], q, k.transpose(1, 2), alpha=self.scale)  # (B*h, N, N)
        else:
            s = torch.bmm(q, k.transpose(1, 2)).mul_(self.scale)  # (B*h, N, N)
        o = torch.bmm(s.softmax(dim=-1), v)  # (B*h, N, dh)
        if h == 1:
            return o.transpose(0, 1)  # (N, B, a)
        return o.view(b, h, n, a // h).permute(2, 0, 1, 3).reshape(n, b, a)  # (N, B, a)


# --------------------------------------------------------------------------------------
# Base class of every model
# --------------------------------------------------------------------------------------


class ZooModel(nn.Module):
    """What every model of the zoo provides: the init walk, ``num_params``, ``param_groups``
    and ``flops_per_token``. Subclasses build ``self.blocks`` and call ``init_weights``."""

    cfg: "ModelConfig"
    shape: "TaskShape"

    def init_weights(self) -> None:
        """Each module initialises its own parameters: its ``init_weights()`` if it has one,
        else :func:`init_dense` (torch's Linear / Embedding / LayerNorm), visited depth-first
        by one :func:`named_apply`. Modules with ``init_after_dense`` (the SGU) are called
        after the walk, in module order: every dense draw comes first, then the spatial
        weights, an order kept fixed so that seeded models do not change between versions."""
        after: List[nn.Module] = []

        def init(module: nn.Module, name: str) -> None:
            own = getattr(module, "init_weights", None)
            if getattr(module, "init_after_dense", False):
                after.append(module)
            elif callable(own):
                own()
            else:
                init_dense(module)

        named_apply(init, self)
        for module in after:
            module.init_weights()

    def _build_io(self, cfg: ModelConfig, shape: TaskShape) -> int:
        """Create the input embedding (``tok_emb`` or ``patch_embed``); return the head's
        output size (vocab or classes)."""
        self.cfg, self.shape, self.seq_len = cfg, shape, shape.seq_len
        if shape.kind == "tokens":
            self.tok_emb = nn.Embedding(shape.vocab_size, cfg.dim)
            return shape.vocab_size
        if shape.kind == "image":
            side = shape.image_size // shape.patch_size
            if shape.image_size % shape.patch_size or side * side != shape.seq_len:
                raise ValueError(f"image {shape.image_size}px / patch {shape.patch_size}px != {shape.seq_len} patches")
            self.patch_embed = nn.Linear(shape.channels * shape.patch_size**2, cfg.dim)
            return shape.num_classes
        raise ValueError(f"unknown task kind {shape.kind!r}")

    def _check_len(self, n: int) -> None:
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} tokens > seq_len={self.seq_len}")

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def param_groups(self, weight_decay: float) -> List[Dict]:
        """AdamW parameter groups, one rule for every architecture: the weights of
        ``nn.Linear`` layers and the token embedding decay; everything else (biases, norms,
        position embeddings and biases, the SGU's spatial weight and bias) does not."""
        decay_ids = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        if hasattr(self, "tok_emb"):
            decay_ids.add(id(self.tok_emb.weight))
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if id(p) in decay_ids else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def flops_per_token(self) -> float:
        """Analytic forward FLOPs per token (patch) at full seq_len (see ``flops``)."""
        return flops.flops_per_token(self.cfg, self.shape)

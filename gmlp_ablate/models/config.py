"""The model zoo's own config: the ablation knobs (``ModelConfig``) and what a model needs to
know about its task (``TaskShape``).

Plain dataclasses with a docstring per field; choices are ``Literal`` annotations and bounds
are declared on the fields (:func:`gmlp_ablate.schema.knob`), checked by
:func:`gmlp_ablate.schema.check`; cross-field rules live in :meth:`ModelConfig.check`. Nothing
here imports OmegaConf, YAML, Ray or MLflow: the zoo copies out with torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from gmlp_ablate.schema import ConfigError, knob

MAX_WIDTH = 1 << 16
"""Largest ``dim``/``attn_dim`` accepted (a sanity bound: far beyond any model trained here)."""

Arch = Literal["gmlp", "transformer"]
SguAct = Literal["identity", "tanh", "sigmoid", "gelu"]
DropMode = Literal["sample", "layer"]
Pos = Literal["learned", "rotary", "relative"]


@dataclass
class ModelConfig:
    """The ablation knobs. ``causal`` is not a knob: the task sets it (``TaskShape.causal``)."""

    arch: Arch = "gmlp"
    """``gmlp`` (gMLP; aMLP when ``attn_dim`` is set) or ``transformer`` (the baseline)."""
    dim: int = knob(128, ge=1, max_value=MAX_WIDTH)
    """Model width d."""
    depth: int = knob(4, ge=1, max_value=1024)
    """Number of blocks L."""
    ff_mult: int = knob(4, ge=1, max_value=64)
    """d_ffn = dim * ff_mult (the paper uses 6, g-mlp-pytorch defaults to 4)."""
    heads: int = knob(1, ge=1, max_value=MAX_WIDTH)
    """transformer: attention heads. gmlp: heads of the spatial gating unit (the channels
    are split into this many groups, each with its own n x n spatial weight)."""
    sgu_split: bool = True
    """true: s(Z) = Z1 * f(LN(Z2)) on halves of Z. false: s(Z) = Z * f(LN(Z)) (the paper's
    unsplit "multiplicative" variant; proj_out then reads d_ffn channels)."""
    init_eps: float = knob(1e-3, ge=0)
    """f(Z) = W Z + b with W ~ U(-init_eps/n, init_eps/n), b = 1: a near-identity gate at
    init. 0 gives W = 0 exactly."""
    sgu_act: SguAct = "identity"
    """Activation on the gate f(...): identity, tanh, sigmoid, gelu."""
    attn_dim: Optional[int] = knob(None, ge=1, max_value=MAX_WIDTH)
    """Tiny attention width (aMLP); its output is added to f(...) before gating. null = off."""
    attn_heads: int = knob(1, ge=1, max_value=MAX_WIDTH)
    """Heads of the tiny attention (attn_dim must be divisible by it)."""
    prob_survival: float = knob(1.0, gt=0, le=1)
    """Stochastic depth: probability that a block's residual branch is kept, in (0, 1]."""
    drop_mode: DropMode = "sample"
    """``sample``: per-sample DropPath scaled by 1/p (timm, the paper). ``layer``: whole
    blocks dropped per batch without scaling (g-mlp-pytorch)."""
    dropout: float = knob(0.0, ge=0, lt=1)
    """Dropout rate on each residual branch's output before the residual add (transformer:
    the attention and the FFN outputs; gmlp: the block's proj_out output), in [0, 1)."""
    pos: Pos = "learned"
    """Transformer position information: ``learned`` (absolute embeddings added to the
    input), ``rotary`` (RoPE on queries and keys; dim / heads must be even) or ``relative``
    (a learned bias per head and relative offset added to the attention logits, Shaw/T5
    style; causal models have one per offset 0..n-1). gmlp has no position encoding (the
    SGU is position-aware) and accepts only the default."""

    @property
    def sample_survival(self) -> float:
        """Survival probability of the per-sample DropPath on each residual branch (1 = none)."""
        return self.prob_survival if self.drop_mode == "sample" else 1.0

    @property
    def layer_survival(self) -> float:
        """Survival probability of each whole block per batch (1 = every block runs)."""
        return self.prob_survival if self.drop_mode == "layer" else 1.0

    def check(self) -> None:
        """Cross-field rules (keys relative to the model group)."""
        if self.attn_dim is not None and self.attn_dim % self.attn_heads:
            raise ConfigError("attn_heads", f"attn_dim={self.attn_dim} is not divisible by attn_heads={self.attn_heads}")
        if self.arch == "transformer":
            if self.dim % self.heads:
                raise ConfigError("heads", f"dim={self.dim} is not divisible by heads={self.heads}")
            if self.pos == "rotary" and (self.dim // self.heads) % 2:
                raise ConfigError("pos", f"rotary needs an even head width, got dim / heads = {self.dim // self.heads}")
            return
        if self.pos != "learned":
            raise ConfigError("pos", f"{self.pos!r} applies to the transformer; gmlp has no position encoding")
        if self.sgu_split and (self.dim * self.ff_mult) % 2:
            raise ConfigError("ff_mult", f"dim * ff_mult = {self.dim * self.ff_mult} must be even to split")
        gate_ch = self.dim * self.ff_mult // (2 if self.sgu_split else 1)
        if gate_ch % self.heads:
            raise ConfigError("heads", f"the gate's {gate_ch} channels are not divisible by heads={self.heads}")


@dataclass(frozen=True)
class TaskShape:
    """What a model needs to know about its task's inputs and outputs."""

    kind: Literal["tokens", "image"]
    """``tokens`` (x: (B, N) int64 -> logits (B, N, vocab)) or ``image`` (x: (B, C, H, W)
    float -> logits (B, num_classes))."""
    seq_len: int
    """Tokens per example (for images: the number of patches)."""
    causal: bool = False
    """Token tasks: position t may only see positions <= t."""
    vocab_size: int = 0
    """Token tasks: input and output vocabulary."""
    num_classes: int = 0
    """Image tasks: classes."""
    image_size: int = 0
    """Image tasks: side in pixels (square images)."""
    patch_size: int = 0
    """Image tasks: side of a square patch in pixels."""
    channels: int = 1
    """Image tasks: input channels."""

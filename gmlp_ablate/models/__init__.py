"""Model zoo: gMLP / aMLP and the Transformer baseline. ``build_model`` is the entry point.

Every model takes batch-first inputs (tokens (B, N) int64 with N <= seq_len, or images
(B, C, H, W)) and returns logits ((B, N, vocab) or (B, classes)). It provides
``num_params()``, ``flops_per_token()`` (analytic forward FLOPs per token/patch at full
seq_len) and ``param_groups(weight_decay)`` (AdamW groups: matrices decay; biases, norms
and the SGU's spatial weight/bias do not).
"""

from __future__ import annotations

from gmlp_ablate.config import ModelConfig, validate_model
from gmlp_ablate.models.gmlp import GMLP, GMLPBlock
from gmlp_ablate.models.layers import DropPath, SpatialGatingUnit, TinyAttention, ZooModel
from gmlp_ablate.models.transformer import Transformer, TransformerBlock
from gmlp_ablate.tasks.base import TaskShape

__all__ = [
    "build_model",
    "ZooModel",
    "GMLP",
    "GMLPBlock",
    "Transformer",
    "TransformerBlock",
    "SpatialGatingUnit",
    "TinyAttention",
    "DropPath",
]


def build_model(model_cfg: ModelConfig, shape: TaskShape) -> ZooModel:
    """The model named by ``model_cfg.arch`` for a task of ``shape`` (validated first;
    a bad value raises ``ConfigError`` naming the ``model.*`` key)."""
    validate_model(model_cfg)
    if model_cfg.arch == "gmlp":
        return GMLP(model_cfg, shape)
    return Transformer(model_cfg, shape)

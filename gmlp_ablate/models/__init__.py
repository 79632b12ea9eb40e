"""Model zoo: gMLP / aMLP and the Transformer baseline. ``build_model`` is the entry point.

Every model takes batch-first inputs (tokens (B, N) int64 with N <= seq_len, or images
(B, C, H, W)) and returns logits ((B, N, vocab) or (B, classes)). It provides
``num_params()``, ``flops_per_token()`` (analytic forward FLOPs per token/patch at full
seq_len) and ``param_groups(weight_decay)``: AdamW groups under one rule for every
architecture, **decay = the weights of ``nn.Linear`` layers and the token embedding; no decay
= everything else** (biases, LayerNorms, position embeddings and relative position biases,
the SGU's spatial weight and bias).

Architectures register their class with ``registry.register_arch``; named presets (the
paper's sizes) are ``ModelConfig`` overrides in ``registry.PRESETS`` (``build_preset``).

Importing this package imports no torch: the config, the presets and the analytic counts
(``flops.param_count``, ``flops.flops_per_token``, ``flops.match_size``) are torch-free, and
the torch modules (``build_model``, the model classes) load on first access of their name.
Python runs a package's ``__init__`` before any of its submodules, so this is what keeps
``import gmlp_ablate.models.flops`` free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.models.flops import flops_per_token, match_size, param_count
from gmlp_ablate.models.registry import ARCHS, PRESETS, preset_config, register_arch

_LAZY = {
    "build_model": "factory",
    "build_preset": "factory",
    "ZooModel": "layers",
    "DropPath": "layers",
    "LayerDropBlocks": "layers",
    "SpatialGatingUnit": "layers",
    "TinyAttention": "layers",
    "GMLP": "gmlp",
    "GMLPBlock": "gmlp",
    "Transformer": "transformer",
    "TransformerBlock": "transformer",
    "SelfAttention": "transformer",
    "Rotary": "transformer",
    "RelativePositionBias": "transformer",
}

__all__ = [
    "ModelConfig",
    "TaskShape",
    "ARCHS",
    "PRESETS",
    "preset_config",
    "register_arch",
    "param_count",
    "flops_per_token",
    "match_size",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first use (PEP 562)."""
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
